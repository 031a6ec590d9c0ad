"""Audio intake: probe, decode any common format, downmix, resample, trim, write 16-bit wav.

Decoding goes through libsndfile (``soundfile``) first: it reads wav/flac/ogg in-process and
fast. Formats libsndfile cannot read (m4a/AAC always, odd wav codecs) fall back to the ``ffmpeg``
program, decoding to raw float32 through a pipe: nothing written beside the source, and no FFmpeg
Python binding to install (torchaudio >= 2.9 would need torchcodec plus FFmpeg shared libraries
for the same job). mp3 goes to ffmpeg too when it is installed: libsndfile's mpg123 prints its
resync notes straight to the terminal's stderr and quietly stops at the first damaged frame.
Every ffprobe/ffmpeg call has a time limit, and ffmpeg's stderr goes to a file, not a pipe (a
damaged AAC writes megabytes of errors, which would fill a pipe nobody reads and hang us).

Every per-file problem raises :class:`AudioError` with a ``reason`` code (``zero_length``,
``corrupt``, ``unsupported``, ``no_audio``) that ``prepare`` lists per file while the run goes on.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voicelab.errors import InputError
from voicelab.fsutil import atomic_path

log = logging.getLogger(__name__)

TARGET_SR = 24000  # CosyVoice 3's rate: workspace clips are stored at it.
ASR_SR = 16000  # Whisper, FunASR and Silero VAD take 16 kHz.
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".aac", ".wma", ".aiff")
_FFMPEG_HINT = "install ffmpeg (sudo apt-get install ffmpeg) to read m4a/aac files"
PROBE_TIMEOUT_S = 60.0  # ffprobe reads headers only: seconds even on a slow network drive
# ffmpeg decodes hundreds of times faster than real time; one second per audio second plus a
# start-up allowance only catches a decoder that is stuck.
DECODE_TIMEOUT_BASE_S = 120.0
_STDERR_TAIL = 4096
# libsndfile reads these itself; anything else (mp3 included, see above) prefers ffmpeg.
_SNDFILE_FIRST = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif")


class AudioError(InputError):
    """A single audio file that cannot be used. ``reason`` is a short code for reports."""

    def __init__(self, path: Path, reason: str, detail: str, hint: str | None = None) -> None:
        super().__init__(f"{path}: {detail}", hint)
        self.path = path
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class AudioInfo:
    path: Path
    sample_rate: int
    channels: int
    frames: int
    format: str

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


@dataclass
class Decoded:
    """A decoded file: ``samples`` float32 (frames, channels) at ``sample_rate``."""

    samples: np.ndarray
    sample_rate: int

    @property
    def channels(self) -> int:
        return int(self.samples.shape[1])

    @property
    def duration(self) -> float:
        return self.samples.shape[0] / self.sample_rate


def is_audio_file(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_EXTENSIONS and not path.name.startswith("._")


def _check_nonempty(path: Path) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError as e:
        raise AudioError(path, "missing", "file not found") from e
    except OSError as e:
        raise AudioError(path, "unreadable", f"cannot read the file ({e.strerror})") from e
    if size == 0:
        raise AudioError(path, "zero_length", "the file is empty (0 bytes)")


def _last_error(path: Path, stderr: str, default: str) -> str:
    """ffmpeg's last error line, without the path (the row already names the file)."""
    err = stderr.strip().splitlines() or [default]
    return err[-1].replace(os.fspath(path) + ": ", "")[:120]


