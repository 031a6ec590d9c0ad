"""``run_prepare``: the seven steps in order, each cached, recorded as one stage run."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicelab.blocks import qc, vad
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
from voicelab.stages.prepare.transcripts import Transcript, match_transcripts
from voicelab.state import stage_run
from voicelab.workspace import Workspace

log = logging.getLogger(__name__)

_Overrides = dict[str, dict[str, Any]]


@dataclass
class _Sources:
    """The recordings of one run and what is known of them before intake."""

    root: Path
    files: list[Path]
    ids: dict[Path, str]  # the stable id each file's clips are named by
    fps: dict[Path, str]  # quick fingerprints: a changed file is taken in again
    transcripts: dict[Path, Transcript]  # imported ones (--asr transcripts), else empty

    def rel(self, f: Path) -> str:
        return f.relative_to(self.root).as_posix()


def run_prepare(ws: Workspace, opts: PrepareOptions) -> PrepareResult:
    """Run the stage; see the module docstring."""
    t_start = time.perf_counter()
    _check_options(opts)
    seg_opts = opts.segment_options().check()
    spk = ws.speaker
    prep = ws.prepare_dir
    clips_dir = prep / "clips"
    _check_clips_path(ws, clips_dir)
    srcs = _find_sources(ws, opts)
    asr_opts = opts.asr_options() if opts.asr != "transcripts" else None
    asr_key = hash_obj(asr_opts.cache_key()) if asr_opts is not None else "transcripts"
    result = PrepareResult(segments=[], bad_files=[], files=len(srcs.files))
    prep.mkdir(parents=True, exist_ok=True)
    with stage_run(ws, NAME, _inputs(srcs, opts), _params(ws, opts, asr_key)) as rec:
        intake = JsonlCache(prep / "intake.jsonl", key="rel")
        segs = _take_in(spk, srcs, opts, seg_opts, clips_dir, intake, result)
        _transcribe_and_review(prep, opts, srcs, segs, asr_opts, asr_key, result)
        kept = _split(segs, opts.dev_ratio)
        outputs = _write_outputs(ws, spk, opts, segs, kept, result)
        remove_stale_clips(clips_dir, intake)
        _fill_figures(result, opts, segs, kept, srcs.files, t_start)
        result.warnings += _amount_warnings(result, opts)
        result.outputs = outputs
        rec.figures.update(result.figures())
        rec.outputs = [str(p) for p in outputs]
        if not kept:
            raise StageError(
                f"no usable segment in {srcs.root} ({len(segs)} segments, "
                f"{len(result.bad_files)} unusable files)",
                f"see {prep / 'qc.tsv'} for the reasons",
            )
    return result


# ---- before the run -------------------------------------------------------------------------
def _check_options(opts: PrepareOptions) -> None:
    if opts.asr not in ASR_BACKENDS:
        raise ConfigError(f"unknown --asr {opts.asr!r}", f"use one of {', '.join(ASR_BACKENDS)}")
    if opts.limit is not None and opts.limit < 1:
        raise ConfigError("--limit must be at least 1", "e.g. --limit 10")
    if not 0 <= opts.dev_ratio < 0.5:
        raise ConfigError(f"--dev-ratio {opts.dev_ratio} is out of range", "e.g. --dev-ratio 0.05")


def _check_clips_path(ws: Workspace, clips_dir: Path) -> None:
    """The kaldi lists name the clips by path, and upstream splits their lines at blanks."""
    if has_whitespace(str(clips_dir.resolve())):
        raise ConfigError(
            f"the workspace path has whitespace: {ws.root}",
            "upstream's kaldi readers split paths at blanks: use a workspace path without spaces",
        )


def _find_sources(ws: Workspace, opts: PrepareOptions) -> _Sources:
    src = to_local_path(opts.wav_dir) if opts.wav_dir else ws.wav_dir
    files = discover(src, exclude=ws.root)
    transcripts = match_transcripts(src, files, opts) if opts.asr == "transcripts" else {}
    if opts.asr == "transcripts" and not transcripts:
        raise InputError(
            f"no transcripts found for the audio in {src}",
            "put a .txt/.lab beside each file or pass --transcripts FILE (.list, .csv, .tsv)",
        )
    fps = {f: quick_fingerprint(f) for f in files}
    return _Sources(src, files, source_ids(src, files), fps, transcripts)


def _inputs(srcs: _Sources, opts: PrepareOptions) -> dict[str, Any]:
    """What the stage reads: a change in it makes the stage stale."""
    inputs: dict[str, Any] = {"files": [[srcs.rel(f), srcs.fps[f]] for f in srcs.files]}
    if opts.transcripts:
        inputs["transcripts"] = quick_fingerprint(to_local_path(opts.transcripts))
    return inputs


def _params(ws: Workspace, opts: PrepareOptions, asr_key: str) -> dict[str, Any]:
    """The options that shape the outputs: a change makes the stage stale."""
    return {
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


# ---- 1-2. intake and segmentation, per source file -----------------------------------------
def _take_in(
    spk: str,
    srcs: _Sources,
    opts: PrepareOptions,
    seg_opts: vad.SegmentOptions,
    clips_dir: Path,
    intake: JsonlCache,
    result: PrepareResult,
) -> list[Segment]:
    """Cut each source file into clips (cached per file); unusable files go to ``bad_files``."""
    segs: list[Segment] = []
    t0 = time.perf_counter()
    for f in track(srcs.files, "intake"):
        if opts.asr == "transcripts" and f not in srcs.transcripts:
            result.bad_files.append(
                {"path": str(f), "reason": "no_transcript", "detail": "no transcript found"}
            )
            continue
        prefix = f"{spk}_{srcs.ids[f]}"
        src_rec = _intake_record(f, prefix, srcs, opts, seg_opts, clips_dir, intake, result)
        if src_rec["error"]:
            result.bad_files.append({"path": str(f), **src_rec["error"]})
            log.debug("skipped %s: %s", f, src_rec["error"]["detail"])
            continue
        segs += _segments_of(src_rec, f, srcs.rel(f), clips_dir)
        if opts.limit and len(segs) >= opts.limit:
            result.limited = True
            break
    result.intake_wall_seconds = time.perf_counter() - t0
    if opts.limit:
        result.limited = True
        segs = segs[: opts.limit]
    intake.compact(keep={srcs.rel(f) for f in srcs.files})
    return segs


def _intake_record(
    f: Path,
    prefix: str,
    srcs: _Sources,
    opts: PrepareOptions,
    seg_opts: vad.SegmentOptions,
    clips_dir: Path,
    intake: JsonlCache,
    result: PrepareResult,
) -> dict[str, Any]:
    """The cached intake of ``f`` while the file, the options and its clips are unchanged; else
    a new one (timed, for the projection of a whole folder)."""
    rel, fp, key = srcs.rel(f), srcs.fps[f], intake_key(opts, prefix)
    src_rec = intake.get(rel)
    if (
        src_rec is not None
        and src_rec.get("fp") == fp
        and src_rec.get("key") == key
        and all((clips_dir / s["clip"]).is_file() for s in src_rec["segments"])
    ):
        return src_rec
    src_rec = intake_source(f, prefix, clips_dir, seg_opts, opts.asr == "transcripts")
    src_rec.update(rel=rel, fp=fp, key=key)
    intake.put(src_rec)
    result.intake_audio_seconds += float(src_rec.get("duration") or 0.0)
    return src_rec


def _segments_of(src_rec: dict[str, Any], f: Path, rel: str, clips_dir: Path) -> list[Segment]:
    segs = []
    for s in src_rec["segments"]:
        clip = Clip.from_dict(s)
        wav = str((clips_dir / clip.clip).resolve())
        segs.append(Segment.from_clip(clip, str(f), rel, wav))
    return segs


# ---- 3-6. transcripts, text, QC and review edits -------------------------------------------
def _transcribe_and_review(
    prep: Path,
    opts: PrepareOptions,
    srcs: _Sources,
    segs: list[Segment],
    asr_opts: Any,
    asr_key: str,
    result: PrepareResult,
) -> None:
    """Transcripts are imported, or ASR of the segments that pass the audio checks. The review
    edits come before ASR since a review may keep a segment that was excluded before ASR (it
    is transcribed now)."""
    overrides: _Overrides = read_json(prep / "review_overrides.json", {}) or {}
    asr_cache = JsonlCache(prep / "asr_cache.jsonl")
    for s in segs:
        s.audio_reasons = qc.evaluate(s.metrics, opts.qc_opts, stage="audio")
        s.asr = None
        if opts.asr == "transcripts":
            tr = srcs.transcripts[Path(s.source)]
            s.raw_text, s.language = tr.text, tr.language
        else:
            s.asr = asr_cache.get(f"{s.sha}:{asr_key}")
    if opts.apply_review is not None:
        _finish_segments(segs, opts, overrides)
        result.review_applied = _apply_review_file(prep, opts, segs, overrides)
    need = [s for s in segs if opts.asr != "transcripts" and _worth_asr(s, overrides)]
    if need:
        transcribe_segments(need, asr_opts, asr_key, asr_cache, result)
    _finish_segments(segs, opts, overrides)


def _worth_asr(s: Segment, overrides: _Overrides) -> bool:
    """Not transcribed yet, and passes the audio checks or a review keeps it (unless upstream
    would drop it anyway)."""
    if s.asr is not None:
        return False
    return not s.audio_reasons or (
        forced_keep(s, overrides) and not any(r["hard"] for r in s.audio_reasons)
    )


def _finish_segments(segs: list[Segment], opts: PrepareOptions, overrides: _Overrides) -> None:
    """Take each segment's ASR result (if any), then its text, QC and review decision."""
    for s in segs:
        if opts.asr != "transcripts":
            hit = s.asr or {}
            s.raw_text = hit.get("text", "")
            s.language = hit.get("language") or None
        finish_segment(s, opts, overrides)


