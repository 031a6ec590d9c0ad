"""What a run is made with: its setup (trainer, device, processes, workers) from the options and
voicelab.toml [train], and its training YAML (the workspace's, or a resumed run's own, with the
explicit options applied)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voicelab.errors import ConfigError
from voicelab.stages.train.data import default_epochs, read_shards
from voicelab.stages.train.gpus import Gpu, default_batch_frames, model_params
from voicelab.stages.train.options import TrainOptions, resolve_device, resolve_trainer
from voicelab.stages.train.rundirs import run_name
from voicelab.upstream import train_config as tc
from voicelab.upstream.data_rules import FilterRules, batches_per_rank

if TYPE_CHECKING:
    from voicelab.vendor import VendorRuntime
    from voicelab.workspace import Workspace


@dataclass(frozen=True)
class Setup:
    """How the run is made, resolved once from the options and voicelab.toml [train]."""

    trainer: str
    name: str  # the run's folder: exp/<spk>_sft/<model>/<name>
    device: str
    nproc: int  # processes on this machine
    world: int  # processes on every machine
    amp: bool
    num_workers: int
    prefetch: int


@dataclass(frozen=True)
class RunConfig:
    """The run's training YAML and the values the launch reads back from it."""

    text: str
    values: dict[str, Any]
    max_epoch: int
    max_frames: int
    accum: int
    lr: float
    warnings: list[str]

    @classmethod
    def read(cls, text: str, warnings: list[str]) -> RunConfig:
        values = tc.read_values(text) if text else {}

        def number(key: tc.KeyPath) -> Any:
            return tc.as_number(tc.get_value(values, key))

        return cls(
            text,
            values,
            max_epoch=int(number(tc.MAX_EPOCH) or tc.DEFAULT_EPOCHS),
            max_frames=int(number(tc.MAX_FRAMES) or tc.DEFAULT_MAX_FRAMES),
            accum=int(number(tc.ACCUM_GRAD) or 1),
            lr=float(number(tc.LR) or tc.DEFAULT_LR),
            warnings=warnings,
        )


def base_checkpoint(ws: Workspace, model: str) -> Path:
    return ws.base_model_dir / f"{model}.pt"


def resolve_setup(opts: TrainOptions, section: dict[str, Any]) -> Setup:
    """Options first, then voicelab.toml [train], then the defaults for the device."""
    trainer = resolve_trainer(opts, section)
    device = resolve_device(opts.device if opts.device != "auto" else section.get("device", "auto"))
    nproc = int(opts.gpus or section.get("gpus") or 1)
    if nproc < 1:
        raise ConfigError("--gpus must be >= 1")
    amp = opts.amp if opts.amp is not None else bool(section.get("amp", device == "cuda"))
    if device == "cpu" and amp:
        raise ConfigError("--amp needs a GPU", "leave --amp off with --device cpu")
    if device == "cpu" and opts.engine != "torch_ddp":
        raise ConfigError("--device cpu supports --engine torch_ddp only")
    workers = opts.num_workers if opts.num_workers is not None else section.get("num_workers")
    return Setup(
        trainer=trainer,
        name=run_name(trainer, opts.engine),
        device=device,
        nproc=nproc,
        world=nproc * max(1, opts.nnodes),
        amp=amp,
        num_workers=int(workers if workers is not None else (1 if device == "cpu" else 4)),
        prefetch=int(opts.prefetch or section.get("prefetch") or 2),
    )


def run_config(
    ws: Workspace,
    model: str,
    opts: TrainOptions,
    section: dict[str, Any],
    setup: Setup,
    vendor: VendorRuntime | None,
    gpus: list[Gpu],
) -> RunConfig:
    """The run's YAML: the workspace's (or a resumed run's own) with the explicit options."""
    settings = _default_settings(ws, gpus, setup.world, setup.num_workers)
    ws_text, warnings = _workspace_config(ws, vendor, settings)
    # A resumed run keeps its own config (epochs, batch frames ...) unless options say otherwise.
    run_cfg = ws.exp_dir(model, setup.name) / "train_config.yaml"
    if opts.resume and run_cfg.is_file():
        ws_text = run_cfg.read_text("utf-8")
    explicit = _explicit_overrides(opts, section)
    run_text = tc.run_config_text(ws_text, explicit) if ws_text else ""
    return RunConfig.read(run_text, warnings)


