"""One training step and what surrounds it: the objective as a module, forward and backward of
a batch (or a packed pass of several), the out-of-memory guard, the optimizer step, the
warm-up before the first epoch, and how many batches one pass takes. Small functions a memory
mode can wrap."""

from __future__ import annotations

import contextlib
import itertools
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.profiler import record_function

from voicelab.upstream.engine import flow_loss, llm_loss


class LossModule(torch.nn.Module):
    """The objective as a module, so DDP's reducer sees every forward."""

    def __init__(self, net: torch.nn.Module, kind: str) -> None:
        super().__init__()
        self.net = net
        self.kind = kind

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.kind == "llm":
            if "seq" in batch:
                return llm_loss.forward_packed(self.net, batch)
            return llm_loss.forward(self.net, batch)
        if "parts" in batch:
            return flow_loss.forward_fused(self.net, batch["parts"], batch.get("pad_to"))
        return flow_loss.forward(self.net, batch, bool(batch["streaming"]))


def autocast(device: torch.device, amp: bool) -> Any:
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def train_step(
    module: torch.nn.Module,
    batch: dict[str, Any],
    accum: int,
    amp: bool,
    device: torch.device,
    sync: bool,
    weight: float = 1.0,
    batches: int = 1,
) -> dict[str, Any]:
    """Forward and backward of one batch (gradients summed over ``accum`` batches, as upstream
    divides each batch's loss by ``accum_grad``); DDP all-reduces only when ``sync``.
    ``weight`` < 1: the batch is a piece of a larger one (an out-of-memory retry), its loss
    counts by its share of the utterances; the returned values are weighted likewise.
    ``batches`` > 1: a packed pass of that many batches whose loss is their mean."""
    ctx = (
        module.no_sync() if (not sync and hasattr(module, "no_sync")) else contextlib.nullcontext()
    )
    with ctx:
        with autocast(device, amp), record_function("voicelab.forward"):
            out = module(batch)
        loss = out["loss"] if weight == 1.0 else out["loss"] * weight
        with record_function("voicelab.backward"):
            (loss * (batches / accum)).backward()
    if weight == 1.0:
        return {k: v.detach() for k, v in out.items()}
    return {k: v.detach() * weight for k, v in out.items()}


def split_idx(idx: list[int], parts: int) -> list[list[int]]:
    """A batch's utterances in ``parts`` consecutive pieces (the OOM guard's smaller batches)."""
    parts = max(1, min(parts, len(idx)))
    bounds = [round(i * len(idx) / parts) for i in range(parts + 1)]
    return [idx[a:b] for a, b in itertools.pairwise(bounds)]


def guarded_step(
    guard: Any,
    idx: list[int],
    make: Callable[[list[int]], dict[str, Any]],
    step: Callable[[dict[str, Any], float], dict[str, Any]],
    world: int,
) -> dict[str, Any]:
    """One batch through :class:`~voicelab.upstream.memory_modes.OomGuard`: an out-of-memory
    step is retried in smaller pieces (one process), or stops with a hint naming the next mode.
    Several processes stop at once: a piece count of one rank would desynchronize DDP."""
    from voicelab.upstream import memory_modes as mm

    def run(piece: list[int], weight: float) -> dict[str, Any]:
        return step(make(piece), weight)

    if world > 1:
        try:
            return run(idx, 1.0)
        except torch.OutOfMemoryError:
            guard.zero_grad()
            frames = guard.frames(idx) // max(1, len(idx))
            raise mm.OutOfMemoryStop(
                f"out of GPU memory in mode {'+'.join(guard.features)}",
                mm.oom_hint(guard.kind, guard.params, guard.features, frames),
            ) from None
    outs = guard.step(idx, run)
    if len(outs) == 1:
        return outs[0]
    return {k: sum(o[k] for o in outs) for k in outs[0]}


