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
:func:`~voicelab.upstream.engine.steps.train_step` (forward + backward of one batch) and
:func:`~voicelab.upstream.engine.steps.optimizer_step` (clip, step, schedule), small functions a
mode can wrap. The data side is :mod:`~voicelab.upstream.engine.feed`; one run is :class:`Run`,
its epoch in three parts (train, CV, save) that each fit on a screen.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.profiler import record_function

from voicelab.upstream.engine import batching, checkpoint, llm_loss, model
from voicelab.upstream.engine.feed import Batches, load_dataset
from voicelab.upstream.engine.steps import (
    LossModule,
    autocast,
    compile_blocks,
    fused_batches,
    guarded_step,
    mark_step,
    model_blocks,
    optimizer_step,
    own_grads,
    rng_state,
    set_rng_state,
    split_idx,
    train_step,
    uncompile_blocks,
    wants_compile,
    warm_groups,
    warm_up,
)

__all__ = [  # what memory modes, tests and the entry point use from here
    "Batches",
    "EngineArgs",
    "Hooks",
    "LossModule",
    "Run",
    "guarded_step",
    "load_dataset",
    "optimizer_step",
    "resume_mismatch",
    "run",
    "split_idx",
    "train_step",
]

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
    compile: str = "auto"  # auto | on | off: torch.compile the model's blocks
    #: llm: the compiled blocks replay CUDA graphs (steps.compile_blocks): "auto" where they
    #: apply (one CUDA GPU, compiled blocks, packed passes of whole optimizer steps), quietly
    #: without them elsewhere and after a failed warm-up; "on" says why where they cannot; "off"
    cuda_graphs: str = "auto"
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


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------
def _say(line: str) -> None:
    print(line, flush=True)


def _warn(line: str) -> None:
    """A line the user must see (``voicelab train`` shows it as a warning): the run goes on,
    slower or otherwise than asked."""
    _say(f"voicelab engine: warning: {line}")


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


@dataclass
class Conf:
    """What the run's YAML says about the loop."""

    train: dict[str, Any]
    accum: int
    grad_clip: float
    log_interval: int
    max_epoch: int
    max_frames: int
    sort_size: int
    use_spk: bool

    @classmethod
    def of(cls, configs: dict[str, Any]) -> Conf:
        train = dict(configs["train_conf"])
        return cls(
            train=train,
            accum=int(train.get("accum_grad", 1)),
            grad_clip=float(train.get("grad_clip", 5)),
            log_interval=max(1, int(train.get("log_interval", 10))),
            max_epoch=int(train.get("max_epoch", 10)),
            max_frames=int(configs["batch"].keywords.get("max_frames_in_batch", 2000)),
            sort_size=int(configs["sort"].keywords.get("sort_size", 500)),
            use_spk=bool(configs["padding"].keywords.get("use_spk_embedding", False)),
        )


class Profile:
    """``VOICELAB_ENGINE_PROFILE=<folder>``: passes 4-13 of the first epoch under torch.profiler,
    tables of the ops by device time and by host time written to ``<folder>/<model>-<time>.txt``
    (how the engine's host-bound share was found; a no-op otherwise). The step's phases are
    labelled (``voicelab.batch``, ``.forward``, ``.backward``, ``.optimizer``) in the tables."""

    FIRST, PASSES = 3, 10

    def __init__(self, dest: str | None, device: torch.device) -> None:
        self.dest, self.device, self.n, self.prof, self.t = dest, device, 0, None, 0.0

    @classmethod
    def start(cls, first_epoch: bool, device: torch.device, tag: str) -> Profile:
        folder = os.environ.get("VOICELAB_ENGINE_PROFILE") if first_epoch else None
        dest = str(Path(folder) / f"{tag}-{time.strftime('%H%M%S')}.txt") if folder else None
        return cls(dest, device)

    def tick(self) -> None:
        if not self.dest:
            return
        if self.n == self.FIRST:
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU]
            if self.device.type == "cuda":
                acts.append(ProfilerActivity.CUDA)
                torch.cuda.synchronize(self.device)
            self.prof = profile(activities=acts)
            self.prof.__enter__()
            self.t = time.time()
        elif self.n == self.FIRST + self.PASSES:
            self.stop()
        self.n += 1

    def stop(self) -> None:
        if self.prof is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        wall = time.time() - self.t
        self.prof.__exit__(None, None, None)
        ka = self.prof.key_averages()
        dev = "self_device_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        busy = sum(getattr(e, dev, 0) for e in ka) / 1e6
        head = f"{self.PASSES} passes: wall {wall:.3f} s, device busy (sum of kernels) {busy:.3f} s"
        parts = [head, ka.table(sort_by=dev, row_limit=40), ka.table(sort_by="cpu_time_total",
                 row_limit=25)]  # fmt: skip
        Path(self.dest).parent.mkdir(parents=True, exist_ok=True)
        Path(self.dest).write_text("\n\n".join(parts), "utf-8")
        _say(f"voicelab engine: profile written to {self.dest} ({head})")
        self.prof, self.dest = None, None


