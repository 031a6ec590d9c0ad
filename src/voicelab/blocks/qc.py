"""Dataset quality check: per-segment metrics and a table of exclusion rules with reason codes.

Audio metrics (duration, source rate, peak, clipping, loudness, SNR, speech ratio) are measured
once at intake (:func:`audio_metrics`) and stored with the segment; text metrics (characters per
second, token estimate, text per frame, ASR confidence, hallucination flags) come from the
transcript (:func:`text_metrics`). :func:`evaluate` applies :data:`RULES` with the thresholds of
a :class:`QcOptions`, so changing a threshold re-runs nothing but this cheap function.

``hard`` rules are what upstream CosyVoice drops anyway, silently, or cannot train on
(its ``filter`` stage: < 1 s, > 200 text tokens, text per 10 ms frame outside [0.0005, 1];
its ``resample`` stage: < 16 kHz; the speech tokenizer: > 30 s; no text): a review cannot keep
them. ``soft`` rules are our own judgement (clipping, noise, doubtful ASR): a review may keep a
segment they excluded.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from voicelab.blocks.vad import FRAME

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")
_LATIN_WORD = re.compile(r"[0-9A-Za-z\u00c0-\u024f]+(?:'[A-Za-z]+)?")
_PUNCT = re.compile(r"[^\w\s]")
_LETTER = re.compile(r"\w")


@dataclass(frozen=True)
class QcOptions:
    """Thresholds of the rules. Changing any of them re-runs only QC (no intake, no ASR)."""

    min_duration: float = 1.0  # upstream filter min_length 100 frames
    max_duration: float = 30.0  # speech tokenizer limit (upstream filter allows 60 s)
    min_sample_rate: int = 16000  # upstream resample drops < 16 kHz
    max_clip_ratio: float = 0.001  # share of samples at full scale
    min_loudness_db: float = -40.0  # RMS dBFS of the speech frames
    # SNR (see noise_floor for the calibration): below min_snr_db a segment is excluded; from
    # there up to review_snr_db it is kept, flagged ``noisy`` and listed first for review.
    # Clean AISHELL-1 read speech measures 16-20 dB, espeak over digital silence 80 dB, white
    # noise mixed in at a known 10/15/20/30 dB measures within 0.5 dB of it.
    min_snr_db: float = 10.0
    review_snr_db: float = 15.0
    min_speech_ratio: float = 0.3
    max_chars_per_second: float = 25.0  # letters (Latin) / characters (CJK) per second
    max_cjk_chars_per_second: float = 12.0
    min_chars_per_second: float = 0.5
    min_avg_logprob: float = -1.0  # Whisper's own fallback threshold
    max_no_speech_prob: float = 0.6
    max_compression_ratio: float = 2.4  # Whisper's repetition threshold
    max_text_tokens: int = 200  # upstream filter token_max_length
    min_text_per_frame: float = 0.0005  # upstream filter, tokens per 10 ms frame
    max_text_per_frame: float = 1.0
    drop_hallucinations: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QcOptions:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Rule:
    """Exclude when ``metric`` is ``op`` (``<`` or ``>``) the threshold ``option``."""

    code: str
    metric: str
    op: str
    option: str
    hard: bool
    why: str
    stage: str = "audio"  # audio: known before ASR; text: needs the transcript


RULES: tuple[Rule, ...] = (
    Rule("too_short", "duration", "<", "min_duration", True, "upstream filter drops < 1 s"),
    Rule("too_long", "duration", ">", "max_duration", True, "speech tokenizer refuses > 30 s"),
    Rule("low_sample_rate", "source_sample_rate", "<", "min_sample_rate", True,
         "upstream drops audio under 16 kHz"),
    Rule("no_speech", "speech_ratio", "<=", "", True, "the VAD found no speech"),
    Rule("clipping", "clip_ratio", ">", "max_clip_ratio", False, "distorted peaks"),
    Rule("too_quiet", "loudness_db", "<", "min_loudness_db", False, "speech level too low"),
    Rule("low_snr", "snr_db", "<", "min_snr_db", False, "background noise"),
    Rule("low_speech_ratio", "speech_ratio", "<", "min_speech_ratio", False,
         "mostly silence or noise"),
    Rule("empty_text", "text_chars", "<=", "", True, "no transcript", "text"),
    Rule("too_many_tokens", "text_tokens", ">", "max_text_tokens", True,
         "upstream filter drops > 200 text tokens (estimate)", "text"),
    Rule("text_per_frame_low", "text_per_frame", "<", "min_text_per_frame", True,
         "upstream filter: too little text for the audio", "text"),
    Rule("text_per_frame_high", "text_per_frame", ">", "max_text_per_frame", True,
         "upstream filter: too much text for the audio", "text"),
    Rule("too_fast", "chars_per_second", ">", "max_chars_per_second", False,
         "more text than can be spoken: transcript likely wrong", "text"),
    Rule("too_fast", "cjk_chars_per_second", ">", "max_cjk_chars_per_second", False,
         "more text than can be spoken: transcript likely wrong", "text"),
    Rule("too_slow", "chars_per_second", "<", "min_chars_per_second", False,
         "little text for the audio: transcript likely incomplete", "text"),
    Rule("low_asr_confidence", "avg_logprob", "<", "min_avg_logprob", False,
         "ASR unsure of the words", "text"),
    Rule("no_speech_prob", "no_speech_prob", ">", "max_no_speech_prob", False,
         "ASR thinks there is no speech", "text"),
    Rule("repetitive_text", "compression_ratio", ">", "max_compression_ratio", False,
         "ASR output repeats itself", "text"),
    Rule("hallucination", "hallucination_count", ">", "", False,
         "known ASR hallucination (credits, like-and-subscribe, loops)", "text"),
)  # fmt: skip
HARD_CODES = frozenset(r.code for r in RULES if r.hard)


def _threshold(rule: Rule, opts: QcOptions) -> float:
    return 0.0 if not rule.option else float(getattr(opts, rule.option))


def _fails(value: float, op: str, thr: float) -> bool:
    if op == "<":
        return value < thr
    if op == "<=":
        return value <= thr
    return value > thr


def evaluate(metrics: dict[str, Any], opts: QcOptions, stage: str = "all") -> list[dict[str, Any]]:
    """The reasons ``metrics`` fail, as ``{code, metric, value, threshold, hard}`` dicts.

    ``stage="audio"`` checks only the rules known before ASR. A metric that is missing (None)
    is not checked: e.g. imported transcripts have no ASR confidence.
    """
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for rule in RULES:
        if stage == "audio" and rule.stage != "audio":
            continue
        if rule.code == "hallucination" and not opts.drop_hallucinations:
            continue
        value = metrics.get(rule.metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        thr = _threshold(rule, opts)
        if _fails(float(value), rule.op, thr) and rule.code not in seen:
            seen.add(rule.code)
            out.append(
                {
                    "code": rule.code,
                    "metric": rule.metric,
                    "value": round(float(value), 4),
                    "threshold": thr,
                    "hard": rule.hard,
                }
            )
    if opts.drop_hallucinations and metrics.get("hallucinations"):
        for r in out:
            if r["code"] == "hallucination":
                r["flags"] = list(metrics["hallucinations"])
    return out


#: Borderline rules: the segment is kept, with a flag, when ``metric`` is ``op`` ``option``.
FLAGS: tuple[Rule, ...] = (
    Rule("noisy", "snr_db", "<", "review_snr_db", False, "audible background noise: listen"),
)


def flags(metrics: dict[str, Any], opts: QcOptions) -> list[dict[str, Any]]:
    """Borderline findings of a segment that passes every rule (kept, but worth a listen)."""
    out = []
    for rule in FLAGS:
        value = metrics.get(rule.metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        thr = _threshold(rule, opts)
        if _fails(float(value), rule.op, thr):
            out.append(
                {"code": rule.code, "metric": rule.metric, "value": round(float(value), 4),
                 "threshold": thr, "hard": False}
            )  # fmt: skip
    return out


def risk(metrics: dict[str, Any], reasons: list[dict[str, Any]], opts: QcOptions) -> float:
    """A review priority: >= 1 when excluded (more with more reasons), else 0..1 from how close
    the doubtful metrics come to their thresholds."""
    if reasons:
        return round(1.0 + 0.1 * len(reasons) + 0.5 * any(r["hard"] for r in reasons), 3)
    parts = [0.0]
    lp = metrics.get("avg_logprob")
    if lp is not None:
        parts.append(min(1.0, max(0.0, -float(lp) / -opts.min_avg_logprob) ** 2))
    ns = metrics.get("no_speech_prob")
    if ns is not None:
        parts.append(min(1.0, float(ns) / opts.max_no_speech_prob))
    cr = metrics.get("compression_ratio")
    if cr is not None:
        parts.append(min(1.0, max(0.0, (float(cr) - 1.0) / (opts.max_compression_ratio - 1.0))))
    snr = metrics.get("snr_db")
    if snr is not None:
        # 0 at review_snr_db + 15 dB, 0.5 at review_snr_db (a flagged segment comes first).
        parts.append(min(1.0, max(0.0, (opts.review_snr_db + 15 - float(snr)) / 30)))
    if metrics.get("forced_cut"):
        parts.append(0.8)
    return round(max(parts), 3)


# ---- metrics ---------------------------------------------------------------------------------


def _db(power: float) -> float:
    return 10.0 * math.log10(power + 1e-12)


def audio_metrics(
    seg24: np.ndarray,
    clip_ratio: float,
    source_sample_rate: int,
    probs: np.ndarray,
    seg_start16: int,
    seg_end16: int,
    noise_power: float,
    energy16: np.ndarray,
    speech16: np.ndarray,
) -> dict[str, Any]:
    """Audio metrics of one segment.

    ``seg24``: the segment at 24 kHz; ``clip_ratio``: share of its source samples at full scale
    (measured before resampling, which smooths peaks); ``probs``: VAD window probabilities of
    the whole 16 kHz recording; ``energy16``/``speech16``: its 10 ms frame powers and speech
    mask; ``noise_power``: the recording's noise floor (mean power of its non-speech frames).

    Loudness is the RMS level of the speech frames in dBFS (not LUFS: K-weighting barely moves
    speech levels and the rule only catches near-silent recordings).
    """
    duration = seg24.size / 24000
    peak = float(np.abs(seg24).max()) if seg24.size else 0.0
    f0, f1 = seg_start16 // FRAME, max(seg_start16 // FRAME + 1, seg_end16 // FRAME)
    frames = energy16[f0:f1]
    mask = speech16[f0:f1]
    speech_ratio = float(mask.mean()) if mask.size else 0.0
    if mask.any():
        speech_power = float(frames[mask].mean())
    else:
        speech_power = float(frames.mean()) if frames.size else 0.0
    snr = min(100.0, _db(speech_power) - _db(noise_power)) if speech_power > 0 else 0.0
    return {
        "duration": round(duration, 3),
        "source_sample_rate": int(source_sample_rate),
        "peak_db": round(_db(peak * peak), 2),
        "clip_ratio": round(float(clip_ratio), 5),
        "loudness_db": round(_db(speech_power), 2),
        "snr_db": round(snr, 2),
        "speech_ratio": round(speech_ratio, 3),
        "vad_max_prob": round(
            float(probs[seg_start16 // 512 : max(seg_start16 // 512 + 1, seg_end16 // 512)].max())
            if probs.size
            else 0.0,
            3,
        ),
    }


#: Which percentile of the non-speech frames is the noise floor. Calibrated on real clean
#: speech and on mixes at known SNR (tests/test_qc.py): the VAD reacts ~0.1 s late, so the
#: non-speech frames hold soft onsets, tails and breaths; their median read clean AISHELL-1
#: clips as 12.6-15 dB and excluded them. The 30th percentile is above those tails and, for
#: steady noise (whose 10 ms frame powers vary little), within 0.5 dB of the true SNR.
NOISE_PERCENTILE = 30


def noise_floor(energy16: np.ndarray, speech16: np.ndarray) -> float:
    """The recording's noise power: the :data:`NOISE_PERCENTILE` of its non-speech 10 ms frames,
    or its quietest 10 % when it has too few (a clip cut tight); never below -100 dBFS
    (digital silence)."""
    quiet = energy16[~speech16]
    if quiet.size >= 10:
        value = float(np.percentile(quiet, NOISE_PERCENTILE))
    elif energy16.size:
        value = float(np.percentile(energy16, 10))
    else:
        value = 0.0
    return max(value, 1e-10)


def estimate_tokens(text: str) -> float:
    """An *estimate* of the Qwen2 BPE token count, without the tokenizer: one per CJK character,
    about 1.3 per Latin word or number, one per punctuation mark."""
    cjk = len(_CJK.findall(text))
    words = len(_LATIN_WORD.findall(_CJK.sub(" ", text)))
    punct = len(_PUNCT.findall(text))
    return cjk + 1.3 * words + punct


def text_metrics(text: str, duration: float) -> dict[str, Any]:
    letters = len(_LETTER.findall(text))
    cjk = len(_CJK.findall(text))
    tokens = estimate_tokens(text)
    dur = max(duration, 1e-3)
    if not letters:
        # Only ``empty_text`` applies: ratios of nothing would add noise to the reasons.
        return {"text_chars": 0, "text_tokens": round(tokens, 1)}
    return {
        "text_chars": letters,
        "text_tokens": round(tokens, 1),
        "text_per_frame": round(tokens / (dur * 100), 5),
        "chars_per_second": round(letters / dur, 2),
        "cjk_chars_per_second": round(cjk / dur, 2) if cjk else None,
    }


def asr_metrics(asr: dict[str, Any] | None, hallucinations: list[str]) -> dict[str, Any]:
    asr = asr or {}
    return {
        "avg_logprob": asr.get("avg_logprob"),
        "no_speech_prob": asr.get("no_speech_prob"),
        "compression_ratio": asr.get("compression_ratio"),
        "hallucinations": list(hallucinations),
        "hallucination_count": len(hallucinations),
    }


def describe(reasons: list[dict[str, Any]]) -> str:
    """``code(value<thr), ...`` for tables."""
    parts = []
    for r in reasons:
        rules = (*RULES, *FLAGS)
        if r["code"] == "hallucination":
            parts.append(f"hallucination({'/'.join(r.get('flags', []))})")
        else:
            rule = next((x for x in rules if x.code == r["code"]), None)
            if rule is None or not rule.option:  # review_drop, no_speech, empty_text
                parts.append(r["code"])
            else:
                parts.append(f"{r['code']}({r['value']:g}{rule.op[0]}{r['threshold']:g})")
    return ",".join(parts)
