"""Front-end features for CosyVoice 3's ONNX models, without torchaudio or openai-whisper.

Two feature types, each numerically the same as what upstream computes with torch:

- :func:`kaldi_fbank`: 80-bin Kaldi filterbank for ``campplus.onnx``, as upstream's
  ``torchaudio.compliance.kaldi.fbank(wave, num_mel_bins=80, dither=0, sample_frequency=16000)``
  (25 ms / 10 ms frames, snip edges, DC removal, pre-emphasis 0.97, povey window, FFT padded to
  512, power spectrum, Kaldi mel banks 20 Hz..Nyquist, log with a float32-epsilon floor).
  Computed by default with this module's vectorized numpy code in float32, which measured
  4-5x faster than kaldi-native-fbank here (its Python API returns one frame per call);
  ``backend="knf"`` uses kaldi-native-fbank instead. Both agree with the float64 reference.
  :func:`cmn` then subtracts the mean over time, as upstream does before the speaker model.
- :func:`whisper_log_mel`: 128-bin log-mel for ``speech_tokenizer_v3.onnx``, as openai-whisper's
  ``log_mel_spectrogram(audio, n_mels=128)`` (n_fft 400, hop 160, periodic Hann window, centred
  STFT with reflect padding, last frame dropped, power, librosa's Slaney mel filterbank,
  log10 of clamp(1e-10), clamp at max - 8, (x + 4) / 4). Returns ``(128, len // 160)``.

:func:`resample` is torchaudio's default ``Resample`` (windowed sinc, Hann window, 6 zero
crossings, rolloff 0.99), which upstream uses for 24 kHz -> 16 kHz in both its offline tools and
its online training path; matching it keeps VoiceLab's tokens those of upstream's online path.

Every function takes a 1-D waveform at 16 kHz in [-1, 1] (upstream feeds torchaudio's float
samples without the 32768 scaling Kaldi itself uses). ``dtype=np.float64`` gives a reference
of the same formulas, which the tests compare the fast path against.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

SAMPLE_RATE = 16000

# ---- Kaldi fbank (torchaudio.compliance.kaldi.fbank defaults) ------------------------------
FBANK_BINS = 80
FRAME_LENGTH = 400  # 25 ms at 16 kHz
FRAME_SHIFT = 160  # 10 ms
PADDED_WINDOW = 512  # round_to_power_of_two
PREEMPH = 0.97
LOW_FREQ = 20.0
FLOAT32_EPS = float(np.finfo(np.float32).eps)  # torch.finfo(torch.float).eps, the log floor

# ---- Whisper log-mel (openai-whisper audio.py) ----------------------------------------------
N_FFT = 400
HOP = 160
WHISPER_MELS = 128


def _as_mono(wave: Any, dtype: Any) -> np.ndarray:
    x = np.asarray(wave, dtype=dtype)
    if x.ndim == 2:  # (channels, samples) as torchaudio, or (samples, channels) as soundfile
        x = x.mean(axis=0 if x.shape[0] < x.shape[1] else 1)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {x.shape}")
    return x


# =============================================================================================
# Resampling (torchaudio.transforms.Resample defaults)
# =============================================================================================


@functools.lru_cache(maxsize=16)
def sinc_resample_kernel(
    orig: int, new: int, lowpass_filter_width: int = 6, rolloff: float = 0.99
) -> tuple[np.ndarray, int, int, int]:
    """Polyphase windowed-sinc kernels ``(new', 2*width + orig')`` float32 for rates reduced by
    their gcd, with ``width``, ``orig'`` and ``new'``: torchaudio's ``sinc_interp_hann``,
    evaluated in float64 and stored as float32 as torchaudio does."""
    g = math.gcd(int(orig), int(new))
    o, n = int(orig) // g, int(new) // g
    base = min(o, n) * rolloff  # below the lower Nyquist: anti-aliasing
    width = math.ceil(lowpass_filter_width * o / base)
    idx = np.arange(-width, width + o, dtype=np.float64)[None, :] / o
    t = (np.arange(0, -n, -1, dtype=np.float64)[:, None] / n + idx) * base
    t = np.clip(t, -lowpass_filter_width, lowpass_filter_width)
    window = np.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    safe = np.where(t == 0, 1.0, t)
    kernels = np.where(t == 0, 1.0, np.sin(safe) / safe) * window * (base / o)
    return kernels.astype(np.float32), width, o, n


def resample(wave: Any, orig: int, new: int) -> np.ndarray:
    """``torchaudio.transforms.Resample(orig, new)(wave)`` for a 1-D float32 waveform:
    ``ceil(len * new / orig)`` samples."""
    x = _as_mono(wave, np.float32)
    if orig == new:
        return x
    kernels, width, o, n = sinc_resample_kernel(orig, new)
    length = len(x)
    padded = np.pad(x, (width, width + o))
    # conv1d with stride o: one row of taps per output block of n samples
    frames = np.lib.stride_tricks.sliding_window_view(padded, kernels.shape[1])[::o]
    out = (frames @ kernels.T).reshape(-1)
    return np.ascontiguousarray(out[: math.ceil(n * length / o)])


# =============================================================================================
# Kaldi fbank
# =============================================================================================


def num_fbank_frames(num_samples: int) -> int:
    """Frames Kaldi produces with ``snip_edges=True``."""
    if num_samples < FRAME_LENGTH:
        return 0
    return 1 + (num_samples - FRAME_LENGTH) // FRAME_SHIFT


def _kaldi_mel(freq: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log(1.0 + freq / 700.0)


@functools.lru_cache(maxsize=4)
def kaldi_mel_banks(num_bins: int = FBANK_BINS, dtype: str = "float64") -> np.ndarray:
    """Kaldi's triangular mel banks, ``(num_bins, PADDED_WINDOW // 2 + 1)``; the Nyquist column
    is zero, as torchaudio pads it (VTLN warp 1.0, so no warping)."""
    num_fft_bins = PADDED_WINDOW // 2
    nyquist = 0.5 * SAMPLE_RATE
    fft_bin_width = SAMPLE_RATE / PADDED_WINDOW
    mel_low, mel_high = _kaldi_mel(np.float64(LOW_FREQ)), _kaldi_mel(np.float64(nyquist))
    delta = (mel_high - mel_low) / (num_bins + 1)
    b = np.arange(num_bins, dtype=np.float64)[:, None]
    left, center, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
    mel = _kaldi_mel(fft_bin_width * np.arange(num_fft_bins, dtype=np.float64))[None, :]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = np.maximum(0.0, np.minimum(up, down))
    out = np.zeros((num_bins, num_fft_bins + 1), dtype=np.float64)
    out[:, :num_fft_bins] = banks
    return out.astype(dtype)


@functools.lru_cache(maxsize=4)
def povey_window(dtype: str = "float64") -> np.ndarray:
    n = np.arange(FRAME_LENGTH, dtype=np.float64)
    hann = 0.5 - 0.5 * np.cos(2.0 * math.pi * n / (FRAME_LENGTH - 1))  # symmetric Hann
    return (hann**0.85).astype(dtype)


def kaldi_fbank_numpy(wave: Any, dtype: Any = np.float32) -> np.ndarray:
    """Kaldi fbank ``(T, 80)`` in numpy. ``dtype=np.float64`` is the test reference."""
    x = _as_mono(wave, dtype)
    n = num_fbank_frames(len(x))
    if n == 0:
        return np.zeros((0, FBANK_BINS), dtype=dtype)
    frames = np.lib.stride_tricks.sliding_window_view(x, FRAME_LENGTH)[::FRAME_SHIFT][:n]
    frames = frames - frames.mean(axis=1, keepdims=True)  # remove DC offset
    # pre-emphasis; Kaldi's first sample uses itself as the previous one
    prev = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = frames - PREEMPH * prev
    frames = frames * povey_window(np.dtype(dtype).name)
    spec = np.fft.rfft(frames, n=PADDED_WINDOW, axis=1)
    power = spec.real**2 + spec.imag**2
    mel = power.astype(dtype) @ kaldi_mel_banks(FBANK_BINS, np.dtype(dtype).name).T
    return np.log(np.maximum(mel, FLOAT32_EPS)).astype(dtype)


def _knf() -> Any:
    try:
        import kaldi_native_fbank
    except ImportError:
        return None
    return kaldi_native_fbank


@functools.lru_cache(maxsize=1)
def _knf_options() -> Any:
    knf = _knf()
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = SAMPLE_RATE
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = True
    opts.frame_opts.frame_length_ms = 25.0
    opts.frame_opts.frame_shift_ms = 10.0
    opts.frame_opts.preemph_coeff = PREEMPH
    opts.frame_opts.remove_dc_offset = True
    opts.frame_opts.window_type = "povey"
    opts.frame_opts.round_to_power_of_two = True
    opts.mel_opts.num_bins = FBANK_BINS
    opts.mel_opts.low_freq = LOW_FREQ
    opts.mel_opts.high_freq = 0.0
    opts.use_energy = False
    opts.use_log_fbank = True
    opts.use_power = True
    return opts


def kaldi_fbank(wave: Any, backend: str = "auto") -> np.ndarray:
    """Kaldi fbank ``(T, 80)`` float32 of a 16 kHz waveform in [-1, 1].

    ``backend``: ``numpy`` (vectorized, the fastest here), ``knf`` (kaldi-native-fbank), or
    ``auto`` (numpy).
    """
    if backend in ("numpy", "auto"):
        return kaldi_fbank_numpy(wave, np.float32)
    knf = _knf()
    if knf is None:
        raise ImportError("kaldi-native-fbank is not installed: pip install kaldi-native-fbank")
    x = _as_mono(wave, np.float32)
    fb = knf.OnlineFbank(_knf_options())
    fb.accept_waveform(SAMPLE_RATE, x)
    fb.input_finished()
    n = fb.num_frames_ready
    out = np.empty((n, FBANK_BINS), dtype=np.float32)
    for i in range(n):
        out[i] = fb.get_frame(i)
    return out


def cmn(feat: np.ndarray) -> np.ndarray:
    """Cepstral mean normalization: subtract the mean over time (upstream's
    ``feat - feat.mean(dim=0, keepdim=True)``)."""
    return feat - feat.mean(axis=0, keepdims=True)


# =============================================================================================
# Whisper log-mel
# =============================================================================================


def _hz_to_mel_slaney(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    return np.where(
        f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-12) / min_log_hz) / logstep, mels
    )


def _mel_to_hz_slaney(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    freqs = f_sp * m
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), freqs)


@functools.lru_cache(maxsize=4)
def slaney_mel_filters(
    n_mels: int = WHISPER_MELS, n_fft: int = N_FFT, sr: int = SAMPLE_RATE
) -> np.ndarray:
    """``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels)`` (Slaney scale and area
    normalization, 0 Hz..Nyquist), which openai-whisper ships as ``mel_filters.npz``:
    computed in float64 and stored as float32, as librosa does. Shape ``(n_mels, n_fft//2+1)``."""
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    mel_pts = np.linspace(_hz_to_mel_slaney(0.0), _hz_to_mel_slaney(sr / 2.0), n_mels + 2)
    mel_f = _mel_to_hz_slaney(mel_pts)
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fftfreqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
    return (weights * enorm[:, None]).astype(np.float32)


@functools.lru_cache(maxsize=4)
def hann_periodic(n: int = N_FFT, dtype: str = "float32") -> np.ndarray:
    """``torch.hann_window(n)`` (periodic)."""
    k = np.arange(n, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * math.pi * k / n)).astype(dtype)


