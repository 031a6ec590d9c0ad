"""``voicelab train llm|flow``: speaker SFT with upstream's ``cosyvoice/bin/train.py``.

Upstream's trainer runs unmodified from the vendor checkout, under ``torchrun``, through
:mod:`voicelab.upstream.launcher` (runtime fixes). Everything around it is VoiceLab's:

* **config**: the training YAML of :mod:`voicelab.upstream.train_config` (workspace
  ``configs/``; a user's edit is used as it is, with warnings); the run uses a copy with the
  command-line options applied, ``<run>/train_config.yaml`` (``train*`` so that checkpoint
  readers, which glob ``*.yaml``, skip it);
* **preflight** (:func:`preflight`): every problem found before anything starts, one line each
  with its fix: vendor, train extra, base model files, data lists, parquet columns, what
  upstream's ``filter`` would keep of the dev set, shards vs workers x GPUs, batches per epoch vs
  ``accum_grad``, GPU memory, free disk for checkpoints;
* **memory** (:func:`memory_plan_for`, :mod:`voicelab.memory`): ``--memory auto`` picks the
  memory mode (checkpointing, 8-bit Adam, LoRA ...) and the batch from the GPUs' free memory
  (``--max-vram`` caps it); VoiceLab's engine (:mod:`voicelab.upstream.engine.memory`) or, with
  ``--trainer upstream``, the launcher applies it (:mod:`voicelab.upstream.memory_modes`);
* **runs**: ``exp/<spk>_sft/<model>/<engine>`` (and ``tensorboard/...``). A run is never
  overwritten: ``--resume`` continues it from its newest epoch checkpoint (passed as
  ``--checkpoint``, whose ``epoch``/``step`` keys make upstream continue at the next epoch);
  ``--new`` first moves it aside to ``<engine>.<n>`` (the next free number), so the current run
  always lives at the path checkpoints, export and the report read;
* **launch**: ``python -m torch.distributed.run`` with an argv list (never a shell), the vendor
  import paths, UTF-8 stdio, visible GPUs, CPU affinity; the exact command is saved as
  ``<run>/launch.sh``;
* **progress**: upstream's log lines parsed into a live line (epoch, step, loss, acc, lr,
  steps/s, ETA) and into ``<run>/train_log.jsonl`` (see :class:`LogParser`); the raw log goes to
  ``<run>/train.log``.

``train_log.jsonl`` rows (one JSON object per line, appended across resumes)::

    {"tag": "TRAIN", "epoch": 0, "batch": 10, "step": 5, "loss": 2.31, "acc": 0.41,
     "lr": 1e-05, "grad_norm": 1.7, "rank": 0, "time": 1764000000.0}
    {"tag": "CV", "epoch": 0, "step": 12, "loss": 2.20, "acc": 0.44, "lr": 1e-05,
     "time": ..., "checkpoint": "epoch_0_whole.pt"}
    {"tag": "EVENT", "event": "launch" | "start" | "checkpoint" | "end", "time": ..., ...}

``loss`` of TRAIN rows is the batch loss (upstream logs it divided by ``accum_grad``; we multiply
back). ``step`` counts optimizer steps done; ``batch`` is the 1-based batch index in the epoch.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voicelab.contract import RunOptions, Stage, StageResult
from voicelab.errors import ConfigError, StageError, VoiceLabError
from voicelab.fsutil import (
    atomic_write_json,
    atomic_write_text,
    free_bytes,
    quick_fingerprint,
    read_user_text,
)
from voicelab.locks import Lock
from voicelab.memory import MemoryPlan
from voicelab.records import TOKEN_RATE, PackedUtt
from voicelab.signals import stop_on_signals, stopped_by
from voicelab.upstream import train_config as tc

if TYPE_CHECKING:
    from voicelab.vendor import VendorRuntime
    from voicelab.workspace import Workspace

log = logging.getLogger(__name__)

MODELS = ("llm", "flow")
ENGINES = ("torch_ddp", "deepspeed")
#: ``voicelab``: VoiceLab's engine (voicelab.upstream.engine); ``upstream``: upstream's train.py.
TRAINERS = ("voicelab", "upstream")
#: Python modules upstream's training imports (the ``train`` extra).
TRAIN_MODULES = (
    "torch",
    "torchaudio",
    "transformers",
    "hyperpyyaml",
    "omegaconf",
    "whisper",
    "pyworld",
    "deepspeed",
    "x_transformers",
    "diffusers",
    "conformer",
    "lightning",
    "hydra",
    "librosa",
    "soundfile",
    "onnxruntime",
    "tensorboard",
)
REQUIRED_COLUMNS = ("utt", "audio_data", "text", "speech_token", "utt_embedding", "spk_embedding")
#: Largest model trained on a CPU (parameters); the tiny model's llm has 10.7 M.
MAX_CPU_PARAMS = 50_000_000
#: Memory model (bytes): weights + grads + Adam moments in fp32, activations per batch frame, and
#: the CUDA context and allocator slack. Calibrated with benchmarks/bench_train.py on an H100
#: (bf16, 2500 frames): peak 16,635 MiB (16.2 GiB) for the 506 M llm, 12.2 GiB for the 332 M flow.
BYTES_PER_PARAM = 16
ACT_BYTES_PER_FRAME = {"llm": 3_800_000, "flow": 3_000_000}
CUDA_OVERHEAD = 1 << 30
CHECKPOINT_LOG = "train_log.jsonl"


# ------------------------------------------------------------------------------------------------
# Options and results
# ------------------------------------------------------------------------------------------------
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
    compile: bool = False  # torch.compile the step (voicelab trainer)
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


# ------------------------------------------------------------------------------------------------
# Data facts (parquet) and upstream's filter rules
# ------------------------------------------------------------------------------------------------
@dataclass
class Shard:
    path: Path
    utts: list[PackedUtt]


@dataclass
class FilterRules:
    """Upstream ``processor.filter`` settings (lengths in 10 ms frames, text in tokens)."""

    min_length: float = 100
    max_length: float = 6000
    token_min_length: int = 1
    token_max_length: int = 200
    min_ratio: float = 0.0005
    max_ratio: float = 1.0

    @classmethod
    def from_config(cls, values: dict[str, Any]) -> FilterRules:
        f = tc.get_value(values, tc.FILTER) or {}
        d = cls()

        def num(key: str, default: float) -> float:
            v = tc.as_number(f.get(key)) if isinstance(f, dict) else None
            return default if v is None else v

        return cls(
            num("min_length", d.min_length),
            num("max_length", d.max_length),
            int(num("token_min_length", d.token_min_length)),
            int(num("token_max_length", d.token_max_length)),
            num("min_output_input_ratio", d.min_ratio),
            num("max_output_input_ratio", d.max_ratio),
        )

    def keeps(self, u: PackedUtt) -> bool:
        frames = u.seconds * 100
        if u.speech_tokens == 0 or not (self.min_length <= frames <= self.max_length):
            return False
        if not (self.token_min_length <= u.text_tokens <= self.token_max_length):
            return False
        ratio = u.text_tokens / frames if frames else 0.0
        return self.min_ratio <= ratio <= self.max_ratio


_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")


def estimate_text_tokens(text: str) -> int:
    """Qwen2 BPE token count without the tokenizer: ~1 per CJK character, ~1 per 4 others."""
    cjk = len(_CJK.findall(text))
    rest = len(text) - cjk
    return cjk + math.ceil(rest / 4)


def read_list(path: Path) -> list[Path]:
    return [Path(line.strip()) for line in read_user_text(path).splitlines() if line.strip()]


def read_shards(
    list_file: Path, count_tokens: Callable[[str], int] = estimate_text_tokens
) -> tuple[list[Shard], list[str]]:
    """(shards, problems) of a data.list: utterance lengths from the packed speech tokens."""
    import pyarrow.parquet as pq

    shards: list[Shard] = []
    problems: list[str] = []
    for p in read_list(list_file):
        if not p.is_file():
            problems.append(f"{list_file} lists {p}, which does not exist")
            continue
        try:
            pf = pq.ParquetFile(p)
        except Exception as e:  # any unreadable file is reported the same way
            problems.append(f"{p} is not a readable parquet file ({type(e).__name__})")
            continue
        names = set(pf.schema_arrow.names)
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if missing:
            problems.append(f"{p} lacks column(s) {', '.join(missing)}")
            continue
        cols = ["utt", "text", "speech_token"] + (["instruct"] if "instruct" in names else [])
        utts: list[PackedUtt] = []
        for batch in pf.iter_batches(columns=cols, batch_size=512):
            d = batch.to_pydict()
            for i, utt in enumerate(d["utt"]):
                n_tok = len(d["speech_token"][i] or [])
                text_tokens = count_tokens(d["text"][i] or "")
                utts.append(PackedUtt(utt, n_tok / TOKEN_RATE, text_tokens, n_tok))
        shards.append(Shard(p, utts))
    return shards, problems


def has_instruct(list_file: Path) -> bool:
    import pyarrow.parquet as pq

    files = read_list(list_file)
    return bool(files) and all(
        "instruct" in pq.ParquetFile(f).schema_arrow.names for f in files if f.is_file()
    )


def dynamic_batches(frames: list[int], max_frames: int, sort_size: int = 500) -> int:
    """How many batches upstream's ``sort`` + dynamic ``batch`` make of one worker's stream."""
    n = 0
    for i in range(0, len(frames), sort_size):
        chunk = sorted(frames[i : i + sort_size])
        count, longest = 0, 0
        for f in chunk:
            longest = max(longest, f)
            if count and longest * (count + 1) > max_frames:
                n += 1
                count, longest = 0, f
            count += 1
        n += 1 if count else 0
    return n


def batches_per_rank(
    shards: list[Shard], rules: FilterRules, max_frames: int, world: int, workers: int
) -> list[int]:
    """Batches each rank gets per epoch, by upstream's sharding (ranks, then workers)."""
    idx = list(range(len(shards)))
    if not idx:
        return [0] * world
    if len(idx) < world:
        idx = (idx * math.ceil(world / len(idx)))[:world]
    out = []
    for r in range(world):
        mine = idx[r::world]
        nw = max(1, workers)
        if len(mine) < nw:
            mine = (mine * math.ceil(nw / len(mine)))[:nw]
        total = 0
        for w in range(nw):
            frames = [u.frames for i in mine[w::nw] for u in shards[i].utts if rules.keeps(u)]
            total += dynamic_batches(frames, max_frames)
        out.append(total)
    return out


