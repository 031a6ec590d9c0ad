"""The best-eval rule in checkpoint selection, export and `voicelab checkpoints` (real torch
checkpoints and a real metrics table, as `voicelab eval` writes it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from test_export import make_ws
from voicelab.errors import ConfigError, ModelError
from voicelab.evaluation.results import TABLE, read_table, write_table
from voicelab.evaluation.sets import eval_root
from voicelab.stages import checkpoints as ck
from voicelab.stages.export import run_export
from voicelab.workspace import Workspace

BASE = {"candidate": "base", "kind": "base", "err": 0.10, "sim": 0.55, "mos": 3.0, "lines": 4}


def epoch(e: int, err: float, sim: float, mos: float) -> dict:
    return {"candidate": f"epoch_{e}", "kind": "epoch", "epoch": e, "err": err, "sim": sim,
            "mos": mos, "lines": 4}  # fmt: skip


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return make_ws(tmp_path / "ws")


def write_run(ws: Workspace, name: str, rows: list[dict]) -> Path:
    return write_table(eval_root(ws) / name / TABLE, rows)


def test_parse_rule_best_eval() -> None:
    assert ck.parse_rule("best-eval") == ("epoch", "best-eval", "1")
    assert ck.parse_rule("best-eval:2") == ("epoch", "best-eval", "2")
    with pytest.raises(ConfigError):
        ck.parse_rule("best-eval:0")


def test_table_round_trip(ws: Workspace) -> None:
    path = write_run(ws, "r1", [BASE, epoch(1, 0.08, 0.7, 3.1), {"candidate": "real"}])
    rows = read_table(path)
    assert rows[1]["epoch"] == 1 and rows[1]["sim"] == pytest.approx(0.7)
    assert rows[2]["err"] is None and rows[0]["kind"] == "base"


def test_best_eval_selects_and_export_uses_it_by_default(ws: Workspace) -> None:
    # Without evaluations: last:3, as before.
    assert ck.default_rule("llm", None, ck.evaluated(ck.run_checkpoints(ws, "llm"))) == "last:3"
    write_run(
        ws,
        "r1",
        [BASE, epoch(0, 0.09, 0.60, 3.0), epoch(1, 0.08, 0.70, 3.1), epoch(2, 0.30, 0.90, 3.5)],
    )
    # A later run re-scored epoch 1 and added epoch 3: later rows win.
    write_run(ws, "r2", [BASE, epoch(1, 0.08, 0.65, 3.0), epoch(3, 0.12, 0.72, 3.2)])
    ckpts = ck.run_checkpoints(ws, "llm")
    by_epoch = {c.epoch: c for c in ckpts if c.kind == "epoch"}
    assert by_epoch[1].eval is not None and by_epoch[1].eval["run"] == "r2"
    assert by_epoch[2].eval_ok is False  # error rate 0.30 vs base 0.10: beyond the margin
    assert ck.evaluated(ckpts)
    assert ck.default_rule("llm", None, True) == "best-eval"
    assert [c.epoch for c in ck.select(ckpts, "best-eval")] == [3]
    assert [c.epoch for c in ck.select(ckpts, "best-eval:2")] == [1, 3]
    summary = ck.list_checkpoints(ws, "llm")
    assert [s["epoch"] for s in summary if s["chosen"]] == [3]
    assert summary[-1]["eval"]["eligible"] is True
    res = run_export(ws)
    assert res.llm_rule == "best-eval" and [c.epoch for c in res.llm] == [3]
    prov = json.loads((ws.voice_dir / "voicelab.json").read_text(encoding="utf-8"))
    assert prov["llm"]["rule"] == "best-eval"


def test_locked_epoch_still_wins_and_explicit_rules_too(ws: Workspace) -> None:
    write_run(ws, "r1", [BASE, epoch(1, 0.08, 0.70, 3.1)])
    ws.config.locked_epoch = 2
    ws.save()
    assert ck.default_rule("llm", 2, True) == "epochs:2"
    res = run_export(ws)
    assert [c.epoch for c in res.llm] == [2]


def test_best_eval_errors(ws: Workspace) -> None:
    ckpts = ck.run_checkpoints(ws, "llm")
    with pytest.raises(ModelError, match="been evaluated"):
        ck.select(ckpts, "best-eval")
    write_run(ws, "r1", [BASE, epoch(1, 0.5, 0.70, 3.1)])
    ckpts = ck.run_checkpoints(ws, "llm")
    assert not ck.evaluated(ckpts)  # nothing eligible: the default stays last:3
    with pytest.raises(ModelError, match="intelligibility"):
        ck.select(ckpts, "best-eval")


def test_checkpoints_command_shows_eval_columns(ws: Workspace) -> None:
    from voicelab.cli.main import cli

    write_run(ws, "r1", [BASE, epoch(1, 0.08, 0.70, 3.1), epoch(2, 0.5, 0.8, 3.0)])
    r = CliRunner().invoke(cli, ["-w", str(ws.root), "checkpoints"])
    assert r.exit_code == 0, r.output
    assert "CER/WER" in r.output and "SIM" in r.output
    assert "0.500!" in r.output  # beyond the margin: flagged
    assert "rule: best-eval" in r.output
    r = CliRunner().invoke(cli, ["-w", str(ws.root), "checkpoints", "--json"])
    data = json.loads(r.output)
    assert data["rule"] == "best-eval"
    assert [c["epoch"] for c in data["checkpoints"] if c["chosen"]] == [1]


def test_rows_of_another_file_are_not_attached(ws: Workspace) -> None:
    """An evaluation of an earlier run's epoch 1 says nothing about a retrained epoch 1."""
    from voicelab.fsutil import quick_fingerprint

    here = quick_fingerprint(ws.exp_dir("llm") / "epoch_2_whole.pt")
    write_run(
        ws,
        "r1",
        [
            BASE,
            {**epoch(1, 0.08, 0.7, 3.1), "ckpt": "1:2:3"},
            {**epoch(2, 0.08, 0.6, 3.0), "ckpt": here},
        ],
    )
    by_epoch = {c.epoch: c for c in ck.run_checkpoints(ws, "llm") if c.kind == "epoch"}
    assert by_epoch[1].eval is None and by_epoch[2].eval is not None
