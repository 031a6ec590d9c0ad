"""The dataset records every stage passes on, with explicit fields.

- :class:`Clip`: one cut of a source recording, as intake writes it (``prepare/intake.jsonl``).
- :class:`Segment`: a clip on its way through prepare (transcript, QC, review, split), one row
  of ``prepare/segments.jsonl``; the report and the web page read the same rows back.
- :class:`Utt`: one utterance of a kaldi dir (``wav.scp``, ``text``, ``utt2spk``, ``instruct``),
  what prepare writes and features and pack read.
- :class:`PackedUtt`: what a parquet shard says of one utterance (its lengths), what training's
  preflight and batch estimates read; :class:`Shard`: one parquet file's utterances.

``to_dict``/``from_dict`` give the files' JSON rows; ``from_dict`` also reads the rows VoiceLab
0.1 wrote (``id``/``keep``/``reason``/``duration`` keys, reasons as text) so old workspaces load.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

# The upstream length units: speech tokens per second, mel frames per second (24 kHz, hop 480).
TOKEN_RATE = 25
MEL_RATE = 50

Reason = dict[str, Any]  # {"code", "metric", "value", "threshold", "hard"} (voicelab.blocks.qc)


@dataclass
class Clip:
    """One cut of a source recording (``prepare/clips/<utt>.wav``)."""

    utt: str
    clip: str  # file name under prepare/clips
    start: float  # seconds into the source
    end: float
    sha: str  # hash of the clip's samples: review edits apply to this audio only
    metrics: dict[str, Any] = field(default_factory=dict)  # qc.audio_metrics

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Clip:
        return cls(
            utt=str(d["utt"]),
            clip=str(d.get("clip") or f"{d['utt']}.wav"),
            start=float(d.get("start", 0.0)),
            end=float(d.get("end", 0.0)),
            sha=str(d.get("sha", "")),
            metrics=dict(d.get("metrics") or {}),
        )


# The keys of a segments.jsonl row, in the order prepare writes them.
MANIFEST_KEYS = (
    "utt", "status", "split", "text", "raw_text", "language", "wav", "source", "source_rel",
    "start", "end", "sha", "reasons", "flags", "risk", "hallucinations", "review",
)  # fmt: skip


@dataclass
class Segment:
    """A clip through prepare: fields are filled step by step (intake, ASR, text, QC, review,
    split); ``status`` is ``kept`` or ``excluded``."""

    utt: str
    wav: str = ""  # absolute path of the clip
    source: str = ""  # the source recording
    source_rel: str = ""  # ... relative to the wav dir (dev split groups by it)
    clip: str = ""
    start: float = 0.0
    end: float = 0.0
    sha: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)  # audio metrics from intake
    audio_reasons: list[Reason] = field(default_factory=list)  # exclusions before ASR
    asr: dict[str, Any] | None = None  # the ASR cache entry (None: not transcribed)
    raw_text: str = ""
    language: str | None = None
    auto_text: str = ""  # the normalized transcript, before review edits
    hallucinations: list[str] = field(default_factory=list)
    text: str = ""  # what training reads (a review edit wins)
    review: dict[str, Any] | None = None  # the review override that applied
    qc: dict[str, Any] = field(default_factory=dict)  # audio + text + ASR metrics
    auto_status: str = ""  # what QC alone decided
    overridden: list[str] = field(default_factory=list)  # reason codes a review kept it past
    reasons: list[Reason] = field(default_factory=list)
    status: str = "excluded"
    reasons_text: str = ""
    flags: list[Reason] = field(default_factory=list)
    flags_text: str = ""
    risk: float = 0.0
    split: str | None = None  # train | dev for kept segments

    @classmethod
    def from_clip(cls, c: Clip, source: str, source_rel: str, wav: str) -> Segment:
        return cls(
            utt=c.utt,
            wav=wav,
            source=source,
            source_rel=source_rel,
            clip=c.clip,
            start=c.start,
            end=c.end,
            sha=c.sha,
            metrics=dict(c.metrics),
        )

    @property
    def kept(self) -> bool:
        return self.status == "kept"

    @property
    def duration(self) -> float:
        for m in (self.qc, self.metrics):
            if "duration" in m:
                return float(m["duration"])
        return max(0.0, self.end - self.start)

    @property
    def reason_codes(self) -> list[str]:
        return [str(r.get("code") or "?") for r in self.reasons]

    def to_dict(self) -> dict[str, Any]:
        """The segments.jsonl row (the manifest keys, ``qc``, and ``overridden`` when set)."""
        row = {k: getattr(self, k) for k in MANIFEST_KEYS}
        row["qc"] = self.qc
        if self.overridden:
            row["overridden"] = self.overridden
        return row

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Segment:
        """A segments.jsonl row, of this version or 0.1 (``id``, ``keep``, ``reason`` as text,
        a top-level ``duration``); unknown keys are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known and v is not None}
        values["utt"] = str(d.get("utt", d.get("id", "")))
        if "status" not in d:
            kept = d.get("keep", not (d.get("reasons") or d.get("reason")))
            values["status"] = "kept" if kept else "excluded"
        values["reasons"] = _reasons(d.get("reasons", d.get("reason")))
        values["flags"] = _reasons(d.get("flags"))
        if "qc" not in d and "duration" in d:
            values["qc"] = {"duration": float(d["duration"])}
        if not d.get("reasons_text"):
            values["reasons_text"] = ", ".join(str(r["code"]) for r in values["reasons"])
        if "split" in d:
            values["split"] = d["split"]
        return cls(**values)


def _reasons(value: Any) -> list[Reason]:
    """Reasons as dicts; 0.1 also wrote text (``low_snr(12<15), too_short``) or bare codes."""
    if not value:
        return []
    if isinstance(value, str):
        value = [x.strip() for x in value.replace(";", ",").split(",") if x.strip()]
    return [
        dict(r) if isinstance(r, dict) else {"code": str(r).split("(")[0].strip()} for r in value
    ]


def read_segments(path: Path) -> list[Segment]:
    """The rows of a segments.jsonl ([] when there is none)."""
    import json

    if not path.is_file():
        return []
    out = []
    for line in path.read_text("utf-8").splitlines():
        if line.strip():
            out.append(Segment.from_dict(json.loads(line)))
    return out


@dataclass
class Utt:
    """One utterance of a kaldi dir."""

    utt: str
    wav: Path  # absolute, local
    text: str
    spk: str
    instruct: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "wav": str(self.wav)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Utt:
        return cls(str(d["utt"]), Path(d["wav"]), str(d["text"]), str(d["spk"]), d.get("instruct"))


@dataclass
class PackedUtt:
    """One utterance as a parquet shard holds it, by its lengths (upstream's filter units)."""

    utt: str
    seconds: float
    text_tokens: int
    speech_tokens: int

    @property
    def frames(self) -> int:
        """Mel frames after upstream pads the audio to whole tokens."""
        return self.speech_tokens * (MEL_RATE // TOKEN_RATE)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PackedUtt:
        return cls(
            str(d["utt"]), float(d["seconds"]), int(d["text_tokens"]), int(d["speech_tokens"])
        )


@dataclass
class Shard:
    """One parquet shard of a data.list, by its utterances' lengths."""

    path: Path
    utts: list[PackedUtt]
