"""Options and result of ``voicelab prepare``, and the options a workspace keeps (``[prepare]``)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from voicelab.blocks import qc, vad
from voicelab.blocks.records import Segment
from voicelab.paths import to_local_path
from voicelab.workspace import Workspace

NAME = "prepare"  # its state record

INTAKE_VERSION = 4  # 4: the SNR noise floor is a low percentile (qc.NOISE_PERCENTILE)

ASR_BACKENDS = ("faster-whisper", "funasr", "transcripts")

MIN_MINUTES_WARN = 30.0

MIN_MINUTES_STRONG = 10.0

TRANSCRIPT_SIDECARS = (".txt", ".lab")


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
