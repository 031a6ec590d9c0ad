"""Stage records: what each stage consumed, produced and reported, for skip/redo and status.

One record per stage: ``<workspace>/.voicelab/state/<stage>.json``. The runner
(:func:`voicelab.runner.pipeline.run_stage`) owns it: status, times, error and the options the stage
ran with (``options``), whether the stage was started by ``voicelab run`` or by its own command
(``prepare``, ``features``, ``pack``). Inside, the stage adds what only it knows with
:func:`stage_run`: the hash of its inputs (file fingerprints) and of its parameters, its figures
and outputs; :func:`staleness` lets it skip work whose inputs and parameters are unchanged.
A stage function called outside the runner (a library call, a test) records the same file alone.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from voicelab.errors import VoiceLabError
from voicelab.fsutil import atomic_write_json, hash_obj, read_json
from voicelab.signals import Stopped
from voicelab.workspace import Workspace


@dataclass
class StageRecord:
    stage: str
    status: str = "pending"  # done | failed | running | pending
    inputs: str = ""
    params: str = ""
    started: float = 0.0
    finished: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    error: str | None = None
    param_values: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] | None = None  # the runner's view; None: not run by the runner
    previous: str = ""  # the status before this run started (running: was it interrupted?)

    worked: bool = False  # the stage did its work (entered stage_run) in this run

    @property
    def seconds(self) -> float:
        return max(0.0, self.finished - self.started) if self.finished else 0.0


# Records the runner holds open, by stage: a stage_run inside writes into them.
_active: ContextVar[dict[str, StageRecord] | None] = ContextVar("voicelab_records", default=None)


def active_record(stage: str) -> StageRecord | None:
    return (_active.get() or {}).get(stage)


@contextmanager
def activate(rec: StageRecord) -> Iterator[None]:
    token = _active.set({**(_active.get() or {}), rec.stage: rec})
    try:
        yield
    finally:
        _active.reset(token)


def end_with_error(ws: Workspace, rec: StageRecord, e: BaseException) -> None:
    """Record how a run ended when ``e`` is on its way up."""
    rec.finished = time.time()
    if isinstance(e, Stopped):
        rec.status, rec.error = "stopped", str(e)
    elif isinstance(e, KeyboardInterrupt):
        rec.status, rec.error = "pending", "interrupted"
    elif isinstance(e, VoiceLabError):
        rec.status, rec.error = "failed", e.one_line()
    else:
        rec.status, rec.error = "failed", f"{type(e).__name__}: {e}"
        rec.figures.setdefault("traceback", traceback.format_exc(limit=5))
    save_record(ws, rec)


def record_path(ws: Workspace, stage: str) -> Path:
    return ws.state_dir / f"{stage}.json"


def load_record(ws: Workspace, stage: str) -> StageRecord | None:
    data = read_json(record_path(ws, stage))
    if not data:
        return None
    known = StageRecord.__dataclass_fields__
    return StageRecord(**{k: v for k, v in data.items() if k in known})


def save_record(ws: Workspace, rec: StageRecord) -> None:
    atomic_write_json(record_path(ws, rec.stage), asdict(rec))


def staleness(ws: Workspace, stage: str, inputs: Any, params: dict[str, Any]) -> tuple[bool, str]:
    """(up_to_date, reason). ``inputs`` is anything JSON-able that identifies the inputs."""
    held = active_record(stage)  # under the runner: judge by the record as it was before
    rec = held or load_record(ws, stage)
    status = (held.previous if held else rec.status) if rec else ""
    if rec is None or status in ("pending", ""):
        return False, "never run"
    if status != "done":
        return False, f"last run {status}"
    if rec.inputs != hash_obj(inputs):
        return False, "inputs changed"
    if rec.params != hash_obj(params):
        changed = sorted(
            k
            for k in set(params) | set(rec.param_values)
            if params.get(k) != rec.param_values.get(k)
        )
        return False, "options changed: " + ", ".join(changed) if changed else "options changed"
    missing = [o for o in rec.outputs if not Path(o).exists()]
    if missing:
        return False, f"output missing: {missing[0]}"
    return True, "up to date"


@contextmanager
def stage_run(
    ws: Workspace, stage: str, inputs: Any, params: dict[str, Any]
) -> Iterator[StageRecord]:
    """Record a stage's work. The body fills ``rec.figures`` and ``rec.outputs``. Under the
    runner this fills the runner's record (which records the end); alone, the record is marked
    done on success, failed (with the one-line error) on error, pending on Ctrl-C, stopped on
    SIGTERM/SIGHUP."""
    held = active_record(stage)
    if held is not None:
        held.inputs, held.params, held.param_values = hash_obj(inputs), hash_obj(params), params
        held.figures, held.outputs, held.worked = {}, [], True
        save_record(ws, held)
        yield held
        held.outputs = [str(o) for o in held.outputs]
        return
    rec = StageRecord(
        stage=stage,
        status="running",
        inputs=hash_obj(inputs),
        params=hash_obj(params),
        param_values=dict(params),
        started=time.time(),
    )
    save_record(ws, rec)
    try:
        yield rec
    except BaseException as e:
        end_with_error(ws, rec, e)
        raise
    rec.status, rec.finished = "done", time.time()
    rec.outputs = [str(o) for o in rec.outputs]
    save_record(ws, rec)
