"""Upstream ``cosyvoice/bin/train.py``'s flags (through VoiceLab's launcher) and its DeepSpeed
config file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from voicelab.errors import ConfigError
from voicelab.stages.train.spec import LaunchSpec


def upstream_args(spec: LaunchSpec) -> list[str]:
    """The launcher's and upstream train.py's arguments (``--trainer upstream``)."""
    opts, plan, device, base_dir = spec.opts, spec.plan, spec.device, spec.base_dir
    model, config, memory_mode = spec.model, spec.config, spec.memory_mode
    vendor_root, ds_config = spec.vendor_root, spec.ds_config
    argv = ["-m", "voicelab.upstream.launcher", "--vendor-root", str(vendor_root)]
    argv += ["--device", device]
    if memory_mode and memory_mode != "full":
        argv += ["--memory", memory_mode]
    if opts.max_vram is not None:
        argv += ["--max-vram", f"{opts.max_vram:g}"]
    argv += ["--"]
    argv += [
        "--train_engine",
        opts.engine,
        "--model",
        model,
        "--config",
        str(config),
        "--train_data",
        str(spec.train_list),
        "--cv_data",
        str(spec.cv_list),
        "--qwen_pretrain_path",
        str(base_dir / "CosyVoice-BlankEN"),
        # train.py copies this into the onnx_path variable (None crashes); the launcher keeps
        # features offline regardless (see voicelab.upstream.launcher.fix_offline_features).
        "--onnx_path",
        str(base_dir),
    ]
    if plan.checkpoint is not None:
        argv += ["--checkpoint", str(plan.checkpoint)]
    argv += [
        "--model_dir",
        str(plan.run_dir),
        "--tensorboard_dir",
        str(plan.tb_dir),
        "--ddp.dist_backend",
        "gloo" if device == "cpu" else "nccl",
        "--num_workers",
        str(spec.num_workers),
        "--prefetch",
        str(spec.prefetch),
        "--timeout",
        str(opts.timeout),
    ]
    if device == "cuda":
        argv.append("--pin_memory")
    if spec.amp:
        argv.append("--use_amp")
    if opts.engine == "deepspeed":
        if ds_config is None:
            raise ConfigError("deepspeed needs its JSON config")
        argv += ["--deepspeed_config", str(ds_config), "--deepspeed.save_states", "model_only"]
    return argv


def deepspeed_json(
    vendor_root: Path, lr: float, accum_grad: int, grad_clip: float, log_interval: int, bf16: bool
) -> dict[str, Any]:
    """Upstream's ZeRO-2 JSON with the YAML's learning rate: the shipped file trains at 1e-3
    whatever the YAML says, and fp16/bf16 follow ``--amp``."""
    src = vendor_root / "examples" / "libritts" / "cosyvoice3" / "conf" / "ds_stage2.json"
    try:
        cfg = json.loads(src.read_text("utf-8"))
    except (OSError, ValueError):
        cfg = {
            "train_micro_batch_size_per_gpu": 1,
            "zero_optimization": {"stage": 2},
            "optimizer": {"type": "AdamW", "params": {}},
        }
    cfg["train_micro_batch_size_per_gpu"] = 1  # upstream asserts it
    cfg["gradient_accumulation_steps"] = int(accum_grad)
    cfg["gradient_clipping"] = float(grad_clip)
    cfg["steps_per_print"] = int(log_interval)
    cfg.setdefault("fp16", {})["enabled"] = False
    cfg.setdefault("bf16", {})["enabled"] = bool(bf16)
    cfg.setdefault("optimizer", {"type": "AdamW"}).setdefault("params", {})["lr"] = float(lr)
    return cfg
