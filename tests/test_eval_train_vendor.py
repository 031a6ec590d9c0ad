"""`voicelab train llm --eval-every 1` with the real upstream trainer (tiny model, CPU): the
watcher evaluates each epoch as its checkpoint appears, in a child `voicelab eval`."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

pytestmark = [pytest.mark.vendor, pytest.mark.slow]
pytest.importorskip("speechmos", reason="the eval extra is not installed: pip install '.[eval]'")

from test_train_vendor import packed, tiny_model  # noqa: E402, F401  (fixtures)
from voicelab.workspace import Workspace  # noqa: E402


def test_train_with_eval_every_epoch(packed: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from voicelab.cli.main import cli
    from voicelab.evaluation.results import TABLE, read_table
    from voicelab.evaluation.sets import eval_root, load_set
    from voicelab.testing.whisper import whisper_base_dir

    ws = packed
    load_set(ws, lines=1, fixed=False)  # the children reuse this one-line set
    ws.set_option("prepare", "whisper_model", str(whisper_base_dir()))
    ws.save()
    args = ["-w", str(ws.root), "train", "llm", "--device", "cpu", "--epochs", "2", "--new",
            "--eval-every", "1"]  # fmt: skip
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "evaluated epochs: 0, 1" in r.output, r.output
    runs = [p for p in eval_root(ws).iterdir() if p.name.startswith("train-")]
    assert len(runs) == 1
    rows = {x["candidate"]: x for x in read_table(runs[0] / TABLE)}
    assert {"epoch_0", "epoch_1", "base", "real"} <= set(rows)
    assert all(rows[c]["lines"] == 1 for c in ("epoch_0", "epoch_1", "base"))
