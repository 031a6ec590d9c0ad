"""Checkpoints that upstream and the rest of VoiceLab read unchanged, written off the loop.

* ``<run>/epoch_N_whole.pt``: ``{**model.state_dict(), 'epoch': N, 'step': S}`` and
  ``epoch_N_whole.yaml`` (the info dict with ``loss_dict``), exactly upstream's ``save_model``;
  ``init.pt``/``init.yaml`` likewise (epoch -1), written once per run dir;
* ``<run>/resume/epoch_N.pt``: what an exact resume needs beyond the weights (optimizer,
  scheduler, step, epoch, RNG states); a sub-folder, so readers that glob ``<run>/*.pt`` skip it.

The state is snapshotted on the training thread, then written by a background writer (a thread,
or forked processes with ``VOICELAB_SAVE_FORK=1``), so training does not wait for the disk.
Where the GPU has room for a second copy of the state, the snapshot is a copy on the GPU
(milliseconds) that a thread then copies to the CPU on a stream of its own while training goes
on (:meth:`AsyncSaver.save_from_gpu`); else the training thread copies the state to the CPU
itself (seconds for the llm's 6 GB). ``keep`` limits how many epoch checkpoints stay: older
ones are deleted with their yaml; only the newest epoch keeps its resume state (the optimizer's
moments are twice the weights: one per run, not one per epoch, is what an exact resume of the
run needs). So where epochs end faster than the writer writes (a fast GPU, little data), an
epoch's resume state that the next epoch's snapshot supersedes before the writer has finished it
is dropped, its write stopped part-way (at most :data:`RESUME_MAX_AGE_S` without one); the last
epoch's always is written.
"""

from __future__ import annotations

import datetime
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESUME_DIR = "resume"
_WHOLE = re.compile(r"^epoch_(\d+)_whole\.pt$")
_RESUME = re.compile(r"^epoch_(\d+)\.pt$")


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
    prune_resume(run_dir)
    return gone


def prune_resume(run_dir: Path) -> None:
    """Only the newest epoch's resume state stays (written atomically before the older go)."""
    found = sorted(
        (int(m.group(1)), p)
        for p in (run_dir / RESUME_DIR).glob("epoch_*.pt")
        if (m := _RESUME.match(p.name))
    )
    for _, p in found[:-1]:
        p.unlink(missing_ok=True)


class Superseded(Exception):
    """A resume state's write stopped part-way: a newer snapshot supersedes it."""


class _Stoppable:
    """The file torch.save writes through, raising :class:`Superseded` once ``stop()`` is true
    (torch writes a checkpoint as many records: the optimizer's moments one per parameter)."""

    def __init__(self, f: Any, stop: Callable[[], bool]) -> None:
        self.f, self.stop = f, stop
        self.stopped = False

    def write(self, data: Any) -> int:
        if self.stopped or self.stop():
            self.stopped = True
            raise Superseded
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def atomic_torch_save(obj: Any, dest: Path, stop: Callable[[], bool] | None = None) -> None:
    """``torch.save`` to ``dest`` atomically; with ``stop``, abandoned (nothing at ``dest``,
    :class:`Superseded` raised) as soon as ``stop()`` says so."""
    import torch

    from voicelab.fsutil import atomic_path

    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        if stop is None:
            torch.save(obj, tmp)
        else:
            with open(tmp, "wb") as f:
                out = _Stoppable(f, stop)
                try:
                    torch.save(obj, out)
                except Exception:
                    if out.stopped:  # torch's writer may fail closing the stopped archive
                        raise Superseded from None
                    raise


def write_info_yaml(dest: Path, info: dict[str, Any]) -> None:
    import yaml

    from voicelab.fsutil import atomic_write_text

    info = dict(info)
    info["save_time"] = datetime.datetime.now().strftime("%d/%m/%Y %H:%M:%S")
    atomic_write_text(dest, yaml.dump(info))


