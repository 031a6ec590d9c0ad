"""Stage records: what each stage consumed, produced and reported, for skip/redo and status.

Each stage writes ``<workspace>/.voicelab/state/<stage>.json`` when it finishes (or fails):
the hash of its inputs (file fingerprints) and of its parameters, key figures for ``status`` and
the report, and its outputs. A stage is up to date when both hashes match and every output
still exists; otherwise it says why it is stale.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from voicelab.errors import VoiceLabError
from voicelab.fsutil import atomic_write_json, hash_obj, read_json
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

    @property
    def seconds(self) -> float:
        return max(0.0, self.finished - self.started) if self.finished else 0.0


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
    rec = load_record(ws, stage)
    if rec is None or rec.status == "pending":
        return False, "never run"
    if rec.status != "done":
        return False, f"last run {rec.status}"
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
    """Record a stage run. The body fills ``rec.figures`` and ``rec.outputs``; on success the
    record is marked done, on error failed (with the one-line error), on Ctrl-C left pending."""
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
    except KeyboardInterrupt:
        rec.status, rec.finished, rec.error = "pending", time.time(), "interrupted"
        save_record(ws, rec)
        raise
    except VoiceLabError as e:
        rec.status, rec.finished, rec.error = "failed", time.time(), e.one_line()
        save_record(ws, rec)
        raise
    except Exception as e:
        rec.status, rec.finished = "failed", time.time()
        rec.error = f"{type(e).__name__}: {e}"
        rec.figures.setdefault("traceback", traceback.format_exc(limit=5))
        save_record(ws, rec)
        raise
    rec.status, rec.finished = "done", time.time()
    rec.outputs = [str(o) for o in rec.outputs]
    save_record(ws, rec)
