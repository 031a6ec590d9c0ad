"""The audio front end: decode, bring to 24 kHz, pad to whole tokens, resample to 16 kHz exactly
as upstream's online path, and the fbank / log-mel the two models consume."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from voicelab.blocks import audio as au
from voicelab.blocks import fbank

SPEECH_RATE = 24000  # CosyVoice 3's rate; the flow's mel uses hop 480 at this rate

TOKEN_HOP = 960  # 24 kHz samples per speech token (25 Hz)

FEATURE_RATE = fbank.SAMPLE_RATE  # 16 kHz for both ONNX models

MIN_SAMPLE_RATE = 16000  # upstream's resample step drops audio below this rate

MAX_SECONDS = 30.0  # the speech tokenizer's window; upstream gives such audio no tokens


def load_audio(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] and the file's rate (channels averaged, as upstream's
    training pipeline downmixes). The same reader as ``prepare`` (voicelab.blocks.audio), so a
    user's wav.scp may list any format prepare takes (m4a included); raises AudioError."""
    x, sr = au.read_wav_mono(path)
    return np.ascontiguousarray(x), sr


def _resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """torchaudio's default resampler, as upstream's pipeline and tools use (not soxr: the
    tokens should be those upstream's online path computes)."""
    return fbank.resample(x, sr_in, sr_out)


def padded_length(n24: int) -> int:
    """24 kHz length after zero-padding to a multiple of 960 samples (one token)."""
    return math.ceil(n24 / TOKEN_HOP) * TOKEN_HOP


@dataclass
class FrontEnd:
    """What the two models consume for one utterance."""

    fbank: np.ndarray  # (T, 80) float32, mean-normalized
    mel: np.ndarray  # (128, P/240) float32
    n24: int  # 24 kHz samples before padding
    padded24: int  # after padding: a multiple of 960

    @property
    def seconds(self) -> float:
        return self.n24 / SPEECH_RATE

    @property
    def n_tokens(self) -> int:
        return self.padded24 // TOKEN_HOP


def to_24k_padded(x: np.ndarray, sr: int) -> tuple[np.ndarray, int]:
    """(24 kHz audio zero-padded to a multiple of 960, unpadded length)."""
    x24 = _resample(x, sr, SPEECH_RATE)
    peak = float(np.abs(x24).max()) if len(x24) else 0.0
    if peak > 1.0:  # upstream's resample step peak-normalizes what resampling pushed past 1
        x24 = x24 / peak
    n = len(x24)
    p = padded_length(n)
    return (np.pad(x24, (0, p - n)) if p > n else x24), n


def to_16k_exact(x24: np.ndarray) -> np.ndarray:
    """24 kHz -> 16 kHz with exactly 2/3 of the samples (the resampler gives ceil(2n/3), which
    is exact for multiples of 960; the fix-up only guards the padding rule)."""
    want = len(x24) * 2 // 3
    y = _resample(x24, SPEECH_RATE, FEATURE_RATE)
    if len(y) > want:
        y = y[:want]
    elif len(y) < want:
        y = np.pad(y, (0, want - len(y)))
    return y


def front_end(x: np.ndarray, sr: int) -> FrontEnd:
    """Padding rule, resampling and both feature types for one utterance."""
    x24, n24 = to_24k_padded(x, sr)
    x16 = to_16k_exact(x24)
    # The embedding sees the unpadded audio, as upstream's extract_embedding does.
    n16 = min(len(x16), math.ceil(n24 * FEATURE_RATE / SPEECH_RATE))
    fb = fbank.cmn(fbank.kaldi_fbank(x16[:n16]))
    mel = fbank.whisper_log_mel(x16)
    return FrontEnd(fb, mel, n24, len(x24))
