"""What one run's launch is built from: the files preflight wrote and the choices it made."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from voicelab.stages.train.options import TrainOptions
from voicelab.stages.train.rundirs import RunPlan


@dataclass(frozen=True)
class LaunchSpec:
    vendor_root: Path
    model: str  # llm | flow
    device: str  # cuda | cpu
    nproc: int  # processes on this machine
    opts: TrainOptions
    config: Path  # the run's train_config.yaml
    train_list: Path
    cv_list: Path
    base_dir: Path  # the base model (CosyVoice-BlankEN inside)
    plan: RunPlan
    num_workers: int
    prefetch: int
    amp: bool
    ds_config: Path | None = None  # deepspeed's JSON (upstream's trainer)
    memory_mode: str | None = None
    trainer: str = "upstream"  # voicelab | upstream
