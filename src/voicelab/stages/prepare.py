"""``voicelab prepare``: a folder of recordings -> a clean, transcribed, checked and split dataset.

Steps, each cached so a rerun (or a run after Ctrl-C) redoes only what changed:

1. **discover** audio files recursively (the source folder is only ever read);
2. **intake** each file: decode, downmix, resample to 24 kHz, VAD, cut into utterances, write
   each as ``prepare/clips/<utt>.wav`` and measure its audio metrics. Cached per source file by
   its fingerprint and the intake options (``prepare/intake.jsonl``);
3. **transcribe** the segments that passed the audio checks, through ``asr.load_transcriber``,
   or import existing transcripts. Cached per segment (hash of its samples) and ASR options in
   ``prepare/asr_cache.jsonl``, appended and flushed after every segment;
4. **normalize** text (wetext, traditional -> simplified), flag hallucinations;
5. **QC**: the rule table of :mod:`voicelab.blocks.qc`, re-applied on every run (cheap);
6. **review** edits (``review_overrides.json``) are applied: text fixes, drops, keeps;
7. **split** train/dev by source recording, write the kaldi dirs, ``segments.jsonl``,
   ``qc.tsv`` and (with ``--review``) ``review.tsv``.

Review round trip: ``voicelab prepare --review`` writes ``prepare/review.tsv`` (worst first);
edit ``text`` and ``keep`` (0 drops, 1 keeps a segment that a soft rule excluded), then
``voicelab prepare --apply-review [FILE]`` stores the edits in ``review_overrides.json`` and
rebuilds the dataset with them, with no ASR redone. Edits stay attached to a segment while its
audio is unchanged; edited text is used as written (no normalization).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from voicelab.blocks import audio as au
from voicelab.blocks import qc, vad
from voicelab.blocks.kaldi import write_kaldi_dir
from voicelab.blocks.records import Clip, Segment, Utt
from voicelab.console import track
from voicelab.contract import RunOptions, Stage, StageResult, plain
from voicelab.errors import ConfigError, InputError, StageError
from voicelab.fsutil import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    hash_obj,
    quick_fingerprint,
    read_json,
)
from voicelab.paths import has_whitespace, safe_name, to_local_path
from voicelab.state import stage_run
from voicelab.workspace import Workspace

log = logging.getLogger(__name__)

NAME = "prepare"  # its state record
INTAKE_VERSION = 4  # 4: the SNR noise floor is a low percentile (qc.NOISE_PERCENTILE)
ASR_BACKENDS = ("faster-whisper", "funasr", "transcripts")
MIN_MINUTES_WARN = 30.0
MIN_MINUTES_STRONG = 10.0
TRANSCRIPT_SIDECARS = (".txt", ".lab")


# ---- options and result ----------------------------------------------------------------------


@dataclass
class PrepareOptions:
    wav_dir: Path | None = None
    """Source folder; None = the workspace's (``voicelab.toml``)."""
    asr: str = "faster-whisper"
    """``faster-whisper``, ``funasr`` or ``transcripts`` (import, no ASR)."""
    whisper_model: str = "large-v3"
    device: str = "auto"
    compute_type: str = "auto"
    language: str | None = None
    initial_prompt: str | None = None
    beam_size: int = 5
    text_norm: bool = True
    limit: int | None = None
    min_seconds: float = 2.0
    max_seconds: float = 20.0
    dev_ratio: float = 0.05
    review: bool = False
    apply_review: Path | None = None
    transcripts: Path | None = None
    """GPT-SoVITS ``.list`` or CSV/TSV of file,text; None = sidecar ``.txt``/``.lab`` files."""
    vad_filter: bool = True
    """Accepted for the notes' ``--vad_filter``: segmentation always uses the VAD."""
    qc_opts: qc.QcOptions = field(default_factory=qc.QcOptions)

    def segment_options(self) -> vad.SegmentOptions:
        return vad.SegmentOptions(min_seconds=self.min_seconds, max_seconds=self.max_seconds)

    def asr_options(self) -> Any:
        from voicelab.blocks.asr import AsrOptions

        known = {f.name for f in fields(AsrOptions)}
        values = {
            "backend": self.asr,
            "model": self.whisper_model,
            "device": self.device,
            "compute_type": self.compute_type,
            "language": self.language,
            "initial_prompt": self.initial_prompt,
            "beam_size": self.beam_size,
        }
        return AsrOptions(**{k: v for k, v in values.items() if k in known})


