"""The fixed evaluation set: what every candidate speaks, stored once per workspace.

Lines are the dev split's texts (their real recordings are the reference for similarity and
duration) plus fixed zh/en sentences of the audition set (numbers, dates, polyphones, mixed
text), picked with a seed and written to ``eval/set.json``, so every candidate of every run is
scored on the same lines. ``--new-set`` draws them again.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from voicelab.errors import ConfigError, WorkspaceError
from voicelab.fsutil import atomic_write_json, read_json

if TYPE_CHECKING:
    from voicelab.workspace import Workspace

log = logging.getLogger(__name__)

SET_FILE = "set.json"
SET_VERSION = 1
# Audition sentences short enough for a 20-line evaluation (not the long paragraph).
FIXED_IDS = (
    "zh-greeting",
    "en-greeting",
    "zh-numbers",
    "en-numbers",
    "zh-date",
    "mixed",
    "zh-polyphone-1",
    "zh-polyphone-2",
)
PROMPT_SECONDS = (3.0, 12.0)  # the zero-shot reference clip: long enough, not too long
CENTROID_CLIPS = 30


@dataclass
class EvalLine:
    id: str
    text: str
    lang: str  # "zh" (CER) or "en" (WER)
    source: str  # "dev" (has a real recording) or "fixed"
    ref_wav: str | None = None
    ref_seconds: float | None = None


def eval_root(ws: Workspace) -> Path:
    return ws.root / "eval"


def _seconds(path: str) -> float | None:
    import soundfile as sf

    try:
        info = sf.info(path)
    except (OSError, RuntimeError):
        return None
    return info.frames / info.samplerate if info.samplerate else None


def dev_lines(ws: Workspace) -> list[EvalLine]:
    from voicelab.blocks.kaldi import read_split
    from voicelab.evaluation.metrics import scoring_language

    d = ws.split_dir("dev")
    if not (d / "wav.scp").is_file():
        return []
    out = []
    for u in read_split(d):
        if u.text.strip() and Path(u.wav).is_file():
            out.append(
                EvalLine(
                    u.utt, u.text, scoring_language(u.text), "dev", str(u.wav), _seconds(u.wav)
                )
            )
    return out


def fixed_lines() -> list[EvalLine]:
    from voicelab.evaluation.metrics import scoring_language
    from voicelab.stages.audition import DEFAULT_SENTENCES

    texts = dict(DEFAULT_SENTENCES)
    return [EvalLine(i, texts[i], scoring_language(texts[i]), "fixed") for i in FIXED_IDS]


def build_set(ws: Workspace, lines: int, seed: int = 0, fixed: bool = True) -> list[EvalLine]:
    """Half dev lines (at most), the rest fixed sentences; dev fills in when they run out."""
    if lines < 1:
        raise ConfigError(f"--lines {lines}: need at least 1 line", None)
    dev = dev_lines(ws)
    fix = fixed_lines() if fixed else []
    rng = random.Random(seed)
    n_dev = min(len(dev), math.ceil(lines / 2) if fix else lines)
    n_fix = min(len(fix), lines - n_dev)
    n_dev = min(len(dev), lines - n_fix)
    chosen = sorted(rng.sample(dev, n_dev), key=lambda x: x.id) + rng.sample(fix, n_fix)
    if not chosen:
        raise WorkspaceError(
            "no lines to evaluate: the dev split is empty and fixed sentences are off",
            "run voicelab prepare first, or drop --no-fixed",
        )
    return chosen


def load_set(
    ws: Workspace, lines: int = 20, seed: int = 0, fixed: bool = True, new: bool = False
) -> list[EvalLine]:
    """The stored set (the same lines for every run), or a new one written to ``eval/set.json``."""
    path = eval_root(ws) / SET_FILE
    data = read_json(path, default=None)
    if not new and isinstance(data, dict) and data.get("version") == SET_VERSION:
        items = [EvalLine(**x) for x in data.get("lines", [])]
        want = (lines, seed, fixed)
        have = (data.get("size"), data.get("seed"), data.get("fixed"))
        if items and have != want:
            log.warning(
                "using the stored evaluation set (%d lines, seed %s) so scores stay comparable; "
                "--new-set draws one with --lines %d --seed %d",
                len(items),
                data.get("seed"),
                lines,
                seed,
            )
        if items:
            return items
    items = build_set(ws, lines, seed, fixed)
    atomic_write_json(
        path,
        {
            "version": SET_VERSION,
            "size": lines,
            "seed": seed,
            "fixed": fixed,
            "lines": [asdict(x) for x in items],
        },
    )
    return items


def train_clips(ws: Workspace, n: int = CENTROID_CLIPS, seed: int = 0) -> list[tuple[str, str]]:
    """``(wav, text)`` of up to ``n`` training clips (seeded), for the speaker centroid."""
    from voicelab.blocks.kaldi import read_split

    d = ws.split_dir("train")
    if not (d / "wav.scp").is_file():
        raise WorkspaceError(f"no training split at {d}", "run: voicelab prepare")
    utts = [u for u in read_split(d) if Path(u.wav).is_file()]
    if not utts:
        raise WorkspaceError(f"the training split at {d} has no readable clips", None)
    picked = random.Random(seed).sample(utts, min(n, len(utts)))
    return [(str(u.wav), u.text) for u in sorted(picked, key=lambda u: u.utt)]


def prompt_clip(ws: Workspace) -> tuple[str, str]:
    """The reference clip for the base model's zero-shot baseline: the training clip nearest to
    6 s (within 3-12 s when there is one), with its transcript."""
    clips = train_clips(ws, n=10**9)
    timed = [(c, _seconds(c[0]) or 0.0) for c in clips]
    lo, hi = PROMPT_SECONDS
    pool = [t for t in timed if lo <= t[1] <= hi] or timed
    return min(pool, key=lambda t: (abs(t[1] - 6.0), t[0][0]))[0]