def _apply_review_file(
    prep: Path, opts: PrepareOptions, segs: list[Segment], overrides: _Overrides
) -> int:
    """Merge the review's edits into the overrides (they outlive the review file)."""
    review_file = (
        to_local_path(opts.apply_review)
        if str(opts.apply_review) not in ("", "-")
        else prep / "review.tsv"
    )
    applied = apply_review(review_file, {s.utt: s for s in segs}, overrides)
    atomic_write_json(prep / "review_overrides.json", overrides)
    mark_review_applied(review_file)
    return applied


# ---- 7. split and outputs --------------------------------------------------------------------
def _split(segs: list[Segment], dev_ratio: float) -> list[Segment]:
    """Mark each kept segment train or dev; returns the kept ones."""
    kept = [s for s in segs if s.kept]
    dev_ids = split_dev(kept, dev_ratio)
    for s in segs:
        s.split = ("dev" if s.utt in dev_ids else "train") if s.kept else None
    return kept


def _write_outputs(
    ws: Workspace,
    spk: str,
    opts: PrepareOptions,
    segs: list[Segment],
    kept: list[Segment],
    result: PrepareResult,
) -> list[Path]:
    """The kaldi dirs upstream reads, the manifest, the QC table and the review sheet."""
    prep, instruct = ws.prepare_dir, ws.instruct
    outputs: list[Path] = []
    for split in ("train", "dev"):
        utts = [Utt(s.utt, Path(s.wav), s.text, spk, instruct) for s in kept if s.split == split]
        outputs += write_kaldi_dir(ws.split_dir(split), utts)
    outputs.append(write_manifest(prep / "segments.jsonl", segs))
    outputs.append(write_qc_tsv(prep / "qc.tsv", segs, result.bad_files))
    if opts.review:
        result.review_path = write_review(prep / "review.tsv", segs)
        outputs.append(result.review_path)
    return outputs