def num_whisper_frames(num_samples: int) -> int:
    """Frames of :func:`whisper_log_mel`: the centred STFT gives 1 + n // 160, minus the last."""
    return num_samples // HOP


def whisper_log_mel(wave: Any, n_mels: int = WHISPER_MELS, dtype: Any = np.float32) -> np.ndarray:
    """openai-whisper's ``log_mel_spectrogram(wave, n_mels)``: ``(n_mels, len // 160)``.

    ``dtype=np.float64`` computes every step in float64 (the test reference); the filterbank is
    float32 in both, as whisper's ``mel_filters.npz`` is.
    """
    x = _as_mono(wave, dtype)
    if len(x) < 2:
        return np.zeros((n_mels, 0), dtype=dtype)
    pad = N_FFT // 2
    if len(x) <= pad:
        raise ValueError(f"waveform of {len(x)} samples is too short for reflect padding")
    padded = np.pad(x, pad, mode="reflect")
    n_frames = num_whisper_frames(len(x))  # 1 + len // HOP frames, the last one dropped
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:n_frames]
    spec = np.fft.rfft(frames * hann_periodic(N_FFT, np.dtype(dtype).name), axis=1)
    power = (spec.real**2 + spec.imag**2).astype(dtype)  # (T, 201)
    mel = slaney_mel_filters(n_mels).astype(dtype) @ power.T  # (n_mels, T)
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(dtype)
