"""The generated corpus is what it claims: durations, rates, channels, hard cases, determinism."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voicelab.testing.corpus import Corpus, build_corpus


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return build_corpus()


def _probe(path: Path) -> tuple[float, int, int]:
    """Independent probe (ffprobe) so the test does not trust the builder's own numbers."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
         "stream=sample_rate,channels:format=duration", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    rate, channels = (int(x) for x in out[0].split(","))
    return float(out[1]), rate, channels


def test_clips_are_what_they_claim(corpus: Corpus) -> None:
    for clip in corpus.clips:
        if clip.kind in ("zero", "corrupt"):
            continue
        dur, rate, channels = _probe(clip.path)
        assert rate == clip.sample_rate, clip.path
        assert channels == clip.channels, clip.path
        # mp3/aac encoders add a few ms of padding.
        assert abs(dur - clip.duration) < 0.1, clip.path


def test_good_clip_durations_and_texts(corpus: Corpus) -> None:
    good = [c for c in corpus.clips if c.kind in ("good", "padded")]
    assert len(good) == 12
    assert all(1.0 <= c.duration <= 12.0 for c in good)
    assert len({c.text for c in good}) == 12
    assert {c.sample_rate for c in good} >= {16000, 22050, 24000, 44100, 48000}
    assert all(c.text for c in corpus.good_clips())


def test_long_recording_and_pauses(corpus: Corpus) -> None:
    wav, sr = sf.read(str(corpus.long_path), dtype="float32")
    assert 120 <= len(wav) / sr <= 180
    assert len(corpus.long_pauses) == len(corpus.long_sentences) - 1
    for start, end in corpus.long_pauses:
        assert 0.6 - 1e-3 <= end - start <= 2.5
        seg = wav[int(start * sr) + 1 : int(end * sr) - 1]
        assert np.abs(seg).max() < 2e-3  # the pause really is silent


def test_hard_cases(corpus: Corpus) -> None:
    hard = corpus.hard
    assert hard["zero"].stat().st_size == 0
    with pytest.raises(sf.LibsndfileError):
        sf.info(str(hard["corrupt"]))
    assert sf.info(str(hard["stereo"])).channels == 2
    assert sf.info(str(hard["narrowband"])).samplerate == 8000
    assert sf.info(str(hard["flac"])).format == "FLAC"
    assert hard["mp3"].suffix == ".mp3" and hard["m4a"].suffix == ".m4a"
    silence, _ = sf.read(str(hard["silence"]))
    assert np.abs(silence).max() == 0.0
    clipped, _ = sf.read(str(hard["clipped"]))
    assert np.mean(np.abs(clipped) > 0.99) > 0.01
    uni = hard["unicode_path"]
    assert " " in str(uni) and "说话人" in str(uni)
    assert sf.info(str(uni)).duration > 1.0


def test_cached_and_deterministic(corpus: Corpus, tmp_path: Path) -> None:
    again = build_corpus()
    assert again.root == corpus.root
    other = build_corpus(tmp_path / "c")

    def digest(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    for a, b in zip(corpus.clips, other.clips, strict=True):
        if a.kind in ("good", "padded", "long", "stereo", "narrowband", "flac", "clipped"):
            assert digest(a.path) == digest(b.path), a.path
    # An incomplete corpus is rebuilt.
    other.clips[0].path.unlink()
    rebuilt = build_corpus(tmp_path / "c")
    assert rebuilt.clips[0].path.is_file()
