"""The training loop: bf16 autocast, fused Adam(W), upstream's schedule, clipping and
accumulation from the YAML, DDP through torchrun (NCCL on GPUs, gloo on the CPU), no host sync
per step (losses are read back every ``log_interval`` batches), CV each epoch, asynchronous
checkpoints, exact resume.

Log lines are upstream's formats (``TRAIN Batch e/b loss ... rank r``, ``Epoch e Step s CV info
...``, ``[Rank 0] Checkpoint: save to checkpoint ...``, ``start step s start epoch e``) so that
:class:`voicelab.stages.train.logs.LogParser` is the one owner of ``train_log.jsonl``; TRAIN
lines also carry ``tokens_s`` (speech tokens per second).

Hooks for memory modes: :class:`Hooks` (model construction, a pass over the built model, the
optimizer, the checkpoint's state dict) in :class:`EngineArgs`; the step itself is
:func:`train_step` (forward + backward of one batch) and :func:`optimizer_step` (clip, step,
schedule), small functions a mode can wrap.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from voicelab.upstream.engine import batching, checkpoint, data, flow_loss, llm_loss, model

log = logging.getLogger("voicelab.engine")


@dataclass
class Hooks:
    """Where memory modes (gradient checkpointing, LoRA, 8-bit or offloaded optimizers) plug in:
    each defaults to the plain engine's function."""

    #: (configs, kind, checkpoint) -> (module, start_step, start_epoch)
    build_model: Callable[..., tuple[Any, int, int]] = model.build_model
    #: called once on the built module, before it moves to the device (e.g. add adapters)
    after_build: Callable[[Any, str], None] | None = None
    #: (params, train_conf, device type) -> optimizer
    make_optimizer: Callable[..., Any] = model.make_optimizer
    #: module -> the CPU state dict a checkpoint holds (upstream's keys)
    state_dict: Callable[[Any], dict[str, Any]] = checkpoint.cpu_state
    #: module -> what an exact resume needs beyond the plain weights (e.g. LoRA adapters);
    #: stored under ``"model_extra"`` in ``resume/epoch_N.pt`` (called on rank 0 only)
    resume_state: Callable[[Any], dict[str, Any]] | None = None
    #: (module, that dict) -> None when restored exactly, else why not (the optimizer state is
    #: then not restored either: it belongs to other parameters)
    load_resume_state: Callable[[Any, dict[str, Any]], str | None] | None = None


@dataclass
class EngineArgs:
    model: str
    config: Path
    train_data: Path
    cv_data: Path
    model_dir: Path
    tensorboard_dir: Path | None = None
    qwen_pretrain_path: str | None = None
    checkpoint: Path | None = None
    device: str = "cuda"
    amp: bool = False
    compile: bool = False
    keep: int | None = None
    seed: int = 1986
    quantum: int = 32  # pad lengths to this many positions (few distinct shapes)
    max_steps: int | None = None  # stop after this many optimizer steps (tests, benchmarks)
    memory: str = "full"  # memory mode (voicelab.memory), e.g. checkpointing+8bit+lora
    max_vram: float | None = None  # GiB this process may hold on its GPU (--max-vram)
    #: llm: pack each optimizer step's batches into one pass ("auto": when the model takes a
    #: custom mask and, on a GPU, the mode is full and the step's frames fit; "on"; "off")
    fuse: str = "auto"
    #: one forward/backward of the first epoch's largest step before it, nothing trained
    #: ("auto": on a GPU): CUDA, cuBLAS and the allocator warm up outside the epoch, and a step
    #: that cannot fit fails before anything is trained
    warmup: str = "auto"
    hooks: Hooks = field(default_factory=Hooks)

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self.memory.split("+")) if self.memory else ("full",)


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
        return flow_loss.forward(self.net, batch, bool(batch["streaming"]))


