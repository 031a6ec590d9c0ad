"""GPUs, and the memory model that sizes the default batch."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from voicelab.upstream import train_config as tc

#: Memory model (bytes): weights + grads + Adam moments in fp32, activations per batch frame, and
#: the CUDA context and allocator slack. Calibrated with benchmarks/bench_train.py on an H100
#: (bf16, 2500 frames): peak 16,635 MiB (16.2 GiB) for the 506 M llm, 12.2 GiB for the 332 M flow.
BYTES_PER_PARAM = 16

ACT_BYTES_PER_FRAME = {"llm": 3_800_000, "flow": 3_000_000}

CUDA_OVERHEAD = 1 << 30


@dataclass
class Gpu:
    index: int
    total: int  # bytes
    free: int


def query_gpus() -> list[Gpu]:
    """GPUs from nvidia-smi (no CUDA context in this process: it would hold memory)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index,memory.total,memory.free", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    gpus = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            gpus.append(Gpu(int(parts[0]), int(parts[1]) << 20, int(parts[2]) << 20))
    return gpus


def visible(gpus: list[Gpu], gpu_ids: str | None) -> list[Gpu]:
    if not gpu_ids:
        env = os.environ.get("CUDA_VISIBLE_DEVICES")
        if env is None or not env.strip():
            return gpus
        gpu_ids = env
    wanted = [int(x) for x in gpu_ids.split(",") if x.strip().isdigit()]
    return [g for g in gpus if g.index in wanted]


def memory_needed(model: str, params: int, max_frames: int) -> int:
    return params * BYTES_PER_PARAM + ACT_BYTES_PER_FRAME[model] * max_frames + CUDA_OVERHEAD


def default_batch_frames(model: str, params: int, gpu_total: int | None) -> int:
    """Conservative ``max_frames_in_batch`` for a GPU: what fits in 75% of its memory, in
    [500, 2500], multiples of 100; upstream's 2000 when the GPU is unknown."""
    if not gpu_total:
        return tc.DEFAULT_MAX_FRAMES
    room = 0.75 * gpu_total - params * BYTES_PER_PARAM - CUDA_OVERHEAD
    frames = int(room / ACT_BYTES_PER_FRAME[model]) // 100 * 100
    return max(500, min(2500, frames))


def model_params(ckpt: Path) -> int:
    """Parameter count from an fp32 checkpoint's size (exact enough for memory checks)."""
    try:
        return ckpt.stat().st_size // 4
    except OSError:
        return 0