def _default_settings(
    ws: Workspace, gpus: list[Gpu], world: int, num_workers: int
) -> tc.SftSettings:
    """What VoiceLab writes into the workspace config: the base model's dims, the batch for the
    smallest GPU, epochs and log interval for the amount of data."""
    from voicelab.upstream.tinymodel import is_tiny_model

    base_dir = ws.base_model_dir
    settings = tc.SftSettings(qwen_pretrain_path=str(base_dir / "CosyVoice-BlankEN"))
    base_yaml = base_dir / "cosyvoice3.yaml"
    if base_yaml.is_file():
        settings.dims = tc.model_dims(base_yaml.read_text("utf-8"))
    if is_tiny_model(base_dir):
        settings.max_frames_in_batch = int(tc.TINY_DIMS[tc.MAX_FRAMES])
    else:
        # One workspace config serves llm and flow: sized for the llm, the larger of the two.
        settings.max_frames_in_batch = default_batch_frames(
            "llm",
            model_params(base_checkpoint(ws, "llm")),
            min((g.total for g in gpus), default=None),
        )
    _size_for_data(settings, ws.data_list("train"), world, num_workers)
    return settings


def _size_for_data(settings: tc.SftSettings, train_list: Path, world: int, workers: int) -> None:
    """Epochs for the hours of speech; about ten progress lines per epoch (upstream logs every
    log_interval batches). Unreadable data keeps the defaults: preflight reports it."""
    if not train_list.is_file():
        return
    with contextlib.suppress(Exception):
        shards, _ = read_shards(train_list)
        settings.max_epoch = default_epochs(sum(u.seconds for s in shards for u in s.utts))
        est = batches_per_rank(shards, FilterRules(), settings.max_frames_in_batch, world, workers)
        settings.log_interval = max(1, min(50, min(est) // 10))


def _workspace_config(
    ws: Workspace, vendor: VendorRuntime | None, settings: tc.SftSettings
) -> tuple[str, list[str]]:
    """The workspace's training YAML (text, warnings): written from upstream's when there is a
    vendor checkout, else the one on disk, else none."""
    if vendor is not None:
        upstream_text = (vendor.root / tc.UPSTREAM_YAML).read_text("utf-8")
        cfg = tc.write_workspace_config(
            ws.train_yaml, upstream_text, settings, f"vendor commit {vendor.commit[:12]}"
        )
        return cfg.text, list(cfg.warnings)
    if ws.train_yaml.is_file():
        return ws.train_yaml.read_text("utf-8"), []
    return "", []


def _explicit_overrides(opts: TrainOptions, section: dict[str, Any]) -> dict[tc.KeyPath, Any]:
    """Config values chosen on the command line (or in voicelab.toml [train])."""

    def given(value: Any, key: str) -> Any:
        return value if value is not None else section.get(key)

    pick = {
        tc.MAX_EPOCH: given(opts.epochs, "epochs"),
        tc.MAX_FRAMES: given(opts.batch_frames, "batch_frames"),
        tc.ACCUM_GRAD: given(opts.accum_grad, "accum_grad"),
        tc.LR: given(opts.lr, "lr"),
        tc.SAVE_PER_STEP: given(opts.save_per_step, "save_per_step"),
        tc.LOG_INTERVAL: given(opts.log_interval, "log_interval"),
    }
    out: dict[tc.KeyPath, Any] = {}
    for k, v in pick.items():
        if v is None:
            continue
        out[k] = float(v) if k == tc.LR else int(v)
    return out
