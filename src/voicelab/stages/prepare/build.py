"""``run_prepare``: the seven steps in order, each cached, recorded as one stage run."""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from voicelab.blocks import qc
from voicelab.blocks.kaldi import write_kaldi_dir
from voicelab.blocks.records import Clip, Segment, Utt
from voicelab.console import track
from voicelab.errors import ConfigError, InputError, StageError
from voicelab.fsutil import (
    atomic_write_json,
    hash_obj,
    quick_fingerprint,
    read_json,
)
from voicelab.paths import has_whitespace, to_local_path
from voicelab.stages.prepare.dataset import (
    finish_segment,
    split_dev,
    transcribe_segments,
    write_manifest,
    write_qc_tsv,
)
from voicelab.stages.prepare.intake import (
    JsonlCache,
    audio_seconds,
    discover,
    intake_key,
    intake_source,
    remove_stale_clips,
    source_ids,
)
from voicelab.stages.prepare.options import (
    ASR_BACKENDS,
    MIN_MINUTES_STRONG,
    MIN_MINUTES_WARN,
    NAME,
    PrepareOptions,
    PrepareResult,
)
from voicelab.stages.prepare.review import (
    apply_review,
    forced_keep,
    mark_review_applied,
    write_review,
)
from voicelab.stages.prepare.transcripts import match_transcripts
from voicelab.state import stage_run
from voicelab.workspace import Workspace

log = logging.getLogger(__name__)


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
            key = intake_key(opts, prefix)
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
                finish_segment(s, opts, overrides)

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
            mark_review_applied(review_file)
        need = [
            s
            for s in segs
            if opts.asr != "transcripts"
            and s.asr is None
            and (
                not s.audio_reasons
                # A review keeps it: worth transcribing unless upstream would drop it anyway.
                or (forced_keep(s, overrides) and not any(r["hard"] for r in s.audio_reasons))
            )
        ]
        if need:
            transcribe_segments(need, asr_opts, asr_key, asr_cache, result)
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
        outputs.append(write_manifest(prep / "segments.jsonl", segs))
        outputs.append(write_qc_tsv(prep / "qc.tsv", segs, result.bad_files))
        if opts.review:
            result.review_path = write_review(prep / "review.tsv", segs)
            outputs.append(result.review_path)
        remove_stale_clips(clips_dir, intake)

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
            result.source_seconds = audio_seconds(files)
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
