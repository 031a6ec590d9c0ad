"""The launch command: torchrun's argv, environment and CPU affinity, for VoiceLab's engine or
upstream's train.py."""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from voicelab.errors import ConfigError
from voicelab.stages.train.options import TrainOptions
from voicelab.stages.train.rundirs import RunPlan
from voicelab.upstream.train_flags import upstream_args


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str]
    cpus: set[int] | None

    def script(self) -> str:
        """``launch.sh``: the same command for a shell (reproduction, debugging)."""
        keep = ("PYTHONPATH", "PYTHONIOENCODING", "CUDA_VISIBLE_DEVICES", "PYTHONUNBUFFERED")
        keep += tuple(k for k in self.env if k.startswith(("NCCL_", "COSYVOICE_", "OMP_")))
        exports = [f"export {k}={shlex.quote(self.env[k])}" for k in keep if k in self.env]
        cmd = shlex.join(self.argv)
        if self.cpus:
            cmd = f"taskset -c {format_cpus(self.cpus)} {cmd}"
        return (
            "#!/bin/sh\n# written by voicelab train\nset -e\n"
            + "\n".join([*exports, "exec " + cmd])
            + "\n"
        )


def parse_cpus(spec: str) -> set[int]:
    """``0-11`` / ``0,2,4-7`` -> a CPU set."""
    out: set[int] = set()
    try:
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            a, _, b = part.partition("-")
            lo, hi = int(a), int(b or a)
            if hi < lo:
                raise ValueError
            out.update(range(lo, hi + 1))
    except ValueError:
        raise ConfigError(f"bad --cpus {spec!r}", "use a list like 0-11 or 0,2,4-7") from None
    if not out:
        raise ConfigError(f"bad --cpus {spec!r}", "use a list like 0-11")
    return out


def format_cpus(cpus: Iterable[int]) -> str:
    s = sorted(set(cpus))
    parts, i = [], 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[j] + 1:
            j += 1
        parts.append(str(s[i]) if i == j else f"{s[i]}-{s[j]}")
        i = j + 1
    return ",".join(parts)


def build_launch(
    *,
    python: str,
    vendor_root: Path,
    base_env: dict[str, str],
    model: str,
    device: str,
    nproc: int,
    opts: TrainOptions,
    config: Path,
    train_list: Path,
    cv_list: Path,
    base_dir: Path,
    plan: RunPlan,
    num_workers: int,
    prefetch: int,
    amp: bool,
    ds_config: Path | None = None,
    memory_mode: str | None = None,
    trainer: str = "upstream",
) -> Launch:
    """The torchrun argv and environment of one run (pure: no files touched)."""
    argv = [python, "-m", "torch.distributed.run"]
    if opts.nnodes > 1:
        if not opts.master_addr:
            raise ConfigError("--nnodes > 1 needs --master-addr", "name the rank-0 machine")
        argv += [
            "--nnodes",
            str(opts.nnodes),
            "--node_rank",
            str(opts.node_rank),
            "--master_addr",
            opts.master_addr,
            "--master_port",
            str(opts.master_port),
        ]
    else:
        argv += ["--standalone"]
    argv += ["--nproc_per_node", str(nproc)]
    if trainer == "voicelab":
        argv += engine_args(
            vendor_root=vendor_root,
            model=model,
            device=device,
            config=config,
            train_list=train_list,
            cv_list=cv_list,
            base_dir=base_dir,
            plan=plan,
            amp=amp,
            keep=opts.keep,
            compile=opts.compile,
            memory_mode=memory_mode,
            max_vram=opts.max_vram,
        )
    else:
        argv += upstream_args(
            vendor_root=vendor_root,
            model=model,
            device=device,
            opts=opts,
            config=config,
            train_list=train_list,
            cv_list=cv_list,
            base_dir=base_dir,
            plan=plan,
            num_workers=num_workers,
            prefetch=prefetch,
            amp=amp,
            ds_config=ds_config,
            memory_mode=memory_mode,
        )
    env = dict(base_env)
    env.pop("onnx_path", None)  # see the launcher: features stay offline
    env["PYTHONIOENCODING"] = "UTF-8"
    env["PYTHONUNBUFFERED"] = "1"
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif opts.gpu_ids:
        env["CUDA_VISIBLE_DEVICES"] = opts.gpu_ids
    cpus = parse_cpus(opts.cpus) if opts.cpus else None
    return Launch(argv, env, cpus)


def engine_args(
    *,
    vendor_root: Path,
    model: str,
    device: str,
    config: Path,
    train_list: Path,
    cv_list: Path,
    base_dir: Path,
    plan: RunPlan,
    amp: bool,
    keep: int | None,
    compile: bool | None,
    memory_mode: str | None = None,
    max_vram: float | None = None,
) -> list[str]:
    """Arguments of VoiceLab's engine (``python -m voicelab.upstream.engine``)."""
    argv = ["-m", "voicelab.upstream.engine", "--vendor-root", str(vendor_root)]
    argv += ["--device", device, "--model", model, "--config", str(config)]
    argv += ["--train_data", str(train_list), "--cv_data", str(cv_list)]
    argv += ["--qwen_pretrain_path", str(base_dir / "CosyVoice-BlankEN")]
    if plan.checkpoint is not None:
        argv += ["--checkpoint", str(plan.checkpoint)]
    argv += ["--model_dir", str(plan.run_dir), "--tensorboard_dir", str(plan.tb_dir)]
    if amp:
        argv.append("--use_amp")
    if keep:
        argv += ["--keep", str(keep)]
    if compile is not None:
        argv += ["--compile", "on" if compile else "off"]
    if memory_mode and memory_mode != "full":
        argv += ["--memory", memory_mode]
    if max_vram is not None:
        argv += ["--max-vram", f"{max_vram:g}"]
    return argv
