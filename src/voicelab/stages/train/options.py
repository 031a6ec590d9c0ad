"""Options and results of ``voicelab train``, and how the trainer and device resolve."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voicelab.errors import ConfigError
from voicelab.stages.train.gpus import query_gpus

MODELS = ("llm", "flow")

ENGINES = ("torch_ddp", "deepspeed")

#: ``voicelab``: VoiceLab's engine (voicelab.upstream.engine); ``upstream``: upstream's train.py.
TRAINERS = ("voicelab", "upstream")

# Options of one run only: never kept in voicelab.toml (voicelab.config).
RUN_ONLY = {"run_only": True}


@dataclass
class TrainOptions:
    """Options of one ``voicelab train`` (None: voicelab.toml ``[train]``, else the default)."""

    device: str = "auto"  # auto | cuda | cpu
    gpus: int | None = None  # processes per machine (GPUs; CPU processes with --device cpu)
    gpu_ids: str | None = None  # CUDA_VISIBLE_DEVICES, e.g. "0,1"
    nnodes: int = field(default=1, metadata=RUN_ONLY)
    node_rank: int = field(default=0, metadata=RUN_ONLY)
    master_addr: str | None = field(default=None, metadata=RUN_ONLY)
    master_port: int = 29500
    engine: str = "torch_ddp"
    trainer: str | None = None  # voicelab | upstream (default: voicelab.toml, else voicelab)
    keep: int | None = None  # epoch checkpoints kept (voicelab trainer; default all)
    compile: bool | None = None  # torch.compile the model's blocks (voicelab; None: auto, GPU)
    #: the compiled blocks replay CUDA graphs (voicelab; None: where they apply)
    cuda_graphs: bool | None = None
    amp: bool | None = None  # default: on for CUDA (bf16), off on the CPU
    epochs: int | None = None
    batch_frames: int | None = None
    accum_grad: int | None = None
    lr: float | None = None
    num_workers: int | None = None
    prefetch: int | None = None
    save_per_step: int | None = None
    log_interval: int | None = None
    cpus: str | None = None  # CPU affinity, e.g. "0-11"
    resume: bool = field(default=False, metadata=RUN_ONLY)
    new: bool = field(default=False, metadata=RUN_ONLY)
    # Start weights (default: the base model's llm.pt / flow.pt).
    checkpoint: str | None = field(default=None, metadata=RUN_ONLY)
    timeout: int = 60
    dry_run: bool = field(default=False, metadata=RUN_ONLY)  # preflight, config, launch.sh
    memory: str | None = None  # memory mode (voicelab.memory): auto, or e.g. checkpointing+8bit
    max_vram: float | None = None  # GiB training may use on each GPU


@dataclass
class TrainResult:
    model: str
    run_dir: Path
    launched: bool
    epochs_done: int = 0
    max_epoch: int = 0
    best_cv_loss: float | None = None
    best_epoch: int | None = None
    last_checkpoint: Path | None = None
    seconds: float = 0.0
    argv: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        """The lines ``voicelab train`` ends with (the web page shows the same). The best
        epoch by its checkpoint's name: the progress line counts epochs from 1, files from 0."""
        best = "-"
        if self.best_cv_loss is not None:
            best = f"{self.best_cv_loss:.4f} (epoch_{self.best_epoch}_whole.pt)"
        return [
            f"{self.model}: {self.epochs_done}/{self.max_epoch} epochs in {self.run_dir}",
            f"best CV loss: {best}; last checkpoint: {self.last_checkpoint or '-'}",
        ]


@dataclass
class Problem:
    what: str
    fix: str

    def line(self) -> str:
        return f"{self.what} ({self.fix})" if self.fix else self.what


class PreflightError(ConfigError):
    """Every problem preflight found, one per line."""

    def __init__(self, problems: list[Problem]) -> None:
        lines = "\n".join(f"  - {p.line()}" for p in problems)
        super().__init__(
            f"training cannot start, {len(problems)} problem(s):\n{lines}",
            "fix the above and run the command again; nothing was launched",
        )
        self.problems = problems


def resolve_trainer(opts: TrainOptions, section: dict[str, Any]) -> str:
    from voicelab.workspace import DEFAULT_TRAINER

    trainer = opts.trainer or section.get("trainer") or DEFAULT_TRAINER
    if trainer not in TRAINERS:
        raise ConfigError(f"unknown --trainer {trainer!r}", "use voicelab or upstream")
    if trainer == "voicelab" and opts.engine != "torch_ddp":
        raise ConfigError(
            f"--engine {opts.engine} belongs to upstream's trainer",
            "add --trainer upstream, or leave --engine out",
        )
    if trainer == "upstream" and (opts.keep or opts.compile is True or opts.cuda_graphs):
        raise ConfigError(
            "--keep, --compile and --cuda-graphs are options of VoiceLab's trainer",
            "use --trainer voicelab",
        )
    if opts.cuda_graphs and opts.compile is False:
        raise ConfigError(
            "--cuda-graphs replays the compiled blocks", "drop --no-compile or --cuda-graphs"
        )
    return trainer


def cuda_graphs_unused(
    opts: TrainOptions, device: str, world: int, memory_mode: str | None
) -> str | None:
    """Why ``--cuda-graphs`` cannot apply to this run, as the warning the user sees before it
    starts (the engine then trains without graphs, and its log says why as well); None where
    it applies or was not asked for."""
    if not opts.cuda_graphs:
        return None
    if device != "cuda":
        why = "it needs a CUDA GPU"
    elif world > 1:
        why = "it runs on one GPU for now"
    elif memory_mode not in (None, "full"):
        why = f"it needs the full memory mode (this run: {memory_mode})"
    else:
        return None
    return f"--cuda-graphs: {why}; this run trains without CUDA graphs"


def resolve_device(device: str) -> str:
    if device not in ("auto", "cuda", "cpu"):
        raise ConfigError(f"unknown --device {device!r}", "use auto, cuda or cpu")
    if device != "auto":
        return device
    return "cuda" if query_gpus() else "cpu"


def section_of(model: str) -> str:
    return "train_flow" if model == "flow" else "train"
