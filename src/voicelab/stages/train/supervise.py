"""Supervising the trainer: its process group, its log read line by line, stopping it, and the
one-line reason when it fails."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from voicelab.memory import MemoryPlan
from voicelab.signals import stop_on_signals, stopped_by
from voicelab.stages.train.launch import Launch
from voicelab.stages.train.logs import LogParser, Progress, read_train_log
from voicelab.stages.train.options import TrainResult
from voicelab.stages.train.rundirs import CHECKPOINT_LOG

log = logging.getLogger(__name__)


#: Lines of VoiceLab's engine when it stops on its own (an out-of-memory step at one utterance).
ENGINE_STOP = "voicelab engine: stopped:"

ENGINE_HINT = "voicelab engine: hint:"
#: a line the engine prints for the user while it is busy outside the epochs (the compile)
ENGINE_STATUS = "voicelab engine: status:"
#: a line the user must see: the run goes on, slower or otherwise than asked (a failed compile
#: left the blocks eager, an out-of-memory pass split the step's batches)
ENGINE_WARNING = "voicelab engine: warning:"


def failure(log_path: Path, rc: int) -> str:
    lines = log_path.read_text("utf-8", errors="replace").splitlines() if log_path.exists() else []
    err = next(
        (
            ln.strip()
            for ln in reversed(lines)
            if re.match(r"^\s*\w*(Error|Exception|SystemExit)\b", ln.strip())
        ),
        "",
    )
    stop = next((ln for ln in reversed(lines) if ln.startswith(ENGINE_STOP)), "")
    err = stop.removeprefix(ENGINE_STOP).strip() or err  # the engine stopped on its own
    err = err or next((ln.strip() for ln in reversed(lines) if "voicelab launcher:" in ln), "")
    return f"training exited with code {rc}" + (f": {err[:300]}" if err else "")


def failure_hint(log_path: Path, mem_plan: MemoryPlan | None = None) -> str:
    text = log_path.read_text("utf-8", errors="replace")[-20000:] if log_path.exists() else ""
    hint = next((ln for ln in reversed(text.splitlines()) if ln.startswith(ENGINE_HINT)), "")
    if hint:  # the engine's own (its out-of-memory stop names the next mode)
        return hint.removeprefix(ENGINE_HINT).strip()
    if "out of memory" in text.lower():
        if mem_plan is not None and mem_plan.cap_bytes is not None:
            from voicelab.memory import oom_hint

            params = mem_plan.params or 0
            return oom_hint(mem_plan.model, params, mem_plan.features, mem_plan.batch_frames)
        return "the GPU ran out of memory: lower --batch-frames"
    return f"see {log_path}; fix, then continue with --resume"


def supervise(
    launch: Launch,
    run_dir: Path,
    model: str,
    max_epoch: int,
    batches: int,
    accum: int,
    done_epoch: int,
    on_start: Callable[[int], None] | None = None,
) -> int:
    """Run torchrun, tee its output to train.log, parse it into train_log.jsonl, show progress.
    Ctrl-C, SIGTERM and SIGHUP stop the whole process group (torchrun and its workers), keep the
    rest of its output in train.log and re-raise. ``on_start`` is told the process group."""
    from voicelab.console import console, progress_enabled

    parser = LogParser(accum)
    progress = Progress(model, max_epoch, batches, accum)
    jsonl = run_dir / CHECKPOINT_LOG
    cpus = launch.cpus

    def preexec() -> None:  # runs in the child before exec: CPU affinity (the notes' taskset)
        if cpus:
            os.sched_setaffinity(0, cpus)

    with (
        open(run_dir / "train.log", "a", encoding="utf-8", buffering=1) as raw,  # line by line
        open(jsonl, "a", encoding="utf-8") as out,
    ):

        def emit(row: dict[str, Any]) -> None:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            out.flush()

        emit(
            {
                "tag": "EVENT",
                "event": "launch",
                "time": time.time(),
                "argv": launch.argv,
                "resume_after_epoch": done_epoch,
            }
        )
        proc = subprocess.Popen(
            launch.argv,
            env=launch.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            start_new_session=True,  # its own process group: Ctrl-C is ours to forward
            preexec_fn=preexec if cpus else None,
        )
        if on_start is not None:
            on_start(proc.pid)  # start_new_session: its PID is its process group
        live = progress_enabled()
        status_cm = console.status(progress.text) if live else contextlib.nullcontext()
        _RUNNING[str(run_dir)] = proc
        try:
            with stop_on_signals(), status_cm as status:
                assert proc.stdout is not None
                for line in proc.stdout:
                    raw.write(line)
                    if line.startswith(ENGINE_STATUS):
                        note = f"{model}: {line.removeprefix(ENGINE_STATUS).strip()}"
                        log.info("%s", note)
                        if live and status is not None:
                            status.update(note)
                    elif line.startswith(ENGINE_WARNING):
                        log.warning("%s: %s", model, line.removeprefix(ENGINE_WARNING).strip())
                    for row in parser.feed(line):
                        emit(row)
                        text = progress.update(row)
                        if live and status is not None:
                            status.update(text)
                        if row["tag"] == "CV":
                            log.info("%s", text)
                        elif row["tag"] == "EVENT" and row["event"] == "checkpoint":
                            log.info("%s: saved %s", model, row["checkpoint"])
                        else:
                            log.debug("%s", text)
                rc = proc.wait()
        except KeyboardInterrupt as e:
            why = str(stopped_by(e) or "interrupted (Ctrl-C)")
            log.warning("%s: %s, stopping the trainer (process group %d)", model, why, proc.pid)
            _stop(proc)
            _drain(proc, raw)
            raw.write(f"voicelab: {why}; the trainer was stopped\n")
            emit(
                {
                    "tag": "EVENT",
                    "event": "end",
                    "time": time.time(),
                    "rc": None,
                    "interrupted": True,
                    "why": why,
                }
            )
            raise
        finally:
            _RUNNING.pop(str(run_dir), None)
        emit({"tag": "EVENT", "event": "end", "time": time.time(), "rc": rc})
    return rc


#: Training processes running in this process, by run dir (the web UI's stop button).
_RUNNING: dict[str, subprocess.Popen[str]] = {}


def stop_training(run_dir: Path) -> bool:
    """Stop the training of ``run_dir`` started by this process, as Ctrl-C would (the run keeps
    its epoch checkpoints; ``--resume`` continues it). False when none is running here."""
    proc = _RUNNING.get(str(run_dir))
    if proc is None:
        return False
    _stop(proc)
    return True


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGINT to torchrun's group (it stops its workers), then SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGINT, 15), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)


def _drain(proc: subprocess.Popen[str], raw: Any, seconds: float = 5.0) -> None:
    """The stopped trainer's last output into train.log (bounded: a stray writer outside the
    process group must not hang the stop)."""
    import selectors

    if proc.stdout is None:
        return
    end = time.monotonic() + seconds
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while (left := end - time.monotonic()) > 0 and sel.select(timeout=left):
            line = proc.stdout.readline()
            if not line:
                return
            raw.write(line)


def iter_rows(path: Path) -> Iterator[dict[str, Any]]:
    yield from read_train_log(path)


def result_dict(r: TrainResult) -> dict[str, Any]:
    d = asdict(r)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}
