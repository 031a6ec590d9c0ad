"""Training survives its parent no more (issue 15 item 4): SIGTERM/SIGHUP stop the trainer's
whole process group, the run is recorded as stopped with its log kept, and a run dir has one
trainer, found again after its parent was killed. Real processes stand in for torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from voicelab.locks import LockBusy, group_alive
from voicelab.stages.train import run_lock
from voicelab.state import load_record
from voicelab.workspace import Workspace

# "torchrun": a worker in its process group, and progress lines until it is stopped.
TRAINER = (
    "import subprocess, sys, time\n"
    "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
    "print('worker', w.pid, flush=True)\n"
    "i = 0\n"
    "while True:\n"
    "    print('step', i, flush=True); i += 1; time.sleep(0.05)\n"
)

# The parent: voicelab's own supervision around the trainer, as run_train composes it.
PARENT = """
import os, sys
from pathlib import Path
from voicelab import state
from voicelab.stages import train
from voicelab.stages.train import supervise
from voicelab.workspace import Workspace

ws, run_dir = Workspace.open(sys.argv[1]), Path(sys.argv[2])
run_dir.mkdir(parents=True, exist_ok=True)
launch = train.Launch([sys.executable, "-c", sys.argv[3]], dict(os.environ), None)
with train.run_lock(run_dir) as lock, state.stage_run(ws, "train_llm", {}, {}) as rec:
    supervise.supervise(
        launch, run_dir, "llm", 2, 10, 1, -1, on_start=lambda g: lock.update(pgid=g)
    )
"""


def _wait_for(test: Callable[[], bool], seconds: float = 60.0) -> None:
    end = time.monotonic() + seconds
    while not test():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def _start(ws: Workspace) -> tuple[subprocess.Popen[str], Path, int]:
    run_dir = ws.exp_dir("llm")
    proc = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(ws.root), str(run_dir), TRAINER],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = run_dir / "train.log"
    # line by line: what the trainer printed is in train.log at once (it survives a SIGKILL)
    _wait_for(lambda: log.is_file() and "step 3" in log.read_text(), 20)
    lock_file = run_dir.with_name(f".{run_dir.name}.lock")
    _wait_for(lambda: "pgid" in lock_file.read_text())
    info = json.loads(lock_file.read_text())
    assert info["pid"] == proc.pid
    return proc, run_dir, int(info["pgid"])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_signal_stops_the_trainer_group_and_records_stopped(
    tmp_workspace: Workspace, sig: signal.Signals
) -> None:
    proc, run_dir, pgid = _start(tmp_workspace)
    lines = (run_dir / "train.log").read_text().splitlines()
    worker = int(next(ln for ln in lines if ln.startswith("worker")).split()[1])
    try:
        # a second trainer in the same run dir is refused, naming the owner
        with pytest.raises(LockBusy, match=f"PID {proc.pid}"):
            run_lock(run_dir).acquire()
        proc.send_signal(sig)
        proc.wait(timeout=60)
        _wait_for(lambda: not group_alive(pgid), 30)
        with pytest.raises(ProcessLookupError):
            os.kill(worker, 0)
    finally:
        if group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
    name = signal.Signals(sig).name
    log = (run_dir / "train.log").read_text()
    assert "step 3" in log and f"stopped by {name}" in log
    rows = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert rows[-1]["event"] == "end" and rows[-1]["interrupted"] and name in rows[-1]["why"]
    rec = load_record(tmp_workspace, "train_llm")
    assert rec is not None and rec.status == "stopped" and rec.error == f"stopped by {name}"
    # a clean stop releases the lock: the next trainer starts without a stale-lock report
    lock = run_lock(run_dir).acquire()
    assert lock.stale is None
    lock.release()


def test_orphaned_trainer_is_found_and_refused_then_stale_lock_reported(
    tmp_workspace: Workspace,
) -> None:
    proc, run_dir, pgid = _start(tmp_workspace)
    try:
        proc.kill()  # SIGKILL: no cleanup at all; torchrun's own session survives it
        proc.wait(timeout=30)
        assert group_alive(pgid)
        with pytest.raises(LockBusy, match=f"process group {pgid}") as e:
            run_lock(run_dir).acquire()
        assert f"kill -- -{pgid}" in e.value.one_line()
    finally:
        os.killpg(pgid, signal.SIGKILL)
    _wait_for(lambda: not group_alive(pgid), 30)
    lock = run_lock(run_dir).acquire()
    try:
        assert lock.stale is not None and lock.stale["pid"] == proc.pid
    finally:
        lock.release()


def test_engine_status_lines_reach_the_user(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What the engine says while it is busy outside the epochs (compiling), and its
    warnings, are shown, not only written to train.log."""
    import logging

    from voicelab.stages import train
    from voicelab.stages.train import supervise

    script = (
        "print('voicelab engine: status: compiling the model\\'s blocks', flush=True)\n"
        "print('voicelab engine: warning: torch.compile failed (x); eager', flush=True)\n"
        "print('something else', flush=True)\n"
    )
    launch = train.Launch([sys.executable, "-c", script], dict(os.environ), None)
    caplog.set_level(logging.INFO, logger="voicelab")
    rc = supervise.supervise(launch, tmp_path, "flow", 1, 1, 1, -1)
    assert rc == 0
    shown = [r.getMessage() for r in caplog.records]
    assert "flow: compiling the model's blocks" in shown
    # A warning (the run goes on, slower than asked) is shown as one.
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == ["flow: torch.compile failed (x); eager"]
    assert not any("something else" in m for m in shown)
    assert "something else" in (tmp_path / "train.log").read_text()
