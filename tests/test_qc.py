"""QC rules, metrics and the token estimate."""

from __future__ import annotations

import numpy as np
import pytest

from voicelab import audio as au
from voicelab import qc, vad
from voicelab.testing.corpus import Corpus, build_corpus


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return build_corpus()


def _measure(x24: np.ndarray, source_sr: int = 24000, clip_ratio: float = 0.0) -> dict:
    # Silero VAD comes with faster-whisper (the asr extra): skip, not fail, in a core-only env.
    pytest.importorskip("faster_whisper", reason="needs the asr extra (Silero VAD)")
    x16 = au.resample(x24, 24000, 16000)
    probs = vad.speech_probs(x16)
    iv = vad.speech_intervals(probs)
    energy = vad.frame_energy(x16)
    speech = vad.speech_mask(iv, energy.size)
    noise = qc.noise_floor(energy, speech)
    return qc.audio_metrics(x24, clip_ratio, source_sr, probs, 0, x16.size, noise, energy, speech)


def _codes(metrics: dict, opts: qc.QcOptions | None = None, stage: str = "all") -> set[str]:
    return {r["code"] for r in qc.evaluate(metrics, opts or qc.QcOptions(), stage)}


GOOD = {
    "duration": 4.0,
    "source_sample_rate": 22050,
    "clip_ratio": 0.0,
    "loudness_db": -20.0,
    "snr_db": 60.0,
    "speech_ratio": 0.8,
}


def test_clean_speech_metrics(corpus: Corpus) -> None:
    x, _ = au.read_wav_mono(corpus.clip("good").path, 24000)
    m = _measure(x)
    assert m["clip_ratio"] == 0.0
    assert m["snr_db"] > 40  # espeak-ng over digital silence
    assert -30 < m["loudness_db"] < -10
    assert m["speech_ratio"] > 0.5
    assert _codes(m, stage="audio") == set()


def test_noise_lowers_snr(corpus: Corpus) -> None:
    x, _ = au.read_wav_mono(corpus.clip("good").path, 24000)
    rng = np.random.default_rng(0)
    noisy = x + rng.normal(0, 0.03, x.size).astype(np.float32)
    m_clean, m_noisy = _measure(x), _measure(noisy)
    assert m_noisy["snr_db"] < m_clean["snr_db"] - 20
    assert m_noisy["snr_db"] < 15
    assert "low_snr" in _codes(m_noisy, stage="audio")


def test_clipping_measured_on_source(corpus: Corpus) -> None:
    src = au.load_for_intake(corpus.hard["clipped"])
    ratio = src.clip_ratio(0.0, src.duration)
    assert ratio > 0.05
    assert au.load_for_intake(corpus.clip("good").path).clip_ratio(0.0, 10.0) == 0.0
    m = _measure(src.x24, 22050, ratio)
    assert "clipping" in _codes(m, stage="audio")


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"duration": 0.8}, "too_short"),
        ({"duration": 31.0}, "too_long"),
        ({"source_sample_rate": 8000}, "low_sample_rate"),
        ({"clip_ratio": 0.01}, "clipping"),
        ({"loudness_db": -55.0}, "too_quiet"),
        ({"snr_db": 8.0}, "low_snr"),
        ({"speech_ratio": 0.1}, "low_speech_ratio"),
        ({"speech_ratio": 0.0}, "no_speech"),
    ],
)
def test_audio_rules(change: dict, code: str) -> None:
    assert code in _codes({**GOOD, **change})
    assert _codes(GOOD) == set()


def _text(text: str, duration: float = 4.0, **asr: float) -> dict:
    m = {**GOOD, "duration": duration}
    m.update(qc.text_metrics(text, duration))
    m.update(qc.asr_metrics(asr or None, []))
    return m


def test_text_rules() -> None:
    ok = _text("The weather is lovely today.", avg_logprob=-0.3, no_speech_prob=0.1)
    assert _codes(ok) == set()
    assert "empty_text" in _codes(_text(""))
    assert _codes(_text("")) == {"empty_text"}  # no ratio noise on top of it
    assert "too_many_tokens" in _codes(_text("word " * 170, duration=25.0))
    assert "text_per_frame_high" in _codes(_text("我" * 150, duration=1.2))
    assert "too_fast" in _codes(_text("我" * 60, duration=3.0))
    assert "too_fast" in _codes(_text("supercalifragilistic " * 8, duration=3.0))
    assert "low_asr_confidence" in _codes(_text("hello there", avg_logprob=-1.4))
    assert "no_speech_prob" in _codes(_text("hello there", no_speech_prob=0.9))
    assert "repetitive_text" in _codes(_text("hello there", compression_ratio=3.1))
    m = _text("hello there")
    m.update(qc.asr_metrics(None, ["like_subscribe"]))
    reasons = qc.evaluate(m, qc.QcOptions())
    assert reasons[0]["code"] == "hallucination" and reasons[0]["flags"] == ["like_subscribe"]
    assert "hallucination(like_subscribe)" in qc.describe(reasons)
    assert not qc.evaluate(m, qc.QcOptions(drop_hallucinations=False))


def test_text_per_frame_lower_bound_is_upstreams() -> None:
    # Upstream drops a sample whose text tokens per 10 ms frame fall under 0.0005: one token
    # for 25 s of audio.
    m = _text("Hi", duration=28.0)
    assert m["text_per_frame"] < 0.0005
    assert "text_per_frame_low" in _codes(m)


def test_thresholds_are_options() -> None:
    m = {**GOOD, "snr_db": 18.0}
    assert "low_snr" not in _codes(m)
    assert "low_snr" in _codes(m, qc.QcOptions(min_snr_db=20.0))
    opts = qc.QcOptions.from_dict({"min_snr_db": 20.0, "unknown": 1})
    assert opts.min_snr_db == 20.0
    assert qc.QcOptions.from_dict(opts.as_dict()) == opts


def test_hard_and_soft() -> None:
    assert {"too_short", "too_long", "low_sample_rate", "too_many_tokens", "empty_text"} <= (
        qc.HARD_CODES
    )
    assert "clipping" not in qc.HARD_CODES and "low_snr" not in qc.HARD_CODES


def test_token_estimate() -> None:
    assert qc.estimate_tokens("你好世界") == 4
    assert qc.estimate_tokens("hello big world") == pytest.approx(3.9)
    assert qc.estimate_tokens("你好, world!") == pytest.approx(2 + 1.3 + 2)


def test_risk_orders_doubtful_first() -> None:
    opts = qc.QcOptions()
    sure = _text("hello there", avg_logprob=-0.1, no_speech_prob=0.01, compression_ratio=1.0)
    unsure = _text("hello there", avg_logprob=-0.8, no_speech_prob=0.4, compression_ratio=1.2)
    r_sure, r_unsure = qc.risk(sure, [], opts), qc.risk(unsure, [], opts)
    assert 0 <= r_sure < r_unsure < 1
    bad = {**sure, "duration": 0.5}
    assert qc.risk(bad, qc.evaluate(bad, opts), opts) >= 1
