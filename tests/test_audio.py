"""Audio intake on the generated corpus: every format decodes, bad files say why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voicelab.blocks import audio as au
from voicelab.testing.corpus import Corpus, build_corpus


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return build_corpus()


@pytest.mark.parametrize("kind", ["stereo", "mp3", "flac", "ogg", "m4a", "unicode_path"])
def test_decode_formats(corpus: Corpus, kind: str) -> None:
    clip = corpus.clip(kind)
    dec = au.decode(clip.path)
    assert dec.sample_rate == clip.sample_rate
    assert dec.channels == clip.channels
    assert abs(dec.duration - clip.duration) < 0.1
    assert dec.samples.dtype == np.float32
    info = au.probe(clip.path)
    assert (info.sample_rate, info.channels) == (clip.sample_rate, clip.channels)
    assert abs(info.duration - clip.duration) < 0.1


def test_m4a_goes_through_ffmpeg(corpus: Corpus) -> None:
    # libsndfile cannot read AAC: the fallback must give the same audio as the wav it came from.
    with pytest.raises(sf.LibsndfileError):
        sf.info(str(corpus.hard["m4a"]))
    assert au.probe(corpus.hard["m4a"]).format.startswith("ffmpeg:")
    m4a = au.to_mono(au.decode(corpus.hard["m4a"]).samples)
    flac = au.to_mono(au.decode(corpus.hard["flac"]).samples)
    n = min(m4a.size, flac.size)
    # AAC adds a priming delay; compare loudness, not samples.
    assert abs(np.sqrt(np.mean(m4a[:n] ** 2)) - np.sqrt(np.mean(flac[:n] ** 2))) < 0.02


def test_bad_files_have_reasons(corpus: Corpus, tmp_path: Path) -> None:
    with pytest.raises(au.AudioError) as e:
        au.decode(corpus.hard["zero"])
    assert e.value.reason == "zero_length"
    with pytest.raises(au.AudioError) as e:
        au.decode(corpus.hard["corrupt"])
    assert e.value.reason == "corrupt"
    assert str(corpus.hard["corrupt"]) not in e.value.detail  # the path is said once, not twice
    with pytest.raises(au.AudioError) as e:
        au.probe(corpus.hard["corrupt"])
    assert e.value.reason == "corrupt"
    header_only = tmp_path / "empty.wav"
    sf.write(str(header_only), np.zeros(0, np.int16), 16000)
    with pytest.raises(au.AudioError) as e:
        au.decode(header_only)
    assert e.value.reason == "zero_length"
    with pytest.raises(au.AudioError) as e:
        au.decode(tmp_path / "missing.wav")
    assert e.value.reason == "missing"


def test_downmix_and_resample(corpus: Corpus) -> None:
    dec = au.decode(corpus.hard["stereo"])
    mono = au.to_mono(dec.samples)
    assert mono.ndim == 1 and mono.size == dec.samples.shape[0]
    np.testing.assert_allclose(mono, dec.samples.mean(axis=1), atol=1e-6)
    y = au.resample(mono, dec.sample_rate, au.TARGET_SR)
    assert abs(y.size - round(mono.size * au.TARGET_SR / dec.sample_rate)) <= 1
    assert au.resample(y, au.TARGET_SR, au.TARGET_SR) is y or np.shares_memory(
        au.resample(y, au.TARGET_SR, au.TARGET_SR), y
    )
    # A 1 kHz tone keeps its frequency through 44.1 kHz -> 24 kHz.
    t = np.arange(44100) / 44100
    tone = au.resample(np.sin(2 * np.pi * 1000 * t).astype(np.float32), 44100, 24000)
    spec = np.abs(np.fft.rfft(tone))
    assert abs(np.argmax(spec) * 24000 / tone.size - 1000) < 2


def test_trim_silence(corpus: Corpus) -> None:
    clip = corpus.clip("padded")  # 1.5 s of silence added on both sides
    x, sr = au.read_wav_mono(clip.path)
    start, end = au.trim_silence(x, sr, pad_s=0.1)
    assert 1.3 <= start / sr <= 1.6
    assert 1.3 <= (x.size - end) / sr <= 2.0  # espeak-ng's own tail adds ~0.3 s
    assert au.trim_silence(np.zeros(16000, np.float32), 16000) == (0, 0)


def test_write_wav_pcm16_atomic(tmp_path: Path) -> None:
    x = np.concatenate([np.linspace(-1.2, 1.2, 24000, dtype=np.float32)])
    out = au.write_wav(tmp_path / "a b" / "片段.wav", x, 24000)
    info = sf.info(str(out))
    assert (info.samplerate, info.channels, info.subtype) == (24000, 1, "PCM_16")
    y, _ = sf.read(str(out), dtype="int16")
    assert y.max() == 32767 and y.min() == -32768  # clipped, not wrapped
    assert not [p for p in out.parent.iterdir() if p.name != out.name]  # no temp files left


@pytest.mark.parametrize("kind", ["stereo", "m4a", "mp3", "good"])
def test_streaming_intake_matches_one_shot(corpus: Corpus, kind: str) -> None:
    clip = corpus.clip(kind)
    dec = au.decode(clip.path)
    x24 = au.resample(au.to_mono(dec.samples), dec.sample_rate, au.TARGET_SR)
    x16 = au.resample(x24, au.TARGET_SR, au.ASR_SR)
    # Blocks of 0.37 s: many block edges, for both the soundfile and the ffmpeg path.
    src = au.load_for_intake(clip.path, block_seconds=0.37)
    assert (src.sample_rate, src.channels) == (dec.sample_rate, dec.channels)
    assert src.frames == dec.samples.shape[0]
    assert abs(src.x24.size - x24.size) <= 2 and abs(src.x16.size - x16.size) <= 2
    n = min(src.x24.size, x24.size)
    assert np.max(np.abs(src.x24[:n] - x24[:n])) < 2e-3
    whole = au.load_for_intake(clip.path)
    np.testing.assert_allclose(whole.x24[:n], src.x24[:n], atol=2e-3)
    assert src.clip_counts.size == -(-src.frames // src.frame_len)


def test_streaming_intake_clip_profile(tmp_path: Path) -> None:
    sr = 22050
    x = np.zeros(sr * 2, np.float32)
    x[sr : sr + 2205] = 1.0  # 100 ms at full scale, from 1.0 s to 1.1 s
    path = tmp_path / "c.wav"
    sf.write(str(path), x, sr, subtype="FLOAT")
    src = au.load_for_intake(path, block_seconds=0.3)
    assert src.clip_ratio(0.0, 0.98) == 0.0
    assert src.clip_ratio(1.0, 1.1) > 0.85  # 10 ms frame granularity at the edges
    assert src.clip_ratio(0.0, 2.0) == pytest.approx(0.05, abs=0.005)
    with pytest.raises(au.AudioError) as e:
        au.load_for_intake(tmp_path / "missing.wav")
    assert e.value.reason == "missing"


# ---- issue 15 items 1-2: damaged files never hang, crash or talk to the terminal ---------------


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from voicelab.testing.corpus import write_damaged

    return write_damaged(tmp_path_factory.mktemp("damaged"))


def test_damaged_aac_does_not_hang(damaged: dict[str, Path]) -> None:
    # ffmpeg writes ~400 KB of errors for this file: a stderr pipe read only at the end fills
    # and both processes wait forever. A child process, so a regression fails instead of hanging.
    code = (
        "import sys\nfrom voicelab.blocks import audio as au\n"
        "try:\n    au.load_for_intake(sys.argv[1])\n"
        "except au.AudioError as e:\n    print(e.reason)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(damaged["aac"])],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "corrupt"
    with pytest.raises(au.AudioError) as e:
        au.decode(damaged["aac"])
    assert e.value.reason == "corrupt"


def test_ffmpeg_decode_has_a_time_limit(damaged: dict[str, Path]) -> None:
    info = au.probe(damaged["aac"])
    assert au.decode_timeout(info) < 1000  # a limit exists and scales with the length
    with pytest.raises(au.AudioError, match="did not finish within"):
        list(au._ffmpeg_blocks(damaged["aac"], info, 1 << 16, timeout=0.001))


@pytest.mark.parametrize("kind", ["text_flac", "mp3"])
def test_unreadable_files_are_corrupt_without_noise(
    damaged: dict[str, Path], kind: str, capfd: pytest.CaptureFixture[str]
) -> None:
    for fn in (au.load_for_intake, au.decode, au.probe):
        with pytest.raises(au.AudioError) as e:
            fn(damaged[kind])
        assert e.value.reason == "corrupt", e.value.detail
    # Nothing the native decoders print may reach the terminal (fd 2, not just sys.stderr).
    err = capfd.readouterr().err
    assert "mpg123" not in err and "MPEG" not in err, err