#: The flow's CUDA graphs: at most this many pass shapes (each compiles on its own); under
#: ``auto`` as many as pay in the run (:func:`batching.graph_plan`).
GRAPH_SHAPES = 8


class Run:
    """One training run: built by :meth:`setup`, then :meth:`warm`, then per epoch
    :meth:`train_epoch`, :meth:`cv` and :meth:`save`; :func:`run` drives it."""

    def __init__(self, args: EngineArgs) -> None:
        self.args = args
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.rank = int(os.environ.get("RANK", 0))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if args.device == "cuda":
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        if self.world > 1:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        from voicelab.upstream import memory_modes as mm

        self.mm = mm
        mm.cap_vram(args.max_vram, str(self.device))  # before anything lands on the GPU
        self.step = 0
        self.norm = torch.zeros((), device=self.device)
        self.peak_extra: int | None = None  # a step's memory beyond the state (GPU snapshots)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    # -- setup -----------------------------------------------------------------------------------
    def setup(self) -> None:
        """Model, data, optimizer, schedule (an exact resume restores their states), the OOM
        guard, how batches go through the model, TensorBoard and the checkpoint writer."""
        args, device = self.args, self.device
        config_text = args.config.read_text("utf-8")
        configs = model.load_configs(args.config, args.model, args.qwen_pretrain_path)
        self.conf = conf = Conf.of(configs)
        hooks = args.hooks
        net, self.start_step, self.start_epoch = hooks.build_model(
            configs, args.model, args.checkpoint
        )
        self.n_params = sum(p.numel() for p in net.parameters())  # before adapters
        if hooks.after_build is not None:
            hooks.after_build(net, args.model)
        qwen_dir = Path(args.qwen_pretrain_path or "")
        sets = [
            load_dataset(f, configs, config_text, qwen_dir, args.model, self.rank, self.world)
            for f in (args.train_data, args.cv_data)
        ]
        net.to(device)
        self.net = net
        self.loss_module: torch.nn.Module = LossModule(net, args.model)
        if self.world > 1:
            kw = {"device_ids": [self.local_rank]} if device.type == "cuda" else {}
            self.loss_module = torch.nn.parallel.DistributedDataParallel(
                self.loss_module, find_unused_parameters=True, **kw
            )
        self.params = [p for p in net.parameters() if p.requires_grad]
        self.optimizer = hooks.make_optimizer(self.params, conf.train, device.type)
        self.scheduler = model.make_scheduler(self.optimizer, conf.train)
        self.scheduler.set_step(self.start_step)
        self.step = self.start_step
        self._resume()
        self._feed(sets)
        self.compiled = wants_compile(args.compile, device, args.features)
        # CUDA graphs: the llm's packed passes, each a whole optimizer step, all padded to
        # the run's largest pass (one shape to record and replay); the flow's passes padded
        # to a few shapes (batching.graph_shapes).
        self.graph_shapes: list[tuple[int, int]] = []
        self.graph_reps: list[list[list[int]]] = []
        self.graphs = args.cuda_graphs != "off" and self._graphs_fit(args.cuda_graphs == "on")
        plan = self._plan_graphs() if self.graphs else None
        self.graphs = plan is not None
        if self.compiled:
            compile_blocks(model_blocks(net, args.model), self.graphs, len(self.graph_shapes))
            if plan:
                _say(f"voicelab engine: compiled blocks replay CUDA graphs ({plan})")
        self._outputs()

    def _feed(self, sets: list[Any]) -> None:
        """Device batches, the OOM guard, and how many batches one pass takes."""
        args, conf, net, device = self.args, self.conf, self.net, self.device
        self.train_b, self.cv_b = (
            Batches(ds, args.model, net, device, conf.use_spk, args.quantum) for ds in sets
        )
        frames = self.train_b.ds.frames
        self.guard = self.mm.OomGuard(
            args.model,
            self.n_params,
            args.features,
            self.zero_grad,
            split=split_idx,
            rows=len,
            frames=lambda idx: sum(frames[i] for i in idx),
        )
        # llm: batches packed without padding; ``fuse`` batches (an optimizer step's) per pass
        # (the flow's: padded to the longest of them, each with its own mask and loss).
        self.packed = args.model == "llm" and args.fuse != "off" and llm_loss.packs(net)
        self.fuse = fused_batches(
            args.model,
            args.fuse,
            args.features,
            args.max_vram,
            net,
            self.n_params,
            conf.accum,
            conf.max_frames,
            device,
        )
        if self.packed:
            _say(f"voicelab engine: packed batches, {self.fuse} per pass")
        elif self.fuse > 1:
            _say(f"voicelab engine: fused batches, {self.fuse} per pass{self._fused_share()}")

    def _outputs(self) -> None:
        """TensorBoard, the checkpoint writer, and ``init.pt`` once per run dir."""
        args, conf, hooks, net = self.args, self.conf, self.args.hooks, self.net
        self.writer = None
        if self.rank == 0 and args.tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(args.tensorboard_dir))
        self.saver = checkpoint.AsyncSaver(
            args.model_dir,
            args.keep,
            lambda pt: _say(f"[Rank 0] Checkpoint: save to checkpoint {pt}"),
        )
        if self.rank == 0 and not (args.model_dir / "init.pt").exists():
            args.model_dir.mkdir(parents=True, exist_ok=True)
            snap = {**hooks.state_dict(net), "epoch": self.start_epoch, "step": self.start_step}
            info = _info(conf.train, args, step=self.start_step, epoch=self.start_epoch)
            self.saver.save("init", snap, info)
        _say(f"start step {self.start_step} start epoch {self.start_epoch}")

    def _resume(self) -> None:
        args, hooks = self.args, self.args.hooks
        if args.checkpoint is None or self.start_epoch < 0:
            return
        resume_file = checkpoint.resume_path(args.checkpoint.parent, self.start_epoch)
        if not resume_file.is_file():  # only the newest epoch of a run keeps one
            _say(f"voicelab engine: no resume state for epoch {self.start_epoch}: weights only,"
                 " the optimizer starts anew")  # fmt: skip
            return
        st = torch.load(resume_file, map_location="cpu", weights_only=True)
        why = resume_mismatch(st.get("memory", "full"), args.memory)
        if why is None and hooks.load_resume_state is not None:
            why = hooks.load_resume_state(self.net, st.get("model_extra") or {})
        if why is None:
            self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        set_rng_state(st["rng"])
        if why is None:
            _say(f"voicelab engine: exact resume from {resume_file}")
        else:
            _say(f"voicelab engine: resume from {resume_file}, optimizer state new: {why}")

    # -- batches ---------------------------------------------------------------------------------
    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's training batches of ``epoch``."""
        c = self.conf
        batches = batching.epoch_batches(
            self.train_b.ds.frames,
            c.max_frames,
            epoch=epoch,
            seed=self.args.seed,
            sort_size=c.sort_size,
            world=self.world,
            accum=c.accum,
        )
        return batching.shard(batches, self.rank, self.world)

    def passes(self, group: list[list[int]]) -> list[list[list[int]]]:
        """How an optimizer step's batches go through the model: as one pass (the llm's packed
        rows; the flow's fused batches where padding them together costs little, or always
        with ``VOICELAB_ENGINE_FUSE=on``), else one pass per batch."""
        if len(group) < 2 or self.packed or self.args.fuse == "on":
            return [group]
        lens = [[len(self.train_b.tokens[i]) for i in idx] for idx in group]
        return [group] if batching.fuse_pays(lens, self.args.quantum) else [[b] for b in group]

    def _fused_share(self) -> str:
        """How many of the first epoch's optimizer steps fuse (the others: a pass per batch)."""
        if self.args.fuse == "on":
            return ""
        first = self.epoch_batches(self.start_epoch + 1)
        steps = [first[g : g + self.fuse] for g in range(0, len(first), self.fuse)]
        n = sum(len(self.passes(g)) == 1 for g in steps)
        pct = round(100 * (batching.FUSE_SLACK - 1))
        return (f" in {n} of the first epoch's {len(steps)} optimizer steps (the others: a pass"
                f" per batch: fusing them would add more than {pct} % padding)")  # fmt: skip

    def pass_batch(self, group: list[list[int]]) -> dict[str, Any]:
        """The device batch of one pass over ``group``: packed (llm), fused (flow) or padded
        (one batch without fusing)."""
        if self.packed:
            return self.train_b.make_packed(group)
        if not self._fused(group):
            return self.train_b.make(group[0])
        pad_to = self._shape(group) if self.graph_shapes else None
        return self.train_b.make_fused(group, pad_to)  # type: ignore[arg-type]

    def make_one(self, idx: list[int]) -> dict[str, Any]:
        return self.pass_batch([idx])

    def _fused(self, group: list[list[int]]) -> bool:
        """The flow's fused pass, also for a step's batches that go one by one: the same DiT
        call (its mask built on the device, no host read per call) and the same inputs to the
        compiled blocks (upstream's own call compiled again for them: a 14 s stall in an H100
        epoch); with CUDA graphs every pass (padded to one of the run's shapes)."""
        return len(group) > 1 or self.fuse > 1 or self.graphs

    def make_cv(self, idx: list[int]) -> dict[str, Any]:
        return self.cv_b.make_packed([idx]) if self.packed else self.cv_b.make(idx)

    def _shape(self, group: list[list[int]]) -> tuple[int, ...]:
        """The input shape a pass over ``group`` has (what the warm-up covers): the flow's
        with CUDA graphs padded to one of the run's shapes."""
        shape = self._own_shape(group)
        if self.graph_shapes:
            return batching.graph_shape(shape, self.graph_shapes)  # type: ignore[arg-type]
        return shape

    def _own_shape(self, group: list[list[int]]) -> tuple[int, ...]:
        """A pass's shape before CUDA graphs pad it: (rows, length); the llm's packed rows at
        least ``at_least``."""
        b = self.train_b
        if self.packed:
            rows, width = llm_loss.packed_shape(
                [len(b.pairs[i][0].ids) for g in group for i in g], b.row
            )
            return max(rows, b.at_least[0]), max(width, b.at_least[1])
        lens = [len(b.pairs[i][0].ids) if self.args.model == "llm" else len(b.tokens[i])
                for idx in group for i in idx]  # fmt: skip
        return len(lens), batching.padded(max(lens), self.args.quantum)

    def _graphs_fit(self, say: bool) -> bool:
        """Whether CUDA graphs apply to this run; with ``say`` (asked for), one line why not."""
        why = None
        llm = self.args.model == "llm"
        if llm and not self.packed:
            why = "the llm's packed passes only (VOICELAB_ENGINE_FUSE=off pads batches)"
        elif self.device.type != "cuda":
            why = "they need a CUDA GPU"
        elif not self.compiled:
            why = "the blocks are not compiled here (a GPU in the full memory mode compiles them)"
        elif llm and self.fuse == 1 and self.conf.accum > 1:
            why = "a pass must hold a whole optimizer step (its batches do not fit one pass)"
        elif self.world > 1:
            why = "one process only for now (not yet measured with several GPUs)"
        if why and say:
            _say(f"voicelab engine: no CUDA graphs: {why}")
        return why is None

    def _run_passes(self) -> Iterator[list[list[int]]]:
        """Every pass of the run's epochs, as training makes them (the draws cannot change a
        pass's shape: the llm's two layouts have the same length), the trained ones too: a
        resumed run plans the shapes it planned at first, which Inductor's cache then holds."""
        for e in range(self.conf.max_epoch):
            mine = self.epoch_batches(e)
            for g in range(0, len(mine), self.fuse):
                yield from self.passes(mine[g : g + self.fuse])

    def _plan_graphs(self, most: int | None = None) -> str | None:
        """The shapes CUDA graphs replay: the llm's one (the largest packed pass of the run:
        rows of padding are cheap), the flow's few (:func:`batching.graph_shapes`: every pass
        padded to the cheapest that holds it; ``most`` of them, else as many as the run
        repays), and a pass of each for the warm-up. The plan in words for the log; None: the
        flow goes without graphs (its log line says why)."""
        passes = list(self._run_passes())
        shapes = [self._own_shape(p) for p in passes]
        if not shapes:
            return "no pass left to train"
        if self.args.model == "llm":
            self.train_b.at_least = (max(r for r, _ in shapes), max(w for _, w in shapes))
            return "every pass {} rows of {}".format(*self.train_b.at_least)
        if most is not None:
            self.graph_shapes = batching.graph_shapes(shapes, most)  # type: ignore[arg-type]
        else:
            chosen, why = self._flow_graph_shapes(shapes)  # type: ignore[arg-type]
            if why:
                _say(f"voicelab engine: no CUDA graphs: {why}")
                return None
            self.graph_shapes = chosen
        first: dict[tuple[int, ...], list[list[int]]] = {}
        chosen = self.graph_shapes
        for p, s in zip(passes, shapes, strict=True):  # the earliest pass of a shape warms it up
            first.setdefault(batching.graph_shape(s, chosen), p)  # type: ignore[arg-type]
        self.graph_reps = [first[s] for s in self.graph_shapes]
        work = batching.padded_work(shapes, self.graph_shapes)  # type: ignore[arg-type]
        listed = ", ".join(f"{r}x{t}" for r, t in self.graph_shapes)
        n = len(self.graph_shapes)
        return (f"every pass padded to one of {n} shapes: {listed} utterances x speech tokens;"
                f" {work:.2f}x the DiT work of unpadded passes")  # fmt: skip

    def _flow_graph_shapes(self, shapes: list[batching.Shape]) -> tuple[list[batching.Shape], str]:
        """The shapes the flow's graphs pad the run's passes to, or why none (``auto``): on
        H100-class GPUs, as many as repay their compile and their padding in this run
        (:func:`batching.graph_plan`); ``on`` or a count given: up to that many, anywhere."""
        forced = os.environ.get("VOICELAB_ENGINE_GRAPH_SHAPES", "").strip()
        if forced and not (forced.isdigit() and 1 <= int(forced) <= GRAPH_SHAPES):
            raise SystemExit(f"voicelab engine: VOICELAB_ENGINE_GRAPH_SHAPES={forced!r}: give"
                             f" a whole number from 1 to {GRAPH_SHAPES}, or unset it")  # fmt: skip
        if forced or self.args.cuda_graphs == "on":  # a count given: for measurements
            return batching.graph_shapes(shapes, int(forced or GRAPH_SHAPES)), ""
        major = torch.cuda.get_device_capability(self.device)[0]
        if major not in (9, 10):
            why = "a slower card is busy computing, not waiting on Python"
            return [], f"the flow's pay only on H100-class GPUs ({why}): --cuda-graphs to try"
        chosen, with_graphs, without = batching.graph_plan(shapes, GRAPH_SHAPES)
        if not chosen and with_graphs == float("inf"):
            return [], "padding the flow's passes to few shapes would need too much memory"
        if not chosen:
            return [], (
                f"padding the flow's {len(shapes)} passes to few shapes and compiling them"
                f" would take longer than launching them (~{with_graphs:.0f} s predicted"
                f" against ~{without:.0f} s): --cuda-graphs"
            )
        _say(f"voicelab engine: the flow's CUDA graphs: {len(chosen)} shape(s) for its"
             f" {len(shapes)} passes (~{with_graphs:.0f} s predicted against ~{without:.0f} s"
             " without)")  # fmt: skip
        return chosen, ""

    # -- warm-up ---------------------------------------------------------------------------------
    def warm(self) -> None:
        """One untrained step per distinct input shape of the first epoch (on a GPU by default)."""
        args = self.args
        if not (args.warmup == "on" or (args.warmup == "auto" and self.device.type == "cuda")):
            return
        first = self.epoch_batches(self.start_epoch + 1)
        groups = [p for g in range(0, len(first), self.fuse)
                  for p in self.passes(first[g : g + self.fuse])]  # fmt: skip
        # Every rank must run as many steps (each backward all-reduces): one when several.
        if self.graph_reps:  # the flow's every graph shape, from any epoch of the run
            groups = self.graph_reps
        warm = warm_groups(groups, self._shape, 8 if self.world == 1 else 1)
        if self.graphs:  # graph trees run a new graph once, record it on its second run
            warm = warm * 2

        took: list[float] = []  # each pass's seconds: the first holds the compile

        def steps() -> None:
            for g in warm:
                t = time.time()
                mark_step(self.graphs)
                n = len(g)  # batches in the pass
                batch = self.pass_batch(g)
                train_step(
                    self.loss_module, batch, self.conf.accum, args.amp, self.device, True, batches=n
                )
                # As after an optimizer step: no gradient lives into the next pass (with CUDA
                # graphs it would live in memory that pass's graphs overwrite).
                self.zero_grad()
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                took.append(time.time() - t)

        self.net.train()
        if self.compiled:
            _say("voicelab engine: status: compiling the model's blocks in the warm-up"
                 " (once per run; --no-compile skips it)")  # fmt: skip
        try:
            total = self._warm_compiled(steps)
            how = ", compiled blocks" if self.compiled else ""
            each = " / ".join(f"{x:.1f}" for x in took[-len(warm) :])
            _say(
                f"voicelab engine: warm-up {total:.2f} s ({len(warm)} input shapes{how},"
                f" nothing trained; passes {each} s)"
            )
        except torch.OutOfMemoryError:
            self.zero_grad()
            torch.cuda.empty_cache()
            if self.fuse > 1 and self.world == 1:
                self._one_batch_per_pass()
                _warn("out of GPU memory in the warm-up: one batch per pass")
            else:
                _warn("out of GPU memory in the warm-up; training splits batches")

    def _warm_compiled(self, steps: Callable[[], None]) -> float:
        """The warm-up (where torch.compile compiles); a compile that fails under ``auto``
        (no C compiler for Triton, an unsupported GPU) leaves the blocks eager, with one line."""
        try:
            return warm_up(steps, self.zero_grad, self.device)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:
            if self.graphs and self.args.cuda_graphs == "auto":
                self._graphs_failed(e)
                return self._warm_compiled(steps)
            if not self.compiled or self.args.compile == "on":
                raise
            uncompile_blocks(model_blocks(self.net, self.args.model))
            self.compiled = False
            self._drop_graphs()
            why, where = self._failure(e)
            _warn(f"torch.compile failed {why}; eager {where}")
            return warm_up(steps, self.zero_grad, self.device)

    def _graphs_failed(self, e: Exception) -> None:
        """CUDA graphs that were not asked for failed in the warm-up: the blocks compile again
        without them (the run goes on as with ``--no-cuda-graphs``), with one line."""
        self._compile_without_graphs()
        why, where = self._failure(e)
        _warn(f"CUDA graphs failed in the warm-up {why}; compiled blocks without them {where}")

    def _failure(self, e: Exception) -> tuple[str, str]:
        """``(Type: first line)`` and ``(the whole error: <file>)``: a failed compile on the
        console; its whole traceback goes to the run dir, for a bug report."""
        why = (str(e).strip().splitlines() or [""])[0][:200]
        return f"({type(e).__name__}: {why})", f"(the whole error: {self._write_compile_error()})"

    def _write_compile_error(self) -> Path:
        """The failed compile's whole traceback in the run dir (the console gets one line)."""
        import traceback

        from voicelab.fsutil import atomic_write_text

        dest = self.args.model_dir / f"compile-error-rank{self.rank}.txt"
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(dest, traceback.format_exc())
        return dest

    def _one_batch_per_pass(self) -> None:
        """After an out-of-memory packed pass: one batch per pass from now on, and no CUDA
        graphs where passes now accumulate (the blocks compile again without them)."""
        self.fuse = 1
        if self.graphs and self.conf.accum > 1:
            self._compile_without_graphs()

    def _compile_without_graphs(self) -> None:
        """The blocks compiled again as without CUDA graphs, passes no longer padded."""
        blocks = model_blocks(self.net, self.args.model)
        uncompile_blocks(blocks)
        compile_blocks(blocks)
        self._drop_graphs()

    def _drop_graphs(self) -> None:
        """No CUDA graphs from now on, and so no padding of passes to the run's largest."""
        self.graphs = False
        self.train_b.at_least = (0, 0)
        self.graph_shapes, self.graph_reps = [], []

    # -- one epoch -------------------------------------------------------------------------------
    def _packed_step(self, group: list[list[int]]) -> list[dict[str, Any]]:
        """One pass over an optimizer step's batches; [] when it ran out of memory (one GPU:
        one batch per pass from then on, this step included)."""
        try:
            with record_function("voicelab.batch"):
                batch = self.pass_batch(group)
            out = train_step(
                self.loss_module,
                batch,
                self.conf.accum,
                self.args.amp,
                self.device,
                True,
                batches=len(group),
            )
            return [out]
        except torch.OutOfMemoryError:
            if self.world > 1:
                raise self.mm.OutOfMemoryStop(
                    f"out of GPU memory in a packed step of {self.fuse} batches",
                    "train with --memory checkpointing, or a smaller --batch-frames",
                ) from None
            self.zero_grad()
            torch.cuda.empty_cache()
            self._one_batch_per_pass()
            _warn("out of GPU memory: one batch per pass from now")
            return []

    def _batch_steps(self, group: list[list[int]], done: int) -> list[dict[str, Any]]:
        """The batches of ``group`` one by one (the OOM guard may split each)."""
        if self.graphs:
            return self._graphed_batch_steps(group, done)
        outs: list[dict[str, Any]] = []
        c, args = self.conf, self.args
        for idx in group:
            boundary = (done + len(outs) + 1) % c.accum == 0

            def step(b: dict[str, Any], w: float, sync: bool = boundary) -> dict[str, Any]:
                return train_step(self.loss_module, b, c.accum, args.amp, self.device, sync, w)

            outs.append(guarded_step(self.guard, idx, self.make_one, step, self.world))
        return outs

    def _graphed_batch_steps(self, group: list[list[int]], done: int) -> list[dict[str, Any]]:
        """The flow's batches of ``group`` one pass each under CUDA graphs: the gradient of a
        pass that is not its step's last is moved out of the graphs' memory (the next replay
        overwrites it; accumulating into it would read what the replay wrote). Out of memory:
        the blocks compile again without graphs and the step starts over, through the guard."""
        outs: list[dict[str, Any]] = []
        c, args = self.conf, self.args
        try:
            for k, idx in enumerate(group):
                if k:
                    mark_step(True)
                outs.append(train_step(
                    self.loss_module, self.make_one(idx), c.accum, args.amp, self.device, True
                ))  # fmt: skip
                if (done + k + 1) % c.accum:
                    own_grads(self.params)
        except torch.OutOfMemoryError:
            self.zero_grad()
            torch.cuda.empty_cache()
            self._compile_without_graphs()
            _warn("out of GPU memory in a pass under CUDA graphs: compiled blocks without them")
            return self._batch_steps(group, done)
        return outs

    def _optimizer_step(self) -> None:
        try:
            self.norm = optimizer_step(
                self.params, self.optimizer, self.scheduler, self.conf.grad_clip
            )
        except torch.OutOfMemoryError:  # Adam's state is allocated at the first step
            args = self.args
            raise self.mm.OutOfMemoryStop(
                f"out of GPU memory in the optimizer step (mode {args.memory})",
                self.mm.oom_hint(args.model, self.n_params, args.features, self.conf.max_frames),
            ) from None
        self.step += 1

    def _log_train(self, epoch: int, done: int, out: dict[str, Any], rate: float) -> None:
        self.saver.poll()
        accum = self.conf.accum
        # One read from the device for the line and TensorBoard (each .item() is a sync).
        read = torch.stack([v.detach().float().reshape(()) for v in (*out.values(), self.norm)])
        *got, norm = read.tolist()
        values = dict(zip(out, got, strict=True))
        vals = " ".join(f"{k} {v / (accum if k == 'loss' else 1):.6f}" for k, v in values.items())
        lr = self.optimizer.param_groups[0]["lr"]
        _say(
            f"TRAIN Batch {epoch}/{done} {vals} lr {lr:.8f} grad_norm"
            f" {norm:.6f} tokens_s {rate:.1f} rank {self.rank}"
        )
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"TRAIN/{k}", v, self.step)
            self.writer.add_scalar("TRAIN/lr", lr, self.step)
            self.writer.add_scalar("TRAIN/grad_norm", norm, self.step)
            self.writer.add_scalar("TRAIN/epoch", epoch, self.step)

    def done_steps(self) -> bool:
        m = self.args.max_steps
        return m is not None and self.step - self.start_step >= m

    def train_epoch(self, epoch: int) -> float:
        """Train one epoch; its seconds."""
        lr = self.optimizer.param_groups[0]["lr"]
        _say(f"Epoch {epoch} TRAIN info lr {lr} rank {self.rank}")
        t0 = time.time()
        mine = self.epoch_batches(epoch)
        self.net.train()
        tok_count, t_log = 0, time.time()
        self.norm = torch.zeros((), device=self.device)
        done = gi = 0  # batches of this epoch trained; where the next group starts
        prof = Profile.start(
            epoch == self.start_epoch + 1 and self.rank == 0, self.device, self.args.model
        )
        while gi < len(mine):
            group = mine[gi : gi + self.fuse]
            gi += len(group)
            prof.tick()
            mark_step(self.graphs)
            one_pass = len(group) > 1 and len(self.passes(group)) == 1
            outs = self._packed_step(group) if one_pass else []
            outs = outs or self._batch_steps(group, done)
            before, done = done, done + len(group)
            tok_count += sum(self.train_b.speech_tokens(idx) for idx in group)
            if done % self.conf.accum == 0:
                with record_function("voicelab.optimizer"):
                    self._optimizer_step()
            if done // self.conf.log_interval > before // self.conf.log_interval:
                now = time.time()
                self._log_train(
                    epoch, done, outs[-1], tok_count * self.world / max(now - t_log, 1e-9)
                )
                tok_count, t_log = 0, now
            if self.done_steps():
                break
        prof.stop()
        if self.device.type == "cuda":  # the epoch's time includes the GPU's queued work
            torch.cuda.synchronize(self.device)
        record_seen(self.train_b.ds.utts, mine[:done], "TRAIN", epoch, self.rank)
        return time.time() - t0

    def cv(self, epoch: int) -> tuple[dict[str, float], int]:
        """CV loss (and acc): every rank takes its share, sums are all-reduced (upstream:
        utterance-weighted); the batch count."""
        c, device = self.conf, self.device
        self.net.eval()
        frames = self.cv_b.ds.frames
        cv_batches = batching.shard(
            batching.epoch_batches(
                frames, c.max_frames, epoch=0, shuffle=False, sort_size=c.sort_size
            ),
            self.rank,
            self.world,
        )
        module = self.loss_module if self.world == 1 else self.loss_module.module
        sums: dict[str, torch.Tensor] = {}
        n_utt = torch.zeros((), device=device)
        # CV runs eager: compiled blocks would compile again for inference (seconds, once).
        eager = torch.compiler.set_stance("force_eager") if self.compiled else None
        with torch.inference_mode(), eager or contextlib.nullcontext():
            for idx in cv_batches:
                with autocast(device, self.args.amp):
                    out = module(self.make_cv(idx))
                for k, v in out.items():
                    sums[k] = sums.get(k, torch.zeros((), device=device)) + v.float() * len(idx)
                n_utt += len(idx)
        keys = ["loss"] + (["acc"] if self.args.model == "llm" else [])
        vec = torch.stack([sums.get(k, torch.zeros((), device=device)) for k in keys] + [n_utt])
        if self.world > 1:
            dist.all_reduce(vec)
        got = vec.tolist()
        cv = {k: got[i] / max(got[-1], 1) for i, k in enumerate(keys)}
        record_seen(self.cv_b.ds.utts, cv_batches, "CV", epoch, self.rank)
        lr = self.optimizer.param_groups[0]["lr"]
        losses = " ".join(f"{k} {v}" for k, v in cv.items())
        _say(f"Epoch {epoch} Step {self.step + 1} CV info lr {lr} {self.rank} rank {losses}")
        if self.writer is not None:
            for k, v in cv.items():
                self.writer.add_scalar(f"CV/{k}", v, self.step + 1)
            self.writer.add_scalar("CV/lr", lr, self.step + 1)
            self.writer.add_scalar("CV/epoch", epoch, self.step + 1)
            self.writer.flush()
        return cv, len(cv_batches)

    def save(self, epoch: int, cv: dict[str, float], cv_batches: int) -> None:
        """Rank 0 hands the epoch's checkpoint (upstream's files + the resume state) to a
        background writer once its CPU snapshot is taken."""
        if self.rank != 0:
            return
        args, hooks, net, opt = self.args, self.args.hooks, self.net, self.optimizer
        # Room in RAM for this snapshot first (weights + optimizer state, as on the GPU).
        nbytes = checkpoint.tree_bytes(net.state_dict()) + checkpoint.tree_bytes(opt.state_dict())
        self.saver.make_room(nbytes)
        on_gpu = self._gpu_snapshot(nbytes)
        if on_gpu is not None:
            weights, opt_state = on_gpu
        else:
            weights, opt_state = hooks.state_dict(net), checkpoint.cpu_tree(opt.state_dict())
        weights = {**weights, "epoch": epoch, "step": self.step}
        info = _info(
            self.conf.train,
            args,
            tag="CV",
            step=self.step,
            epoch=epoch,
            batch_idx=cv_batches,
            loss_dict=cv,
            lr=opt.param_groups[0]["lr"],
            grad_norm=float(self.norm),
        )
        resume = {
            "optimizer": opt_state,
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "epoch": epoch,
            "rng": rng_state(),
            "memory": args.memory,
        }
        if hooks.resume_state is not None:
            resume["model_extra"] = hooks.resume_state(net)
        pt = checkpoint.whole_name(epoch)
        res = (checkpoint.resume_path(args.model_dir, epoch), resume)
        if on_gpu is not None:
            self.saver.save_from_gpu(pt, weights, info, res)
        else:
            self.saver.save(pt, weights, info, res)

    def _gpu_snapshot(self, nbytes: int) -> tuple[dict[str, Any], Any] | None:
        """(weights, optimizer state) copied on the GPU when it has room for them beside the
        training's own peak (the copy lives into the next epoch), in the full mode's plain
        state dict; else None: the training thread copies to the CPU instead."""
        if self.device.type != "cuda" or self.args.hooks.state_dict is not checkpoint.cpu_state:
            return None
        cap = None
        if self.args.max_vram is not None:
            cap = int((self.args.max_vram - self.mm.CUDA_CONTEXT_GIB) * 2**30)
        dev = self.device
        if self.peak_extra is None:  # measured before any snapshot took memory (warm-up included)
            peak, now = torch.cuda.max_memory_allocated(dev), torch.cuda.memory_allocated(dev)
            self.peak_extra = peak - now
        if not checkpoint.snapshot_fits(checkpoint.gpu_room(dev, cap), nbytes, self.peak_extra):
            return None
        try:
            return (
                checkpoint.device_clone(self.net.state_dict()),
                checkpoint.device_clone(self.optimizer.state_dict()),
            )
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            return None

    def close(self) -> None:
        self.saver.wait()
        if self.saver.skipped_resume:
            _say(f"voicelab engine: {self.saver.skipped_resume} epochs' resume states dropped:"
                 " the next epoch's superseded each before its write finished (the newest is"
                 " written)")  # fmt: skip
        if self.writer is not None:
            self.writer.close()
        if self.world > 1:
            dist.destroy_process_group()


def run(args: EngineArgs) -> None:
    r = Run(args)
    r.setup()
    r.warm()
    try:
        for epoch in range(r.start_epoch + 1, r.conf.max_epoch):
            train_s = r.train_epoch(epoch)
            t1 = time.time()
            cv, cv_batches = r.cv(epoch)
            t2 = time.time()
            r.save(epoch, cv, cv_batches)
            save_s = time.time() - t2
            _say(
                f"voicelab engine: epoch {epoch} train_s {train_s:.3f} cv_s {t2 - t1:.3f}"
                f" save_s {save_s:.3f} rank {r.rank}"
            )
            if r.world > 1:
                dist.barrier()
            if r.done_steps():
                break
    except r.mm.OutOfMemoryStop as e:
        # The last checkpoint is complete on disk; nothing else is lost. One line the CLI shows.
        r.saver.wait()
        _say(f"voicelab engine: stopped: {e.message}")
        _say(f"voicelab engine: hint: {e.hint}")
        raise SystemExit(3) from None
    r.close()
