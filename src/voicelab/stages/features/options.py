"""Options and result of ``voicelab features``, and the files it writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

NAME = "features"  # its state record

SPLITS = ("train", "dev")

EMBEDDING_FILE = "utt2embedding.pt"

SPK_EMBEDDING_FILE = "spk2embedding.pt"

TOKEN_FILE = "utt2speech_token.pt"


@dataclass
class FeaturesOptions:
    device: str = "auto"  # auto | cpu | cuda
    onnx_dir: Path | None = None  # default: the base model dir
    threads: int | None = None  # worker threads (default: CPU count)
    token_batch: int | None = None  # tokenizer batch (default: 16 on CUDA, 1 on CPU)
    splits: tuple[str, ...] = SPLITS
    force: bool = False


@dataclass
class Excluded:
    split: str
    utt: str
    reason: str


@dataclass
class SplitFeatures:
    split: str
    utts: int = 0
    kept: int = 0
    speakers: int = 0
    seconds: float = 0.0
    tokens: int = 0
    outputs: list[Path] = field(default_factory=list)


@dataclass
class FeaturesResult:
    splits: dict[str, SplitFeatures] = field(default_factory=dict)
    excluded: list[Excluded] = field(default_factory=list)
    computed: int = 0
    cached: int = 0
    provider: str = ""
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    skipped: bool = False
    reason: str = ""

    def summary(self) -> str:
        if self.skipped:
            return f"features: {self.reason}, nothing to do (--force recomputes)"
        parts = [
            f"{s.split}: {s.kept}/{s.utts} utterances, {s.speakers} speaker(s), "
            f"{s.seconds / 60:.1f} min, {s.tokens} tokens"
            for s in self.splits.values()
        ]
        lines = [
            "features: " + "; ".join(parts),
            f"  computed {self.computed}, from cache {self.cached}, {self.seconds:.1f} s, "
            f"{self.provider}",
        ]
        lines += [f"  excluded {e.split}/{e.utt}: {e.reason}" for e in self.excluded]
        return "\n".join(lines)
