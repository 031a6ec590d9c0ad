"""Evaluation during training: the watcher evaluates due epochs as a (real) trainer process
writes them, and stops it where early stopping says."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from voicelab.evaluation.during_training import TrainingEvaluator, due, ready_epochs
from voicelab.workspace import Workspace

# A stand-in trainer: writes epoch_N_whole.pt then .yaml (as upstream's save_model does).
TRAINER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    run, n, gap = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    run.mkdir(parents=True, exist_ok=True)
    for e in range(n):
        time.sleep(gap)
        (run / f"epoch_{e}_whole.pt").write_bytes(b"weights")
        (run / f"epoch_{e}_whole.yaml").write_text(f"epoch: {e}\\n")
    """
)
BASE = {"candidate": "base", "kind": "base", "err": 0.10, "sim": 0.5, "mos": 3.0}
SIMS = [0.60, 0.70, 0.69, 0.68, 0.90, 0.91, 0.92, 0.93]  # best at epoch 1; 2 and 3 are worse


def rows_for(epoch: int) -> tuple[dict, dict]:
    row = {"candidate": f"epoch_{epoch}", "kind": "epoch", "epoch": epoch, "err": 0.1,
           "sim": SIMS[epoch], "mos": 3.0}  # fmt: skip
    return row, BASE


def test_due() -> None:
    assert [e for e in range(6) if due(e, 2)] == [1, 3, 5]
    assert all(due(e, 1) for e in range(3))


def test_watcher_stops_the_trainer_after_patience(tmp_workspace: Workspace) -> None:
    ws = tmp_workspace
    run = ws.exp_dir("llm")
    stopped = threading.Event()
    trainer: subprocess.Popen | None = None

    def stop() -> None:
        assert trainer is not None
        trainer.terminate()
        stopped.set()

    seen: list[int] = []

    def evaluate(e: int) -> tuple[dict, dict]:
        seen.append(e)
        return rows_for(e)

    w = TrainingEvaluator(ws, every=1, patience=2, evaluate=evaluate, on_stop=stop, poll=0.05)
    trainer = subprocess.Popen([sys.executable, "-c", TRAINER, str(run), "8", "0.4"])
    w.start()
    try:
        assert stopped.wait(30), "the watcher never stopped the trainer"
        trainer.wait(10)
    finally:
        w.close()
        if trainer.poll() is None:
            trainer.kill()
    assert w.stopped and w.done == [0, 1, 2, 3] and seen == [0, 1, 2, 3]
    assert w.best == "epoch_1"
    assert "epoch_1" in w.stopper.reason
    # Stopped at a checkpoint boundary, long before the trainer's 8 epochs.
    assert max(ready_epochs(ws)) < 7


def test_every_k_and_finish_evaluates_the_last_epochs(tmp_workspace: Workspace) -> None:
    ws = tmp_workspace
    run = ws.exp_dir("llm")
    run.mkdir(parents=True)
    (run / "epoch_0_whole.pt").write_bytes(b"w")  # an earlier run's epoch: not evaluated
    (run / "epoch_0_whole.yaml").write_text("epoch: 0\n")
    w = TrainingEvaluator(ws, every=2, patience=0, evaluate=rows_for, on_stop=lambda: None)
    for e in range(1, 6):
        (run / f"epoch_{e}_whole.pt").write_bytes(b"w")
        if e != 5:  # epoch 5's yaml is not written yet: the checkpoint may be incomplete
            (run / f"epoch_{e}_whole.yaml").write_text(f"epoch: {e}\n")
    w.finish()
    assert w.done == [1, 3] and not w.stopped and w.best == "epoch_1"  # SIMS: 0.70 > 0.68


def test_default_stop_interrupts_the_main_thread(tmp_path: Path) -> None:
    """The default on_stop is a real SIGINT: the main thread's blocking work ends with
    KeyboardInterrupt, as the trainer's Ctrl-C handling expects."""
    proc = _stop_child(tmp_path)
    assert proc.stdout.strip() == "stopped True", proc.stderr[-2000:]


def _stop_child(tmp_path: Path, before: str = "", after: str = "") -> Any:
    """A process whose watcher stops it after one bad epoch (the default on_stop) while its
    main thread sleeps; it prints ``stopped True`` when the KeyboardInterrupt came."""
    child = textwrap.dedent(
        f"""
        import signal, time
        {before}
        from voicelab.workspace import Workspace
        from voicelab.evaluation.during_training import TrainingEvaluator
        ws = Workspace.init({str(tmp_path / "ws")!r}, "spk1")
        bad = {{"candidate": "e", "kind": "epoch", "err": 0.9, "sim": 0.5, "mos": 3.0}}
        base = {{"candidate": "base", "kind": "base", "err": 0.1, "sim": 0.5, "mos": 3.0}}
        w = TrainingEvaluator(ws, 1, 1, evaluate=lambda e: (bad, base), poll=0.05).start()
        run = ws.exp_dir("llm"); run.mkdir(parents=True)
        (run / "epoch_0_whole.pt").write_bytes(b"w")
        (run / "epoch_0_whole.yaml").write_text("epoch: 0\\n")
        try:
            time.sleep(60)
            print("not stopped")
        except KeyboardInterrupt:
            print("stopped", w.stopped)
        {after}
        """
    )
    return subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)


def test_bad_options(tmp_workspace: Workspace) -> None:
    from voicelab.errors import ConfigError

    with pytest.raises(ConfigError):
        TrainingEvaluator(tmp_workspace, every=0)
    with pytest.raises(ConfigError):
        TrainingEvaluator(tmp_workspace, every=1, patience=-1)


def test_a_new_run_with_the_same_epoch_numbers_is_evaluated(tmp_workspace: Workspace) -> None:
    """`voicelab train --new` moves the old run away and writes epoch_0 again: that new file is
    evaluated, though an epoch 0 existed when the watcher started."""
    import os
    import time

    ws = tmp_workspace
    run = ws.exp_dir("llm")
    run.mkdir(parents=True)
    (run / "epoch_0_whole.pt").write_bytes(b"old")
    (run / "epoch_0_whole.yaml").write_text("epoch: 0\n")
    w = TrainingEvaluator(ws, every=1, evaluate=rows_for, on_stop=lambda: None)
    os.replace(run, run.with_name(run.name + ".1"))
    time.sleep(0.01)  # a different mtime even on coarse clocks
    run.mkdir()
    (run / "epoch_0_whole.pt").write_bytes(b"new weights")
    (run / "epoch_0_whole.yaml").write_text("epoch: 0\n")
    w.finish()
    assert w.done == [0]


def test_the_stop_arrives_where_sigint_was_ignored(tmp_path: Path) -> None:
    """A shell starts a background job (``voicelab train ... --early-stop P &``) with SIGINT
    ignored: the watcher's own SIGINT still ends the main thread's work with KeyboardInterrupt
    (a vendor run launched that way trained on after the early stop said stop), and closing
    the watcher gives SIGINT back its ignored state."""
    proc = _stop_child(
        tmp_path,
        before="signal.signal(signal.SIGINT, signal.SIG_IGN)",
        after='w.close(); print("ignored again", signal.getsignal(2) is signal.SIG_IGN)',
    )
    assert proc.stdout.split() == ["stopped", "True", "ignored", "again", "True"], proc.stderr
