"""Silero VAD v6 (ONNX) and segmentation at pauses, on the generated corpus."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from voicelab.blocks import audio as au
from voicelab.blocks import vad
from voicelab.errors import ConfigError
from voicelab.testing.corpus import Corpus, build_corpus


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return build_corpus()


@pytest.fixture(scope="module")
def long16(corpus: Corpus) -> tuple[np.ndarray, list[tuple[int, int]], np.ndarray]:
    x, _ = au.read_wav_mono(corpus.long_path, vad.VAD_SR)
    probs = vad.speech_probs(x)
    return x, vad.speech_intervals(probs), vad.frame_energy(x)


def test_model_interface_and_probs(corpus: Corpus) -> None:
    sess = vad._session(1)
    assert sess.input_names == ["input", "h", "c"]
    assert vad.speech_probs(np.zeros(16000, np.float32)).max() < 0.2
    x, _ = au.read_wav_mono(corpus.clip("good").path, vad.VAD_SR)
    probs = vad.speech_probs(x)
    assert probs.size == -(-x.size // vad.WINDOW)
    assert probs.max() > 0.9


def _in_pause(t: float, pauses: list[tuple[float, float]]) -> bool:
    return any(a <= t <= b for a, b in pauses)


def _check_cuts(segs: list[vad.Segment], corpus: Corpus, sr: int, max_s: float) -> None:
    assert all(s.length / sr <= max_s + 0.41 for s in segs)  # + padding
    assert all(s.length / sr <= vad.HARD_MAX_SECONDS for s in segs)
    assert not any(s.forced_cut for s in segs)
    for a, b in itertools.pairwise(segs):
        assert a.end <= b.start
        # The cut (middle of the gap between two segments) and both edges lie in an inserted
        # pause: speech is never cut.
        for t in (a.end / sr, b.start / sr, (a.end + b.start) / 2 / sr):
            assert _in_pause(t, corpus.long_pauses), t


def test_long_recording_cut_at_pauses(corpus: Corpus, long16) -> None:
    x, intervals, energy = long16
    segs = vad.plan_segments(intervals, x.size, energy, vad.SegmentOptions(), sr=au.TARGET_SR)
    # Sentences of 3-5 s separated by >= 0.6 s pauses: one utterance per sentence.
    assert len(segs) == len(corpus.long_sentences)
    assert all(s.length / au.TARGET_SR >= 2.0 for s in segs)
    _check_cuts(segs, corpus, au.TARGET_SR, 20.0)


def test_short_max_merges_nothing_over_max(corpus: Corpus, long16) -> None:
    x, intervals, energy = long16
    opts = vad.SegmentOptions(min_seconds=6.0, max_seconds=12.0)
    segs = vad.plan_segments(intervals, x.size, energy, opts, sr=vad.VAD_SR)
    assert len(segs) < len(corpus.long_sentences)  # short sentences were merged
    _check_cuts(segs, corpus, vad.VAD_SR, 12.0)
    # A short sentence stays alone only when both neighbours are already too long to take it.
    short = [s for s in segs if s.speech_end - s.speech_start < 6 * vad.VAD_SR]
    assert len(short) <= 2


def test_clip_in_range_passes_whole(corpus: Corpus) -> None:
    clip = corpus.clip("padded")
    x, _ = au.read_wav_mono(clip.path, vad.VAD_SR)
    iv = vad.speech_intervals(vad.speech_probs(x))
    segs = vad.plan_segments(iv, x.size, vad.frame_energy(x))
    assert len(segs) == 1
    s = segs[0]
    # Leading/trailing 1.5 s of silence trimmed down to the pad.
    assert 1.0 < s.start / vad.VAD_SR < 1.5 and 1.0 < (x.size - s.end) / vad.VAD_SR < 2.0


def test_forced_cut_at_quietest_point() -> None:
    sr = vad.VAD_SR
    n = 50 * sr
    energy = np.ones(n // vad.FRAME)
    dip = int(17.3 * sr) // vad.FRAME
    energy[dip] = 1e-6
    segs = vad.plan_segments([(0, n)], n, energy, vad.SegmentOptions(max_seconds=20.0))
    assert all(s.length <= 20 * sr for s in segs)
    assert segs[0].forced_cut and abs(segs[0].end / sr - 17.3) < 0.02
    assert segs[0].end == segs[1].start  # no samples lost or doubled at a forced cut


def test_short_fragments_merged() -> None:
    sr = vad.VAD_SR

    def s(t: float) -> int:
        return int(t * sr)

    # 1 s, 0.6 s pause, 0.5 s, 0.7 s pause, 8 s, 3 s pause, 14 s, 0.8 s pause, 1 s: > 20 s.
    iv = [(s(0), s(1)), (s(1.6), s(2.1)), (s(2.8), s(10.8)), (s(13.8), s(27.8)), (s(28.6), s(29.6))]
    n = s(30)
    segs = vad.plan_segments(iv, n, np.ones(n // vad.FRAME), vad.SegmentOptions())
    spans = [(a.speech_start / sr, a.speech_end / sr) for a in segs]
    # The two short pieces at the start join across the shorter pause; the last joins the 14 s.
    assert spans == [(0.0, 2.1), (2.8, 10.8), (13.8, 29.6)]
    assert 10.8 < segs[1].end / sr <= 11.0 and 13.6 <= segs[2].start / sr < 13.8


def test_options_checked() -> None:
    with pytest.raises(ConfigError):
        vad.SegmentOptions(max_seconds=40).check()
    with pytest.raises(ConfigError):
        vad.SegmentOptions(min_seconds=5, max_seconds=4).check()


def test_speech_mask_and_intervals_hysteresis() -> None:
    probs = np.array([0.1, 0.9, 0.9, 0.4, 0.9, 0.2, 0.1, 0.1, 0.9, 0.95, 0.9, 0.9, 0.1, 0.1])
    probs = np.concatenate([probs, [0.1, 0.9, 0.1, 0.1, 0.1]])
    iv = vad.speech_intervals(probs, vad.VadOptions(min_silence_seconds=0.06))
    w = vad.WINDOW
    # 0.4 is above neg_threshold: speech continues through it; two windows < 0.35 end it;
    # a single 32 ms blip (a click) is shorter than min_speech_seconds and dropped.
    assert iv == [(1 * w, 5 * w), (8 * w, 12 * w)]
    mask = vad.speech_mask(iv, 13 * w // vad.FRAME)
    assert mask[w // vad.FRAME] and not mask[6 * w // vad.FRAME]