# ------------------------------------------------------------------------------------------------
# Data on the device
# ------------------------------------------------------------------------------------------------
class Stager:
    """Host-to-device copies without a sync: each batch's int64 arrays go as one copy from a
    pinned slot (a ring; a slot is reused only after its copy's event has passed)."""

    def __init__(self, device: torch.device, slots: int = 4) -> None:
        self.device = device
        self.bufs: list[torch.Tensor | None] = [None] * slots
        self.events: list[Any] = [None] * slots
        self.k = 0

    def put(self, flat: np.ndarray) -> torch.Tensor:
        if self.device.type != "cuda":
            return torch.from_numpy(flat)
        k = self.k
        self.k = (k + 1) % len(self.bufs)
        if self.events[k] is not None:
            self.events[k].synchronize()
        buf = self.bufs[k]
        if buf is None or buf.numel() < flat.size:
            buf = torch.empty(max(2 * flat.size, 1 << 16), dtype=torch.int64, pin_memory=True)
            self.bufs[k] = buf
        buf[: flat.size].numpy()[:] = flat
        out = buf[: flat.size].to(self.device, non_blocking=True)
        ev = torch.cuda.Event()
        ev.record()
        self.events[k] = ev
        return out


class Batches:
    """Turns index lists into device batches (upstream's draws happen here, in batch order)."""

    def __init__(
        self,
        ds: data.Dataset,
        kind: str,
        net: Any,
        device: torch.device,
        use_spk: bool,
        quantum: int,
    ) -> None:
        self.ds, self.kind, self.device, self.quantum = ds, kind, device, quantum
        self.row = llm_loss.ROW  # packed row length (tests make it short to fill several rows)
        self.stager = Stager(device)
        emb = ds.spk_embedding if use_spk else ds.utt_embedding
        self.embedding = emb.to(device)
        if kind == "llm":
            tok = llm_loss.Tokens.of(net)
            self.pairs = [
                llm_loss.layouts(
                    ds.text[i].numpy(), ds.instruct[i].numpy(), ds.speech[i].numpy(), tok
                )
                for i in range(len(ds))
            ]
        else:
            # The whole feature table on the device: ~57 MB per hour of speech.
            self.feat = ds.feat.to(device)
            self.tokens = [s.numpy() for s in ds.speech]

    def speech_tokens(self, idx: list[int]) -> int:
        return sum(len(self.ds.speech[i]) for i in idx)

    def _upload(self, host: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        flat = np.concatenate([np.asarray(a, np.int64).ravel() for a in host.values()])
        dev = self.stager.put(flat)
        out, at = {}, 0
        for k, a in host.items():
            n = int(np.prod(a.shape))
            t = dev[at : at + n].view(a.shape)
            out[k] = t.bool() if a.dtype == bool else t
            at += n
        return out

    def make_packed(self, group: list[list[int]]) -> dict[str, Any]:
        """The llm batches ``group`` (upstream's draws in batch order) packed for one pass."""
        chosen = [llm_loss.choose([self.pairs[i] for i in idx]) for idx in group]
        return self._upload(llm_loss.make_packed(chosen, self.row))

    def make(self, idx: list[int]) -> dict[str, Any]:
        if self.kind == "llm":
            host = llm_loss.make_batch(llm_loss.choose([self.pairs[i] for i in idx]), self.quantum)
            return self._upload(host)
        host = flow_loss.make_batch(
            idx, self.tokens, self.ds.feat_len, self.ds.feat_off, self.quantum
        )
        streaming = bool(host.pop("streaming"))
        host["idx"] = np.asarray(idx, np.int64)
        out = self._upload(host)
        out["streaming"] = streaming
        out["feat"] = flow_loss.gather_feat(self.feat, out.pop("gather"))
        out["embedding"] = self.embedding[out.pop("idx")]
        return out


def load_dataset(
    list_file: Path,
    configs: dict[str, Any],
    config_text: str,
    qwen_dir: Path,
    kind: str,
    rank: int,
    world: int,
) -> data.Dataset:
    """Rank 0 builds missing caches; the others wait, then every rank reads them."""
    files = [Path(x.strip()) for x in list_file.read_text("utf-8").splitlines() if x.strip()]
    if rank == 0:
        shards = [data.load_or_build(f, configs, config_text, qwen_dir, kind) for f in files]
    if world > 1:
        dist.barrier()
    if rank != 0:
        shards = [
            data.load_or_build(f, configs, config_text, qwen_dir, kind, build=False) for f in files
        ]
    return data.concat(shards)


# ------------------------------------------------------------------------------------------------
# The step (hooks)
# ------------------------------------------------------------------------------------------------
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
        with autocast(device, amp):
            out = module(batch)
        loss = out["loss"] if weight == 1.0 else out["loss"] * weight
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


def warm_up(run_step: Callable[[], Any], zero_grad: Callable[[], None], device: Any) -> float:
    """Seconds one step took, run and undone: gradients dropped, every RNG put back, so the
    training that follows draws and computes exactly what it would have without it."""
    st = rng_state()
    t = time.time()
    run_step()
    zero_grad()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    set_rng_state(st)
    return time.time() - t


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
    args: EngineArgs, net: Any, n_params: int, accum: int, max_frames: int, device: torch.device
) -> int:
    """How many batches one pass takes: ``accum`` when the llm's batches are packed into one
    pass per optimizer step, else 1. "auto" fuses on the CPU always, on a GPU in the full mode
    when the estimate for ``accum`` batches of activations fits what training may use."""
    if args.model != "llm" or args.fuse == "off" or not llm_loss.packs(net):
        return 1
    if args.fuse == "on" or device.type != "cuda":
        return accum
    if args.features != ("full",):
        return 1  # the memory planner sized one batch for what is left; keep its promise
    from voicelab import memory

    free, total = torch.cuda.mem_get_info(device)
    cap = memory.gpu_cap(total, free, args.max_vram)
    need = memory.estimate_bytes(args.model, n_params, ("full",), max_frames * accum)
    return accum if need <= memory.USABLE * cap else 1


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------
def _say(line: str) -> None:
    print(line, flush=True)


