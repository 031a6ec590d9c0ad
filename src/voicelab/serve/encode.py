"""Audio for HTTP answers: the OpenAI formats (wav, mp3, opus, flac, pcm) from float32 mono.

soundfile is used for every format: its wheels bundle libsndfile >= 1.1, which writes MP3 (LAME)
and Ogg Opus itself, so the common case needs no ffmpeg process per request. An older system
libsndfile (a distro soundfile built without the MP3/Opus codecs) lacks them: then ffmpeg
encodes, and :func:`check_encoders` names the missing piece when neither can.

Streaming (``stream: true``) is for ``pcm`` and ``wav`` only: both are plain 16-bit samples, so
each chunk is encoded on its own as it comes; the wav header then says "length unknown"
(0xFFFFFFFF), as OpenAI's own streamed wav does and players accept.
"""

from __future__ import annotations

import functools
import io
import shutil
import struct
import subprocess

import numpy as np

from voicelab.errors import EnvironmentProblem

# format -> (content type, soundfile container, subtype)
FORMATS: dict[str, tuple[str, str, str]] = {
    "wav": ("audio/wav", "WAV", "PCM_16"),
    "mp3": ("audio/mpeg", "MP3", "MPEG_LAYER_III"),
    "opus": ("audio/ogg", "OGG", "OPUS"),
    "flac": ("audio/flac", "FLAC", "PCM_16"),
    "pcm": ("audio/pcm", "RAW", "PCM_16"),
}
STREAMABLE = ("pcm", "wav")
# Ogg Opus runs at these rates only (24 kHz, the model's, is one of them).
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
_FFMPEG_ARGS = {
    "mp3": ["-f", "mp3", "-c:a", "libmp3lame", "-b:a", "128k"],
    "opus": ["-f", "ogg", "-c:a", "libopus", "-b:a", "48k"],
}


def content_type(fmt: str) -> str:
    return FORMATS[fmt][0]


def pcm16(audio: np.ndarray) -> bytes:
    """Little-endian signed 16-bit samples (OpenAI's ``pcm``: 24 kHz mono, no header)."""
    clipped = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    return (clipped * 32767.0).round().astype("<i2").tobytes()


def wav_stream_header(sample_rate: int) -> bytes:
    """A 16-bit mono wav header whose sizes say "unknown" (streamed; length not known yet)."""
    unknown = 0xFFFFFFFF
    fmt = struct.pack("<HHIIHH", 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", unknown)
        + b"WAVEfmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", unknown)
    )


@functools.cache
def _soundfile_can(fmt: str) -> bool:
    import soundfile as sf

    _, container, subtype = FORMATS[fmt]
    try:
        return subtype in sf.available_subtypes(container)
    except Exception:  # an old libsndfile that does not know the container at all
        return False


def check_encoders() -> dict[str, str]:
    """``{format: "soundfile" | "ffmpeg"}``; EnvironmentProblem naming a format nothing writes."""
    how = {}
    for fmt in FORMATS:
        if fmt in ("pcm", "wav") or _soundfile_can(fmt):
            how[fmt] = "soundfile"
        elif fmt in _FFMPEG_ARGS and shutil.which("ffmpeg"):
            how[fmt] = "ffmpeg"
        else:
            raise EnvironmentProblem(
                f"this libsndfile cannot write {fmt} and there is no ffmpeg",
                "pip install -U soundfile (its wheel bundles a libsndfile with MP3 and Opus), "
                "or install ffmpeg",
            )
    return how


def _ffmpeg(audio: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "s16le", "-ar"]
    cmd += [str(sample_rate), "-ac", "1", "-i", "pipe:0", *_FFMPEG_ARGS[fmt], "pipe:1"]
    done = subprocess.run(cmd, input=pcm16(audio), capture_output=True, check=False)
    if done.returncode != 0:
        first = (done.stderr.decode(errors="replace").strip().splitlines() or ["?"])[0]
        raise EnvironmentProblem(f"ffmpeg could not encode {fmt}: {first}", "check ffmpeg")
    return done.stdout


def encode(audio: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """The whole answer in ``fmt`` (a key of :data:`FORMATS`)."""
    import soundfile as sf

    if fmt == "pcm":
        return pcm16(audio)
    if fmt == "opus" and sample_rate not in OPUS_RATES:
        raise ValueError(f"Opus cannot run at {sample_rate} Hz")
    if fmt != "wav" and not _soundfile_can(fmt):
        return _ffmpeg(audio, sample_rate, fmt)
    _, container, subtype = FORMATS[fmt]
    buf = io.BytesIO()
    clipped = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    sf.write(buf, clipped, sample_rate, format=container, subtype=subtype)
    return buf.getvalue()
