"""Writing what was spoken: 24 kHz wavs, streamed or whole, one per line or joined."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from voicelab.fsutil import atomic_path
from voicelab.paths import safe_name

if TYPE_CHECKING:
    pass


# ---- audio files ----------------------------------------------------------------------------
def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> Path:
    """16-bit PCM wav (plays everywhere, browsers included), written atomically."""
    import soundfile as sf

    with atomic_path(path) as tmp:
        sf.write(tmp, np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16")
    return path


class StreamingWav:
    """A wav file that grows chunk by chunk (``--stream``): each chunk is written and flushed,
    so players and other programs can read the audio so far. Not atomic by design: an
    interrupted run leaves the audio spoken until then."""

    def __init__(self, path: Path, sample_rate: int) -> None:
        import soundfile as sf

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._f = sf.SoundFile(path, "w", samplerate=sample_rate, channels=1, subtype="PCM_16")

    def write(self, chunk: np.ndarray) -> None:
        self._f.write(np.clip(chunk, -1.0, 1.0))
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def output_paths(out: Path, texts: list[str]) -> list[Path]:
    """One wav per utterance: ``out`` itself for one text given as a ``.wav``, numbered files
    beside it for several, or ``NNN-<text>.wav`` inside ``out`` when it is a folder."""
    if out.suffix.lower() == ".wav":
        if len(texts) == 1:
            return [out]
        return [out.with_name(f"{out.stem}-{i:03d}.wav") for i in range(1, len(texts) + 1)]
    return [out / f"{i:03d}-{safe_name(t, 40)}.wav" for i, t in enumerate(texts, 1)]


def join_path(out: Path) -> Path:
    return (
        out.with_name(f"{out.stem}-joined.wav")
        if out.suffix.lower() == ".wav"
        else out / "joined.wav"
    )


def join_audio(parts: list[np.ndarray], sample_rate: int, pause: float) -> np.ndarray:
    gap = np.zeros(round(max(0.0, pause) * sample_rate), dtype=np.float32)
    pieces: list[np.ndarray] = []
    for i, p in enumerate(parts):
        if i:
            pieces.append(gap)
        pieces.append(p.astype(np.float32))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
