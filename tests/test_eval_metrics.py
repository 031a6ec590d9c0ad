"""Evaluation metrics with real models: Whisper base (registry), Resemblyzer's pretrained
speaker encoder (the stand-in for campplus.onnx), DNSMOS from speechmos, on real audio."""

from __future__ import annotations

import math
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("jiwer", reason="the eval extra is not installed: pip install -e '.[eval]'")

from voicelab.errors import EnvironmentProblem
from voicelab.evaluation import metrics as m

EN = [
    "The quick brown fox jumps over the lazy dog.",
    "On March 14, 2025, the 3 engineers shipped version 2.5.",
]
SENTENCES = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It is easy to tell the depth of a well.",
    "Rice is often served in round bowls.",
]


def espeak(text: str, voice: str, tmp: Path) -> tuple[np.ndarray, int]:
    out = tmp / "espeak.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(out), text], check=True)
    audio, sr = sf.read(out, dtype="float32")
    return audio, sr


def shuffled(text: str, by_char: bool) -> str:
    units = list(text) if by_char else text.split()
    random.Random(0).shuffle(units)
    return ("" if by_char else " ").join(units)


# ---- normalization and edit distance (no model) ---------------------------------------------
def test_normalization_numbers_case_punctuation() -> None:
    assert m.error_rate("Hello, World!", "hello world") == 0.0
    # Numbers read either way are the same words.
    assert m.error_rate("I have 3 apples.", "I have three apples") == 0.0
    assert m.error_rate("价格是3元。", "价格是三元") == 0.0
    # Traditional characters and full-width punctuation do not count as errors.
    assert m.error_rate("一二线城市虽然也处于调整中", "一二線城市雖然也處於調整中！") == 0.0
    assert m.error_rate("one two three four", "one two four") == pytest.approx(0.25)
    assert m.error_rate("你好世界", "你好") == pytest.approx(0.5)
    assert m.error_rate("你好世界", "") == 1.0
    assert math.isnan(m.error_rate("。", "x"))
    assert m.scoring_language("今天我们用 Python 训练") == "zh"
    assert m.scoring_language("Hello there") == "en"


def test_cosine_and_centroid() -> None:
    a, b = np.array([1.0, 0.0]), np.array([0.0, 2.0])
    assert m.cosine(a, a * 3) == pytest.approx(1.0)
    assert m.cosine(a, b) == pytest.approx(0.0)
    c = m.centroid([a, b])
    assert np.linalg.norm(c) == pytest.approx(1.0)
    assert m.cosine(c, a) == pytest.approx(m.cosine(c, b))
    assert m.duration_ratio(3.0, 2.0) == 1.5 and math.isnan(m.duration_ratio(3.0, None))


# ---- Whisper base ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def asr() -> m.Asr:
    from voicelab.testing.whisper import whisper_base_dir

    return m.Asr(str(whisper_base_dir()), device="cpu")


def test_wer_english_espeak_and_shuffled(asr: m.Asr, tmp_path: Path) -> None:
    for text in EN:
        audio, sr = espeak(text, "en-us", tmp_path)
        hyp = asr.transcribe(m.to_16k(audio, sr), "en")
        # Measured with Whisper base int8: 0.11 ("dumps") and 0.06 ("free engineers").
        assert m.error_rate(text, hyp) < 0.25, hyp
        # The same transcript against the words of the text in another order: clearly worse.
        assert m.error_rate(shuffled(text, by_char=False), hyp) > 0.45, hyp


def test_cer_mandarin_aishell_and_shuffled(asr: m.Asr) -> None:
    from voicelab.testing.mandarin import aishell_clips

    try:
        clips = aishell_clips()
    except EnvironmentProblem as e:
        pytest.skip(f"AISHELL clips unavailable: {e.one_line()}")
    for wav, ref in clips:
        audio, sr = sf.read(wav, dtype="float32")
        hyp = asr.transcribe(m.to_16k(audio, sr), "zh")
        # Measured: CER 0.08 and 0.15 without an initial prompt.
        assert m.error_rate(ref, hyp) < 0.25, hyp
        assert m.error_rate(shuffled(ref, by_char=True), hyp) > 0.6, hyp


# ---- speaker similarity --------------------------------------------------------------------
def test_resemblyzer_ranks_same_speaker_above_other(tmp_path: Path) -> None:
    pytest.importorskip("resemblyzer", reason="resemblyzer is not installed (test extra)")
    enc = m.ResemblyzerEncoder()
    voices = ("en+m3", "en+f2")
    emb = {v: [enc.embed(*espeak(s, v, tmp_path)) for s in SENTENCES] for v in voices}
    for v, other in (voices, voices[::-1]):
        same = [m.cosine(a, b) for i, a in enumerate(emb[v]) for j, b in enumerate(emb[v]) if i < j]
        diff = [m.cosine(a, b) for a in emb[v] for b in emb[other]]
        # Measured: 0.80 same voice, 0.60 across voices on average (texts differ in both);
        # single pairs overlap (0.71 vs 0.73), so ranking is judged on means and centroids.
        assert np.mean(same) > np.mean(diff) + 0.1, (same, diff)
        # Against each voice's centroid, every clip is closer to its own.
        for e in emb[v]:
            assert m.cosine(e, m.centroid(emb[v])) > m.cosine(e, m.centroid(emb[other]))


def test_campplus_encoder_interface(onnx_dir: Path, tmp_path: Path) -> None:
    """The ONNX path runs with campplus' interface (a tiny stand-in: shapes, not quality)."""
    enc = m.load_encoder("campplus", onnx_dir, device="cpu")
    audio, sr = espeak(SENTENCES[0], "en+m3", tmp_path)
    e = enc.embed(audio, sr)
    assert e.shape == (192,) and np.linalg.norm(e) == pytest.approx(1.0)


# ---- DNSMOS --------------------------------------------------------------------------------
def test_dnsmos_clean_above_noisy(tmp_path: Path) -> None:
    pytest.importorskip("speechmos", reason="speechmos is not installed (eval extra)")
    audio, sr = espeak(" ".join(SENTENCES[:2]), "en+m3", tmp_path)
    clean = m.to_16k(audio, sr)
    noise = np.random.default_rng(0).normal(0, 0.05, len(clean)).astype(np.float32)
    a, b = m.dnsmos(clean), m.dnsmos(np.clip(clean + noise, -1, 1))
    # Measured: OVRL 2.78 clean, 1.68 with noise; BAK 3.85 vs 1.61.
    assert a["ovrl"] > b["ovrl"] + 0.5 and a["bak"] > b["bak"] + 1.0, (a, b)
    assert all(1.0 <= v <= 5.0 for v in a.values())