def record_seen(utts: list[str], batches: list[list[int]], tag: str, epoch: int, rank: int) -> None:
    """With ``VOICELAB_SEEN_UTTS`` set (the launcher's switch, the same ``rank<R>.tsv`` lines),
    append the utterances of ``batches`` this rank trained or validated on: how tests and
    benchmarks count that an epoch sees each utterance once across ranks."""
    from voicelab.upstream.launcher import SEEN_UTTS_ENV

    folder = os.environ.get(SEEN_UTTS_ENV)
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    with open(Path(folder) / f"rank{rank}.tsv", "a", encoding="utf-8") as f:
        f.writelines(f"{tag}\t{epoch}\t{utts[i]}\n" for b in batches for i in b)


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


def resume_mismatch(saved: str, now: str) -> str | None:
    """Why a resume file's optimizer state does not fit this run's mode (None: it does).
    Gradient checkpointing changes no parameter or optimizer; 8-bit, offload and LoRA do."""
    differs = {"8bit", "offload", "lora"}
    a, b = set(saved.split("+")) & differs, set(now.split("+")) & differs
    if a == b:
        return None
    return f"it was saved in memory mode {saved}, this run is {now}"


def _info(train_conf: dict[str, Any], args: EngineArgs, **extra: Any) -> dict[str, Any]:
    info = {
        k: v for k, v in train_conf.items() if isinstance(v, (int, float, str, bool, dict, list))
    }
    info.update(
        model=args.model,
        model_dir=str(args.model_dir),
        train_engine="torch_ddp",
        trainer="voicelab",
        memory_mode=args.memory,
        dtype="bf16" if args.amp else "fp32",
        config=str(args.config),
        checkpoint=str(args.checkpoint) if args.checkpoint else None,
    )
    info.update(extra)
    return info