def cpu_state(module: Any) -> dict[str, Any]:
    """A CPU copy of ``module``'s state dict (the snapshot the writer thread owns)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def map_tensors(obj: Any, fn: Callable[[Any], Any]) -> Any:
    """``obj`` (nested dicts, lists, tuples) with ``fn`` applied to every tensor in it."""
    import torch

    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(v, fn) for v in obj)
    return obj


def tensors(obj: Any) -> list[Any]:
    """Every tensor anywhere in ``obj``."""
    found: list[Any] = []
    map_tensors(obj, found.append)
    return found


def cpu_tree(obj: Any) -> Any:
    """Tensors anywhere in ``obj`` copied to CPU (optimizer states)."""
    return map_tensors(obj, lambda t: t.detach().to("cpu", copy=True))


def write_checkpoint(
    pt: Path,
    weights: dict[str, Any],
    info: dict[str, Any],
    resume: tuple[Path, dict[str, Any]] | None,
    keep: int | None,
    superseded: Callable[[], bool] | None = None,
) -> bool:
    """Upstream's files, then the resume state unless (or until) ``superseded()`` says a newer
    snapshot makes it pointless; whether the resume state was written."""
    atomic_torch_save(weights, pt)
    write_info_yaml(pt.with_suffix(".yaml"), info)
    wrote = False
    if resume is not None and not (superseded and superseded()):
        try:
            atomic_torch_save(resume[1], resume[0], stop=superseded)
            wrote = True
        except Superseded:
            pass
    prune(pt.parent, keep)
    return wrote


def fork_available() -> bool:
    return hasattr(os, "fork")


def forks_by_default() -> bool:
    """Forked writers only with ``VOICELAB_SAVE_FORK=1`` (see :class:`AsyncSaver`)."""
    return fork_available() and os.environ.get("VOICELAB_SAVE_FORK", "") == "1"


def available_ram() -> int | None:
    """Bytes the OS can still give (Linux ``MemAvailable``), None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


STAGING_BYTES = 64 << 20

#: A resume state superseded by a newer snapshot before the writer finished it is dropped unless
#: the newest one written is older than this: a hard crash (power, ``kill -9``) of a run whose
#: writer is behind loses at most this much of an exact resume; Ctrl-C and the run's end wait for
#: the newest. Measured on one H100 (flow, 40 min of audio, CUDA graphs): 3.3 s epochs waited
#: 2.7-3.9 s each for the writer's 3.9 GB (weights and Adam state) of the epoch before.
RESUME_MAX_AGE_S = 600.0


def staged_cpu_tree(obj: Any, stream: Any, staging: Any) -> Any:
    """:func:`cpu_tree` for the copy thread: each GPU tensor goes through the pinned buffer
    ``staging`` in chunks (an asynchronous DMA on ``stream``, then a CPU copy into pageable
    memory). A direct copy into pageable memory would hold the CUDA driver for its whole length
    and stall the training thread's kernel launches (measured: +5 s per llm epoch on an H200);
    a pinned destination for the whole state would pin gigabytes of RAM every epoch, and a
    forked writer (``VOICELAB_SAVE_FORK=1``) could not read it."""
    return map_tensors(obj, lambda t: _staged_copy(t, stream, staging))


def _staged_copy(t: Any, stream: Any, staging: Any) -> Any:
    import torch

    if not t.is_cuda:
        return t.detach().to("cpu", copy=True)
    src = t.detach().contiguous().reshape(-1).view(torch.uint8)
    dst = torch.empty(t.shape, dtype=t.dtype)
    flat = dst.reshape(-1).view(torch.uint8)
    step = staging.numel()
    for a in range(0, src.numel(), step):
        n = min(step, src.numel() - a)
        staging[:n].copy_(src[a : a + n], non_blocking=True)
        stream.synchronize()
        flat[a : a + n].copy_(staging[:n])
    return dst


def device_clone(obj: Any) -> Any:
    """``obj`` with every tensor cloned where it is (a consistent snapshot: training goes on
    changing the originals, a CPU step counter included, while the copy thread works)."""
    return map_tensors(obj, lambda t: t.detach().clone())


