"""The Data tab's review list over prepare's outputs, and its edits.

The list is ``prepare/segments.jsonl`` (every segment with its text, QC reasons, risk and
status). Edits made on the page are kept in ``prepare/review.pending.tsv``, a review file in
the format of ``voicelab prepare --review`` that holds only the edited rows; applying them runs
``run_prepare`` with ``apply_review`` set to that file, exactly as
``voicelab prepare --apply-review prepare/review.pending.tsv`` does, so the page and the CLI
share one mechanism (``review_overrides.json``) and never disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from voicelab.blocks import qc
from voicelab.blocks.records import Segment, read_segments
from voicelab.errors import InputError
from voicelab.fsutil import atomic_write_text
from voicelab.stages.prepare import REVIEW_COLUMNS, read_review
from voicelab.workspace import Workspace

PENDING_NAME = "review.pending.tsv"


def pending_path(ws: Workspace) -> Path:
    return ws.prepare_dir / PENDING_NAME


def read_manifest(ws: Workspace) -> list[Segment]:
    """segments.jsonl rows, or [] before the first prepare."""
    return read_segments(ws.prepare_dir / "segments.jsonl")


def _reasons_text(s: Segment) -> str:
    """``low_snr(12.58<15)``; rows of 0.1 kept only the codes."""
    try:
        return qc.describe(s.reasons)
    except (KeyError, TypeError):
        return s.reasons_text


def read_pending(ws: Workspace) -> dict[str, dict[str, str]]:
    path = pending_path(ws)
    if not path.is_file():
        return {}
    return {r["id"]: r for r in read_review(path)}


def segment_rows(ws: Workspace) -> list[dict[str, Any]]:
    """What the review list shows of each segment, with any pending edit."""
    pending = read_pending(ws)
    rows = []
    for s in read_manifest(ws):
        rows.append(
            {
                "id": s.utt,
                "status": s.status,
                "split": s.split,
                "text": s.text,
                "reasons": s.reason_codes,
                "reasons_text": _reasons_text(s),
                "risk": s.risk,
                "duration": s.qc.get("duration"),
                "source": s.source_rel or None,
                "reviewed": bool(s.review),
                "pending": pending.get(s.utt),
            }
        )
    return rows


def clip_path(ws: Workspace, utt: str) -> Path:
    """The audio of segment ``utt`` (only files of prepare's clips folder are served)."""
    clips = (ws.prepare_dir / "clips").resolve()
    for s in read_manifest(ws):
        if s.utt == utt:
            wav = Path(s.wav).resolve()
            if wav.parent == clips and wav.is_file():
                return wav
            break
    raise InputError(f"no clip for segment {utt!r}", "run prepare again (the Data tab)")


def edit(ws: Workspace, utt: str, text: str | None = None, keep: bool | None = None) -> dict:
    """Record one edit (new text and/or keep) of segment ``utt`` in the pending review file."""
    seg = next((s for s in read_manifest(ws) if s.utt == utt), None)
    if seg is None:
        raise InputError(f"unknown segment {utt!r}", "reload the list: prepare may have rerun")
    pending = read_pending(ws)
    row = pending.get(utt) or {
        "id": utt,
        "text": seg.text,
        "keep": "1" if seg.kept else "0",
    }
    if text is not None:
        clean = " ".join(text.replace("\t", " ").split())
        if not clean:
            raise InputError("the transcript is empty", "type what is said, or exclude the clip")
        row["text"] = clean
    if keep is not None:
        row["keep"] = "1" if keep else "0"
    pending[utt] = row
    _write_pending(ws, pending)
    return row


def discard(ws: Workspace) -> None:
    pending_path(ws).unlink(missing_ok=True)


def prune(ws: Workspace) -> int:
    """Drop pending edits of segments a new prepare run no longer has; returns how many."""
    pending = read_pending(ws)
    live = {s.utt for s in read_manifest(ws)}
    gone = [utt for utt in pending if utt not in live]
    for utt in gone:
        del pending[utt]
    if gone:
        if pending:
            _write_pending(ws, pending)
        else:
            discard(ws)
    return len(gone)


def _write_pending(ws: Workspace, pending: dict[str, dict[str, str]]) -> Path:
    by_id = {s.utt: s for s in read_manifest(ws)}
    lines = ["\t".join(REVIEW_COLUMNS)]
    for utt, row in pending.items():
        s = by_id.get(utt) or Segment(utt)
        risk = f"{s.risk:.3f}"
        lines.append("\t".join([utt, s.wav, row["text"], row["keep"], risk, _reasons_text(s)]))
    return atomic_write_text(pending_path(ws), "\n".join(lines) + "\n")
