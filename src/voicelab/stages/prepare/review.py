"""Step 6: the review round trip (``review.tsv`` out, edits into ``review_overrides.json``)."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from voicelab.blocks.records import Segment
from voicelab.errors import InputError
from voicelab.fsutil import (
    atomic_write_text,
)
from voicelab.stages.prepare.transcripts import read_user_file

log = logging.getLogger(__name__)


REVIEW_COLUMNS = ("id", "audio", "text", "keep", "risk", "reasons")


def write_review(path: Path, segs: list[Segment]) -> Path:
    """review.tsv, worst first. A file the user edited but never applied is kept aside."""
    rows = sorted(segs, key=lambda s: (-s.risk, s.utt))
    lines = ["\t".join(REVIEW_COLUMNS)]
    for s in rows:
        text = s.text.replace("\t", " ").replace("\n", " ")
        keep = "1" if s.kept else "0"
        fields = [s.utt, s.wav, text, keep, f"{s.risk:.3f}", s.reasons_text or s.flags_text]
        lines.append("\t".join(fields))
    content = "\n".join(lines) + "\n"
    marker = path.with_name(".review.written")
    if path.is_file():
        current = hashlib.sha1(path.read_bytes()).hexdigest()
        if marker.is_file() and marker.read_text().strip() != current:
            keep_as = path.with_name(f"review.edited-{time.strftime('%Y%m%d-%H%M%S')}.tsv")
            os.replace(path, keep_as)
            log.warning("review.tsv had unapplied edits: kept as %s", keep_as)
    atomic_write_text(path, content)
    atomic_write_text(marker, hashlib.sha1(content.encode("utf-8")).hexdigest() + "\n")
    return path


def mark_review_applied(path: Path) -> None:
    """The edits of ``path`` are now in the overrides: rewriting review.tsv may replace it."""
    marker = path.with_name(".review.written")
    if path.name == "review.tsv" and marker.is_file():
        atomic_write_text(marker, hashlib.sha1(path.read_bytes()).hexdigest() + "\n")


def read_review(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise InputError(
            f"review file not found: {path}", "write one with: voicelab prepare --review"
        )
    rows = list(
        csv.reader(read_user_file(path).splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE)
    )
    if not rows or [c.strip().lower() for c in rows[0][:4]] != list(REVIEW_COLUMNS[:4]):
        raise InputError(
            f"{path} is not a VoiceLab review file (header id, audio, text, keep, ...)",
            "write one with: voicelab prepare --review",
        )
    out = []
    for n, r in enumerate(rows[1:], 2):
        if not r or not r[0].strip():
            continue
        if len(r) < 4 or r[3].strip() not in ("0", "1"):
            raise InputError(f"{path}:{n}: keep must be 0 or 1", "fix the row")
        out.append({"id": r[0].strip(), "text": r[2].strip(), "keep": r[3].strip()})
    return out


def apply_review(path: Path, segs: dict[str, Segment], overrides: dict[str, dict[str, Any]]) -> int:
    """Merge the edits of a review file into ``overrides``; returns how many rows changed."""
    changed = 0
    for row in read_review(path):
        seg = segs.get(row["id"])
        if seg is None:
            log.warning("review: unknown segment %s (ignored)", row["id"])
            continue
        ov: dict[str, Any] = {"sha": seg.sha}
        prev = overrides.get(row["id"], {})
        if row["text"] != seg.auto_text:
            ov["text"] = row["text"]
        keep_now = 1 if seg.auto_status == "kept" else 0
        if int(row["keep"]) != keep_now:
            ov["keep"] = int(row["keep"])
        if len(ov) > 1:
            if ov != prev:
                changed += 1
            overrides[row["id"]] = ov
        elif row["id"] in overrides:
            del overrides[row["id"]]
            changed += 1
    return changed


def forced_keep(s: Segment, overrides: dict[str, dict[str, Any]]) -> bool:
    ov = overrides.get(s.utt)
    return bool(ov and ov.get("sha") == s.sha and ov.get("keep") == 1)
