"""Options and results of ``voicelab export``, and the files a voice dir holds."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from voicelab.errors import ModelError
from voicelab.stages.checkpoints import (
    Checkpoint,
)
from voicelab.upstream.model_files import BLANKEN_FILES, INFERENCE_FILES

REQUIRED_FILES = INFERENCE_FILES

BLANKEN_REQUIRED = BLANKEN_FILES

STATE_FILES = ("llm.pt", "flow.pt", "hift.pt")

PROVENANCE = "voicelab.json"

DOWNLOAD_MANIFEST = ".voicelab-manifest.json"  # written by voicelab download

EMBED_DIM = 192


@dataclass
class ExportOptions:
    llm_select: str | None = None  # a rule of voicelab.stages.checkpoints.RULE_HELP; None: default
    flow_select: str | None = None
    no_flow: bool = False  # keep the base flow.pt even when flow was trained
    name: str | None = None  # voice dir name under pretrained_models/
    overwrite: bool = False


@dataclass
class VerifyReport:
    model_dir: Path
    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    speakers: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_if_failed(self) -> VerifyReport:
        if self.problems:
            more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            raise ModelError(
                f"{self.model_dir} fails verification: {self.problems[0]}{more}",
                "export again (voicelab export --overwrite); for a base model: voicelab download",
            )
        return self


@dataclass
class ExportResult:
    voice_dir: Path
    speaker: str
    speakers: list[str]
    llm_rule: str
    llm: list[Checkpoint]
    flow_rule: str | None
    flow: list[Checkpoint]  # empty: the base flow was kept
    linked: int = 0
    copied: int = 0
    removed: list[str] = field(default_factory=list)
    verify: VerifyReport | None = None
    seconds: float = 0.0
