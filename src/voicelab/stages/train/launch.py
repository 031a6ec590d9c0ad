"""The launch command: torchrun's argv, environment and CPU affinity, for VoiceLab's engine or
upstream's train.py."""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from voicelab.errors import ConfigError
from voicelab.paths import user_cache_dir
from voicelab.stages.train.spec import LaunchSpec
from voicelab.upstream.train_flags import upstream_args


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str]
    cpus: set[int] | None

    def script(self) -> str:
        """``launch.sh``: the same command for a shell (reproduction, debugging)."""
        keep = ("PYTHONPATH", "PYTHONIOENCODING", "CUDA_VISIBLE_DEVICES", "PYTHONUNBUFFERED")
        keep += ("TORCHINDUCTOR_CACHE_DIR",)
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


def compile_cache_dir(env: Mapping[str, str]) -> Path:
    """Where the engine's compiled blocks are cached between runs: torch keeps them in the
    temp dir, which WSL2 and many Linux systems empty at boot, and a cache hit shortens the
    warm-up (one H100, the same call: a dynamic-shape graphs compile 99.5 -> 64.3 s).
    Generated on this machine, never downloaded; safe to delete."""
    return user_cache_dir(env) / "voicelab" / "torch-compile"


def build_launch(spec: LaunchSpec, *, python: str, base_env: dict[str, str]) -> Launch:
    """The torchrun argv and environment of one run (pure: no files touched)."""
    opts, device = spec.opts, spec.device
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
    argv += ["--nproc_per_node", str(spec.nproc)]
    argv += engine_args(spec) if spec.trainer == "voicelab" else upstream_args(spec)
    env = dict(base_env)
    env.pop("onnx_path", None)  # see the launcher: features stay offline
    env["PYTHONIOENCODING"] = "UTF-8"
    env["PYTHONUNBUFFERED"] = "1"
    if spec.trainer == "voicelab":  # a cache the user set stays theirs
        env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(compile_cache_dir(env)))
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif opts.gpu_ids:
        env["CUDA_VISIBLE_DEVICES"] = opts.gpu_ids
    cpus = parse_cpus(opts.cpus) if opts.cpus else None
    return Launch(argv, env, cpus)


def engine_args(spec: LaunchSpec) -> list[str]:
    """Arguments of VoiceLab's engine (``python -m voicelab.upstream.engine``)."""
    s, opts, plan = spec, spec.opts, spec.plan
    argv = ["-m", "voicelab.upstream.engine", "--vendor-root", str(s.vendor_root)]
    argv += ["--device", s.device, "--model", s.model, "--config", str(s.config)]
    argv += ["--train_data", str(s.train_list), "--cv_data", str(s.cv_list)]
    argv += ["--qwen_pretrain_path", str(s.base_dir / "CosyVoice-BlankEN")]
    if plan.checkpoint is not None:
        argv += ["--checkpoint", str(plan.checkpoint)]
    argv += ["--model_dir", str(plan.run_dir), "--tensorboard_dir", str(plan.tb_dir)]
    if s.amp:
        argv.append("--use_amp")
    if opts.keep:
        argv += ["--keep", str(opts.keep)]
    if opts.compile is not None:
        argv += ["--compile", "on" if opts.compile else "off"]
    if opts.cuda_graphs is not None:
        argv += ["--cuda-graphs", "on" if opts.cuda_graphs else "off"]
    if s.memory_mode and s.memory_mode != "full":
        argv += ["--memory", s.memory_mode]
    if opts.max_vram is not None:
        argv += ["--max-vram", f"{opts.max_vram:g}"]
    return argv
