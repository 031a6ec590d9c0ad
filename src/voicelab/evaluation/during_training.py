"""``voicelab train --eval-every K --early-stop P``: evaluate epochs while the trainer runs.

Kept apart from the trainer: a watcher thread polls the run's folder, and when every K-th epoch
checkpoint is complete (upstream writes its ``.yaml`` after the ``.pt``) it evaluates it with a
child ``voicelab eval --epochs N --run <run>`` process (its GPU memory is freed when it exits; a
failed evaluation never takes training down). The baselines are scored in the first evaluation
and resumed after that. When P evaluations in a row bring no improvement
(:class:`voicelab.evaluation.choose.EarlyStop`), ``on_stop`` is called, by default
sending this process SIGINT, so the trainer stops its process group right after a checkpoint:
the epochs on disk are kept and ``best-eval`` exports the best of them.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from voicelab.errors import ConfigError
from voicelab.evaluation.choose import EarlyStop
from voicelab.evaluation.results import TABLE, read_table
from voicelab.evaluation.sets import eval_root

if TYPE_CHECKING:
    from voicelab.workspace import Workspace

log = logging.getLogger(__name__)

Row = dict[str, Any]


def ready_epochs(ws: Workspace) -> list[int]:
    """Epochs whose ``epoch_N_whole.pt`` is complete (its yaml, written after it, exists)."""
    from voicelab.stages.synth import epoch_checkpoint, epochs_on_disk

    return [e for e in epochs_on_disk(ws) if epoch_checkpoint(ws, e).with_suffix(".yaml").is_file()]


def interrupt_self() -> None:
    """A real SIGINT to this process: it also breaks the trainer's blocking read of its log, so
    it stops its process group at once (as on Ctrl-C)."""
    os.kill(os.getpid(), signal.SIGINT)


def handle_sigint() -> Any:
    """Make SIGINT raise KeyboardInterrupt in this process where it is ignored or left to the
    OS (a shell starts background jobs, ``voicelab train ... &``, with SIGINT ignored: the
    early stop's own signal would never arrive). Main thread only; returns the handler to put
    back, None where nothing changed."""
    if threading.current_thread() is not threading.main_thread():
        return None
    current = signal.getsignal(signal.SIGINT)
    if current not in (signal.SIG_IGN, signal.SIG_DFL):
        return None  # Python's Ctrl-C handler, or one a caller installed: leave it
    return signal.signal(signal.SIGINT, signal.default_int_handler)


def due(epoch: int, every: int) -> bool:
    """Epochs count from 0: with ``every`` 2, epochs 1, 3, 5 ... (the 2nd, 4th, 6th) are due."""
    return (epoch + 1) % every == 0


class TrainingEvaluator:
    """Watch a training run and evaluate its epochs as they appear (see the module doc)."""

    def __init__(
        self,
        ws: Workspace,
        every: int,
        patience: int = 0,
        run: str | None = None,
        eval_args: tuple[str, ...] = (),
        evaluate: Callable[[int], tuple[Row | None, Row | None]] | None = None,
        on_stop: Callable[[], None] | None = None,
        poll: float = 10.0,
    ) -> None:
        if every < 1:
            raise ConfigError(f"--eval-every {every}: must be 1 or more", None)
        if patience < 0:
            raise ConfigError(f"--early-stop {patience}: must be 0 (off) or more", None)
        self.ws = ws
        self.every = every
        self.run = run or time.strftime("train-%Y%m%d-%H%M%S")
        self.eval_args = eval_args
        self.evaluate = evaluate or self._child_eval
        self.on_stop = on_stop or interrupt_self
        self.poll = poll
        self.stopper = EarlyStop(patience)
        self.done: list[int] = []
        self.stopped = False
        # Checkpoints already there (a resumed run's, or one that --new moves away) are not
        # ours; files, not epoch numbers: a new run writes its own epoch_0 again.
        self._seen = {self._identity(e) for e in ready_epochs(ws)}
        self._quit = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="voicelab-eval", daemon=True)
        self._sigint: Any = None  # the SIGINT disposition to restore (see handle_sigint)

    def _identity(self, epoch: int) -> str:
        from voicelab.fsutil import quick_fingerprint
        from voicelab.stages.synth import epoch_checkpoint

        try:
            return quick_fingerprint(epoch_checkpoint(self.ws, epoch))
        except FileNotFoundError:  # moved away meanwhile (--new)
            return f"gone:{epoch}"

    # -- evaluation of one epoch
    def _child_eval(self, epoch: int) -> tuple[Row | None, Row | None]:
        argv = [sys.executable, "-m", "voicelab", "-w", str(self.ws.root), "-q", "eval"]
        argv += ["--epochs", str(epoch), "--run", self.run, *self.eval_args]
        proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            log.warning("evaluation of epoch %d failed: %s", epoch, tail[0])
            return None, None
        rows = read_table(eval_root(self.ws) / self.run / TABLE)
        row = next((r for r in rows if r.get("candidate") == f"epoch_{epoch}"), None)
        base = next((r for r in rows if r.get("kind") == "base"), None)
        return row, base

    def _step(self) -> bool:
        """Evaluate what is due; True when training should stop."""
        with self._lock:
            for e in ready_epochs(self.ws):
                ident = self._identity(e)
                if ident in self._seen or self.stopped:
                    continue
                self._seen.add(ident)
                if not due(e, self.every):
                    continue
                row, base = self.evaluate(e)
                self.done.append(e)
                if row is None:
                    continue
                log.info(
                    "epoch %d: CER/WER %s, SIM %s, MOS %s",
                    e,
                    row.get("err"),
                    row.get("sim"),
                    row.get("mos"),
                )
                if self.stopper.update(row, base):
                    self.stopped = True
                    log.warning("early stop after epoch %d: %s", e, self.stopper.reason)
                    return True
        return False

    def _loop(self) -> None:
        while not self._quit.wait(self.poll):
            if self._step():
                with self._lock:
                    if not self._quit.is_set():  # training still runs: stop it
                        self.on_stop()
                return

    # -- lifecycle
    def start(self) -> TrainingEvaluator:
        if self.on_stop is interrupt_self:
            self._sigint = handle_sigint()
        self._thread.start()
        return self

    def close(self) -> None:
        with self._lock:  # after the evaluation under way, so no stop signal comes later
            self._quit.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()
        if self._sigint is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._sigint)
            self._sigint = None

    def finish(self) -> None:
        """After training ended: stop watching, evaluate the last due epochs."""
        self.close()
        if not self.stopped:
            self._step()

    @property
    def best(self) -> str | None:
        b = self.stopper.best
        return None if b is None else str(b.get("candidate"))
