"""Voice activity detection (Silero VAD v6, ONNX, no torch) and segmentation at pauses.

The model is the ``silero_vad_v6.onnx`` that faster-whisper ships. Its interface (checked with
onnxruntime): ``input`` float32 (N, 576) = N windows of 512 samples at 16 kHz, each preceded by
the last 64 samples of the window before it (the "context"); ``h``/``c`` float32 (1, 1, 128)
LSTM state; outputs ``speech_probs`` (N,) and the new state. Windows are fed as one batch (the
encoder runs over the batch, the LSTM carries its state across it), which is what makes the VAD
run at several hundred times real time on one core.

Segmentation (:func:`plan_segments`) turns speech intervals into utterances:

1. a recording whose speech fits in ``max_seconds`` passes through whole (only trimmed);
2. otherwise it is cut at every pause of at least ``split_pause`` seconds (sentence pauses);
3. pieces shorter than ``min_seconds`` are merged with the neighbour across the shorter pause,
   as long as the result stays within ``max_seconds``;
4. pieces still longer than ``max_seconds`` are cut at their longest inner pause, recursively;
5. speech with no pause at all within ``max_seconds`` is cut at the quietest 10 ms frame of the
   window and the segment is flagged ``forced_cut``.
Cut points lie in the middle of pauses; each segment keeps up to ``pad_seconds`` of silence.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voicelab.errors import ConfigError, EnvironmentProblem

VAD_SR = 16000
WINDOW = 512  # samples per VAD decision (32 ms)
CONTEXT = 64  # samples of the previous window the v6 model expects in front of each window
BATCH = 1000  # windows per session call (32 s of audio; larger batches are no faster)
FRAME = 160  # 10 ms energy frames at 16 kHz
HARD_MAX_SECONDS = 30.0  # the speech tokenizer refuses longer clips


def model_path() -> Path:
    """The Silero VAD v6 ONNX inside the installed faster-whisper (found without importing it,
    which would load ctranslate2)."""
    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or not spec.submodule_search_locations:
        raise EnvironmentProblem(
            "faster-whisper is not installed (its Silero VAD model is needed to segment audio)",
            "pip install -e '.[asr]'",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "assets" / "silero_vad_v6.onnx"
    if not path.is_file():
        raise EnvironmentProblem(
            f"faster-whisper has no {path.name}", "pip install -U 'faster-whisper>=1.2'"
        )
    return path


@functools.lru_cache(maxsize=4)
def _session(threads: int) -> Any:
    from voicelab.blocks.onnxrt import create_session

    # The VAD is small and sequential in its LSTM: the CPU is faster than a GPU round trip.
    return create_session(model_path(), device="cpu", threads=threads)


def speech_probs(x16: np.ndarray, threads: int = 1) -> np.ndarray:
    """Speech probability per 512-sample window of 16 kHz mono float32 audio."""
    x = np.asarray(x16, dtype=np.float32)
    if x.size == 0:
        return np.zeros(0, np.float32)
    n = -(-x.size // WINDOW)
    padded = np.zeros(n * WINDOW, np.float32)
    padded[: x.size] = x
    windows = padded.reshape(n, WINDOW)
    context = np.zeros((n, CONTEXT), np.float32)
    context[1:] = windows[:-1, -CONTEXT:]
    batched = np.concatenate([context, windows], axis=1)
    sess = _session(threads)
    h = np.zeros((1, 1, 128), np.float32)
    c = np.zeros((1, 1, 128), np.float32)
    out = []
    for i in range(0, n, BATCH):
        probs, h, c = sess.run({"input": batched[i : i + BATCH], "h": h, "c": c})
        out.append(np.asarray(probs, dtype=np.float32).reshape(-1))
    return np.concatenate(out)


@dataclass(frozen=True)
class VadOptions:
    threshold: float = 0.5
    neg_threshold: float = 0.35  # hysteresis: speech ends only below this
    min_speech_seconds: float = 0.1  # shorter blips (clicks) are not speech
    min_silence_seconds: float = 0.1  # shorter dips do not end speech


def speech_intervals(probs: np.ndarray, opts: VadOptions | None = None) -> list[tuple[int, int]]:
    """Speech intervals as (start, end) sample indices at 16 kHz, from window probabilities."""
    o = opts or VadOptions()
    intervals: list[tuple[int, int]] = []
    active = False
    start = 0
    silence_run = 0
    min_sil = max(1, round(o.min_silence_seconds * VAD_SR / WINDOW))
    for i, p in enumerate(probs.tolist()):
        if not active:
            if p >= o.threshold:
                active, start, silence_run = True, i, 0
        elif p < o.neg_threshold:
            silence_run += 1
            if silence_run >= min_sil:
                intervals.append((start, i - silence_run + 1))
                active = False
        else:
            silence_run = 0
    if active:
        intervals.append((start, len(probs) - silence_run))
    min_len = o.min_speech_seconds * VAD_SR / WINDOW
    return [(a * WINDOW, b * WINDOW) for a, b in intervals if b - a >= min_len]


@dataclass(frozen=True)
class SegmentOptions:
    min_seconds: float = 2.0
    max_seconds: float = 20.0
    split_pause: float = 0.5  # pauses at least this long are sentence boundaries
    pad_seconds: float = 0.2  # silence kept around speech (bounded by half the pause)

    def check(self) -> SegmentOptions:
        if not 0 < self.min_seconds < self.max_seconds:
            raise ConfigError(
                f"--min-seconds {self.min_seconds} must be above 0 and below --max-seconds",
                "e.g. --min-seconds 2 --max-seconds 20",
            )
        if self.max_seconds + 2 * self.pad_seconds > HARD_MAX_SECONDS:
            raise ConfigError(
                f"--max-seconds {self.max_seconds} is too long: the speech tokenizer refuses "
                f"clips over {HARD_MAX_SECONDS:g} s",
                "use --max-seconds 29 or less (20 is the default)",
            )
        return self


@dataclass
class Segment:
    """A planned utterance: sample bounds at the rate the plan was made for."""

    start: int
    end: int
    speech_start: int
    speech_end: int
    forced_cut: bool = False

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass
class _Unit:
    intervals: list[tuple[int, int]]
    forced_left: bool = False
    forced_right: bool = False

    @property
    def start(self) -> int:
        return self.intervals[0][0]

    @property
    def end(self) -> int:
        return self.intervals[-1][1]

    @property
    def length(self) -> int:
        return self.end - self.start


def frame_energy(x16: np.ndarray) -> np.ndarray:
    """Power per 10 ms frame (for quietest-point cuts and SNR)."""
    n = x16.size // FRAME
    if n == 0:
        return np.zeros(0, np.float64)
    f = x16[: n * FRAME].reshape(n, FRAME)
    return np.einsum("ij,ij->i", f, f, dtype=np.float64) / FRAME


def _forced_split(unit: _Unit, energy: np.ndarray, max_len: int, min_len: int) -> list[_Unit]:
    """Cut one pause-free stretch of speech at the quietest frames, each piece <= max_len."""
    out: list[_Unit] = []
    a, b = unit.start, unit.end
    left_forced = unit.forced_left
    while b - a > max_len:
        # Search the back half of the window so pieces stay long; quietest 10 ms frame wins.
        lo = a + max(min_len, max_len // 2)
        hi = a + max_len
        f_lo, f_hi = lo // FRAME, max(lo // FRAME + 1, hi // FRAME)
        window = energy[f_lo:f_hi]
        cut = (f_lo + int(np.argmin(window))) * FRAME + FRAME // 2 if window.size else hi
        cut = min(max(cut, a + 1), a + max_len)
        out.append(_Unit([(a, cut)], left_forced, True))
        a, left_forced = cut, True
    out.append(_Unit([(a, b)], left_forced, unit.forced_right))
    return out


def _split_long(unit: _Unit, energy: np.ndarray, max_len: int, min_len: int) -> list[_Unit]:
    if unit.length <= max_len:
        return [unit]
    iv = unit.intervals
    if len(iv) == 1:
        return _forced_split(unit, energy, max_len, min_len)
    gaps = [(iv[i + 1][0] - iv[i][1], i) for i in range(len(iv) - 1)]
    balanced = [
        g
        for g in gaps
        if iv[g[1]][1] - iv[0][0] >= min_len and iv[-1][1] - iv[g[1] + 1][0] >= min_len
    ]
    _, i = max(balanced or gaps)
    left = _Unit(iv[: i + 1], unit.forced_left, False)
    right = _Unit(iv[i + 1 :], False, unit.forced_right)
    return _split_long(left, energy, max_len, min_len) + _split_long(
        right, energy, max_len, min_len
    )


def _merge_short(units: list[_Unit], min_len: int, max_len: int) -> list[_Unit]:
    units = list(units)
    while True:
        best: tuple[int, int] | None = None  # (gap, index of the left unit of the pair)
        for i, u in enumerate(units):
            if u.length >= min_len:
                continue
            for j in (i - 1, i):  # pair (j, j+1): with the left or the right neighbour
                if j < 0 or j + 1 >= len(units):
                    continue
                if units[j + 1].end - units[j].start > max_len:
                    continue
                gap = units[j + 1].start - units[j].end
                if best is None or gap < best[0]:
                    best = (gap, j)
        if best is None:
            return units
        j = best[1]
        merged = _Unit(
            units[j].intervals + units[j + 1].intervals,
            units[j].forced_left,
            units[j + 1].forced_right,
        )
        units[j : j + 2] = [merged]


def plan_segments(
    intervals: list[tuple[int, int]],
    n_samples: int,
    energy: np.ndarray,
    opts: SegmentOptions | None = None,
    sr: int = VAD_SR,
) -> list[Segment]:
    """Utterances from speech ``intervals`` (16 kHz samples) of a recording of ``n_samples``.

    ``energy`` is :func:`frame_energy` of the same 16 kHz audio. Bounds are returned at ``sr``.
    """
    o = (opts or SegmentOptions()).check()
    if not intervals:
        return []
    max_len = int(o.max_seconds * VAD_SR)
    min_len = int(o.min_seconds * VAD_SR)
    pad = int(o.pad_seconds * VAD_SR)
    whole = _Unit(list(intervals))
    if whole.length <= max_len:
        units = [whole]
    else:
        split_gap = int(o.split_pause * VAD_SR)
        units = [_Unit([intervals[0]])]
        for a, b in intervals[1:]:
            if a - units[-1].end >= split_gap:
                units.append(_Unit([(a, b)]))
            else:
                units[-1].intervals.append((a, b))
        units = _merge_short(units, min_len, max_len)
        units = [p for u in units for p in _split_long(u, energy, max_len, min_len)]
    scale = sr / VAD_SR
    out: list[Segment] = []
    for k, u in enumerate(units):
        if u.forced_left:
            start = u.start
        else:
            prev_end = units[k - 1].end if k else None
            limit = 0 if prev_end is None else (prev_end + u.start) // 2
            start = max(limit, u.start - pad)
        if u.forced_right:
            end = u.end
        else:
            nxt = units[k + 1].start if k + 1 < len(units) else None
            limit = n_samples if nxt is None else (u.end + nxt) // 2
            end = min(limit, u.end + pad)
        out.append(
            Segment(
                start=round(start * scale),
                end=round(end * scale),
                speech_start=round(u.start * scale),
                speech_end=round(u.end * scale),
                forced_cut=u.forced_left or u.forced_right,
            )
        )
    return out


def speech_mask(intervals: list[tuple[int, int]], n_frames: int) -> np.ndarray:
    """Boolean per 10 ms frame: inside a speech interval."""
    mask = np.zeros(n_frames, bool)
    for a, b in intervals:
        mask[a // FRAME : -(-b // FRAME)] = True
    return mask