@dataclass
class PrepareResult:
    segments: list[Segment]
    bad_files: list[dict[str, Any]]
    kept: int = 0
    excluded: int = 0
    kept_seconds: float = 0.0
    by_reason: dict[str, int] = field(default_factory=dict)
    train: int = 0
    dev: int = 0
    files: int = 0
    asr_calls: int = 0
    asr_audio_seconds: float = 0.0
    asr_wall_seconds: float = 0.0
    intake_audio_seconds: float = 0.0
    intake_wall_seconds: float = 0.0
    processed_seconds: float = 0.0
    wall_seconds: float = 0.0
    source_seconds: float = 0.0
    limited: bool = False
    review_path: Path | None = None
    review_applied: int = 0
    flagged: dict[str, int] = field(default_factory=dict)  # kept, but worth a listen
    min_snr_db: float = 0.0
    warnings: list[str] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)

    @property
    def kept_minutes(self) -> float:
        return self.kept_seconds / 60.0

    @property
    def throughput(self) -> float:
        """Seconds of audio processed per second of wall time (intake + ASR)."""
        return self.processed_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def projected_seconds(self) -> float:
        """Projected wall time for the whole folder from this run's intake and ASR speeds
        (0 when nothing new was timed: everything came from the caches)."""
        t = 0.0
        if self.intake_audio_seconds > 0 and self.intake_wall_seconds > 0:
            t += self.source_seconds * self.intake_wall_seconds / self.intake_audio_seconds
        if self.asr_audio_seconds > 0 and self.asr_wall_seconds > 0:
            # ASR sees the segments, not the pauses between them: an upper bound.
            t += self.source_seconds * self.asr_wall_seconds / self.asr_audio_seconds
        return t

    def figures(self) -> dict[str, Any]:
        return {
            "kept_minutes": round(self.kept_minutes, 2),
            "kept": self.kept,
            "excluded": self.excluded,
            "by_reason": dict(self.by_reason),
            "train": self.train,
            "dev": self.dev,
            "files": self.files,
            "bad_files": len(self.bad_files),
            "flagged": dict(self.flagged),
            "asr_calls": self.asr_calls,
            "throughput_x": round(self.throughput, 1),
            "limited": self.limited,
        }

    def summary_lines(self) -> list[str]:
        lines = [
            f"{self.files} files: {self.kept} segments kept ({self.kept_minutes:.1f} min), "
            f"{self.excluded} excluded; train {self.train}, dev {self.dev}"
        ]
        if self.by_reason:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.by_reason.items()))
            lines.append(f"excluded by reason: {reasons}")
        if self.flagged:
            flagged = ", ".join(f"{k} {v}" for k, v in sorted(self.flagged.items()))
            lines.append(
                f"kept but flagged for a listen: {flagged} (first in review.tsv: "
                "voicelab prepare --review)"
            )
        low = self.by_reason.get("low_snr", 0)
        if low:
            lines.append(
                f"to keep the {low} low_snr segments: listen to them (voicelab prepare --review, "
                "keep=1, then --apply-review), or lower the threshold in voicelab.toml: "
                f"[prepare.qc] min_snr_db = {max(0.0, self.min_snr_db - 5):g} "
                f"(now {self.min_snr_db:g} dB)"
            )
        for bad in self.bad_files:
            lines.append(f"  unusable {bad['path']}: {bad['reason']}: {bad['detail']}")
        if self.asr_calls:
            rate = self.asr_audio_seconds / max(self.asr_wall_seconds, 1e-9)
            lines.append(f"ASR: {self.asr_calls} segments transcribed at {rate:.1f}x real time")
        if self.limited:
            line = (
                f"--limit: {self.processed_seconds:.0f} s of audio in {self.wall_seconds:.1f} s "
                f"({self.throughput:.1f} s of audio per second)"
            )
            if self.intake_audio_seconds > 0 and self.intake_wall_seconds > 0:
                rate = self.intake_audio_seconds / self.intake_wall_seconds
                line += f"; intake {rate:.0f}x real time"
            if self.projected_seconds > 0:
                line += (
                    f"; the whole folder ({self.source_seconds / 60:.1f} min) would take about "
                    f"{_fmt_duration(self.projected_seconds)}"
                )
            else:
                line += "; all results came from the caches, so no projection"
            lines.append(line)
        if self.review_applied:
            lines.append(f"review: {self.review_applied} edits applied")
        if self.review_path:
            lines.append(
                f"review file: {self.review_path} (edit text/keep, then: "
                "voicelab prepare --apply-review)"
            )
        lines.extend(f"warning: {w}" for w in self.warnings)
        return lines


def _fmt_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# ---- discovery -------------------------------------------------------------------------------


def discover(src: Path, exclude: Path | None = None) -> list[Path]:
    """Audio files under ``src``, recursively, sorted by relative path; ``exclude`` (the
    workspace, when it lies inside the source folder) is skipped."""
    if not src.exists():
        raise InputError(f"source folder not found: {src}", 'pass --wav-dir "DIR"')
    if not src.is_dir():
        raise InputError(f"not a folder: {src}", "pass the folder that holds the recordings")
    ex = exclude.resolve() if exclude else None
    found: list[Path] = []
    seen: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(src, followlinks=True):
        d = Path(dirpath)
        real = d.resolve()
        # Linked folders are followed (data spread over drives), each real folder once, so a
        # link loop cannot recurse forever.
        if real in seen or (ex is not None and (real == ex or ex in real.parents)):
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
        found.extend(d / n for n in filenames if au.is_audio_file(Path(n)))
    found.sort(key=lambda p: p.relative_to(src).as_posix())
    if not found:
        kinds = ", ".join(e.lstrip(".") for e in au.AUDIO_EXTENSIONS[:5])
        raise InputError(f"no audio files ({kinds}) in {src}", "check --wav-dir")
    return found


