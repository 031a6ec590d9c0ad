"""Upstream's models from the run's YAML, loaded as upstream's train.py does, and the optimizer
and scheduler the YAML names. Small functions on purpose: memory modes (gradient
checkpointing, 8-bit optimizers, LoRA) wrap :func:`build_model` and :func:`make_optimizer`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def prepare_runtime(vendor_root: Path) -> None:
    """Vendor on ``sys.path`` and the launcher's fixes this process needs (offline features,
    ``torchaudio.load`` through soundfile) before any ``cosyvoice`` model module is imported."""
    from voicelab.upstream import launcher

    for p in (vendor_root / "third_party" / "Matcha-TTS", vendor_root):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    launcher.fix_offline_features()
    launcher.fix_torchaudio_load()


def load_configs(config: Path, model: str, qwen_pretrain_path: str | None) -> dict[str, Any]:
    """The YAML as upstream's train.py loads it (the other models set to None)."""
    from hyperpyyaml import load_hyperpyyaml

    overrides: dict[str, Any] = {k: None for k in ("llm", "flow", "hift", "hifigan") if k != model}
    if qwen_pretrain_path:
        overrides["qwen_pretrain_path"] = qwen_pretrain_path
    with open(config, encoding="utf-8") as f:
        return load_hyperpyyaml(f, overrides=overrides)


def build_model(
    configs: dict[str, Any], model: str, checkpoint: Path | None
) -> tuple[Any, int, int]:
    """(module, start_step, start_epoch): upstream's ``configs[model]`` with ``checkpoint``
    loaded non-strictly, its ``step``/``epoch`` keys deciding where training continues."""
    import torch

    net = configs[model]
    start_step, start_epoch = 0, -1
    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=False)
        start_step = int(state.get("step", 0))
        start_epoch = int(state.get("epoch", -1))
    return net, start_step, start_epoch


def make_optimizer(params: Any, train_conf: dict[str, Any], device: str) -> Any:
    """The YAML's optimizer (adam | adamw, optim_conf as given), fused where the device has it."""
    import torch

    kind = train_conf.get("optim", "adam")
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}.get(kind)
    if cls is None:
        raise ValueError(f"unknown optimizer {kind!r} in train_conf.optim (adam or adamw)")
    conf = dict(train_conf.get("optim_conf") or {})
    conf["lr"] = float(conf.get("lr", 1e-5))
    return cls(params, fused=device.startswith("cuda") or device == "cpu", **conf)


def make_scheduler(optimizer: Any, train_conf: dict[str, Any]) -> Any:
    """Upstream's scheduler classes, as its train_utils picks them."""
    from cosyvoice.utils.scheduler import ConstantLR, NoamHoldAnnealing, WarmupLR

    kind = train_conf.get("scheduler", "constantlr")
    conf = train_conf.get("scheduler_conf") or {}
    if kind == "constantlr":
        return ConstantLR(optimizer)
    if kind == "warmuplr":
        return WarmupLR(optimizer, **conf)
    if kind == "NoamHoldAnnealing":
        return NoamHoldAnnealing(optimizer, **conf)
    raise ValueError(f"unknown scheduler {kind!r} (constantlr, warmuplr or NoamHoldAnnealing)")