# ---- figures ----------------------------------------------------------------------------------
def _fill_figures(
    result: PrepareResult,
    opts: PrepareOptions,
    segs: list[Segment],
    kept: list[Segment],
    files: list[Path],
    t_start: float,
) -> None:
    """Fill in the figures that status, the report and the web page show."""
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
        # Only part of the folder was read: the projection needs the whole folder's length.
        result.processed_seconds = sum(s.metrics["duration"] for s in segs)
        result.source_seconds = audio_seconds(files)


def _amount_warnings(result: PrepareResult, opts: PrepareOptions) -> list[str]:
    """Too little speech kept, or whole files dropped as too long."""
    warnings = []
    if result.kept_minutes < MIN_MINUTES_STRONG:
        warnings.append(
            f"only {result.kept_minutes:.1f} min of speech kept: far too little for a good "
            "voice (upstream's maintainers advise at least an hour)"
        )
    elif result.kept_minutes < MIN_MINUTES_WARN:
        warnings.append(
            f"only {result.kept_minutes:.1f} min of speech kept: 30 min or more is better, "
            "an hour is advised"
        )
    too_long = result.by_reason.get("too_long", 0)
    if opts.asr == "transcripts" and too_long:
        warnings.append(
            f"{too_long} files over {opts.qc_opts.max_duration:g} s were excluded: imported "
            "transcripts keep each file whole (cut them first, or let ASR segment them)"
        )
    return warnings
