"""Audition reports and blind A/B votes for the Checkpoints & listening tab.

Reports are what ``voicelab audition`` writes (``reports/audition-*/audition.json`` and
``audio/``). A blind report's votes are kept in the workspace as
``reports/<report>.choices.json``, the same ``{"report", "choices": {sentence: letter}}`` file
the static page offers as a download, so ``voicelab audition --unblind`` reads it too; the
tally comes from :func:`voicelab.stages.audition.run_unblind` once every sentence has a vote.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from voicelab.errors import InputError
from voicelab.fsutil import atomic_write_json, read_json
from voicelab.stages.audition import run_unblind
from voicelab.workspace import Workspace

_TAKE_RE = re.compile(r"^(?P<sid>.+)__(?P<letter>[A-Z])\.wav$")


def choices_path(ws: Workspace, report: str) -> Path:
    return ws.reports_dir / f"{report}.choices.json"


def _blind_takes(report_dir: Path, sid: str) -> list[dict[str, Any]]:
    takes = []
    for wav in sorted((report_dir / "audio").glob(f"{sid}__*.wav")):
        m = _TAKE_RE.match(wav.name)
        if m and m.group("sid") == sid:
            takes.append({"label": m.group("letter"), "wav": f"audio/{wav.name}"})
    return takes


def list_auditions(ws: Workspace) -> list[dict[str, Any]]:
    """Every audition report of the workspace, newest first, with its takes and votes."""
    out = []
    for meta in sorted(ws.reports_dir.glob("audition-*/audition.json"), reverse=True):
        data = read_json(meta, {}) or {}
        report_dir = meta.parent
        rel = report_dir.relative_to(ws.root).as_posix()
        sentences = []
        for s in data.get("sentences", []):
            takes = (
                _blind_takes(report_dir, s["id"])
                if data.get("blind")
                else [{"label": t["label"], "wav": t["wav"]} for t in s.get("takes", [])]
            )
            for t in takes:
                t["path"] = f"{rel}/{t['wav']}"
            sentences.append({"id": s["id"], "text": s.get("text", ""), "takes": takes})
        entry: dict[str, Any] = {
            "report": report_dir.name,
            "blind": bool(data.get("blind")),
            "meta": data.get("meta", {}),
            "sentences": sentences,
        }
        if entry["blind"]:
            entry.update(_votes(ws, report_dir.name, len(sentences)))
        out.append(entry)
    return out


def _votes(ws: Workspace, report: str, n_sentences: int) -> dict[str, Any]:
    path = choices_path(ws, report)
    choices = (read_json(path, {}) or {}).get("choices", {})
    tally = None
    if choices and len(choices) >= n_sentences:
        tally = run_unblind(path, None, [ws.reports_dir]).tally
    return {"choices": choices, "tally": tally}


def save_vote(ws: Workspace, report: str, sentence: str, letter: str) -> dict[str, Any]:
    """Record the listener's pick for one sentence of a blind report."""
    entry = next((a for a in list_auditions(ws) if a["report"] == report), None)
    if entry is None or not entry["blind"]:
        raise InputError(f"no blind audition {report!r} in this workspace", "run a blind one")
    sent = next((s for s in entry["sentences"] if s["id"] == sentence), None)
    if sent is None or letter not in {t["label"] for t in sent["takes"]}:
        raise InputError(f"no take {letter!r} for sentence {sentence!r}", "pick one of the takes")
    path = choices_path(ws, report)
    data = read_json(path, {}) or {}
    data.setdefault("choices", {})[sentence] = letter
    data["report"] = report
    atomic_write_json(path, data)
    return _votes(ws, report, len(entry["sentences"]))