# ------------------------------------------------------------------------------------------------
# GPUs
# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# Run directories
# ------------------------------------------------------------------------------------------------
_WHOLE = re.compile(r"^epoch_(\d+)_whole\.pt$")
_STEPCK = re.compile(r"^epoch_(\d+)_step_(\d+)\.pt$")


def run_has_content(run_dir: Path) -> bool:
    return (
        run_dir.is_dir()
        and any((run_dir / n).exists() for n in ("init.pt", CHECKPOINT_LOG, "train.log"))
    ) or any(run_dir.glob("epoch_*.pt"))


def epoch_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    out = []
    for p in run_dir.glob("epoch_*_whole.pt"):
        m = _WHOLE.match(p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    """The newest end-of-epoch checkpoint: (epoch, path)."""
    ck = epoch_checkpoints(run_dir)
    return ck[-1] if ck else None


def archive_name(run_dir: Path) -> Path:
    n = 1
    while run_dir.with_name(f"{run_dir.name}.{n}").exists():
        n += 1
    return run_dir.with_name(f"{run_dir.name}.{n}")


def run_name(trainer: str, engine: str) -> str:
    """The run dir name under ``exp/<tag>/<model>/``: ``voicelab`` or upstream's engine."""
    return "voicelab" if trainer == "voicelab" else engine


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
    if trainer == "upstream" and (opts.keep or opts.compile):
        raise ConfigError(
            "--keep and --compile are options of VoiceLab's trainer", "use --trainer voicelab"
        )
    return trainer


@dataclass
class RunPlan:
    run_dir: Path
    tb_dir: Path
    checkpoint: Path | None
    resumed_epoch: int | None  # the epoch the checkpoint ends (training continues after it)
    archive: tuple[Path, Path] | None  # (run dir -> archived name) done before launching
    note: str = ""


def plan_run(
    ws: Workspace, model: str, engine: str, base_ckpt: Path, opts: TrainOptions, max_epoch: int
) -> RunPlan:
    """Where this run goes and what it starts from (see the module doc for the rules)."""
    run_dir = ws.exp_dir(model, engine)
    tb_dir = ws.tensorboard_dir(model, engine)
    start = Path(opts.checkpoint) if opts.checkpoint else base_ckpt
    if opts.resume and opts.new:
        raise ConfigError("--resume and --new contradict each other", "choose one")
    if not run_has_content(run_dir):
        return RunPlan(run_dir, tb_dir, start, None, None)
    if opts.new:
        return RunPlan(run_dir, tb_dir, start, None, (run_dir, archive_name(run_dir)))
    last = latest_checkpoint(run_dir)
    if not opts.resume:
        at = f"epoch {last[0]} done" if last else "no finished epoch"
        raise ConfigError(
            f"{run_dir} already holds a run ({at})",
            "continue it with --resume, or start a fresh run with --new (the old one is kept)",
        )
    if engine == "deepspeed":
        raise ConfigError(
            "--resume is not supported with --engine deepspeed (it writes checkpoint folders)",
            "use --engine torch_ddp, or --new",
        )
    if last is None:
        return RunPlan(
            run_dir, tb_dir, start, None, None, note="no finished epoch to resume: starting over"
        )
    epoch, path = last
    if epoch + 1 >= max_epoch:
        return RunPlan(run_dir, tb_dir, path, epoch, None, note=f"all {max_epoch} epochs are done")
    return RunPlan(run_dir, tb_dir, path, epoch, None)


# ------------------------------------------------------------------------------------------------
# Launch command
# ------------------------------------------------------------------------------------------------
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
    compile: bool,
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
    if compile:
        argv.append("--compile")
    if memory_mode and memory_mode != "full":
        argv += ["--memory", memory_mode]
    if max_vram is not None:
        argv += ["--max-vram", f"{max_vram:g}"]
    return argv


def upstream_args(
    *,
    vendor_root: Path,
    model: str,
    device: str,
    opts: TrainOptions,
    config: Path,
    train_list: Path,
    cv_list: Path,
    base_dir: Path,
    plan: RunPlan,
    num_workers: int,
    prefetch: int,
    amp: bool,
    ds_config: Path | None,
    memory_mode: str | None = None,
) -> list[str]:
    """The launcher's and upstream train.py's arguments (``--trainer upstream``)."""
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
        str(train_list),
        "--cv_data",
        str(cv_list),
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
        str(num_workers),
        "--prefetch",
        str(prefetch),
        "--timeout",
        str(opts.timeout),
    ]
    if device == "cuda":
        argv.append("--pin_memory")
    if amp:
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


