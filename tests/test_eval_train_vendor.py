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


def test_early_stop_stops_the_real_trainer_at_a_checkpoint(packed: Workspace) -> None:  # noqa: F811
    """The stop signal ends upstream's trainer (its process group) right after the epoch whose
    evaluation decided it; evaluations here are stand-in rows that never beat the base model,
    so patience 1 stops after the first evaluated epoch."""
    from voicelab.evaluation.during_training import TrainingEvaluator, ready_epochs
    from voicelab.stages import train as tr

    ws = packed
    base = {"candidate": "base", "kind": "base", "err": 0.1, "sim": 0.5, "mos": 3.0}

    def evaluate(e: int) -> tuple[dict, dict]:
        return {"candidate": f"epoch_{e}", "kind": "epoch", "epoch": e, "err": 0.9}, base

    watcher = TrainingEvaluator(ws, every=1, patience=1, evaluate=evaluate, poll=0.2).start()
    with pytest.raises(KeyboardInterrupt):
        tr.run_train(ws, "llm", tr.TrainOptions(device="cpu", epochs=20, new=True))
    watcher.close()
    assert watcher.stopped and watcher.done == [0]
    assert ready_epochs(ws)[-1] < 3  # stopped long before 20 epochs
    rows = tr.read_train_log(ws.exp_dir("llm") / "train_log.jsonl")
    assert rows[-1]["event"] == "end" and rows[-1]["interrupted"] is True