def run(args: EngineArgs) -> None:
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if args.device == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    from voicelab.upstream import memory_modes as mm

    mm.cap_vram(args.max_vram, str(device))  # before anything lands on the GPU

    config_text = args.config.read_text("utf-8")
    configs = model.load_configs(args.config, args.model, args.qwen_pretrain_path)
    train_conf = dict(configs["train_conf"])
    accum = int(train_conf.get("accum_grad", 1))
    grad_clip = float(train_conf.get("grad_clip", 5))
    log_interval = max(1, int(train_conf.get("log_interval", 10)))
    max_epoch = int(train_conf.get("max_epoch", 10))
    batch_conf = configs["batch"].keywords
    max_frames = int(batch_conf.get("max_frames_in_batch", 2000))
    sort_size = int(configs["sort"].keywords.get("sort_size", 500))
    use_spk = bool(configs["padding"].keywords.get("use_spk_embedding", False))

    # Start weights; an exact resume also restores optimizer, scheduler and RNG states.
    hooks = args.hooks
    net, start_step, start_epoch = hooks.build_model(configs, args.model, args.checkpoint)
    n_params = sum(p.numel() for p in net.parameters())  # before adapters: the model's size
    if hooks.after_build is not None:
        hooks.after_build(net, args.model)
    resume_file = (
        checkpoint.resume_path(args.checkpoint.parent, start_epoch)
        if args.checkpoint is not None and start_epoch >= 0
        else None
    )
    qwen_dir = Path(args.qwen_pretrain_path or "")
    train_ds = load_dataset(
        args.train_data, configs, config_text, qwen_dir, args.model, rank, world
    )
    cv_ds = load_dataset(args.cv_data, configs, config_text, qwen_dir, args.model, rank, world)
    net.to(device)
    loss_module: torch.nn.Module = LossModule(net, args.model)
    if world > 1:
        kw = {"device_ids": [local_rank]} if device.type == "cuda" else {}
        loss_module = torch.nn.parallel.DistributedDataParallel(
            loss_module, find_unused_parameters=True, **kw
        )
    step_module = torch.compile(loss_module) if args.compile else loss_module
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = hooks.make_optimizer(params, train_conf, device.type)
    scheduler = model.make_scheduler(optimizer, train_conf)
    scheduler.set_step(start_step)
    if resume_file is not None and resume_file.is_file():
        st = torch.load(resume_file, map_location="cpu", weights_only=True)
        why = resume_mismatch(st.get("memory", "full"), args.memory)
        if why is None and hooks.load_resume_state is not None:
            why = hooks.load_resume_state(net, st.get("model_extra") or {})
        if why is None:
            optimizer.load_state_dict(st["optimizer"])
        scheduler.load_state_dict(st["scheduler"])
        set_rng_state(st["rng"])
        if why is None:
            _say(f"voicelab engine: exact resume from {resume_file}")
        else:
            _say(f"voicelab engine: resume from {resume_file}, optimizer state new: {why}")
    train_b = Batches(train_ds, args.model, net, device, use_spk, args.quantum)
    cv_b = Batches(cv_ds, args.model, net, device, use_spk, args.quantum)
    utt_frames = train_b.ds.frames
    guard = mm.OomGuard(
        args.model,
        n_params,
        args.features,
        lambda: optimizer.zero_grad(set_to_none=True),
        split=split_idx,
        rows=len,
        frames=lambda idx: sum(utt_frames[i] for i in idx),
    )

    # llm: batches packed without padding; ``fuse`` batches (an optimizer step's) per pass.
    packed = args.model == "llm" and args.fuse != "off" and llm_loss.packs(net)
    fuse = fused_batches(args, net, n_params, accum, max_frames, device) if packed else 1
    make_one = (lambda idx: train_b.make_packed([idx])) if packed else train_b.make
    make_cv = (lambda idx: cv_b.make_packed([idx])) if packed else cv_b.make
    if packed:
        _say(f"voicelab engine: packed batches, {fuse} per pass")

    writer = None
    if rank == 0 and args.tensorboard_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(args.tensorboard_dir))

    def saved(pt: Path) -> None:
        _say(f"[Rank 0] Checkpoint: save to checkpoint {pt}")

    saver = checkpoint.AsyncSaver(args.model_dir, args.keep, saved)
    if rank == 0 and not (args.model_dir / "init.pt").exists():
        args.model_dir.mkdir(parents=True, exist_ok=True)
        snap = {**hooks.state_dict(net), "epoch": start_epoch, "step": start_step}
        saver.save("init", snap, _info(train_conf, args, step=start_step, epoch=start_epoch))
    _say(f"start step {start_step} start epoch {start_epoch}")
    if args.warmup == "on" or (args.warmup == "auto" and device.type == "cuda"):
        first = batching.shard(
            batching.epoch_batches(
                utt_frames,
                max_frames,
                epoch=start_epoch + 1,
                seed=args.seed,
                sort_size=sort_size,
                world=world,
                accum=accum,
            ),
            rank,
            world,
        )
        groups = [first[g : g + fuse] for g in range(0, len(first), fuse)]
        if packed:
            lens = [len(p[0].ids) for p in train_b.pairs]
            row = train_b.row

            def shape(g: list[list[int]]) -> tuple[int, ...]:
                return llm_loss.packed_shape([lens[i] for b in g for i in b], row)
        else:
            q = args.quantum
            lens = (
                [len(p[0].ids) for p in train_b.pairs]
                if args.model == "llm"
                else [len(t) for t in train_b.tokens]
            )

            def shape(g: list[list[int]]) -> tuple[int, ...]:
                return len(g[0]), batching.padded(max(lens[i] for i in g[0]), q)

        # Every rank must run as many steps (each backward all-reduces): one when several.
        warm = warm_groups(groups, shape, 8 if world == 1 else 1)

        def steps() -> None:
            for g in warm:
                train_step(
                    step_module,
                    train_b.make_packed(g) if packed else train_b.make(g[0]),
                    accum,
                    args.amp,
                    device,
                    True,
                    batches=len(g) if packed else 1,
                )

        net.train()
        try:
            took = warm_up(steps, lambda: optimizer.zero_grad(set_to_none=True), device)
            _say(
                f"voicelab engine: warm-up {took:.2f} s ({len(warm)} input shapes, nothing trained)"
            )
        except torch.OutOfMemoryError:
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            if fuse > 1 and world == 1:
                fuse = 1
                _say("voicelab engine: out of GPU memory in the warm-up: one batch per pass")
            else:
                _say("voicelab engine: out of GPU memory in the warm-up; training splits batches")

    try:
        step = start_step
        for epoch in range(start_epoch + 1, max_epoch):
            lr = optimizer.param_groups[0]["lr"]
            _say(f"Epoch {epoch} TRAIN info lr {lr} rank {rank}")
            t0 = time.time()
            batches = batching.epoch_batches(
                train_b.ds.frames,
                max_frames,
                epoch=epoch,
                seed=args.seed,
                sort_size=sort_size,
                world=world,
                accum=accum,
            )
            mine = batching.shard(batches, rank, world)
            net.train()
            tok_count, t_log = 0, time.time()
            norm = torch.zeros((), device=device)
            done = 0  # batches of this epoch trained
            gi = 0
            while gi < len(mine):
                group = mine[gi : gi + fuse]
                gi += len(group)
                if len(group) > 1:
                    try:
                        out = train_step(
                            step_module,
                            train_b.make_packed(group),
                            accum,
                            args.amp,
                            device,
                            True,
                            batches=len(group),
                        )
                        outs = [out]
                    except torch.OutOfMemoryError:
                        if world > 1:
                            raise mm.OutOfMemoryStop(
                                f"out of GPU memory in a packed step of {fuse} batches",
                                "train with --memory checkpointing, or a smaller --batch-frames",
                            ) from None
                        optimizer.zero_grad(set_to_none=True)
                        torch.cuda.empty_cache()
                        fuse = 1  # one batch per pass from here on; this step again
                        _say("voicelab engine: out of GPU memory: one batch per pass from now")
                        outs = []
                else:
                    outs = []
                for idx in group if not outs else []:
                    boundary = (done + len(outs) + 1) % accum == 0
                    outs.append(
                        guarded_step(
                            guard,
                            idx,
                            make_one,
                            lambda b, w, sync=boundary: train_step(
                                step_module, b, accum, args.amp, device, sync, w
                            ),
                            world,
                        )
                    )
                out = outs[-1]
                before, done = done, done + len(group)
                tok_count += sum(train_b.speech_tokens(idx) for idx in group)
                if done % accum == 0:
                    try:
                        norm = optimizer_step(params, optimizer, scheduler, grad_clip)
                    except torch.OutOfMemoryError:  # Adam's state is allocated at the first step
                        raise mm.OutOfMemoryStop(
                            f"out of GPU memory in the optimizer step (mode {args.memory})",
                            mm.oom_hint(args.model, n_params, args.features, max_frames),
                        ) from None
                    step += 1
                if done // log_interval > before // log_interval:
                    saver.poll()
                    now = time.time()
                    vals = " ".join(
                        f"{k} {v.item() / (accum if k == 'loss' else 1):.6f}"
                        for k, v in out.items()
                    )
                    rate = tok_count * world / max(now - t_log, 1e-9)
                    lr = optimizer.param_groups[0]["lr"]
                    _say(
                        f"TRAIN Batch {epoch}/{done} {vals} lr {lr:.8f} grad_norm"
                        f" {float(norm):.6f} tokens_s {rate:.1f} rank {rank}"
                    )
                    if writer is not None:
                        for k, v in out.items():
                            writer.add_scalar(f"TRAIN/{k}", v.item(), step)
                        writer.add_scalar("TRAIN/lr", lr, step)
                        writer.add_scalar("TRAIN/grad_norm", float(norm), step)
                        writer.add_scalar("TRAIN/epoch", epoch, step)
                    tok_count, t_log = 0, now
                if args.max_steps is not None and step - start_step >= args.max_steps:
                    break
            train_s = time.time() - t0
            record_seen(train_b.ds.utts, mine[:done], "TRAIN", epoch, rank)

            # CV: every rank takes its share; sums are all-reduced (upstream: utterance-weighted).
            t1 = time.time()
            net.eval()
            cv_batches = batching.shard(
                batching.epoch_batches(
                    cv_b.ds.frames, max_frames, epoch=0, shuffle=False, sort_size=sort_size
                ),
                rank,
                world,
            )
            sums: dict[str, torch.Tensor] = {}
            n_utt = torch.zeros((), device=device)
            with torch.inference_mode():
                for idx in cv_batches:
                    with autocast(device, args.amp):
                        out = (
                            loss_module(make_cv(idx))
                            if world == 1
                            else loss_module.module(make_cv(idx))
                        )
                    for k, v in out.items():
                        sums[k] = sums.get(k, torch.zeros((), device=device)) + v.float() * len(idx)
                    n_utt += len(idx)
            keys = ["loss"] + (["acc"] if args.model == "llm" else [])
            vec = torch.stack([sums.get(k, torch.zeros((), device=device)) for k in keys] + [n_utt])
            if world > 1:
                dist.all_reduce(vec)
            vec = vec.tolist()
            cv = {k: vec[i] / max(vec[-1], 1) for i, k in enumerate(keys)}
            cv_s = time.time() - t1
            record_seen(cv_b.ds.utts, cv_batches, "CV", epoch, rank)
            lr = optimizer.param_groups[0]["lr"]
            losses = " ".join(f"{k} {v}" for k, v in cv.items())
            _say(f"Epoch {epoch} Step {step + 1} CV info lr {lr} {rank} rank {losses}")
            if writer is not None:
                for k, v in cv.items():
                    writer.add_scalar(f"CV/{k}", v, step + 1)
                writer.add_scalar("CV/lr", lr, step + 1)
                writer.add_scalar("CV/epoch", epoch, step + 1)
                writer.flush()

            t2 = time.time()
            if rank == 0:
                # Room in RAM for this snapshot first (weights + optimizer state, as on the GPU).
                saver.make_room(
                    checkpoint.tree_bytes(net.state_dict())
                    + checkpoint.tree_bytes(optimizer.state_dict())
                )
                weights = {**hooks.state_dict(net), "epoch": epoch, "step": step}
                info = _info(
                    train_conf,
                    args,
                    tag="CV",
                    step=step,
                    epoch=epoch,
                    batch_idx=len(cv_batches),
                    loss_dict=cv,
                    lr=lr,
                    grad_norm=float(norm),
                )
                resume = {
                    "optimizer": checkpoint.cpu_tree(optimizer.state_dict()),
                    "scheduler": scheduler.state_dict(),
                    "step": step,
                    "epoch": epoch,
                    "rng": rng_state(),
                    "memory": args.memory,
                }
                if hooks.resume_state is not None:
                    resume["model_extra"] = hooks.resume_state(net)
                saver.save(
                    checkpoint.whole_name(epoch),
                    weights,
                    info,
                    (checkpoint.resume_path(args.model_dir, epoch), resume),
                )
            save_s = time.time() - t2
            _say(
                f"voicelab engine: epoch {epoch} train_s {train_s:.3f} cv_s {cv_s:.3f}"
                f" save_s {save_s:.3f} rank {rank}"
            )
            if world > 1:
                dist.barrier()
            if args.max_steps is not None and step - start_step >= args.max_steps:
                break
    except mm.OutOfMemoryStop as e:
        # The last checkpoint is complete on disk; nothing else is lost. One line the CLI shows.
        saver.wait()
        _say(f"voicelab engine: stopped: {e.message}")
        _say(f"voicelab engine: hint: {e.hint}")
        raise SystemExit(3) from None
    saver.wait()
    if writer is not None:
        writer.close()
    if world > 1:
        dist.destroy_process_group()
