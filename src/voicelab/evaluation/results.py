"""What evaluation runs wrote: ``eval/<run>/metrics.tsv`` (one row per candidate), read back for
the ``best-eval`` rule, ``voicelab checkpoints`` and the report. Pure file reading: no torch."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voicelab.evaluation.sets import eval_root
from voicelab.fsutil import atomic_write_text

if TYPE_CHECKING:
    from voicelab.stages.checkpoints import Checkpoint
    from voicelab.workspace import Workspace

TABLE = "metrics.tsv"
COLUMNS = (
    "candidate",
    "kind",  # epoch | checkpoint | voice | base | real
    "epoch",
    "lines",
    "err",  # mean CER/WER over all lines
    "cer",  # mean over zh lines
    "wer",  # mean over en lines
    "sim",  # mean cosine to the speaker centroid
    "sim_ref",  # mean cosine to the real recording of the same dev line
    "mos",  # DNSMOS OVRL
    "sig",
    "bak",
    "dur_ratio",
    "rtf",
    "ckpt",  # size:mtime:inode of the llm file evaluated: a retrained epoch N is another file
)
_TEXT = {"candidate", "kind", "ckpt"}


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def write_table(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in COLUMNS])
    return atomic_write_text(path, buf.getvalue())


def _parse(key: str, value: str) -> Any:
    if key in _TEXT:
        return value
    if value == "":
        return None
    try:
        return int(value) if key in ("epoch", "lines") else float(value)
    except ValueError:
        return None


def read_table(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", newline="") as f:
        return [
            {k: _parse(k, v or "") for k, v in r.items()} for r in csv.DictReader(f, delimiter="\t")
        ]


def run_dirs(ws: Workspace) -> list[Path]:
    """Evaluation runs with a table, oldest first (by the table's time)."""
    root = eval_root(ws)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if (p / TABLE).is_file()]
    return sorted(found, key=lambda p: ((p / TABLE).stat().st_mtime_ns, p.name))


def merged(ws: Workspace) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """``({candidate: row}, base row)`` over every run; a later run's row wins."""
    rows: dict[str, dict[str, Any]] = {}
    for d in run_dirs(ws):
        for r in read_table(d / TABLE):
            r["run"] = d.name
            rows[r["candidate"]] = r
    base = next((r for r in rows.values() if r.get("kind") == "base"), None)
    return rows, base


def epoch_rows(ws: Workspace) -> tuple[dict[int, dict[str, Any]], dict[str, Any] | None]:
    rows, base = merged(ws)
    by_epoch = {
        int(r["epoch"]): r
        for r in rows.values()
        if r.get("kind") == "epoch" and r.get("epoch") is not None
    }
    return by_epoch, base


def attach(ws: Workspace, ckpts: list[Checkpoint]) -> None:
    """Mark epoch checkpoints with their latest evaluation (``eval``, ``eval_score``,
    ``eval_ok``: within the error margin of the base model), when the row is of this very
    file."""
    from voicelab.evaluation.choose import eligible, score
    from voicelab.fsutil import quick_fingerprint

    by_epoch, base = epoch_rows(ws)
    for c in ckpts:
        row = by_epoch.get(c.epoch) if c.kind == "epoch" and c.epoch is not None else None
        if row is None or (row.get("ckpt") and row["ckpt"] != quick_fingerprint(c.path)):
            continue  # not evaluated, or the evaluation was of an earlier run's epoch
        c.eval = row
        s = score(row)
        c.eval_score = s if math.isfinite(s) else None
        c.eval_ok = eligible(row, base)
