"""One state record per stage (issue 15 item 10) and the workspace lock (item 5), through the
real CLI in real processes on real audio."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from voicelab.runner.pipeline import RunOptions, Stage, run_pipeline, stage_states
from voicelab.state import load_record
from voicelab.workspace import Workspace


def voicelab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voicelab", "-q", *args], capture_output=True, text=True, timeout=300
    )


def _status(root: Path) -> dict[str, dict]:
    r = voicelab("-w", str(root), "status", "--json")
    assert r.returncode == 0, r.stderr
    return {s["stage"]: s for s in json.loads(r.stdout)}


@pytest.fixture
def voice(tmp_path: Path, onnx_dir: Path) -> Path:
    """A workspace over four corpus clips with known transcripts; its base model dir holds the
    tiny ONNX feature models (and an llm.pt, so the download stage's outputs are there)."""
    import torch

    from voicelab.testing.corpus import build_corpus

    corpus = build_corpus()
    src = tmp_path / "src"
    src.mkdir()
    rows = ["file\ttext"]
    for clip in [c for c in corpus.clips if c.kind == "good"][:4]:
        shutil.copy(clip.path, src / clip.path.name)
        rows.append(f"{src / clip.path.name}\t{clip.text}")
    tsv = tmp_path / "transcripts.tsv"
    tsv.write_text("\n".join(rows) + "\n", "utf-8")
    base = tmp_path / "base"
    shutil.copytree(onnx_dir, base)
    torch.save({"w": torch.zeros(1)}, base / "llm.pt")
    root = tmp_path / "ws"
    r = voicelab("-w", str(root), "init", "--speaker", "spk1", "--wav-dir", str(src))
    assert r.returncode == 0, r.stderr
    for key, value in [
        ("prepare.asr", "transcripts"),
        ("prepare.transcripts", str(tsv)),
        ("prepare.min_seconds", "1"),
        ("prepare.dev_ratio", "0.25"),
        ("model.base_dir", str(base)),
        ("features.device", "cpu"),
    ]:
        r = voicelab("-w", str(root), "config", "set", key, value)
        assert r.returncode == 0, r.stderr
    return root


def test_separate_commands_count_for_status_and_run(voice: Path) -> None:
    for cmd in ("prepare", "features", "pack"):
        r = voicelab("-w", str(voice), cmd)
        assert r.returncode == 0, (cmd, r.stderr)
    states = _status(voice)
    for stage in ("download", "prepare", "features", "pack"):
        assert states[stage]["state"] == "done", (stage, states[stage])
    assert states["prepare"]["figures"].get("kept") == 4
    # one record per stage: no second run-<stage>.json beside it
    names = sorted(p.name for p in (voice / ".voicelab" / "state").glob("*.json"))
    assert names == ["features.json", "pack.json", "prepare.json"]
    # `run` agrees: nothing between prepare and pack is redone
    r = voicelab("-w", str(voice), "run", "--from", "prepare", "--until", "pack", "--skip-doctor")
    out = subprocess.run(  # -q hides the [skip] lines: ask without it
        [sys.executable, "-m", "voicelab", "-w", str(voice), "run", "--from", "prepare",
         "--until", "pack", "--skip-doctor"],
        capture_output=True, text=True, timeout=300,
    ).stdout  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "[skip] prepare" in out and "[skip] pack" in out and "[run " not in out, out
    # a features rerun that finds nothing to do keeps its times: pack stays done
    before = load_record(Workspace.open(voice), "features")
    assert voicelab("-w", str(voice), "features").returncode == 0
    after = load_record(Workspace.open(voice), "features")
    assert (after.started, after.finished) == (before.started, before.finished)
    assert _status(voice)["pack"]["state"] == "done"
    # a trial run's flag applies to that run: status then says prepare must be redone
    assert voicelab("-w", str(voice), "prepare", "--limit", "1").returncode == 0
    states = _status(voice)
    assert states["prepare"]["state"] == "stale" and "limit" in states["prepare"]["reason"]
    assert states["features"]["state"] == "stale"


def test_a_stage_function_called_alone_still_counts(tmp_workspace: Workspace) -> None:
    """A record written outside the runner (a library call) is judged by itself."""
    from voicelab.state import stage_run

    out = tmp_workspace.root / "x.out"
    stage = Stage(
        "x", (), lambda ws, o: {"k": o.get(ws, "x", "k", 1)}, lambda ws, o: {}, lambda ws, o: [out]
    )
    with stage_run(tmp_workspace, "x", {"in": 1}, {"p": 1}) as rec:
        out.write_text("x")
        rec.figures["n"] = 3
    (s,) = stage_states(tmp_workspace, [stage], RunOptions())
    assert s.state == "done" and s.figures == {"n": 3}
    calls = []
    stage2 = Stage("x", (), stage.params, lambda ws, o: calls.append(1) or {}, stage.outputs)
    run_pipeline(tmp_workspace, [stage2], RunOptions())
    assert calls == []


# ---- item 5: the workspace lock ------------------------------------------------------------
def _holder(root: Path) -> subprocess.Popen[str]:
    """A real writing command holding the lock: `voicelab features` stalled on a FIFO."""
    code = (
        "import sys, time\n"
        "from voicelab.cli.main import main\n"
        "import voicelab.runner.pipeline as st\n"
        "def slow(ws, o):\n"
        "    print('holding', flush=True)\n"
        "    time.sleep(60)\n"
        "    return {}\n"
        "orig = st.default_stages\n"
        "def stages():\n"
        "    out = orig()\n"
        "    import dataclasses\n"
        "    return [dataclasses.replace(s, run=slow) if s.name == 'features' else s\n"
        "            for s in out]\n"
        "st.default_stages = stages\n"
        f"main(['-w', {str(root)!r}, 'features'])\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
    return proc


def test_second_writer_is_refused_and_readers_do_not_wait(tmp_workspace: Workspace) -> None:
    root = tmp_workspace.root
    proc = _holder(root)
    try:
        r = voicelab("-w", str(root), "config", "set", "train.epochs", "3")
        assert r.returncode == 1
        assert f"PID {proc.pid}" in r.stderr and "voicelab features" in r.stderr, r.stderr
        assert "epochs" not in tmp_workspace.config_file.read_text("utf-8")
        r = voicelab("-w", str(root), "pack")
        assert r.returncode == 1 and f"PID {proc.pid}" in r.stderr
        r = voicelab("-w", str(root), "checkpoints", "--lock", "3")  # would be lost before
        assert r.returncode == 1 and f"PID {proc.pid}" in r.stderr
        t0 = time.monotonic()
        assert voicelab("-w", str(root), "status").returncode == 0  # reading: no wait
        assert voicelab("-w", str(root), "config", "show").returncode == 0
        assert time.monotonic() - t0 < 30
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # the holder died without cleaning up: the next writer takes over and reports it
    r = subprocess.run(
        [sys.executable, "-m", "voicelab", "-w", str(root), "config", "set", "train.epochs", "3"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "stale lock" in r.stderr and str(proc.pid) in r.stderr
    assert Workspace.open(root).option("train", "epochs") == 3


def test_sigterm_stops_a_command_cleanly_and_its_record_says_so(tmp_workspace: Workspace) -> None:
    """Item 4/19: a `kill` is not a silent death: the stage record says stopped, the per-run
    log holds the reason, the exit code is 128+15."""
    root = tmp_workspace.root
    proc = _holder(root)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    rec = load_record(Workspace.open(root), "features")
    assert rec is not None and rec.status == "stopped" and rec.error == "stopped by SIGTERM"
    logs = sorted((root / "logs").glob("*-features.log"))
    assert logs and "stopped by SIGTERM" in logs[-1].read_text("utf-8")
    states = _status(root)
    assert states["features"]["state"] == "pending" and "SIGTERM" in states["features"]["reason"]


def test_state_written_by_0_1_is_still_understood(tmp_workspace: Workspace) -> None:
    """0.1 kept two records: run-<stage>.json (the runner's options) and <stage>.json."""
    from voicelab.state import StageRecord, save_record

    out = tmp_workspace.root / "x.out"
    out.write_text("x")
    stages = [
        Stage(name, (), lambda ws, o: {"k": o.get(ws, "x", "k", 1)}, lambda ws, o: {},
              lambda ws, o: [out])
        for name in ("x", "y")
    ]  # fmt: skip
    save_record(tmp_workspace, StageRecord("run-x", "done", started=1, finished=2,
                                           param_values={"k": 1}))  # fmt: skip
    save_record(tmp_workspace, StageRecord("x", "done", started=1, finished=2, figures={"n": 5}))
    save_record(tmp_workspace, StageRecord("run-y", "done", started=3, finished=4,
                                           param_values={"k": 1}))  # fmt: skip
    states = {s.name: s for s in stage_states(tmp_workspace, stages, RunOptions())}
    assert states["x"].state == "done" and states["x"].figures == {"n": 5}
    assert states["y"].state == "done"  # only the runner's 0.1 record: still done
    changed = RunOptions(overrides={"x": {"k": 2}})
    states = {s.name: s for s in stage_states(tmp_workspace, stages, changed)}
    assert states["x"].state == "stale" and "k" in states["x"].reason
