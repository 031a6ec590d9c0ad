"""Steps 3-7 per segment: ASR, text, QC and review edits decide each segment; the dev split by
source recording; ``segments.jsonl`` and ``qc.tsv``."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from voicelab.blocks import audio as au
from voicelab.blocks import qc, vad
from voicelab.blocks.records import Segment
from voicelab.console import track
from voicelab.fsutil import (
    atomic_write_text,
)
from voicelab.stages.prepare.intake import JsonlCache
from voicelab.stages.prepare.options import PrepareOptions, PrepareResult
from voicelab.stages.prepare.transcripts import finish_text

log = logging.getLogger(__name__)


def split_dev(kept: list[Segment], ratio: float) -> set[str]:
    """Utterance ids of the dev set: about ``ratio`` of the kept segments (2 to 50), whole
    source recordings at a time, chosen by a hash of their path (stable across runs)."""
    n = len(kept)
    if n < 2 or ratio <= 0:
        return set()
    # Tiny sets (a trial with --limit) keep most for training: one dev utterance below six.
    target = min(50, max(2, round(ratio * n))) if n >= 6 else 1
    groups: dict[str, list[str]] = {}
    for s in kept:
        groups.setdefault(s.source_rel, []).append(s.utt)
    order = sorted(groups, key=lambda r: hashlib.sha1(r.encode("utf-8")).hexdigest())
    dev: list[str] = []
    if len(groups) >= 2:
        slack = max(1, target // 2)
        for rel in order:
            if len(dev) >= target:
                break
            g = groups[rel]
            if len(dev) + len(g) > min(50, target + slack) or len(dev) + len(g) >= n:
                continue
            dev.extend(g)
    if len(dev) < min(2, target):
        # One recording (or only big ones): take whole segments from its end instead.
        ids = sorted(s.utt for s in kept)
        dev = ids[-target:]
    return set(dev)


def transcribe_segments(
    need: list[Segment],
    asr_opts: Any,
    asr_key: str,
    cache: JsonlCache,
    result: PrepareResult,
) -> None:
    from voicelab.blocks.asr import load_transcriber

    transcriber = load_transcriber(asr_opts)
    t0 = time.perf_counter()
    for s in track(need, "transcribe"):
        x16, _ = au.read_wav_mono(s.wav, vad.VAD_SR)
        r = transcriber.transcribe(x16)
        hit = {
            "k": f"{s.sha}:{asr_key}",
            "text": r.text,
            "language": r.language,
            "avg_logprob": r.avg_logprob,
            "no_speech_prob": r.no_speech_prob,
            "compression_ratio": r.compression_ratio,
        }
        cache.put(hit)
        s.asr = hit
        result.asr_calls += 1
        result.asr_audio_seconds += x16.size / vad.VAD_SR
    result.asr_wall_seconds = time.perf_counter() - t0


def finish_segment(s: Segment, opts: PrepareOptions, overrides: dict[str, dict[str, Any]]) -> None:
    """Text, metrics, reasons, status and risk of one segment (idempotent)."""
    if s.raw_text:
        text, lang, flags = finish_text(s.raw_text, s.language, opts.text_norm)
    else:
        text, lang, flags = "", s.language, []
    s.auto_text, s.language, s.hallucinations = text, lang, flags
    ov = overrides.get(s.utt)
    if ov and ov.get("sha") != s.sha:
        ov = None  # the audio changed since the review: the edit no longer applies
    s.text = ov["text"] if ov and "text" in ov else text
    s.review = ov
    m = dict(s.metrics)
    m.update(qc.text_metrics(s.text, m["duration"]))
    m.update(qc.asr_metrics(s.asr, flags))
    s.qc = m
    transcribed = opts.asr == "transcripts" or s.asr is not None
    reasons = qc.evaluate(m, opts.qc_opts) if transcribed else list(s.audio_reasons)
    s.auto_status = "excluded" if reasons else "kept"
    status = s.auto_status
    s.overridden = []
    if ov and ov.get("keep") == 0:
        reasons = [*reasons, {"code": "review_drop", "metric": "keep", "value": 0,
                              "threshold": 1, "hard": False}]  # fmt: skip
        status = "excluded"
    elif ov and ov.get("keep") == 1 and reasons:
        hard = [r for r in reasons if r["hard"]]
        if hard:
            log.warning("review: %s cannot be kept (%s)", s.utt, qc.describe(hard))
        elif transcribed:
            s.overridden = [r["code"] for r in reasons]
            reasons, status = [], "kept"
    s.reasons = reasons
    s.status = status
    s.reasons_text = qc.describe(reasons)
    s.flags = qc.flags(m, opts.qc_opts) if status == "kept" else []
    s.flags_text = qc.describe(s.flags)
    s.risk = qc.risk(m, reasons, opts.qc_opts)


def write_manifest(path: Path, segs: list[Segment]) -> Path:
    lines = [json.dumps(s.to_dict(), ensure_ascii=False) for s in segs]
    return atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))


_QC_COLUMNS = (
    "duration", "source_sample_rate", "peak_db", "clip_ratio", "loudness_db", "snr_db",
    "speech_ratio", "chars_per_second", "text_tokens", "text_per_frame", "avg_logprob",
    "no_speech_prob", "compression_ratio",
)  # fmt: skip


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def write_qc_tsv(path: Path, segs: list[Segment], bad: list[dict[str, Any]]) -> Path:
    head = ["id", "status", "split", "reasons", "flags", "risk", *_QC_COLUMNS, "source", "text"]
    lines = ["\t".join(head)]
    for s in segs:
        row = [s.utt, s.status, s.split or "", s.reasons_text, s.flags_text, f"{s.risk:.3f}"]
        row += [_fmt(s.qc.get(c)) for c in _QC_COLUMNS]
        row += [s.source_rel, s.text.replace("\t", " ")]
        lines.append("\t".join(row))
    for b in bad:
        row = ["-", "unusable", "", b["reason"], "", "", *[""] * len(_QC_COLUMNS), b["path"], ""]
        lines.append("\t".join(row))
    return atomic_write_text(path, "\n".join(lines) + "\n")