# ------------------------------------------------------------------------------------------------
# Log parsing
# ------------------------------------------------------------------------------------------------
_TRAIN_RE = re.compile(r"\b(TRAIN|CV) Batch (\d+)/(\d+) (.*?)\s*rank (\d+)\s*$")
_CV_RE = re.compile(r"Epoch (\d+) Step (\d+) CV info lr (\S+) (.*)$")
_EPOCH_RE = re.compile(r"Epoch (\d+) TRAIN info lr (\S+) rank (\d+)")
_START_RE = re.compile(r"start step (\d+) start epoch (-?\d+)")
_SAVE_RE = re.compile(r"\[Rank (\d+)\] Checkpoint: save to checkpoint (\S+)")


def _pairs(text: str) -> dict[str, float]:
    toks = text.split()
    out: dict[str, float] = {}
    i = 0
    while i + 1 < len(toks):
        key, val = toks[i], toks[i + 1]
        try:
            num = float(val)
        except ValueError:
            i += 1
            continue
        if re.fullmatch(r"[A-Za-z_]\w*", key):
            out[key] = num
            i += 2
        else:
            i += 1
    return out


class LogParser:
    """Upstream's log lines -> train_log.jsonl rows (rank 0 only)."""

    def __init__(self, accum_grad: int, clock: Callable[[], float] = time.time) -> None:
        self.accum = max(1, accum_grad)
        self.clock = clock
        self.epoch = 0
        self.epoch_start_step = 0
        self.start_step = 0
        self.last_ckpt: str | None = None

    def feed(self, line: str) -> list[dict[str, Any]]:
        now = self.clock()
        m = _START_RE.search(line)
        if m:
            self.start_step = self.epoch_start_step = int(m.group(1))
            self.epoch = int(m.group(2)) + 1
            return [
                {
                    "tag": "EVENT",
                    "event": "start",
                    "step": self.start_step,
                    "epoch": self.epoch,
                    "time": now,
                }
            ]
        m = _EPOCH_RE.search(line)
        if m:
            if int(m.group(3)) != 0:
                return []
            self.epoch = int(m.group(1))
            return [
                {
                    "tag": "EVENT",
                    "event": "epoch",
                    "epoch": self.epoch,
                    "lr": float(m.group(2)),
                    "step": self.epoch_start_step,
                    "time": now,
                }
            ]
        m = _TRAIN_RE.search(line)
        if m:
            tag, epoch, batch, rest, rank = m.groups()
            if int(rank) != 0 or tag != "TRAIN":
                return []
            vals = _pairs(rest)
            row: dict[str, Any] = {"tag": "TRAIN", "epoch": int(epoch), "batch": int(batch)}
            row["step"] = self.epoch_start_step + int(batch) // self.accum
            for k, v in vals.items():
                # The logged loss is after batch_backward divided it by accum_grad.
                row[k] = v * self.accum if k == "loss" else v
            row.update(rank=0, time=now)
            return [row]
        m = _CV_RE.search(line)
        if m:
            epoch, step, lr, rest = m.groups()
            # Upstream's format puts the rank before the word "rank" and the losses after it.
            rest_vals = _pairs(rest.replace(" rank ", " "))
            mr = re.match(r"\s*(\d+)\s+rank\b", rest)
            rank = int(mr.group(1)) if mr else int(rest_vals.get("rank", 0))
            if rank != 0:
                return []
            row = {"tag": "CV", "epoch": int(epoch), "step": int(step) - 1, "lr": float(lr)}
            row.update({k: v for k, v in rest_vals.items() if k != "rank"})
            row["time"] = now
            self.epoch_start_step = int(step) - 1
            return [row]
        m = _SAVE_RE.search(line)
        if m and int(m.group(1)) == 0:
            name = Path(m.group(2)).name
            self.last_ckpt = name
            return [
                {
                    "tag": "EVENT",
                    "event": "checkpoint",
                    "checkpoint": name,
                    "epoch": self.epoch,
                    "time": now,
                }
            ]
        return []