def source_ids(src: Path, files: list[Path]) -> dict[Path, str]:
    """A readable, whitespace-free id per file: its stem, or its relative path where two files
    share a stem."""
    stems = Counter(safe_name(f.stem, 48) for f in files)
    out = {}
    for f in files:
        sid = safe_name(f.stem, 48)
        if stems[sid] > 1:
            sid = safe_name(f.relative_to(src).with_suffix("").as_posix(), 48)
        out[f] = sid
    return out


# ---- JSONL caches ----------------------------------------------------------------------------


class JsonlCache:
    """Append-only JSONL map: the last line per key wins. Each append is flushed and synced, so
    a killed run keeps every finished item; a torn last line is ignored."""

    def __init__(self, path: Path, key: str = "k") -> None:
        self.path = path
        self.key = key
        self.items: dict[str, dict[str, Any]] = {}
        self.appended = 0
        if path.is_file():
            self._drop_torn_tail()
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        obj = json.loads(line)
                        self.items[obj[key]] = obj
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue

    def _drop_torn_tail(self) -> None:
        """Cut a last line a kill left without its newline: the next append would be glued to
        it and both records lost."""
        with open(self.path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            # Walk back to the last newline (a torn line is one record: at most a few KB).
            pos = size
            while pos > 0:
                step = min(pos, 65536)
                f.seek(pos - step)
                nl = f.read(step).rfind(b"\n")
                if nl >= 0:
                    pos = pos - step + nl + 1
                    break
                pos -= step
            f.truncate(pos)
            f.flush()
            os.fsync(f.fileno())

    def get(self, k: str) -> dict[str, Any] | None:
        return self.items.get(k)

    def put(self, obj: dict[str, Any]) -> None:
        self.items[obj[self.key]] = obj
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.appended += 1

    def compact(self, keep: set[str] | None = None) -> None:
        """Rewrite with one line per (kept) key."""
        items = [v for k, v in self.items.items() if keep is None or k in keep]
        with atomic_path(self.path) as tmp:
            tmp.write_text(
                "".join(json.dumps(v, ensure_ascii=False) + "\n" for v in items), "utf-8"
            )


# ---- intake ----------------------------------------------------------------------------------


def intake_source(
    path: Path,
    prefix: str,
    clips_dir: Path,
    seg_opts: vad.SegmentOptions,
    whole: bool,
) -> dict[str, Any]:
    """Decode, segment and write the clips of one source file; returns its intake record
    (``error`` set for files that cannot be used)."""
    rec: dict[str, Any] = {"segments": [], "error": None}
    try:
        src = au.load_for_intake(path)
    except au.AudioError as e:
        rec["error"] = {"reason": e.reason, "detail": e.detail}
        return rec
    sr = src.sample_rate
    rec.update(sample_rate=sr, channels=src.channels, duration=round(src.duration, 3))
    x24, x16 = src.x24, src.x16
    if x16.size == 0 or float(np.abs(x16).max()) < 1e-4:
        rec["error"] = {"reason": "silent", "detail": "the file is silent (below -80 dBFS)"}
        return rec
    probs = vad.speech_probs(x16)
    intervals = vad.speech_intervals(probs)
    if not intervals:
        rec["error"] = {"reason": "no_speech", "detail": "no speech found by the VAD"}
        return rec
    energy = vad.frame_energy(x16)
    speech = vad.speech_mask(intervals, energy.size)
    noise = qc.noise_floor(energy, speech)
    if whole:
        pad = int(seg_opts.pad_seconds * vad.VAD_SR)
        a, b = max(0, intervals[0][0] - pad), min(x16.size, intervals[-1][1] + pad)
        up = au.TARGET_SR / vad.VAD_SR
        first, last = intervals[0][0], intervals[-1][1]
        plan = [vad.Segment(round(a * up), round(b * up), round(first * up), round(last * up))]
    else:
        plan = vad.plan_segments(intervals, x16.size, energy, seg_opts, sr=au.TARGET_SR)
    for i, seg in enumerate(plan, 1):
        utt = f"{prefix}_{i:04d}"
        start, end = max(0, seg.start), min(x24.size, seg.end)
        pcm = au.to_pcm16(x24[start:end])
        digest = hashlib.sha1(pcm.tobytes()).hexdigest()[:20]
        clip = clips_dir / f"{utt}.wav"
        au.write_wav(clip, pcm, au.TARGET_SR)
        s16, e16 = start * 2 // 3, end * 2 // 3
        clip_ratio = src.clip_ratio(start / au.TARGET_SR, end / au.TARGET_SR)
        metrics = qc.audio_metrics(
            pcm.astype(np.float32) / 32768.0, clip_ratio, sr, probs, s16, e16, noise, energy, speech
        )
        metrics["forced_cut"] = bool(seg.forced_cut)
        rec["segments"].append(
            Clip(
                utt=utt,
                clip=clip.name,
                start=round(start / au.TARGET_SR, 3),
                end=round(end / au.TARGET_SR, 3),
                sha=digest,
                metrics=metrics,
            ).to_dict()
        )
    return rec


# ---- transcripts import ----------------------------------------------------------------------


@dataclass
class Transcript:
    text: str
    language: str | None = None


def _read_text(path: Path) -> str:
    for enc in ("utf-8-sig", "gb18030"):
        try:
            return path.read_text(encoding=enc)
        except UnicodeDecodeError:
            continue
    raise InputError(f"cannot read {path} as UTF-8 or GB18030 text", "save it as UTF-8")


def _lang(code: str | None) -> str | None:
    if not code:
        return None
    c = code.strip().lower()
    return {"all_zh": "zh", "all_ja": "ja", "yue": "zh"}.get(c, c[:2] or None)


def load_transcript_file(path: Path) -> list[tuple[str, Transcript]]:
    """(file as written, transcript) pairs from a GPT-SoVITS ``.list`` (``path|speaker|lang|
    text``) or a CSV/TSV of file and text (a header row naming them is optional)."""
    if not path.is_file():
        raise InputError(f"transcripts file not found: {path}", "check --transcripts")
    raw = _read_text(path)
    out: list[tuple[str, Transcript]] = []
    if path.suffix.lower() == ".list":
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("|", 3)
            if len(parts) != 4:
                raise InputError(
                    f"{path}:{n}: expected path|speaker|lang|text", "fix the line or remove it"
                )
            out.append((parts[0].strip(), Transcript(parts[3].strip(), _lang(parts[2]))))
        return out
    delim = "\t" if path.suffix.lower() == ".tsv" or "\t" in raw.split("\n", 1)[0] else ","
    rows = [r for r in csv.reader(raw.splitlines(), delimiter=delim) if any(c.strip() for c in r)]
    if not rows:
        return out
    head = [c.strip().lower() for c in rows[0]]
    fcol, tcol, lcol = 0, len(rows[0]) - 1, None
    file_names = ("file", "path", "audio", "wav", "filename")
    if any(h in file_names for h in head) and "text" in head:
        fcol = next(i for i, h in enumerate(head) if h in file_names)
        tcol = head.index("text")
        lcol = head.index("language") if "language" in head else None
        rows = rows[1:]
    for n, r in enumerate(rows, 1):
        if len(r) <= max(fcol, tcol):
            raise InputError(f"{path}: row {n} has no text column", "use file,text rows")
        lang = _lang(r[lcol]) if lcol is not None and lcol < len(r) else None
        out.append((r[fcol].strip(), Transcript(r[tcol].strip(), lang)))
    return out


def match_transcripts(src: Path, files: list[Path], opts: PrepareOptions) -> dict[Path, Transcript]:
    """Transcript per audio file: from ``opts.transcripts`` (matched by absolute path, then by
    path relative to the source folder, then by unique base name) or from sidecar files."""
    out: dict[Path, Transcript] = {}
    if opts.transcripts is None:
        for f in files:
            for ext in TRANSCRIPT_SIDECARS:
                side = f.with_suffix(ext)
                if side.is_file():
                    out[f] = Transcript(_read_text(side).strip())
                    break
        return out
    entries = load_transcript_file(to_local_path(opts.transcripts))
    by_abs = {f.resolve(): f for f in files}
    by_rel = {f.relative_to(src).as_posix(): f for f in files}
    names = Counter(f.name for f in files)
    by_name = {f.name: f for f in files if names[f.name] == 1}
    for written, tr in entries:
        local = to_local_path(written)
        target = None
        if local.is_absolute():
            target = by_abs.get(local.resolve())
        else:
            target = by_rel.get(local.as_posix()) or by_abs.get((src / local).resolve())
        if target is None:
            # Lists written on another machine (C:\...) or before the folder moved.
            target = by_name.get(Path(written.replace("\\", "/")).name)
        if target is not None:
            out[target] = tr
    return out


# ---- text ------------------------------------------------------------------------------------


def finish_text(raw: str, language: str | None, text_norm: bool) -> tuple[str, str, list[str]]:
    """(normalized text, language, hallucination flags) of a raw transcript."""
    from voicelab.blocks import textnorm

    flags = textnorm.hallucination_flags(raw) if raw.strip() else []
    lang = language or textnorm.detect_language(raw)
    if text_norm:
        text = textnorm.normalize(raw, lang if lang in ("zh", "en") else None)
    else:
        text = textnorm.to_simplified(textnorm.clean_whitespace(raw))
    return text, lang, flags


# ---- review ----------------------------------------------------------------------------------

REVIEW_COLUMNS = ("id", "audio", "text", "keep", "risk", "reasons")


def write_review(path: Path, segs: list[Segment]) -> Path:
    """review.tsv, worst first. A file the user edited but never applied is kept aside."""
    rows = sorted(segs, key=lambda s: (-s.risk, s.utt))
    lines = ["\t".join(REVIEW_COLUMNS)]
    for s in rows:
        text = s.text.replace("\t", " ").replace("\n", " ")
        keep = "1" if s.kept else "0"
        fields = [s.utt, s.wav, text, keep, f"{s.risk:.3f}", s.reasons_text or s.flags_text]
        lines.append("\t".join(fields))
    content = "\n".join(lines) + "\n"
    marker = path.with_name(".review.written")
    if path.is_file():
        current = hashlib.sha1(path.read_bytes()).hexdigest()
        if marker.is_file() and marker.read_text().strip() != current:
            keep_as = path.with_name(f"review.edited-{time.strftime('%Y%m%d-%H%M%S')}.tsv")
            os.replace(path, keep_as)
            log.warning("review.tsv had unapplied edits: kept as %s", keep_as)
    atomic_write_text(path, content)
    atomic_write_text(marker, hashlib.sha1(content.encode("utf-8")).hexdigest() + "\n")
    return path


def _mark_review_applied(path: Path) -> None:
    """The edits of ``path`` are now in the overrides: rewriting review.tsv may replace it."""
    marker = path.with_name(".review.written")
    if path.name == "review.tsv" and marker.is_file():
        atomic_write_text(marker, hashlib.sha1(path.read_bytes()).hexdigest() + "\n")


def read_review(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise InputError(
            f"review file not found: {path}", "write one with: voicelab prepare --review"
        )
    rows = list(csv.reader(_read_text(path).splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or [c.strip().lower() for c in rows[0][:4]] != list(REVIEW_COLUMNS[:4]):
        raise InputError(
            f"{path} is not a VoiceLab review file (header id, audio, text, keep, ...)",
            "write one with: voicelab prepare --review",
        )
    out = []
    for n, r in enumerate(rows[1:], 2):
        if not r or not r[0].strip():
            continue
        if len(r) < 4 or r[3].strip() not in ("0", "1"):
            raise InputError(f"{path}:{n}: keep must be 0 or 1", "fix the row")
        out.append({"id": r[0].strip(), "text": r[2].strip(), "keep": r[3].strip()})
    return out


def apply_review(path: Path, segs: dict[str, Segment], overrides: dict[str, dict[str, Any]]) -> int:
    """Merge the edits of a review file into ``overrides``; returns how many rows changed."""
    changed = 0
    for row in read_review(path):
        seg = segs.get(row["id"])
        if seg is None:
            log.warning("review: unknown segment %s (ignored)", row["id"])
            continue
        ov: dict[str, Any] = {"sha": seg.sha}
        prev = overrides.get(row["id"], {})
        if row["text"] != seg.auto_text:
            ov["text"] = row["text"]
        keep_now = 1 if seg.auto_status == "kept" else 0
        if int(row["keep"]) != keep_now:
            ov["keep"] = int(row["keep"])
        if len(ov) > 1:
            if ov != prev:
                changed += 1
            overrides[row["id"]] = ov
        elif row["id"] in overrides:
            del overrides[row["id"]]
            changed += 1
    return changed


# ---- split -----------------------------------------------------------------------------------


def split_dev(kept: list[Segment], ratio: float) -> set[str]:
    """Utterance ids of the dev set: about ``ratio`` of the kept segments (2 to 50), whole
    source recordings at a time, chosen by a hash of their path (stable across runs)."""
    n = len(kept)
    if n < 2 or ratio <= 0:
        return set()
    # Tiny sets (a trial with --limit) keep most for training: one dev utterance below six.
    target = min(50, max(2, round(ratio * n))) if n >= 6 else 1
    groups: dict[str, list[str]] = {}
    for s in kept:
        groups.setdefault(s.source_rel, []).append(s.utt)
    order = sorted(groups, key=lambda r: hashlib.sha1(r.encode("utf-8")).hexdigest())
    dev: list[str] = []
    if len(groups) >= 2:
        slack = max(1, target // 2)
        for rel in order:
            if len(dev) >= target:
                break
            g = groups[rel]
            if len(dev) + len(g) > min(50, target + slack) or len(dev) + len(g) >= n:
                continue
            dev.extend(g)
    if len(dev) < min(2, target):
        # One recording (or only big ones): take whole segments from its end instead.
        ids = sorted(s.utt for s in kept)
        dev = ids[-target:]
    return set(dev)


# ---- the stage -------------------------------------------------------------------------------


def _intake_key(opts: PrepareOptions, prefix: str) -> str:
    return hash_obj(
        {
            "v": INTAKE_VERSION,
            "prefix": prefix,
            "seg": asdict(opts.segment_options()),
            "whole": opts.asr == "transcripts",
            "vad": asdict(vad.VadOptions()),
        }
    )


def _audio_seconds(files: list[Path]) -> float:
    total = 0.0
    for f in files:
        try:
            total += au.probe(f).duration
        except au.AudioError:
            continue
    return total


def run_prepare(ws: Workspace, opts: PrepareOptions) -> PrepareResult:
    """Run the stage; see the module docstring."""
    t_start = time.perf_counter()
    if opts.asr not in ASR_BACKENDS:
        raise ConfigError(f"unknown --asr {opts.asr!r}", f"use one of {', '.join(ASR_BACKENDS)}")
    if opts.limit is not None and opts.limit < 1:
        raise ConfigError("--limit must be at least 1", "e.g. --limit 10")
    if not 0 <= opts.dev_ratio < 0.5:
        raise ConfigError(f"--dev-ratio {opts.dev_ratio} is out of range", "e.g. --dev-ratio 0.05")
    seg_opts = opts.segment_options().check()
    src = to_local_path(opts.wav_dir) if opts.wav_dir else ws.wav_dir
    spk = ws.speaker
    prep = ws.prepare_dir
    clips_dir = prep / "clips"
    if has_whitespace(str(clips_dir.resolve())):
        raise ConfigError(
            f"the workspace path has whitespace: {ws.root}",
            "upstream's kaldi readers split paths at blanks: use a workspace path without spaces",
        )
    files = discover(src, exclude=ws.root)
    ids = source_ids(src, files)
    transcripts = match_transcripts(src, files, opts) if opts.asr == "transcripts" else {}
    if opts.asr == "transcripts" and not transcripts:
        raise InputError(
            f"no transcripts found for the audio in {src}",
            "put a .txt/.lab beside each file or pass --transcripts FILE (.list, .csv, .tsv)",
        )
    asr_opts = opts.asr_options() if opts.asr != "transcripts" else None
    asr_key = hash_obj(asr_opts.cache_key()) if asr_opts is not None else "transcripts"
    fps = {f: quick_fingerprint(f) for f in files}
    inputs = {"files": [[f.relative_to(src).as_posix(), fps[f]] for f in files]}
    if opts.transcripts:
        inputs["transcripts"] = quick_fingerprint(to_local_path(opts.transcripts))
    overrides_path = prep / "review_overrides.json"
    params: dict[str, Any] = {
        "asr": opts.asr,
        "asr_key": asr_key,
        "min_seconds": opts.min_seconds,
        "max_seconds": opts.max_seconds,
        "text_norm": opts.text_norm,
        "dev_ratio": opts.dev_ratio,
        "limit": opts.limit,
        "instruct": ws.instruct,
        "qc": hash_obj(opts.qc_opts.as_dict()),
    }
    result = PrepareResult(segments=[], bad_files=[], files=len(files))
    prep.mkdir(parents=True, exist_ok=True)
    with stage_run(ws, NAME, inputs, params) as rec:
        # 1-2. intake and segmentation, per source file.
        intake = JsonlCache(prep / "intake.jsonl", key="rel")
        segs: list[Segment] = []
        t0 = time.perf_counter()
        for f in track(files, "intake"):
            rel = f.relative_to(src).as_posix()
            if opts.asr == "transcripts" and f not in transcripts:
                result.bad_files.append(
                    {"path": str(f), "reason": "no_transcript", "detail": "no transcript found"}
                )
                continue
            prefix = f"{spk}_{ids[f]}"
            key = _intake_key(opts, prefix)
            src_rec = intake.get(rel)
            fresh = (
                src_rec is not None
                and src_rec.get("fp") == fps[f]
                and src_rec.get("key") == key
                and all((clips_dir / s["clip"]).is_file() for s in src_rec["segments"])
            )
            if not fresh:
                src_rec = intake_source(f, prefix, clips_dir, seg_opts, opts.asr == "transcripts")
                src_rec.update(rel=rel, fp=fps[f], key=key)
                intake.put(src_rec)
                result.intake_audio_seconds += float(src_rec.get("duration") or 0.0)
            assert src_rec is not None
            if src_rec["error"]:
                result.bad_files.append({"path": str(f), **src_rec["error"]})
                log.debug("skipped %s: %s", f, src_rec["error"]["detail"])
                continue
            for s in src_rec["segments"]:
                clip = Clip.from_dict(s)
                wav = str((clips_dir / clip.clip).resolve())
                segs.append(Segment.from_clip(clip, str(f), rel, wav))
            if opts.limit and len(segs) >= opts.limit:
                result.limited = True
                break
        result.intake_wall_seconds = time.perf_counter() - t0
        if opts.limit:
            result.limited = True
            segs = segs[: opts.limit]
        intake.compact(keep={f.relative_to(src).as_posix() for f in files})

        # 3. transcripts: imported, or ASR of the segments that pass the audio checks.
        overrides: dict[str, dict[str, Any]] = read_json(overrides_path, {}) or {}
        asr_cache = JsonlCache(prep / "asr_cache.jsonl")
        for s in segs:
            s.audio_reasons = qc.evaluate(s.metrics, opts.qc_opts, stage="audio")
            s.asr = None
            if opts.asr == "transcripts":
                tr = transcripts[Path(s.source)]
                s.raw_text, s.language = tr.text, tr.language
            else:
                s.asr = asr_cache.get(f"{s.sha}:{asr_key}")

        def take_asr() -> None:
            for s in segs:
                if opts.asr != "transcripts":
                    hit = s.asr or {}
                    s.raw_text = hit.get("text", "")
                    s.language = hit.get("language") or None
                _finish_segment(s, opts, overrides)

        # 4-6. text, QC and review edits; the edits come first since a review may keep a
        # segment that was excluded before ASR (it is transcribed now).
        if opts.apply_review is not None:
            take_asr()
            review_file = (
                to_local_path(opts.apply_review)
                if str(opts.apply_review) not in ("", "-")
                else prep / "review.tsv"
            )
            by_utt = {s.utt: s for s in segs}
            result.review_applied = apply_review(review_file, by_utt, overrides)
            atomic_write_json(overrides_path, overrides)
            _mark_review_applied(review_file)
        need = [
            s
            for s in segs
            if opts.asr != "transcripts"
            and s.asr is None
            and (
                not s.audio_reasons
                # A review keeps it: worth transcribing unless upstream would drop it anyway.
                or (_forced_keep(s, overrides) and not any(r["hard"] for r in s.audio_reasons))
            )
        ]
        if need:
            _transcribe(need, asr_opts, asr_key, asr_cache, result)
        take_asr()

        # 7. split and outputs.
        kept = [s for s in segs if s.kept]
        dev_ids = split_dev(kept, opts.dev_ratio)
        for s in segs:
            s.split = ("dev" if s.utt in dev_ids else "train") if s.kept else None
        instruct = ws.instruct
        outputs: list[Path] = []
        for split in ("train", "dev"):
            utts = [
                Utt(s.utt, Path(s.wav), s.text, spk, instruct) for s in kept if s.split == split
            ]
            outputs += write_kaldi_dir(ws.split_dir(split), utts)
        outputs.append(_write_manifest(prep / "segments.jsonl", segs))
        outputs.append(_write_qc_tsv(prep / "qc.tsv", segs, result.bad_files))
        if opts.review:
            result.review_path = write_review(prep / "review.tsv", segs)
            outputs.append(result.review_path)
        _remove_stale_clips(clips_dir, intake)

        # Figures.
        result.segments = segs
        result.kept = len(kept)
        result.excluded = len(segs) - len(kept)
        result.kept_seconds = sum(s.metrics["duration"] for s in kept)
        reasons: Counter[str] = Counter()
        for s in segs:
            if not s.kept:
                reasons.update(s.reason_codes)
        reasons.update(b["reason"] for b in result.bad_files)
        result.by_reason = dict(reasons)
        result.flagged = dict(Counter(f["code"] for s in kept for f in s.flags))
        result.min_snr_db = opts.qc_opts.min_snr_db
        result.dev = sum(1 for s in kept if s.split == "dev")
        result.train = len(kept) - result.dev
        result.wall_seconds = time.perf_counter() - t_start
        result.processed_seconds = result.intake_audio_seconds or sum(
            s.metrics["duration"] for s in segs
        )
        if result.limited:
            result.processed_seconds = sum(s.metrics["duration"] for s in segs)
            result.source_seconds = _audio_seconds(files)
        if result.kept_minutes < MIN_MINUTES_STRONG:
            result.warnings.append(
                f"only {result.kept_minutes:.1f} min of speech kept: far too little for a good "
                "voice (upstream's maintainers advise at least an hour)"
            )
        elif result.kept_minutes < MIN_MINUTES_WARN:
            result.warnings.append(
                f"only {result.kept_minutes:.1f} min of speech kept: 30 min or more is better, "
                "an hour is advised"
            )
        too_long = result.by_reason.get("too_long", 0)
        if opts.asr == "transcripts" and too_long:
            result.warnings.append(
                f"{too_long} files over {opts.qc_opts.max_duration:g} s were excluded: imported "
                "transcripts keep each file whole (cut them first, or let ASR segment them)"
            )
        result.outputs = outputs
        rec.figures.update(result.figures())
        rec.outputs = [str(p) for p in outputs]
        if not kept:
            raise StageError(
                f"no usable segment in {src} ({len(segs)} segments, {len(result.bad_files)} "
                "unusable files)",
                f"see {prep / 'qc.tsv'} for the reasons",
            )
    return result


def _forced_keep(s: Segment, overrides: dict[str, dict[str, Any]]) -> bool:
    ov = overrides.get(s.utt)
    return bool(ov and ov.get("sha") == s.sha and ov.get("keep") == 1)


def _transcribe(
    need: list[Segment],
    asr_opts: Any,
    asr_key: str,
    cache: JsonlCache,
    result: PrepareResult,
) -> None:
    from voicelab.blocks.asr import load_transcriber

    transcriber = load_transcriber(asr_opts)
    t0 = time.perf_counter()
    for s in track(need, "transcribe"):
        x16, _ = au.read_wav_mono(s.wav, vad.VAD_SR)
        r = transcriber.transcribe(x16)
        hit = {
            "k": f"{s.sha}:{asr_key}",
            "text": r.text,
            "language": r.language,
            "avg_logprob": r.avg_logprob,
            "no_speech_prob": r.no_speech_prob,
            "compression_ratio": r.compression_ratio,
        }
        cache.put(hit)
        s.asr = hit
        result.asr_calls += 1
        result.asr_audio_seconds += x16.size / vad.VAD_SR
    result.asr_wall_seconds = time.perf_counter() - t0


def _finish_segment(s: Segment, opts: PrepareOptions, overrides: dict[str, dict[str, Any]]) -> None:
    """Text, metrics, reasons, status and risk of one segment (idempotent)."""
    if s.raw_text:
        text, lang, flags = finish_text(s.raw_text, s.language, opts.text_norm)
    else:
        text, lang, flags = "", s.language, []
    s.auto_text, s.language, s.hallucinations = text, lang, flags
    ov = overrides.get(s.utt)
    if ov and ov.get("sha") != s.sha:
        ov = None  # the audio changed since the review: the edit no longer applies
    s.text = ov["text"] if ov and "text" in ov else text
    s.review = ov
    m = dict(s.metrics)
    m.update(qc.text_metrics(s.text, m["duration"]))
    m.update(qc.asr_metrics(s.asr, flags))
    s.qc = m
    transcribed = opts.asr == "transcripts" or s.asr is not None
    reasons = qc.evaluate(m, opts.qc_opts) if transcribed else list(s.audio_reasons)
    s.auto_status = "excluded" if reasons else "kept"
    status = s.auto_status
    s.overridden = []
    if ov and ov.get("keep") == 0:
        reasons = [*reasons, {"code": "review_drop", "metric": "keep", "value": 0,
                              "threshold": 1, "hard": False}]  # fmt: skip
        status = "excluded"
    elif ov and ov.get("keep") == 1 and reasons:
        hard = [r for r in reasons if r["hard"]]
        if hard:
            log.warning("review: %s cannot be kept (%s)", s.utt, qc.describe(hard))
        elif transcribed:
            s.overridden = [r["code"] for r in reasons]
            reasons, status = [], "kept"
    s.reasons = reasons
    s.status = status
    s.reasons_text = qc.describe(reasons)
    s.flags = qc.flags(m, opts.qc_opts) if status == "kept" else []
    s.flags_text = qc.describe(s.flags)
    s.risk = qc.risk(m, reasons, opts.qc_opts)


def _write_manifest(path: Path, segs: list[Segment]) -> Path:
    lines = [json.dumps(s.to_dict(), ensure_ascii=False) for s in segs]
    return atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))


_QC_COLUMNS = (
    "duration", "source_sample_rate", "peak_db", "clip_ratio", "loudness_db", "snr_db",
    "speech_ratio", "chars_per_second", "text_tokens", "text_per_frame", "avg_logprob",
    "no_speech_prob", "compression_ratio",
)  # fmt: skip


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _write_qc_tsv(path: Path, segs: list[Segment], bad: list[dict[str, Any]]) -> Path:
    head = ["id", "status", "split", "reasons", "flags", "risk", *_QC_COLUMNS, "source", "text"]
    lines = ["\t".join(head)]
    for s in segs:
        row = [s.utt, s.status, s.split or "", s.reasons_text, s.flags_text, f"{s.risk:.3f}"]
        row += [_fmt(s.qc.get(c)) for c in _QC_COLUMNS]
        row += [s.source_rel, s.text.replace("\t", " ")]
        lines.append("\t".join(row))
    for b in bad:
        row = ["-", "unusable", "", b["reason"], "", "", *[""] * len(_QC_COLUMNS), b["path"], ""]
        lines.append("\t".join(row))
    return atomic_write_text(path, "\n".join(lines) + "\n")


def _remove_stale_clips(clips_dir: Path, intake: JsonlCache) -> None:
    """Clips no intake record names any more (a source changed, moved or went away)."""
    if not clips_dir.is_dir():
        return
    live = {s["clip"] for r in intake.items.values() for s in r.get("segments", [])}
    for p in clips_dir.iterdir():
        if p.suffix == ".wav" and p.name not in live and not p.name.startswith("."):
            p.unlink()


# ---- options from voicelab.toml --------------------------------------------------------------

# [prepare] keys of voicelab.toml that a later run (or ``voicelab run``) reuses.
SAVED_OPTIONS = (
    "asr", "whisper_model", "device", "compute_type", "language", "initial_prompt", "beam_size",
    "text_norm", "min_seconds", "max_seconds", "dev_ratio", "transcripts",
)  # fmt: skip


def options_from_workspace(ws: Workspace, **given: Any) -> PrepareOptions:
    """PrepareOptions from the given values (None = not given), else ``[prepare]`` of
    voicelab.toml, else the defaults. QC thresholds may be set under ``[prepare.qc]``."""
    defaults = PrepareOptions()
    values: dict[str, Any] = {}
    for f in fields(PrepareOptions):
        if f.name == "qc_opts":
            continue
        value = given.get(f.name)
        if f.name in SAVED_OPTIONS:
            value = ws.option("prepare", f.name, value, getattr(defaults, f.name))
        elif value is None:
            value = getattr(defaults, f.name)
        values[f.name] = value
    for key in ("wav_dir", "transcripts", "apply_review"):
        if values.get(key) not in (None, "", "-"):
            values[key] = to_local_path(values[key])
    qc_section = ws.option("prepare", "qc", default={}) or {}
    values["qc_opts"] = given.get("qc_opts") or qc.QcOptions.from_dict(dict(qc_section))
    return PrepareOptions(**values)


# ---- the stage contract (voicelab.contract) --------------------------------------------------

Options = PrepareOptions


def stage_options(ws: Workspace, run: RunOptions) -> PrepareOptions:
    return options_from_workspace(ws, **run.overrides.get("prepare", {}))


def stage_params(ws: Workspace, opts: PrepareOptions) -> dict[str, Any]:
    """Every option but those that do not change the dataset (review files, device)."""
    p = plain(opts)
    for volatile in ("review", "apply_review", "device", "vad_filter"):
        p.pop(volatile, None)
    p["wav_dir"] = p.get("wav_dir") or ws.config.wav_dir
    return p


def stage_outputs(ws: Workspace, opts: PrepareOptions) -> list[Path]:
    return [ws.split_dir(s) / f for s in ("train", "dev") for f in ("wav.scp", "text")]


def run(ws: Workspace, opts: PrepareOptions) -> StageResult:
    res = run_prepare(ws, opts)
    return StageResult(list(res.outputs), res.figures(), res.summary_lines()[0], res)


STAGE = Stage(
    NAME,
    (),
    stage_params,
    run,
    stage_outputs,
    summary="intake, segmentation, ASR, QC, split",
    records_itself=True,
    options=stage_options,
)