def _ffprobe(path: Path) -> AudioInfo:
    exe = shutil.which("ffprobe")
    if not exe:
        raise AudioError(path, "unsupported", "libsndfile cannot read this format", _FFMPEG_HINT)
    try:
        proc = subprocess.run(
            [exe, "-v", "error", "-select_streams", "a:0", "-show_entries",
             "stream=sample_rate,channels,duration_ts,time_base,codec_name:format=duration",
             "-of", "json", os.fspath(path)],
            capture_output=True, text=True, errors="replace", timeout=PROBE_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired as e:
        raise AudioError(
            path, "corrupt", f"ffprobe gave no answer within {PROBE_TIMEOUT_S:.0f} s"
        ) from e
    try:
        data = json.loads(proc.stdout or "{}")
        st = data["streams"][0]
        sr, ch = int(st["sample_rate"]), int(st["channels"])
        dur = float(data.get("format", {}).get("duration") or 0.0)
    except (KeyError, IndexError, ValueError, TypeError) as e:
        msg = _last_error(path, proc.stderr or "", "no audio stream")
        raise AudioError(path, "corrupt", f"not a readable audio file ({msg})") from e
    if sr <= 0 or ch <= 0:
        # e.g. text bytes named .flac: ffprobe guesses the format from the name, rate 0.
        raise AudioError(path, "corrupt", "not a readable audio file (no valid sample rate)")
    return AudioInfo(path, sr, ch, round(dur * sr), f"ffmpeg:{st.get('codec_name', '?')}")


def _prefer_ffmpeg(path: Path) -> bool:
    return path.suffix.lower() not in _SNDFILE_FIRST and shutil.which("ffmpeg") is not None


def probe(path: str | os.PathLike[str]) -> AudioInfo:
    """Header facts (rate, channels, length) without decoding; raises :class:`AudioError`."""
    import soundfile as sf

    p = Path(path)
    _check_nonempty(p)
    if _prefer_ffmpeg(p):
        return _ffprobe(p)
    try:
        i = sf.info(os.fspath(p))
    except (sf.LibsndfileError, RuntimeError):  # older soundfile raises RuntimeError
        return _ffprobe(p)
    if i.samplerate <= 0 or i.channels <= 0:
        raise AudioError(p, "corrupt", "not a readable audio file (no valid sample rate)")
    return AudioInfo(p, int(i.samplerate), int(i.channels), int(i.frames), i.format)


def _ffmpeg_f32_cmd(path: Path, info: AudioInfo) -> list[str]:
    """ffmpeg decoding the first audio stream to interleaved float32 on stdout, at the file's own
    rate and channel count; AudioError when ffmpeg is not installed."""
    exe = shutil.which("ffmpeg")
    if not exe:
        raise AudioError(path, "unsupported", "libsndfile cannot read this format", _FFMPEG_HINT)
    return [exe, "-nostdin", "-v", "error", "-i", os.fspath(path), "-map", "0:a:0",
            "-f", "f32le", "-acodec", "pcm_f32le", "-ac", str(info.channels),
            "-ar", str(info.sample_rate), "-"]  # fmt: skip


def _ffmpeg_decode(path: Path) -> Decoded:
    info = _ffprobe(path)
    blocks = list(_ffmpeg_blocks(path, info, 1 << 20))
    samples = (
        np.concatenate(blocks) if blocks else np.zeros((0, info.channels), np.float32)
    ).astype(np.float32, copy=False)
    return Decoded(samples, info.sample_rate)


def decode(path: str | os.PathLike[str]) -> Decoded:
    """Decode a file to float32 (frames, channels); raises :class:`AudioError`."""
    import soundfile as sf

    p = Path(path)
    _check_nonempty(p)
    try:
        if _prefer_ffmpeg(p):
            dec = _ffmpeg_decode(p)
        else:
            try:
                data, sr = sf.read(os.fspath(p), dtype="float32", always_2d=True)
                dec = Decoded(data, int(sr))
            except (sf.LibsndfileError, RuntimeError) as e:
                log.debug("soundfile cannot read %s (%s): trying ffmpeg", p, e)
                dec = _ffmpeg_decode(p)
    except (ValueError, OSError) as e:
        raise AudioError(p, "corrupt", f"not a readable audio file ({str(e)[:120]})") from e
    if dec.samples.shape[0] == 0 or dec.sample_rate <= 0:
        raise AudioError(p, "zero_length", "the file holds no audio samples")
    if not np.isfinite(dec.samples).all():
        dec.samples = np.nan_to_num(dec.samples, nan=0.0, posinf=1.0, neginf=-1.0)
    return dec


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average the channels (float32, 1-D)."""
    if samples.ndim == 1:
        return samples.astype(np.float32, copy=False)
    if samples.shape[1] == 1:
        return samples[:, 0].astype(np.float32, copy=False)
    return samples.mean(axis=1, dtype=np.float32)


def resample(x: np.ndarray, sr_in: int, sr_out: int, quality: str = "HQ") -> np.ndarray:
    """soxr resampling (float32 in, float32 out); a no-op when the rates match."""
    if sr_in == sr_out or x.size == 0:
        return x.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(x, sr_in, sr_out, quality=quality).astype(np.float32, copy=False)


def frame_db(x: np.ndarray, sr: int, frame_ms: float = 10.0) -> np.ndarray:
    """RMS level in dBFS of consecutive non-overlapping frames (the last partial one dropped
    unless it is the only one)."""
    hop = max(1, int(sr * frame_ms / 1000))
    n = x.size // hop
    if n == 0:
        frames = x[None, :] if x.size else np.zeros((1, 1), np.float32)
    else:
        frames = x[: n * hop].reshape(n, hop)
    power = np.einsum("ij,ij->i", frames, frames, dtype=np.float64) / frames.shape[1]
    return (10.0 * np.log10(power + 1e-12)).astype(np.float32)


def trim_silence(
    x: np.ndarray,
    sr: int,
    rel_db: float = 40.0,
    floor_db: float = -60.0,
    pad_s: float = 0.1,
    frame_ms: float = 10.0,
) -> tuple[int, int]:
    """(start, end) sample bounds of ``x`` without its leading and trailing silence.

    A frame is sound when it is louder than both ``floor_db`` dBFS and the loudest frame minus
    ``rel_db``; ``pad_s`` of the silence is kept on each side so soft onsets and releases
    survive. All-silent input gives ``(0, 0)``.
    """
    db = frame_db(x, sr, frame_ms)
    if db.size == 0:
        return 0, 0
    thr = max(floor_db, float(db.max()) - rel_db)
    loud = np.flatnonzero(db > thr)
    if loud.size == 0:
        return 0, 0
    hop = max(1, int(sr * frame_ms / 1000))
    pad = int(pad_s * sr)
    start = max(0, int(loud[0]) * hop - pad)
    end = min(x.size, (int(loud[-1]) + 1) * hop + pad)
    return start, end


def to_pcm16(x: np.ndarray) -> np.ndarray:
    """Float to 16-bit PCM with clipping (resampling can overshoot full scale slightly)."""
    return (np.clip(x, -1.0, 32767 / 32768) * 32768.0).astype(np.int16)


def write_wav(path: str | os.PathLike[str], x: np.ndarray, sr: int) -> Path:
    """Write mono 16-bit PCM wav atomically. ``x`` is float (-1..1) or int16."""
    import soundfile as sf

    data = x if x.dtype == np.int16 else to_pcm16(x)
    with atomic_path(path) as tmp:
        sf.write(os.fspath(tmp), data, sr, subtype="PCM_16", format="WAV")
    return Path(path)


def upstream_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes to hand upstream's training reader (soundfile): the file itself when
    libsndfile reads it, else its decoded audio as a 32-bit float WAV (exact samples, so the
    features computed from the same decode still match). Raises :class:`AudioError`."""
    import io

    import soundfile as sf

    p = Path(path)
    if not _prefer_ffmpeg(p):
        try:
            sf.info(os.fspath(p))
            return p.read_bytes()
        except (sf.LibsndfileError, RuntimeError):
            pass
    dec = decode(p)
    buf = io.BytesIO()
    sf.write(buf, dec.samples, dec.sample_rate, subtype="FLOAT", format="WAV")
    return buf.getvalue()


def read_wav_mono(path: str | os.PathLike[str], sr: int | None = None) -> tuple[np.ndarray, int]:
    """Decode ``path`` to mono float32, resampled to ``sr`` when given."""
    dec = decode(path)
    x = to_mono(dec.samples)
    if sr is not None and sr != dec.sample_rate:
        return resample(x, dec.sample_rate, sr), sr
    return x, dec.sample_rate


# ---- streaming intake ------------------------------------------------------------------------


@dataclass
class IntakeAudio:
    """A source file brought to mono 24 kHz and 16 kHz, with its clipping profile.

    ``clip_counts[i]`` is how many source samples of 10 ms frame ``i`` sit at full scale on any
    channel (measured before resampling, which smooths peaks away)."""

    x24: np.ndarray
    x16: np.ndarray
    sample_rate: int
    channels: int
    frames: int
    clip_counts: np.ndarray
    frame_len: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate

    def clip_ratio(self, start_s: float, end_s: float) -> float:
        """Share of full-scale source samples between two times."""
        rate = self.sample_rate / self.frame_len  # ~100 frames/s (220 samples at 22.05 kHz)
        f0 = int(start_s * rate)
        f1 = max(f0 + 1, int(np.ceil(end_s * rate)))
        counts = self.clip_counts[f0:f1]
        return float(counts.sum()) / max(1, counts.size * self.frame_len)


class _Accumulator:
    """Downmix, clipping profile and two chained resampling streams, block by block, so an hour
    of 48 kHz stereo never sits in memory as float32 (1.4 GB) at once."""

    def __init__(self, sr: int, channels: int) -> None:
        import soxr

        self.sr, self.channels = sr, channels
        self.frame_len = max(1, round(sr / 100))
        self.to24 = soxr.ResampleStream(sr, TARGET_SR, 1, dtype="float32", quality="HQ")
        self.to16 = soxr.ResampleStream(TARGET_SR, ASR_SR, 1, dtype="float32", quality="HQ")
        self.p24: list[np.ndarray] = []
        self.p16: list[np.ndarray] = []
        self.clips: list[np.ndarray] = []
        self.pending = np.zeros(0, bool)
        self.frames = 0

    def add(self, block: np.ndarray, last: bool = False) -> None:
        block = np.nan_to_num(block, nan=0.0, posinf=1.0, neginf=-1.0)
        self.frames += block.shape[0]
        mask = (
            np.concatenate([self.pending, np.abs(block).max(axis=1) >= 0.999])
            if block.size
            else self.pending
        )
        n = mask.size // self.frame_len
        if last and mask.size > n * self.frame_len:
            n += 1
            mask = np.concatenate([mask, np.zeros(n * self.frame_len - mask.size, bool)])
        self.clips.append(mask[: n * self.frame_len].reshape(n, self.frame_len).sum(axis=1))
        self.pending = mask[n * self.frame_len :]
        mono = to_mono(block) if block.size else np.zeros(0, np.float32)
        if self.sr == TARGET_SR:
            y24 = np.ascontiguousarray(mono, dtype=np.float32)
        else:
            y24 = self.to24.resample_chunk(np.ascontiguousarray(mono), last=last)
        self.p24.append(y24)
        self.p16.append(self.to16.resample_chunk(y24, last=last))

    def result(self) -> IntakeAudio:
        def cat(parts: list[np.ndarray]) -> np.ndarray:
            return (
                np.concatenate(parts).astype(np.float32, copy=False)
                if parts
                else np.zeros(0, np.float32)
            )

        return IntakeAudio(
            x24=cat(self.p24),
            x16=cat(self.p16),
            sample_rate=self.sr,
            channels=self.channels,
            frames=self.frames,
            clip_counts=np.concatenate(self.clips).astype(np.int32)
            if self.clips
            else np.zeros(0, np.int32),
            frame_len=self.frame_len,
        )


def decode_timeout(info: AudioInfo) -> float:
    """Seconds ffmpeg may take for the whole file before it is taken for stuck."""
    return DECODE_TIMEOUT_BASE_S + info.duration


def _ffmpeg_blocks(
    path: Path, info: AudioInfo, block_frames: int, timeout: float | None = None
) -> Iterator[np.ndarray]:
    """Stream ffmpeg's float32 output in blocks. stderr goes to an unlinked temp file, so no
    amount of decoder complaints can block ffmpeg; a watchdog kills it after ``timeout``."""
    limit = decode_timeout(info) if timeout is None else timeout
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            _ffmpeg_f32_cmd(path, info),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
        )
        assert proc.stdout is not None
        expired = threading.Event()

        def stop() -> None:
            expired.set()
            proc.kill()

        watchdog = threading.Timer(limit, stop)
        watchdog.daemon = True
        watchdog.start()
        frame_bytes = 4 * info.channels
        try:
            while True:
                data = proc.stdout.read(block_frames * frame_bytes)
                if not data:
                    break
                usable = len(data) - len(data) % frame_bytes
                yield np.frombuffer(data[:usable], dtype="<f4").reshape(-1, info.channels)
            code = proc.wait()
            watchdog.cancel()
            if expired.is_set():
                raise AudioError(path, "corrupt", f"ffmpeg did not finish within {limit:.0f} s")
            if code != 0:
                err.seek(max(0, err.seek(0, os.SEEK_END) - _STDERR_TAIL))
                tail = err.read().decode("utf-8", "replace")
                raise AudioError(
                    path, "corrupt", f"cannot decode ({_last_error(path, tail, 'ffmpeg failed')})"
                )
        finally:
            watchdog.cancel()
            proc.stdout.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _intake_sndfile(p: Path, block_seconds: float) -> _Accumulator:
    import soundfile as sf

    with sf.SoundFile(os.fspath(p)) as f:
        sr, ch = int(f.samplerate), int(f.channels)
        if sr <= 0 or ch <= 0:
            raise AudioError(p, "corrupt", "not a readable audio file (no valid sample rate)")
        acc = _Accumulator(sr, ch)
        block = max(1, int(block_seconds * sr) // acc.frame_len * acc.frame_len)
        # A read loop, not f.blocks(): blocks() trusts the header's frame count, which
        # libsndfile only estimates for some formats (it pads the tail with zeros).
        while True:
            data = f.read(block, dtype="float32", always_2d=True)
            if data.shape[0] == 0:
                break
            acc.add(data)
    return acc


def _intake_ffmpeg(p: Path, block_seconds: float) -> _Accumulator:
    info = _ffprobe(p)
    acc = _Accumulator(info.sample_rate, info.channels)
    block = max(1, int(block_seconds * info.sample_rate) // acc.frame_len * acc.frame_len)
    for data in _ffmpeg_blocks(p, info, block):
        acc.add(data)
    return acc


def load_for_intake(path: str | os.PathLike[str], block_seconds: float = 60.0) -> IntakeAudio:
    """Decode ``path`` block by block to mono 24 kHz + 16 kHz with its clipping profile;
    raises :class:`AudioError` (zero_length, corrupt, unsupported)."""
    import soundfile as sf

    p = Path(path)
    _check_nonempty(p)
    acc: _Accumulator | None = None
    try:
        if _prefer_ffmpeg(p):
            acc = _intake_ffmpeg(p, block_seconds)
        else:
            try:
                acc = _intake_sndfile(p, block_seconds)
            except (sf.LibsndfileError, RuntimeError) as e:
                log.debug("soundfile cannot read %s (%s): trying ffmpeg", p, e)
                acc = _intake_ffmpeg(p, block_seconds)
    except (ValueError, OSError, RuntimeError) as e:
        # Whatever a damaged header makes the decoders or resamplers raise, it stays one
        # unusable file (a row in qc.tsv), not the end of the run.
        raise AudioError(p, "corrupt", f"not a readable audio file ({str(e)[:120]})") from e
    acc.add(np.zeros((0, acc.channels), np.float32), last=True)
    if acc.frames == 0 or acc.sr <= 0:
        raise AudioError(p, "zero_length", "the file holds no audio samples")
    return acc.result()