def read_train_log(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.is_file():
        for line in path.read_text("utf-8").splitlines():
            with contextlib.suppress(ValueError):
                rows.append(json.loads(line))
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Best CV loss, epochs done, last checkpoint: what status and the report show."""
    cv = [r for r in rows if r.get("tag") == "CV" and isinstance(r.get("loss"), (int, float))]
    ck = [r for r in rows if r.get("event") == "checkpoint" and "whole" in str(r.get("checkpoint"))]
    best = min(cv, key=lambda r: r["loss"]) if cv else None
    return {
        "epochs_done": len({r["epoch"] for r in cv}),
        "best_cv_loss": best["loss"] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "last_checkpoint": ck[-1]["checkpoint"] if ck else None,
        "steps": max(
            (r.get("step", 0) for r in rows if r.get("tag") in ("TRAIN", "CV")), default=0
        ),
    }


class Progress:
    """The live line: epoch, step, loss, acc, lr, steps/s, ETA."""

    def __init__(self, model: str, max_epoch: int, batches_per_epoch: int, accum: int) -> None:
        self.model = model
        self.max_epoch = max_epoch
        self.batches = max(1, batches_per_epoch)
        self.accum = max(1, accum)
        self.first: tuple[float, int] | None = None  # (time, global batch)
        self.text = f"{model}: starting"

    def update(self, row: dict[str, Any]) -> str:
        if row.get("tag") == "TRAIN":
            g = row["epoch"] * self.batches + row["batch"]
            if self.first is None:
                self.first = (row["time"], g)
            rate = 0.0
            dt = row["time"] - self.first[0]
            if dt > 0:
                rate = (g - self.first[1]) / dt  # batches/s
            left = self.max_epoch * self.batches - g
            eta = _fmt_secs(left / rate) if rate > 0 else "?"
            acc = f" acc {row['acc']:.3f}" if "acc" in row else ""
            tok = f" {row['tokens_s']:.0f} tokens/s" if "tokens_s" in row else ""
            self.text = (
                f"{self.model} epoch {row['epoch'] + 1}/{self.max_epoch} step {row['step']}"
                f" loss {row.get('loss', float('nan')):.4f}{acc} lr {row.get('lr', 0):.2e}"
                f" {rate / self.accum:.2f} steps/s{tok} ETA {eta}"
            )
        elif row.get("tag") == "CV":
            acc = f" acc {row['acc']:.3f}" if "acc" in row else ""
            self.text = (
                f"{self.model} epoch {row['epoch'] + 1} CV loss {row.get('loss', 0):.4f}{acc}"
            )
        return self.text


def _fmt_secs(s: float) -> str:
    s = int(s)
    return (
        f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


# ------------------------------------------------------------------------------------------------
# Preflight
# ------------------------------------------------------------------------------------------------
@dataclass
class Facts:
    """What preflight learned, for the launch and the ETA."""

    train_shards: list[Shard] = field(default_factory=list)
    dev_shards: list[Shard] = field(default_factory=list)
    train_kept: int = 0
    dev_kept: int = 0
    batches: list[int] = field(default_factory=list)
    params: int = 0


def check_modules(modules: Iterable[str] = TRAIN_MODULES) -> list[Problem]:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return []
    return [
        Problem(
            f"the train extra is not installed in {sys.executable} (missing: {', '.join(missing)})",
            "pip install -e '.[train]' in this environment",
        )
    ]


#: What the training process imports first; transformers resolves classes lazily, so the Qwen2
#: class is named explicitly (a broken audio stack shows up only there).
IMPORT_PROBE = (
    "import cosyvoice.utils.train_utils, hyperpyyaml, whisper, pyworld, matcha.utils.audio;"
    "from transformers import Qwen2ForCausalLM"
)


def check_vendor_import(vendor: VendorRuntime, python: str = sys.executable) -> list[Problem]:
    """Import upstream's training modules in a child process with the vendor's environment."""
    env = vendor.env()
    env.pop("onnx_path", None)
    try:
        proc = subprocess.run(
            [python, "-c", IMPORT_PROBE],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return [
            Problem(
                f"upstream's training modules could not be imported ({e})",
                "check the train extra: pip install -e '.[train]'",
            )
        ]
    if proc.returncode == 0:
        return []
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    last = next(
        (ln for ln in reversed(lines) if re.match(r"^\w*(Error|Exception)\b", ln)),
        lines[-1] if lines else f"exit {proc.returncode}",
    )
    return [
        Problem(
            f"upstream's training modules do not import: {last[:200]}",
            "pip install -e '.[train]' in this environment; voicelab doctor",
        )
    ]


def preflight(
    ws: Workspace,
    model: str,
    *,
    vendor: VendorRuntime | None,
    vendor_problem: str | None,
    values: dict[str, Any],
    device: str,
    world: int,
    num_workers: int,
    max_frames: int,
    base_ckpt: Path,
    epochs_to_run: int,
    engine: str,
    modules: Iterable[str] = TRAIN_MODULES,
    gpus: list[Gpu] | None = None,
    memory_plan: MemoryPlan | None = None,
    count_tokens: Callable[[str], int] = estimate_text_tokens,
    local_procs: int | None = None,
    trainer: str = "upstream",
    keep: int | None = None,
) -> tuple[list[Problem], list[str], Facts]:
    """(problems, warnings, facts). Nothing is changed or launched here.

    ``world`` counts the processes of every machine (data sharding); ``local_procs`` those of
    this machine (default ``world``), which are what this machine's GPUs must hold."""
    problems: list[Problem] = []
    warnings: list[str] = []
    facts = Facts()
    if vendor_problem:
        problems.append(Problem(vendor_problem, "run: voicelab vendor sync cosyvoice"))
    elif vendor is not None:
        for rel in ("cosyvoice/bin/train.py", str(tc.UPSTREAM_YAML)):
            if not (vendor.root / rel).is_file():
                problems.append(
                    Problem(
                        f"the vendor checkout lacks {rel}", "run: voicelab vendor sync cosyvoice"
                    )
                )
    if modules:
        missing = check_modules(modules)
        problems += missing
        if not missing and vendor is not None and not vendor_problem:
            problems += check_vendor_import(vendor)

    base = ws.base_model_dir
    need = [base_ckpt, base / "CosyVoice-BlankEN" / "config.json", base / "campplus.onnx"]
    if not base.is_dir():  # one root cause, not one line per file
        problems.append(
            Problem(
                f"base model file missing: no folder {base}", "run: voicelab download cosyvoice3"
            )
        )
        need = []
    for p in need:
        if not p.exists():
            problems.append(
                Problem(f"base model file missing: {p}", "run: voicelab download cosyvoice3")
            )
    facts.params = model_params(base_ckpt)

    rules = FilterRules.from_config(values)
    longest_train = 100
    for split in ("train", "dev"):
        lst = ws.data_list(split)
        if not lst.is_file() or not read_list(lst):
            problems.append(
                Problem(f"{split} data list is missing or empty: {lst}", "run: voicelab pack")
            )
            continue
        shards, errs = read_shards(lst, count_tokens)
        problems += [Problem(e, "run: voicelab pack") for e in errs]
        kept = sum(rules.keeps(u) for s in shards for u in s.utts)
        total = sum(len(s.utts) for s in shards)
        if split == "train":
            facts.train_shards, facts.train_kept = shards, kept
        else:
            facts.dev_shards, facts.dev_kept = shards, kept
        if shards and kept == 0:
            problems.append(
                Problem(
                    f"upstream's filter would drop all {total} {split} utterances (1-60 s,"
                    " 1-200 text tokens, non-empty speech tokens)",
                    "check the clips in voicelab prepare's QC report, then prepare and pack again",
                )
            )
        elif shards and kept < total:
            warnings.append(
                f"upstream's filter will drop {total - kept} of {total} {split} utterances"
            )
        if model == "llm" and shards and not has_instruct(lst):
            problems.append(
                Problem(
                    f"the {split} parquet has no instruct column, which"
                    " CosyVoice 3 llm training reads",
                    "run: voicelab pack",
                )
            )
        longest = max((u.frames for s in shards for u in s.utts if rules.keeps(u)), default=0)
        if split == "train":
            longest_train = longest
        if longest > max_frames:
            problems.append(
                Problem(
                    f"the longest {split} clip has {longest} frames, more than"
                    f" max_frames_in_batch {max_frames} (upstream then makes an empty batch)",
                    f"use --batch-frames {int(math.ceil(longest / 100) * 100)} or shorter clips",
                )
            )
    need_shards = max(1, num_workers) * world
    # VoiceLab's engine shards batches, not files: any number of shards serves any world size.
    if trainer == "upstream" and facts.train_shards and len(facts.train_shards) < need_shards:
        problems.append(
            Problem(
                f"{len(facts.train_shards)} train shard(s) for {max(1, num_workers)} worker(s) x"
                f" {world} process(es): upstream would read utterances several times per epoch",
                f"pack into >= {need_shards} shards (voicelab pack), or use --num-workers"
                f" {max(0, len(facts.train_shards) // world)}",
            )
        )
    if trainer == "upstream" and facts.dev_shards and num_workers > len(facts.dev_shards):
        warnings.append(
            f"{len(facts.dev_shards)} dev shard(s) for {num_workers} workers: CV"
            " reads some utterances twice"
        )
    accum = int(tc.as_number(tc.get_value(values, tc.ACCUM_GRAD)) or 1)
    if facts.train_shards:
        if trainer == "voicelab":
            # The engine batches all utterances together and splits batches until every rank
            # has whole optimizer steps (voicelab.upstream.engine.batching).
            kept = [u.frames for s in facts.train_shards for u in s.utts if rules.keeps(u)]
            total = max(dynamic_batches(kept, max_frames), min(len(kept), world * accum))
            facts.batches = [total // world] * world
        else:
            facts.batches = batches_per_rank(
                facts.train_shards, rules, max_frames, world, num_workers
            )
        fewest = min(facts.batches)
        suggest = max(longest_train, max_frames // (accum + 1)) // 100 * 100
        if fewest < accum:
            problems.append(
                Problem(
                    f"an epoch has {fewest} batch(es) per process but accum_grad is {accum}:"
                    " no optimizer step would ever happen",
                    f"use --batch-frames {suggest} or --accum-grad 1, or add data",
                )
            )
    if values:  # no config without a vendor: that root cause is reported once, above
        warn, errs = tc.check_values(values, engine)
        warnings += warn
        problems += [
            Problem(e, f"edit {ws.train_yaml.name} or delete it to regenerate") for e in errs
        ]

    if device == "cpu" and facts.params > MAX_CPU_PARAMS:
        problems.append(
            Problem(
                f"{base_ckpt.name} has about {facts.params / 1e6:.0f} M parameters: training it on"
                " a CPU would take days",
                "train on a GPU (--device cuda); --device cpu is for the tiny model",
            )
        )
    if device == "cuda":
        if gpus is None:
            gpus = query_gpus()
        if not gpus:
            problems.append(
                Problem(
                    "no CUDA GPU found (nvidia-smi lists none)",
                    "check the driver (voicelab doctor)",
                )
            )
        elif len(gpus) < (local := local_procs or world):
            problems.append(
                Problem(
                    f"{local} GPU process(es) asked for, {len(gpus)} GPU(s) visible",
                    f"use --gpus {len(gpus)}",
                )
            )
        elif memory_plan is not None:  # the planner sized mode and batch to the free memory
            if not memory_plan.fits:
                problems.append(
                    Problem(
                        memory_plan.lines[0].removeprefix("memory: "),
                        "free GPU memory, shorten the longest clips, or use a larger GPU",
                    )
                )
        else:
            need_mem = memory_needed(model, facts.params, max_frames)
            for g in gpus[:local]:
                if g.free < need_mem:
                    problems.append(
                        Problem(
                            f"GPU {g.index} has {g.free / 2**30:.1f} GiB free, training {model}"
                            f" with {max_frames} batch frames needs about"
                            f" {need_mem / 2**30:.1f} GiB",
                            "free the GPU, or lower --batch-frames",
                        )
                    )
    # Each checkpoint is a full copy of the model (fp32), plus init.pt; VoiceLab's engine also
    # keeps the Adam moments beside each kept epoch (exact resume), and --keep bounds the count.
    ck_bytes = base_ckpt.stat().st_size if base_ckpt.exists() else 0
    if ck_bytes:
        kept = min(epochs_to_run, keep) if keep else epochs_to_run
        per_epoch = 3 if trainer == "voicelab" else 1
        need_disk = int(ck_bytes * (kept * per_epoch + 1) * 1.05)
        free = free_bytes(ws.exp_root)
        if free < need_disk:
            problems.append(
                Problem(
                    f"{free / 2**30:.1f} GiB free under {ws.exp_root}, {epochs_to_run} epochs of"
                    f" {model} checkpoints need about {need_disk / 2**30:.1f} GiB",
                    "free disk space, or lower --epochs",
                )
            )
    return problems, warnings, facts


# ------------------------------------------------------------------------------------------------
# The stage
# ------------------------------------------------------------------------------------------------
def _base_checkpoint(ws: Workspace, model: str) -> Path:
    return ws.base_model_dir / f"{model}.pt"


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


def memory_plan_for(
    ws: Workspace,
    model: str,
    base_ckpt: Path,
    device: str,
    gpus: list[Gpu],
    opts: TrainOptions,
    max_frames: int,
    accum: int,
) -> MemoryPlan:
    """The memory plan of a run: on a GPU from the smallest free memory of the GPUs used and the
    longest training utterance; on the CPU the named mode as it is (nothing to fit)."""
    from voicelab.memory import plan_memory

    mode = opts.memory or str(ws.config.section("train").get("memory") or "auto")
    longest = 0
    with contextlib.suppress(Exception):
        shards, _ = read_shards(ws.data_list("train"))
        rules = FilterRules()
        longest = max((u.frames for s in shards for u in s.utts if rules.keeps(u)), default=0)
    on_gpu = device == "cuda" and bool(gpus)
    plan = plan_memory(
        model,
        model_params(base_ckpt),
        total=min(g.total for g in gpus) if on_gpu else None,
        free=min(g.free for g in gpus) if on_gpu else None,
        max_vram_gib=opts.max_vram,
        requested_frames=max_frames,
        requested_accum=accum,
        longest_frames=longest,
        mode=mode,
    )
    return plan


def resolve_device(device: str) -> str:
    if device not in ("auto", "cuda", "cpu"):
        raise ConfigError(f"unknown --device {device!r}", "use auto, cuda or cpu")
    if device != "auto":
        return device
    return "cuda" if query_gpus() else "cpu"


def default_epochs(train_seconds: float) -> int:
    """Epochs sized to the data: 10, more for very small sets, fewer for large ones."""
    hours = train_seconds / 3600
    if hours < 1 / 3:
        return 20
    if hours > 5:
        return 5
    return tc.DEFAULT_EPOCHS


def run_train(ws: Workspace, model: str, opts: TrainOptions | None = None) -> TrainResult:
    """Train ``model`` (``llm`` or ``flow``) on the workspace's packed data."""
    from voicelab import state
    from voicelab.upstream.tinymodel import is_tiny_model

    opts = opts or TrainOptions()
    if model not in MODELS:
        raise ConfigError(f"unknown model {model!r}", "use llm or flow")
    if opts.engine not in ENGINES:
        raise ConfigError(f"unknown --engine {opts.engine!r}", "use torch_ddp or deepspeed")
    section = ws.config.section("train")
    trainer = resolve_trainer(opts, section)
    name = run_name(trainer, opts.engine)
    device = resolve_device(opts.device if opts.device != "auto" else section.get("device", "auto"))
    nproc = int(opts.gpus or section.get("gpus") or 1)
    if nproc < 1:
        raise ConfigError("--gpus must be >= 1")
    world = nproc * max(1, opts.nnodes)
    amp = opts.amp if opts.amp is not None else bool(section.get("amp", device == "cuda"))
    if device == "cpu" and amp:
        raise ConfigError("--amp needs a GPU", "leave --amp off with --device cpu")
    if device == "cpu" and opts.engine != "torch_ddp":
        raise ConfigError("--device cpu supports --engine torch_ddp only")
    workers = opts.num_workers if opts.num_workers is not None else section.get("num_workers")
    num_workers = int(workers if workers is not None else (1 if device == "cpu" else 4))
    prefetch = int(opts.prefetch or section.get("prefetch") or 2)

    vendor, vendor_problem = None, None
    try:
        from voicelab.vendor import cosyvoice_runtime

        vendor = cosyvoice_runtime()
    except VoiceLabError as e:
        vendor_problem = e.message  # preflight adds the one fix (it was printed twice)

    base_dir = ws.base_model_dir
    base_ckpt = _base_checkpoint(ws, model)
    tiny = is_tiny_model(base_dir)
    gpus = query_gpus() if device == "cuda" else []
    vis = visible(gpus, opts.gpu_ids)

    # ---- config ---------------------------------------------------------------------------
    settings = tc.SftSettings(qwen_pretrain_path=str(base_dir / "CosyVoice-BlankEN"))
    base_yaml = base_dir / "cosyvoice3.yaml"
    if base_yaml.is_file():
        settings.dims = tc.model_dims(base_yaml.read_text("utf-8"))
    if tiny:
        settings.max_frames_in_batch = int(tc.TINY_DIMS[tc.MAX_FRAMES])
    else:
        # One workspace config serves llm and flow: sized for the llm, the larger of the two.
        settings.max_frames_in_batch = default_batch_frames(
            "llm",
            model_params(_base_checkpoint(ws, "llm")),
            min((g.total for g in vis), default=None),
        )
    train_list = ws.data_list("train")
    if train_list.is_file():
        with contextlib.suppress(Exception):
            shards, _ = read_shards(train_list)
            settings.max_epoch = default_epochs(sum(u.seconds for s in shards for u in s.utts))
            # About ten progress lines per epoch (upstream logs every log_interval batches).
            est = batches_per_rank(
                shards, FilterRules(), settings.max_frames_in_batch, world, num_workers
            )
            settings.log_interval = max(1, min(50, min(est) // 10))
    cfg_warnings: list[str] = []
    if vendor is not None:
        upstream_text = (vendor.root / tc.UPSTREAM_YAML).read_text("utf-8")
        cfg = tc.write_workspace_config(
            ws.train_yaml, upstream_text, settings, f"vendor commit {vendor.commit[:12]}"
        )
        cfg_warnings += cfg.warnings
        ws_text = cfg.text
    elif ws.train_yaml.is_file():
        ws_text = ws.train_yaml.read_text("utf-8")
    else:
        ws_text = ""
    # A resumed run keeps its own config (epochs, batch frames ...) unless options say otherwise.
    run_cfg = ws.exp_dir(model, name) / "train_config.yaml"
    if opts.resume and run_cfg.is_file():
        ws_text = run_cfg.read_text("utf-8")
    explicit = _explicit_overrides(opts, section)
    run_text = tc.run_config_text(ws_text, explicit) if ws_text else ""
    values = tc.read_values(run_text) if run_text else {}
    max_epoch = int(tc.as_number(tc.get_value(values, tc.MAX_EPOCH)) or tc.DEFAULT_EPOCHS)
    max_frames = int(tc.as_number(tc.get_value(values, tc.MAX_FRAMES)) or tc.DEFAULT_MAX_FRAMES)
    accum = int(tc.as_number(tc.get_value(values, tc.ACCUM_GRAD)) or 1)
    lr = float(tc.as_number(tc.get_value(values, tc.LR)) or tc.DEFAULT_LR)
    # Memory mode and batch from the GPU's free memory (voicelab.memory); a split batch keeps
    # the tokens per optimizer step through accum_grad.
    mem_plan = memory_plan_for(ws, model, base_ckpt, device, vis, opts, max_frames, accum)
    if mem_plan.has("offload") and device == "cuda" and trainer != "voicelab":
        # Upstream's GradScaler would unscale torchao's host gradient copies only.
        raise ConfigError(
            f"memory mode {mem_plan.mode} (optimizer on the CPU) needs VoiceLab's own trainer",
            "use --trainer voicelab, or --memory checkpointing+8bit (or lora for the llm)",
        )
    if mem_plan.fits and (mem_plan.batch_frames, mem_plan.accum_grad) != (max_frames, accum):
        run_text = tc.apply_overrides(
            run_text,
            {tc.MAX_FRAMES: mem_plan.batch_frames, tc.ACCUM_GRAD: mem_plan.accum_grad},
            source="memory plan",
        )
        values = tc.read_values(run_text)
        max_frames, accum = mem_plan.batch_frames, mem_plan.accum_grad

    plan = plan_run(ws, model, name, base_ckpt, opts, max_epoch)
    done_epoch = plan.resumed_epoch if plan.resumed_epoch is not None else -1
    epochs_to_run = max(0, max_epoch - done_epoch - 1)

    problems, warnings, facts = preflight(
        ws,
        model,
        vendor=vendor,
        vendor_problem=vendor_problem,
        values=values,
        device=device,
        world=world,
        local_procs=nproc,
        num_workers=num_workers,
        max_frames=max_frames,
        base_ckpt=base_ckpt,
        epochs_to_run=epochs_to_run,
        engine=opts.engine,
        gpus=vis,
        memory_plan=mem_plan if device == "cuda" else None,
        trainer=trainer,
        keep=opts.keep,
    )
    warnings = cfg_warnings + warnings
    if plan.note:
        warnings.append(plan.note)
    for w in warnings:
        log.warning("%s", w)
    if problems:
        raise PreflightError(problems)
    for line in mem_plan.lines:
        log.info("%s", line)
    assert vendor is not None
    result = TrainResult(model, plan.run_dir, False, max_epoch=max_epoch, warnings=warnings)
    if epochs_to_run == 0:
        rows = read_train_log(plan.run_dir / CHECKPOINT_LOG)
        _fill(result, rows, plan.run_dir)
        log.info("%s: all %d epochs are done in %s", model, max_epoch, plan.run_dir)
        return result

    params = {
        "model": model,
        "device": device,
        "world": world,
        "engine": opts.engine,
        "trainer": trainer,
        "amp": amp,
        "max_epoch": max_epoch,
        "max_frames": max_frames,
        "accum_grad": accum,
        "lr": lr,
        "num_workers": num_workers,
        "config": tc.sha256_text(run_text)[:16],
        "memory": mem_plan.mode,
    }
    inputs = [quick_fingerprint(p) for s in facts.train_shards + facts.dev_shards for p in [s.path]]
    inputs.append(quick_fingerprint(base_ckpt))

    def write_files(where: Path) -> Launch:
        """train_config.yaml, the deepspeed JSON and launch.sh into ``where``."""
        where.mkdir(parents=True, exist_ok=True)
        config_path = where / "train_config.yaml"
        atomic_write_text(config_path, run_text)
        ds_path = None
        if opts.engine == "deepspeed":
            ds_path = where / "train_deepspeed.json"
            grad_clip = float(tc.as_number(tc.get_value(values, tc.GRAD_CLIP)) or 5)
            log_int = int(tc.as_number(tc.get_value(values, tc.LOG_INTERVAL)) or 100)
            atomic_write_json(
                ds_path, deepspeed_json(vendor.root, lr, accum, grad_clip, log_int, amp)
            )
        launch = build_launch(
            python=sys.executable,
            vendor_root=vendor.root,
            base_env=vendor.env(),
            model=model,
            device=device,
            nproc=nproc,
            opts=opts,
            config=config_path,
            train_list=ws.data_list("train"),
            cv_list=ws.data_list("dev"),
            base_dir=base_dir,
            plan=plan,
            num_workers=num_workers,
            prefetch=prefetch,
            amp=amp,
            ds_config=ds_path,
            memory_mode=mem_plan.mode,
            trainer=trainer,
        )
        launch_sh = where / "launch.sh"
        atomic_write_text(launch_sh, launch.script())
        launch_sh.chmod(0o755)
        return launch

    if opts.dry_run:
        # Nothing in the run dir is touched and no stage record is written: a preview only.
        where = ws.configs_dir / f"dry-run-{model}"
        result.argv = write_files(where).argv
        result.run_dir = where
        if plan.archive:
            log.info("a real run would first move %s to %s", *plan.archive)
        return result

    with (
        run_lock(plan.run_dir) as lock,
        state.stage_run(ws, f"train_{model}", inputs, params) as rec,
    ):
        if plan.archive:
            src, dst = plan.archive
            os.replace(src, dst)
            tb_src = plan.tb_dir
            if tb_src.exists():
                os.replace(tb_src, tb_src.with_name(dst.name))
            log.info("the previous run was moved to %s", dst)
        plan.tb_dir.mkdir(parents=True, exist_ok=True)
        launch = write_files(plan.run_dir)
        result.argv = launch.argv
        rec.outputs = [str(plan.run_dir / CHECKPOINT_LOG)]
        batches = max(facts.batches) if facts.batches else 1
        t0 = time.time()
        rc = _run(
            launch,
            plan.run_dir,
            model,
            max_epoch,
            batches,
            accum,
            done_epoch,
            on_start=lambda pgid: lock.update(pgid=pgid),
        )
        result.launched = True
        result.seconds = time.time() - t0
        rows = read_train_log(plan.run_dir / CHECKPOINT_LOG)
        _fill(result, rows, plan.run_dir)
        if rc != 0:
            raise StageError(
                _failure(plan.run_dir / "train.log", rc),
                _failure_hint(plan.run_dir / "train.log", mem_plan),
            )
        rec.figures.update(
            {
                "epochs": result.epochs_done,
                "max_epoch": max_epoch,
                "best_cv_loss": result.best_cv_loss,
                "best_epoch": result.best_epoch,
                "last_checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
                "run_dir": str(plan.run_dir),
                "seconds": round(result.seconds, 1),
                "device": device,
                "world": world,
            }
        )
        if result.last_checkpoint:
            rec.outputs.append(str(result.last_checkpoint))
    return result


def _fill(result: TrainResult, rows: list[dict[str, Any]], run_dir: Path) -> None:
    s = summarize(rows)
    last = latest_checkpoint(run_dir)
    result.epochs_done = (last[0] + 1) if last else 0
    result.best_cv_loss = s["best_cv_loss"]
    result.best_epoch = s["best_epoch"]
    result.last_checkpoint = last[1] if last else None


#: Lines of VoiceLab's engine when it stops on its own (an out-of-memory step at one utterance).
ENGINE_STOP = "voicelab engine: stopped:"
ENGINE_HINT = "voicelab engine: hint:"


def _failure(log_path: Path, rc: int) -> str:
    lines = log_path.read_text("utf-8", errors="replace").splitlines() if log_path.exists() else []
    err = next(
        (
            ln.strip()
            for ln in reversed(lines)
            if re.match(r"^\s*\w*(Error|Exception|SystemExit)\b", ln.strip())
        ),
        "",
    )
    stop = next((ln for ln in reversed(lines) if ln.startswith(ENGINE_STOP)), "")
    err = stop.removeprefix(ENGINE_STOP).strip() or err  # the engine stopped on its own
    err = err or next((ln.strip() for ln in reversed(lines) if "voicelab launcher:" in ln), "")
    return f"training exited with code {rc}" + (f": {err[:300]}" if err else "")


def _failure_hint(log_path: Path, mem_plan: MemoryPlan | None = None) -> str:
    text = log_path.read_text("utf-8", errors="replace")[-20000:] if log_path.exists() else ""
    hint = next((ln for ln in reversed(text.splitlines()) if ln.startswith(ENGINE_HINT)), "")
    if hint:  # the engine's own (its out-of-memory stop names the next mode)
        return hint.removeprefix(ENGINE_HINT).strip()
    if "out of memory" in text.lower():
        if mem_plan is not None and mem_plan.cap_bytes is not None:
            from voicelab.memory import oom_hint

            params = mem_plan.params or 0
            return oom_hint(mem_plan.model, params, mem_plan.features, mem_plan.batch_frames)
        return "the GPU ran out of memory: lower --batch-frames"
    return f"see {log_path}; fix, then continue with --resume"


def run_lock(run_dir: Path) -> Lock:
    """One trainer per run dir. The lock file sits beside the dir (archiving a finished run
    moves the dir itself) and records the owner's PID and torchrun's process group, so an
    orphaned trainer (its parent killed with SIGKILL) is found and refused, not joined."""
    return Lock(run_dir.with_name(f".{run_dir.name}.lock"), f"training run {run_dir}")


def _run(
    launch: Launch,
    run_dir: Path,
    model: str,
    max_epoch: int,
    batches: int,
    accum: int,
    done_epoch: int,
    on_start: Callable[[int], None] | None = None,
) -> int:
    """Run torchrun, tee its output to train.log, parse it into train_log.jsonl, show progress.
    Ctrl-C, SIGTERM and SIGHUP stop the whole process group (torchrun and its workers), keep the
    rest of its output in train.log and re-raise. ``on_start`` is told the process group."""
    from voicelab.console import console, progress_enabled

    parser = LogParser(accum)
    progress = Progress(model, max_epoch, batches, accum)
    jsonl = run_dir / CHECKPOINT_LOG
    cpus = launch.cpus

    def preexec() -> None:  # runs in the child before exec: CPU affinity (the notes' taskset)
        if cpus:
            os.sched_setaffinity(0, cpus)

    with (
        open(run_dir / "train.log", "a", encoding="utf-8", buffering=1) as raw,  # line by line
        open(jsonl, "a", encoding="utf-8") as out,
    ):

        def emit(row: dict[str, Any]) -> None:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            out.flush()

        emit(
            {
                "tag": "EVENT",
                "event": "launch",
                "time": time.time(),
                "argv": launch.argv,
                "resume_after_epoch": done_epoch,
            }
        )
        proc = subprocess.Popen(
            launch.argv,
            env=launch.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            start_new_session=True,  # its own process group: Ctrl-C is ours to forward
            preexec_fn=preexec if cpus else None,
        )
        if on_start is not None:
            on_start(proc.pid)  # start_new_session: its PID is its process group
        live = progress_enabled()
        status_cm = console.status(progress.text) if live else contextlib.nullcontext()
        _RUNNING[str(run_dir)] = proc
        try:
            with stop_on_signals(), status_cm as status:
                assert proc.stdout is not None
                for line in proc.stdout:
                    raw.write(line)
                    for row in parser.feed(line):
                        emit(row)
                        text = progress.update(row)
                        if live and status is not None:
                            status.update(text)
                        if row["tag"] == "CV":
                            log.info("%s", text)
                        elif row["tag"] == "EVENT" and row["event"] == "checkpoint":
                            log.info("%s: saved %s", model, row["checkpoint"])
                        else:
                            log.debug("%s", text)
                rc = proc.wait()
        except KeyboardInterrupt as e:
            why = str(stopped_by(e) or "interrupted (Ctrl-C)")
            log.warning("%s: %s, stopping the trainer (process group %d)", model, why, proc.pid)
            _stop(proc)
            _drain(proc, raw)
            raw.write(f"voicelab: {why}; the trainer was stopped\n")
            emit(
                {
                    "tag": "EVENT",
                    "event": "end",
                    "time": time.time(),
                    "rc": None,
                    "interrupted": True,
                    "why": why,
                }
            )
            raise
        finally:
            _RUNNING.pop(str(run_dir), None)
        emit({"tag": "EVENT", "event": "end", "time": time.time(), "rc": rc})
    return rc


#: Training processes running in this process, by run dir (the web UI's stop button).
_RUNNING: dict[str, subprocess.Popen[str]] = {}


def stop_training(run_dir: Path) -> bool:
    """Stop the training of ``run_dir`` started by this process, as Ctrl-C would (the run keeps
    its epoch checkpoints; ``--resume`` continues it). False when none is running here."""
    proc = _RUNNING.get(str(run_dir))
    if proc is None:
        return False
    _stop(proc)
    return True


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGINT to torchrun's group (it stops its workers), then SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGINT, 15), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)


def _drain(proc: subprocess.Popen[str], raw: Any, seconds: float = 5.0) -> None:
    """The stopped trainer's last output into train.log (bounded: a stray writer outside the
    process group must not hang the stop)."""
    import selectors

    if proc.stdout is None:
        return
    end = time.monotonic() + seconds
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while (left := end - time.monotonic()) > 0 and sel.select(timeout=left):
            line = proc.stdout.readline()
            if not line:
                return
            raw.write(line)


def iter_rows(path: Path) -> Iterator[dict[str, Any]]:
    yield from read_train_log(path)


def result_dict(r: TrainResult) -> dict[str, Any]:
    d = asdict(r)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


# ------------------------------------------------------------------------------------------------
# The stage contract (voicelab.contract): train_llm and train_flow
# ------------------------------------------------------------------------------------------------
Options = TrainOptions

# The options recorded for skip/redo (a change retrains); as 0.1 recorded them.
PARAM_KEYS = (
    "epochs", "batch_frames", "accum_grad", "lr", "save_per_step", "engine", "amp", "gpus",
    "num_workers", "prefetch", "trainer",
)  # fmt: skip


def section_of(model: str) -> str:
    return "train_flow" if model == "flow" else "train"


def stage_options(ws: Workspace, run: RunOptions, model: str = "llm") -> TrainOptions:
    """[train_flow] falls back to [train]. An interrupted run (its record says running,
    pending or stopped) continues; otherwise the data or the options changed: a fresh run
    starts and the old one is kept under a numbered name."""
    from voicelab.contract import resolve
    from voicelab.state import load_record
    from voicelab.workspace import DEFAULT_TRAINER

    section = section_of(model)
    device = run.get(ws, "train", "device", run.device)
    opts = resolve(ws, TrainOptions, section, run, also=("train",), device=device)
    rec = load_record(ws, f"train_{model}")
    trainer = opts.trainer or DEFAULT_TRAINER
    has_run = run_has_content(ws.exp_dir(model, run_name(trainer, opts.engine)))
    interrupted = rec is not None and rec.previous in ("running", "pending", "stopped")
    opts.resume, opts.new = has_run and interrupted, has_run and not interrupted
    return opts


def stage_params(ws: Workspace, opts: TrainOptions) -> dict[str, Any]:
    values = {k: getattr(opts, k) for k in PARAM_KEYS}
    if values["engine"] == "torch_ddp":
        values["engine"] = None  # the default, recorded as 0.1 recorded it (no retrain)
    values["device"] = opts.device
    return values


def stage_outputs(ws: Workspace, opts: TrainOptions, model: str = "llm") -> list[Path]:
    from voicelab.state import load_record

    rec = load_record(ws, f"train_{model}")
    last = rec.figures.get("last_checkpoint") if rec else None
    return [Path(last)] if last else [ws.exp_dir(model) / "train_log.jsonl"]


def run(ws: Workspace, opts: TrainOptions, model: str = "llm") -> StageResult:
    res = run_train(ws, model, opts)
    figures = {"epochs": res.epochs_done, "best_cv_loss": res.best_cv_loss,
               "run_dir": str(res.run_dir)}  # fmt: skip
    line = f"{model}: {res.epochs_done}/{res.max_epoch} epochs in {res.run_dir}"
    outputs = [res.last_checkpoint] if res.last_checkpoint else []
    return StageResult(outputs, figures, line, res)


def _stage(model: str) -> Stage:
    return Stage(
        f"train_{model}",
        ("pack", "vendor", "download"),
        stage_params,
        functools.partial(run, model=model),
        functools.partial(stage_outputs, model=model),
        enabled=(lambda o: o.train_flow) if model == "flow" else (lambda o: True),
        summary={"llm": "LLM fine-tune", "flow": "flow fine-tune"}[model],
        records_itself=True,
        options=functools.partial(stage_options, model=model),
    )


STAGES = (_stage("llm"), _stage("flow"))
