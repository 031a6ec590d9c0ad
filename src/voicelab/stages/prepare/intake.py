"""Steps 1-2: discover the recordings, then decode, segment and measure each into clips, cached per
source file (``prepare/intake.jsonl``)."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from voicelab.blocks import audio as au
from voicelab.blocks import qc, vad
from voicelab.blocks.records import Clip
from voicelab.errors import InputError
from voicelab.fsutil import (
    atomic_path,
    hash_obj,
)
from voicelab.paths import safe_name
from voicelab.stages.prepare.options import INTAKE_VERSION, PrepareOptions


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


def intake_key(opts: PrepareOptions, prefix: str) -> str:
    return hash_obj(
        {
            "v": INTAKE_VERSION,
            "prefix": prefix,
            "seg": asdict(opts.segment_options()),
            "whole": opts.asr == "transcripts",
            "vad": asdict(vad.VadOptions()),
        }
    )


def audio_seconds(files: list[Path]) -> float:
    total = 0.0
    for f in files:
        try:
            total += au.probe(f).duration
        except au.AudioError:
            continue
    return total


def remove_stale_clips(clips_dir: Path, intake: JsonlCache) -> None:
    """Clips no intake record names any more (a source changed, moved or went away)."""
    if not clips_dir.is_dir():
        return
    live = {s["clip"] for r in intake.items.values() for s in r.get("segments", [])}
    for p in clips_dir.iterdir():
        if p.suffix == ".wav" and p.name not in live and not p.name.startswith("."):
            p.unlink()
