"""Checkpoints that upstream and the rest of VoiceLab read unchanged, written off the loop.

* ``<run>/epoch_N_whole.pt``: ``{**model.state_dict(), 'epoch': N, 'step': S}`` and
  ``epoch_N_whole.yaml`` (the info dict with ``loss_dict``), exactly upstream's ``save_model``;
  ``init.pt``/``init.yaml`` likewise (epoch -1), written once per run dir;
* ``<run>/resume/epoch_N.pt``: what an exact resume needs beyond the weights (optimizer,
  scheduler, step, epoch, RNG states); a sub-folder, so readers that glob ``<run>/*.pt`` skip it.

The state is copied to CPU on the training thread (a consistent snapshot), then written by one
background writer (a forked process where the OS has fork, else a thread); the next save (or the
end of training) waits for the previous one. ``keep``
limits how many epoch checkpoints stay: older ones are deleted with their yaml and resume file.
"""

from __future__ import annotations

import datetime
import os
import re
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESUME_DIR = "resume"
_WHOLE = re.compile(r"^epoch_(\d+)_whole\.pt$")


def whole_name(epoch: int) -> str:
    return f"epoch_{epoch}_whole"


def resume_path(run_dir: Path, epoch: int) -> Path:
    return run_dir / RESUME_DIR / f"epoch_{epoch}.pt"


def epochs_on_disk(run_dir: Path) -> list[int]:
    return sorted(
        int(m.group(1)) for p in run_dir.glob("epoch_*_whole.pt") if (m := _WHOLE.match(p.name))
    )


def to_prune(epochs: list[int], keep: int | None) -> list[int]:
    """The epochs whose checkpoints go when only the newest ``keep`` stay (None/0: keep all)."""
    if not keep or keep < 1:
        return []
    return sorted(epochs)[:-keep] if len(epochs) > keep else []


def prune(run_dir: Path, keep: int | None) -> list[int]:
    gone = to_prune(epochs_on_disk(run_dir), keep)
    for e in gone:
        for p in (
            run_dir / f"{whole_name(e)}.pt",
            run_dir / f"{whole_name(e)}.yaml",
            resume_path(run_dir, e),
        ):
            p.unlink(missing_ok=True)
    return gone


def atomic_torch_save(obj: Any, dest: Path) -> None:
    import torch

    from voicelab.fsutil import atomic_path

    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        torch.save(obj, tmp)


def write_info_yaml(dest: Path, info: dict[str, Any]) -> None:
    import yaml

    from voicelab.fsutil import atomic_write_text

    info = dict(info)
    info["save_time"] = datetime.datetime.now().strftime("%d/%m/%Y %H:%M:%S")
    atomic_write_text(dest, yaml.dump(info))


def cpu_state(module: Any) -> dict[str, Any]:
    """A CPU copy of ``module``'s state dict (the snapshot the writer thread owns)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def cpu_tree(obj: Any) -> Any:
    """Tensors anywhere in ``obj`` copied to CPU (optimizer states)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_tree(v) for v in obj)
    return obj


def write_checkpoint(
    pt: Path,
    weights: dict[str, Any],
    info: dict[str, Any],
    resume: tuple[Path, dict[str, Any]] | None,
    keep: int | None,
) -> None:
    atomic_torch_save(weights, pt)
    write_info_yaml(pt.with_suffix(".yaml"), info)
    if resume is not None:
        atomic_torch_save(resume[1], resume[0])
    prune(pt.parent, keep)


def fork_available() -> bool:
    return hasattr(os, "fork") and os.environ.get("VOICELAB_SAVE_THREAD", "") != "1"


class AsyncSaver:
    """One background writer; ``save`` returns once the CPU snapshot is handed over.

    Where the OS forks (Linux, WSL2), the writer is a forked child process: ``torch.save``
    holds the GIL while it writes each tensor, which in a thread stalls the (host-bound)
    training loop for seconds per checkpoint. The child only writes files (no CUDA) and leaves
    with ``os._exit``. Elsewhere, or with ``VOICELAB_SAVE_THREAD=1``, a thread writes."""

    def __init__(
        self,
        run_dir: Path,
        keep: int | None,
        on_saved: Callable[[Path], None],
        use_fork: bool | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.keep = keep
        self.on_saved = on_saved
        self.use_fork = fork_available() if use_fork is None else use_fork
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._pending: Path | None = None
        self._error: BaseException | None = None

    def _finish(self, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        pt, self._pid, self._pending = self._pending, None, None
        if code != 0:
            raise OSError(f"writing checkpoint {pt} failed (writer exit code {code})")
        if pt is not None:
            self.on_saved(pt)

    def poll(self) -> None:
        """Report a finished fork writer (``on_saved``) without waiting."""
        if self._pid is not None:
            pid, status = os.waitpid(self._pid, os.WNOHANG)
            if pid:
                self._finish(status)

    def wait(self) -> None:
        if self._pid is not None:
            _, status = os.waitpid(self._pid, 0)
            self._finish(status)
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def save(
        self,
        name: str,
        weights: dict[str, Any],
        info: dict[str, Any],
        resume: tuple[Path, dict[str, Any]] | None = None,
    ) -> None:
        self.wait()
        pt = self.run_dir / f"{name}.pt"
        if self.use_fork:
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # the writer: files only, then leave without Python's exit handlers
                code = 0
                try:
                    write_checkpoint(pt, weights, info, resume, self.keep)
                except BaseException:
                    traceback.print_exc()
                    code = 1
                finally:
                    os._exit(code)
            self._pid, self._pending = pid, pt
            return

        def work() -> None:
            try:
                write_checkpoint(pt, weights, info, resume, self.keep)
                self.on_saved(pt)
            except BaseException as e:  # re-raised on the training thread by wait()
                self._error = e

        self._thread = threading.Thread(target=work, name=f"save-{name}", daemon=False)
        self._thread.start()