def gpu_room(device: Any, cap: int | None) -> int:
    """Bytes this process can still get on ``device``: the card's free memory plus what its
    allocator holds unused, within ``cap`` bytes for the allocator (``--max-vram``)."""
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    room = free + torch.cuda.memory_reserved(device) - allocated
    if cap is not None:
        room = min(room, cap - allocated)
    return max(0, room)


def snapshot_fits(room: int, nbytes: int, peak_extra: int) -> bool:
    """Whether a GPU-side snapshot of ``nbytes`` fits in ``room`` bytes together with what a
    training step allocates beyond the state (``peak_extra``: activations, gradients), with a
    tenth to spare for the allocator's rounding."""
    return room >= 1.1 * (nbytes + max(0, peak_extra))


def tree_bytes(obj: Any) -> int:
    """Bytes of the tensors anywhere in ``obj`` (what a CPU snapshot of it takes)."""
    return sum(t.numel() * t.element_size() for t in tensors(obj))


class AsyncSaver:
    """Background writers; ``save`` returns once the CPU snapshot is handed over.

    One writer thread by default. With ``VOICELAB_SAVE_FORK=1`` (where the OS forks), a writer
    is a forked child process that only writes files (no CUDA) and leaves with ``os._exit``; up
    to ``max_writers`` children write at once as long as the snapshots fit in RAM
    (:meth:`make_room`, called before a snapshot is taken, waits for the oldest writer when
    they would not). Forked writers were the default while the engine was eager and the
    training thread copied the state itself: a writer thread's ``torch.save`` then showed a
    2 s gap mid-epoch (H200). With compiled blocks and the GPU-side snapshot the fork costs
    more than it saves: llm, 40 min of audio, H200, each against upstream in the same run on
    its card: 5.54x upstream with a writer thread, 4.03x with forked writers (4.6x and 5.01x
    in two earlier runs), the epochs steady at 2.1-2.3 s instead of slowing from 1.9 to 2.7 s.
    A fork of the training process makes it pay a copy-on-write fault for every page it
    touches while the child writes."""

    def __init__(
        self,
        run_dir: Path,
        keep: int | None,
        on_saved: Callable[[Path], None],
        use_fork: bool | None = None,
        max_writers: int = 2,
    ) -> None:
        self.run_dir = run_dir
        self.keep = keep
        self.on_saved = on_saved
        self.use_fork = forks_by_default() if use_fork is None else use_fork
        self.max_writers = max(1, max_writers) if self.use_fork else 1
        self._thread: threading.Thread | None = None
        self._copy: threading.Thread | None = None  # save_from_gpu's GPU-to-CPU copy
        self._stream: Any = None
        self._staging: Any = None  # a pinned buffer for save_from_gpu's copies
        self._lock = threading.RLock()  # the writer list: the copy thread forks writers too
        self._writers: list[tuple[int, Path]] = []  # (pid, checkpoint), oldest first
        self._error: BaseException | None = None
        self._stale: threading.Event | None = None  # set: a newer snapshot supersedes the last
        self._resume_at = time.monotonic()  # when a resume state was last written (or the start)
        self.resume_max_age = RESUME_MAX_AGE_S
        self.skipped_resume = 0  # superseded resume states not written

    def supersede(self) -> None:
        """A newer snapshot is coming: the last one's resume state is not written, or its write
        stops where it is (thread writers; a forked writer writes what it was given)."""
        if self._stale is not None:
            self._stale.set()

    def _fresh(self) -> threading.Event:
        self.supersede()
        self._stale = threading.Event()
        return self._stale

    def _superseded(self, stale: threading.Event) -> Callable[[], bool]:
        def superseded() -> bool:
            return stale.is_set() and time.monotonic() - self._resume_at < self.resume_max_age

        return superseded

    def _finish(self, pid: int, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        pt = next(p for q, p in self._writers if q == pid)
        self._writers = [(q, p) for q, p in self._writers if q != pid]
        if code != 0:
            raise OSError(f"writing checkpoint {pt} failed (writer exit code {code})")
        self.on_saved(pt)

    def poll(self) -> None:
        """Report finished fork writers (``on_saved``, oldest first) without waiting."""
        with self._lock:
            for pid, _ in list(self._writers):
                done, status = os.waitpid(pid, os.WNOHANG)
                if not done:
                    break  # keep the order of the messages: the oldest first
                self._finish(pid, status)

    def _wait_oldest(self) -> None:
        with self._lock:
            pid = self._writers[0][0]
            _, status = os.waitpid(pid, 0)
            self._finish(pid, status)

    def _join_copy(self) -> None:
        copy = self._copy
        if copy is not None and copy is not threading.current_thread():
            copy.join()
            self._copy = None

    def make_room(self, nbytes: int) -> None:
        """Before a snapshot of ``nbytes``: the last snapshot's resume state is superseded; wait
        for the oldest writers while ``max_writers`` are busy, or while the snapshot would leave
        less than a quarter of it free in RAM."""
        self.supersede()
        self._join_copy()
        self.poll()
        while self._writers:
            ram = available_ram()
            full = len(self._writers) >= self.max_writers
            if not full and (ram is None or ram > 1.25 * nbytes):
                return
            self._wait_oldest()

    def wait(self) -> None:
        self._join_copy()
        while self._writers:
            self._wait_oldest()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        if self.keep:  # writers that finished out of order may each have pruned too early
            prune(self.run_dir, self.keep)

    def save(
        self,
        name: str,
        weights: dict[str, Any],
        info: dict[str, Any],
        resume: tuple[Path, dict[str, Any]] | None = None,
    ) -> None:
        self._save(name, weights, info, resume, self._fresh())

    def _save(
        self,
        name: str,
        weights: dict[str, Any],
        info: dict[str, Any],
        resume: tuple[Path, dict[str, Any]] | None,
        stale: threading.Event,
    ) -> None:
        if self.use_fork:
            self.make_room(0)
        else:
            self.wait()
        pt = self.run_dir / f"{name}.pt"
        if self.use_fork:
            sys.stdout.flush()
            sys.stderr.flush()
            with self._lock:
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
                self._writers.append((pid, pt))
            return

        def work() -> None:
            try:
                stop = self._superseded(stale)
                if write_checkpoint(pt, weights, info, resume, self.keep, stop):
                    self._resume_at = time.monotonic()
                elif resume is not None:
                    self.skipped_resume += 1
                self.on_saved(pt)
            except BaseException as e:  # re-raised on the training thread by wait()
                self._error = e

        self._thread = threading.Thread(target=work, name=f"save-{name}", daemon=False)
        self._thread.start()

    def save_from_gpu(
        self,
        name: str,
        weights: dict[str, Any],
        info: dict[str, Any],
        resume: tuple[Path, dict[str, Any]] | None = None,
    ) -> None:
        """:meth:`save` of a snapshot whose tensors are still on the GPU (a copy made there, so
        training may change the originals): a thread copies it to the CPU on a CUDA stream of
        its own, after the work queued so far, then hands it to :meth:`save`. One copy at a
        time; :meth:`wait` and :meth:`make_room` wait for it."""
        import torch

        stale = self._fresh()
        self._join_copy()
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        stream, ready = self._stream, torch.cuda.Event()
        ready.record()

        if self._staging is None:
            self._staging = torch.empty(STAGING_BYTES, dtype=torch.uint8, pin_memory=True)
        staging = self._staging

        def work() -> None:
            try:
                with torch.cuda.stream(stream):
                    stream.wait_event(ready)
                    w = staged_cpu_tree(weights, stream, staging)
                    r = (
                        None
                        if resume is None
                        else (resume[0], staged_cpu_tree(resume[1], stream, staging))
                    )
                self._save(name, w, info, r, stale)  # the writer may still skip ``r``
            except BaseException as e:  # re-raised on the training thread by wait()
                self._error = e

        self._copy = threading.Thread(target=work, name=f"copy-{name}", daemon=False)
        self._copy.start()
