"""Options and result of ``voicelab pack``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from voicelab.stages.features import (
    SPLITS,
)

NAME = "pack"  # its state record


@dataclass
class PackOptions:
    utts_per_shard: int | None = None
    num_workers: int | None = None  # DataLoader workers per GPU during training
    num_gpus: int | None = None
    jobs: int | None = None  # writer threads (default: CPU count)
    splits: tuple[str, ...] = SPLITS
    force: bool = False


@dataclass
class LeftOut:
    split: str
    utt: str
    reason: str


@dataclass
class SplitPack:
    split: str
    utts: int = 0
    packed: int = 0
    shards: list[Path] = field(default_factory=list)
    data_list: Path | None = None
    bytes: int = 0
    written: int = 0
    reused: int = 0


@dataclass
class PackResult:
    splits: dict[str, SplitPack] = field(default_factory=dict)
    left_out: list[LeftOut] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    skipped: bool = False
    reason: str = ""

    def summary(self) -> str:
        if self.skipped:
            return f"pack: {self.reason}, nothing to do (--force rewrites)"
        lines = []
        for s in self.splits.values():
            lines.append(
                f"pack {s.split}: {s.packed}/{s.utts} utterances in {len(s.shards)} shard(s) "
                f"({s.bytes / 1e6:.1f} MB; {s.written} written, {s.reused} unchanged) -> "
                f"{s.data_list}"
            )
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [f"  left out {x.split}/{x.utt}: {x.reason}" for x in self.left_out]
        return "\n".join(lines)
