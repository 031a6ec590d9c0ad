"""Kaldi fbank and Whisper log-mel: fast paths against a float64 reference of the same formulas,
and against torchaudio / openai-whisper where those are installed (the vendor environment).

Tolerances (absolute, on the features the models see):
- Kaldi fbank (natural-log mel energies, range about -16..+10): float32 numpy and
  kaldi-native-fbank within 2e-3 of the float64 reference and of torchaudio (measured: 2e-4
  numpy, 4e-4 knf, 7e-4 torchaudio-vs-knf on espeak-ng speech).
- Whisper log-mel (after (x + 4) / 4, range about -1.5..+1.5): within 1e-4 of the float64
  reference and of openai-whisper (measured: 8e-6 and 3e-5).
- Resampling (torchaudio's default sinc): within 2e-5 of ``torchaudio.transforms.Resample``
  (measured: 1e-7 for 24 -> 16 kHz, 7e-6 for 22.05 -> 24 kHz, whose kernel has 455 taps).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from voicelab.blocks import fbank as F

FBANK_ATOL = 2e-3
LOGMEL_ATOL = 1e-4


@pytest.fixture(scope="module")
def speech16k(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """A few seconds of espeak-ng speech at 16 kHz, float32 in [-1, 1]."""
    if not shutil.which("espeak-ng"):
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    import soundfile as sf
    import soxr

    wav = tmp_path_factory.mktemp("fbank") / "s.wav"
    text = "The quick brown fox jumps over the lazy dog. Hello world, this is a test."
    subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, capture_output=True)
    x, sr = sf.read(wav, dtype="float32")
    return soxr.resample(x, sr, 16000).astype(np.float32)


def _signals(speech: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(0)
    t = np.arange(16000 * 2) / 16000
    sig = {
        "speech": speech,
        "noise": (rng.randn(16000) * 0.1).astype(np.float32),
        "sine": (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
        # padded speech: digital silence at the end, as the 960-sample padding adds
        "speech+zeros": np.concatenate([speech[:12345], np.zeros(3000, np.float32)]),
        "odd_length": speech[:16001],
    }
    return sig


def test_kaldi_fbank_matches_float64_reference(speech16k: np.ndarray) -> None:
    for name, x in _signals(speech16k).items():
        ref = F.kaldi_fbank_numpy(x, np.float64)
        assert ref.shape == (F.num_fbank_frames(len(x)), 80), name
        fast = F.kaldi_fbank(x)
        assert fast.dtype == np.float32
        np.testing.assert_allclose(fast, ref, atol=FBANK_ATOL, rtol=0, err_msg=name)
        if importlib.util.find_spec("kaldi_native_fbank"):
            knf = F.kaldi_fbank(x, backend="knf")
            np.testing.assert_allclose(knf, ref, atol=FBANK_ATOL, rtol=0, err_msg=f"knf {name}")


def test_kaldi_fbank_frames_and_cmn() -> None:
    assert F.num_fbank_frames(399) == 0
    assert F.num_fbank_frames(400) == 1
    assert F.num_fbank_frames(16000) == 98  # 1 + (16000 - 400) // 160
    assert F.kaldi_fbank(np.zeros(100, np.float32)).shape == (0, 80)
    feat = F.kaldi_fbank(np.random.RandomState(1).randn(8000).astype(np.float32))
    normed = F.cmn(feat)
    np.testing.assert_allclose(normed.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(normed, feat - feat.mean(axis=0), atol=1e-6)


def test_kaldi_mel_banks_shape() -> None:
    banks = F.kaldi_mel_banks()
    assert banks.shape == (80, 257)
    assert (banks[:, -1] == 0).all()  # torchaudio pads a zero Nyquist column
    assert (banks >= 0).all() and (banks.max(axis=1) > 0.4).all()  # sampled triangles


def test_whisper_log_mel_matches_float64_reference(speech16k: np.ndarray) -> None:
    for name, x in _signals(speech16k).items():
        ref = F.whisper_log_mel(x, dtype=np.float64)
        fast = F.whisper_log_mel(x)
        assert fast.shape == (128, len(x) // 160), name
        assert fast.dtype == np.float32
        np.testing.assert_allclose(fast, ref, atol=LOGMEL_ATOL, rtol=0, err_msg=name)
        # the (max - 8) clamp and scaling
        assert fast.max() - fast.min() <= 2.0 + 1e-5


def test_slaney_filters_properties() -> None:
    fil = F.slaney_mel_filters(128)
    assert fil.shape == (128, 201) and fil.dtype == np.float32
    assert (fil >= 0).all() and (fil.sum(axis=1) > 0).all()
    # Slaney area normalization: each triangle's area in Hz is 1 (up to the bin sampling)
    area = fil.sum(axis=1) * (16000 / 400)
    assert np.median(np.abs(area - 1)) < 0.05


def test_padded_speech_frame_arithmetic() -> None:
    """P samples at 24 kHz (a multiple of 960) -> 2P/3 at 16 kHz -> P/240 log-mel frames."""
    for p in (960, 960 * 7, 960 * 313):
        n16 = p * 2 // 3
        assert F.num_whisper_frames(n16) == p // 240
        assert F.num_whisper_frames(n16) % 4 == 0


# ---- against torchaudio / openai-whisper (vendor environment) --------------------------------


def test_against_torchaudio_and_whisper(speech16k: np.ndarray) -> None:
    missing = [m for m in ("torch", "torchaudio", "whisper") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not installed here; run in the vendor venv: "
            "python -m pytest tests/test_fbank.py"
        )
    import torch
    import torchaudio
    import whisper

    for name, x in _signals(speech16k).items():
        ta = torchaudio.compliance.kaldi.fbank(
            torch.from_numpy(x)[None], num_mel_bins=80, dither=0, sample_frequency=16000
        ).numpy()
        np.testing.assert_allclose(F.kaldi_fbank(x), ta, atol=FBANK_ATOL, rtol=0, err_msg=name)
        wm = whisper.log_mel_spectrogram(torch.from_numpy(x), n_mels=128).numpy()
        np.testing.assert_allclose(F.whisper_log_mel(x), wm, atol=LOGMEL_ATOL, rtol=0, err_msg=name)
    from whisper.audio import mel_filters

    np.testing.assert_allclose(
        F.slaney_mel_filters(128), mel_filters("cpu", 128).numpy(), atol=1e-7, rtol=0
    )
    if importlib.util.find_spec("librosa"):
        import librosa

        ref = librosa.filters.mel(sr=16000, n_fft=400, n_mels=128)
        np.testing.assert_allclose(F.slaney_mel_filters(128), ref, atol=1e-7, rtol=0)


def test_resample_lengths_and_a_sine() -> None:
    for orig, new, n in ((24000, 16000, 960 * 5), (44100, 24000, 12345), (22050, 24000, 999)):
        y = F.resample(np.zeros(n, np.float32), orig, new)
        assert len(y) == -(-n * new // orig)  # ceil, as torchaudio
    t24 = np.arange(24000) / 24000
    t16 = np.arange(16000) / 16000
    y = F.resample(np.sin(2 * np.pi * 1000 * t24).astype(np.float32), 24000, 16000)
    np.testing.assert_allclose(y[200:-200], np.sin(2 * np.pi * 1000 * t16)[200:-200], atol=2e-3)
    assert F.resample(np.ones(10, np.float32), 16000, 16000).tolist() == [1.0] * 10


def test_resample_against_torchaudio() -> None:
    if importlib.util.find_spec("torchaudio") is None:
        pytest.skip("torchaudio not installed here; run in the vendor venv")
    import torch
    import torchaudio

    rng = np.random.RandomState(3)
    for orig, new in ((24000, 16000), (44100, 24000), (22050, 24000), (16000, 24000)):
        x = (rng.randn(20000) * 0.3).astype(np.float32)
        ref = torchaudio.transforms.Resample(orig, new)(torch.from_numpy(x)[None])[0].numpy()
        np.testing.assert_allclose(F.resample(x, orig, new), ref, atol=2e-5, rtol=0)


def test_hann_and_povey_windows() -> None:
    w = F.hann_periodic(400)
    assert w[0] == 0 and abs(w[200] - 1) < 1e-6
    p = F.povey_window()
    assert p.shape == (400,) and p[0] == 0 and p[-1] < 1e-12


def test_path_independence(tmp_path: Path) -> None:
    """Stereo input is averaged (upstream downmixes by channel mean), in either layout. The two
    channels differ, so a first-channel-only (or last-channel-only) downmix fails."""
    rng = np.random.RandomState(2)
    a = rng.randn(8000).astype(np.float32) * 0.1
    b = rng.randn(8000).astype(np.float32) * 0.05
    mean = (a + b) / 2
    for fn in (F.kaldi_fbank, F.whisper_log_mel):
        want = fn(mean)
        for stereo in (np.stack([a, b]), np.stack([a, b], axis=1)):  # torchaudio / soundfile
            np.testing.assert_allclose(fn(stereo), want, atol=1e-5)
        assert not np.allclose(fn(a), want, atol=1e-3)  # the channels really differ