def optimizer_step(
    params: list[torch.nn.Parameter], optimizer: Any, scheduler: Any, grad_clip: float
) -> torch.Tensor:
    """Clip, step unless the norm is not finite (upstream's rule, decided on the device where
    the fused optimizer takes ``found_inf``), zero the gradients, advance the schedule."""
    grads = [p for p in params if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(grads, grad_clip, foreach=True)
    if getattr(optimizer, "defaults", {}).get("fused"):
        optimizer.found_inf = (~torch.isfinite(norm)).float()
        optimizer.step()
        optimizer.found_inf = None
    elif torch.isfinite(norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return norm.detach()


def rng_state() -> dict[str, Any]:
    """Python's, torch's and this process's CUDA device's generator states (one device: a
    checkpoint written by rank 0 of several GPUs resumes on any number of GPUs)."""
    st: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(st["torch"])
    cuda = st.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if isinstance(cuda, (list, tuple)):  # written by an earlier engine: one per device
            cuda = cuda[min(torch.cuda.current_device(), len(cuda) - 1)]
        torch.cuda.set_rng_state(cuda)


def warm_up(run_step: Callable[[], Any], zero_grad: Callable[[], None], device: Any) -> float:
    """Seconds one step took, run and undone: gradients dropped, every RNG put back, so the
    training that follows draws and computes exactly what it would have without it."""
    st = rng_state()
    t = time.time()
    try:
        run_step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    finally:
        zero_grad()
        set_rng_state(st)
    return time.time() - t


def model_blocks(net: Any, kind: str) -> list[torch.nn.Module]:
    """The repeated blocks that hold most of the work: the Qwen2 body's decoder layers (llm),
    the DiT's transformer blocks (flow)."""
    if kind == "llm":
        return list(llm_loss.qwen_body(net).layers)
    return list(net.decoder.estimator.transformer_blocks)


def wants_compile(setting: str, device: torch.device, features: tuple[str, ...]) -> bool:
    """``auto``: on a GPU that Triton supports (compute capability 7.0 or newer) in the full
    memory mode, where Triton is importable (the memory modes wrap the same blocks; compiling
    them too is ``on``)."""
    if setting in ("on", "off"):
        return setting == "on"
    if device.type != "cuda" or features != ("full",):
        return False
    if torch.cuda.get_device_capability(device) < (7, 0):
        return False
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def compile_blocks(blocks: list[torch.nn.Module], graphs: bool = False, shapes: int = 1) -> None:
    """Regional compilation: each block compiled in place, with dynamic shapes (batches differ
    in length; one shape with ``graphs``). torch.compile inlines a module's parameters as
    inputs, so the blocks of a model share one compiled graph: one compile, not one per layer,
    and ``state_dict`` keys stay.
    What it buys: the elementwise work around the matmuls (casts, norms, modulation, rotary)
    fused, and far fewer kernel launches (the eager step is host-bound); see docs/engine.md.
    ``graphs`` (``--cuda-graphs``): the compiled blocks replay CUDA graphs (torch.compile's
    ``reduce-overhead``, a graph per block) instead of launching their kernels one by one from
    Python. A gradient kept from one pass to the next lives in a graph's memory that the next
    replay overwrites (torch says "accessing tensor output of CUDAGraphs that has been
    overwritten"; seen on an H100 while the warm-up kept its passes' gradients): the llm's
    graphed passes each hold a whole optimizer step, the flow moves a step's gradients out
    between its passes (:func:`own_grads`). Passes are padded to few shapes (the llm's to the
    run's largest, the flow's to one of ``shapes``), each compiled static and recorded once: with
    dynamic shapes under ``reduce-overhead`` the llm's compile took 97 s instead of 18
    (Inductor's code generation; 63 s on a cache hit), one H100."""
    mode = "reduce-overhead" if graphs else None
    if graphs:  # one compile per shape replayed (the flow's few); torch's limit is 8
        conf = torch._dynamo.config
        conf.recompile_limit = max(conf.recompile_limit, shapes + 2)
    for b in blocks:
        b.compile(dynamic=not graphs, mode=mode)


def mark_step(graphs: bool) -> None:
    """A new training pass begins: with CUDA graphs, the last pass's graph outputs may be
    overwritten (torch.compile's rule for replayed graphs); otherwise nothing."""
    if graphs:
        torch.compiler.cudagraph_mark_step_begin()


def own_grads(params: list[torch.nn.Parameter]) -> None:
    """Gradients copied out of CUDA graphs' memory: torch keeps a first gradient as the
    tensor the backward returned, which under graphs lives in memory the next replay of that
    graph overwrites (a step of several passes accumulates across them)."""
    for p in params:
        if p.grad is not None:
            p.grad = p.grad.clone()


def uncompile_blocks(blocks: list[torch.nn.Module]) -> None:
    """Back to eager (``nn.Module.compile`` keeps the compiled call in this attribute)."""
    for b in blocks:
        b._compiled_call_impl = None
    torch._dynamo.reset()


def warm_groups(
    groups: list[list[list[int]]], shape_of: Callable[[list[list[int]]], tuple[int, ...]], n: int
) -> list[list[list[int]]]:
    """One group per distinct input shape, the ``n`` largest shapes: the first epoch then meets
    no shape (kernel choice, allocator block) for the first time."""
    by: dict[tuple[int, ...], list[list[int]]] = {}
    for g in groups:
        by.setdefault(shape_of(g), g)
    return [by[k] for k in sorted(by, key=lambda k: -int(np.prod(k)))[:n]]


def fused_batches(
    model: str,
    fuse: str,
    features: tuple[str, ...],
    max_vram: float | None,
    net: Any,
    n_params: int,
    accum: int,
    max_frames: int,
    device: torch.device,
) -> int:
    """How many batches one pass takes: ``accum`` when an optimizer step's batches go through
    the model as one pass (the llm's packed rows, the flow's fused batches), else 1. ``fuse``
    "auto" fuses on the CPU always, on a GPU in the full mode when the estimate for ``accum``
    batches of activations fits what training may use; "on" always, "off" never."""
    if fuse == "off" or (model == "llm" and not llm_loss.packs(net)):
        return 1
    if fuse == "on" or device.type != "cuda":
        return accum
    if features != ("full",):
        return 1  # the memory planner sized one batch for what is left; keep its promise
    from voicelab import memory

    free, total = torch.cuda.mem_get_info(device)
    cap = memory.gpu_cap(total, free, max_vram)
    need = memory.estimate_bytes(model, n_params, ("full",), max_frames * accum)
    return accum if need <= memory.USABLE * cap else 1
