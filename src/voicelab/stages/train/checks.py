"""Preflight: every problem that would stop training, found before anything is launched."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voicelab.blocks.records import Shard
from voicelab.fsutil import (
    free_bytes,
)
from voicelab.memory import MemoryPlan
from voicelab.upstream import train_config as tc

if TYPE_CHECKING:
    from voicelab.vendor import VendorRuntime
    from voicelab.workspace import Workspace
from voicelab.stages.train.data import estimate_text_tokens, has_instruct, read_list, read_shards
from voicelab.stages.train.gpus import Gpu, memory_needed, model_params, query_gpus
from voicelab.stages.train.options import Problem
from voicelab.upstream.data_rules import FilterRules, batches_per_rank, dynamic_batches
from voicelab.upstream.launcher import MAX_CPU_PARAMS  # the launcher refuses more on a CPU

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


@dataclass
class _Found:
    """Problems and warnings in the order the checks find them (the order they are printed)."""

    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def problem(self, message: str, hint: str) -> None:
        self.problems.append(Problem(message, hint))


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
    found = _Found()
    facts = Facts()
    _check_vendor(found, vendor, vendor_problem, modules)
    _check_base_model(found, ws.base_model_dir, base_ckpt)
    facts.params = model_params(base_ckpt)
    rules = FilterRules.from_config(values)
    longest_train = _check_data(found, facts, ws, model, rules, max_frames, count_tokens)
    if trainer == "upstream":  # VoiceLab's engine shards batches, not files
        _check_shard_counts(found, facts, num_workers, world)
    _check_batches(
        found, facts, rules, values, trainer, max_frames, world, num_workers, longest_train
    )
    if values:  # no config without a vendor: that root cause is reported once, above
        _check_config(found, values, engine, ws.train_yaml.name)
    if device == "cpu":
        _check_cpu(found, facts.params, base_ckpt)
    if device == "cuda":
        local = local_procs or world
        _check_gpus(found, model, facts.params, max_frames, gpus, local, memory_plan)
    _check_disk(found, ws, model, base_ckpt, epochs_to_run, keep, trainer)
    return found.problems, found.warnings, facts


def _check_vendor(
    found: _Found, vendor: VendorRuntime | None, vendor_problem: str | None, modules: Iterable[str]
) -> None:
    """The vendor checkout's files, the train extra, and whether upstream's training imports."""
    if vendor_problem:
        found.problem(vendor_problem, "run: voicelab vendor sync cosyvoice")
    elif vendor is not None:
        for rel in ("cosyvoice/bin/train.py", str(tc.UPSTREAM_YAML)):
            if not (vendor.root / rel).is_file():
                found.problem(
                    f"the vendor checkout lacks {rel}", "run: voicelab vendor sync cosyvoice"
                )
    if modules:
        missing = check_modules(modules)
        found.problems += missing
        if not missing and vendor is not None and not vendor_problem:
            found.problems += check_vendor_import(vendor)


def _check_base_model(found: _Found, base: Path, base_ckpt: Path) -> None:
    if not base.is_dir():  # one root cause, not one line per file
        found.problem(
            f"base model file missing: no folder {base}", "run: voicelab download cosyvoice3"
        )
        return
    for p in (base_ckpt, base / "CosyVoice-BlankEN" / "config.json", base / "campplus.onnx"):
        if not p.exists():
            found.problem(f"base model file missing: {p}", "run: voicelab download cosyvoice3")


def _check_data(
    found: _Found,
    facts: Facts,
    ws: Workspace,
    model: str,
    rules: FilterRules,
    max_frames: int,
    count_tokens: Callable[[str], int],
) -> int:
    """Check the train and dev lists into ``facts``; the longest train clip kept, in frames."""
    longest_train = 100
    for split in ("train", "dev"):
        checked = _check_split(found, ws.data_list(split), split, model, rules, count_tokens)
        if checked is None:
            continue
        shards, kept, longest = checked
        if split == "train":
            facts.train_shards, facts.train_kept = shards, kept
            longest_train = longest
        else:
            facts.dev_shards, facts.dev_kept = shards, kept
        if longest > max_frames:
            found.problem(
                f"the longest {split} clip has {longest} frames, more than"
                f" max_frames_in_batch {max_frames} (upstream then makes an empty batch)",
                f"use --batch-frames {int(math.ceil(longest / 100) * 100)} or shorter clips",
            )
    return longest_train


def _check_split(
    found: _Found,
    lst: Path,
    split: str,
    model: str,
    rules: FilterRules,
    count_tokens: Callable[[str], int],
) -> tuple[list[Shard], int, int] | None:
    """(shards, utterances upstream's filter keeps, longest kept in frames) of one data list;
    None when the list is missing or empty."""
    if not lst.is_file() or not read_list(lst):
        found.problem(f"{split} data list is missing or empty: {lst}", "run: voicelab pack")
        return None
    shards, errs = read_shards(lst, count_tokens)
    for e in errs:
        found.problem(e, "run: voicelab pack")
    kept = sum(rules.keeps(u) for s in shards for u in s.utts)
    total = sum(len(s.utts) for s in shards)
    if shards and kept == 0:
        found.problem(
            f"upstream's filter would drop all {total} {split} utterances (1-60 s,"
            " 1-200 text tokens, non-empty speech tokens)",
            "check the clips in voicelab prepare's QC report, then prepare and pack again",
        )
    elif shards and kept < total:
        found.warnings.append(
            f"upstream's filter will drop {total - kept} of {total} {split} utterances"
        )
    if model == "llm" and shards and not has_instruct(lst):
        found.problem(
            f"the {split} parquet has no instruct column, which CosyVoice 3 llm training reads",
            "run: voicelab pack",
        )
    longest = max((u.frames for s in shards for u in s.utts if rules.keeps(u)), default=0)
    return shards, kept, longest


def _check_shard_counts(found: _Found, facts: Facts, num_workers: int, world: int) -> None:
    """Upstream's reader shards files over workers x processes; VoiceLab's engine shards
    batches, so any number of shards serves any world size there."""
    need_shards = max(1, num_workers) * world
    n_train, n_dev = len(facts.train_shards), len(facts.dev_shards)
    if facts.train_shards and n_train < need_shards:
        found.problem(
            f"{n_train} train shard(s) for {max(1, num_workers)} worker(s) x"
            f" {world} process(es): upstream would read utterances several times per epoch",
            f"pack into >= {need_shards} shards (voicelab pack), or use --num-workers"
            f" {max(0, n_train // world)}",
        )
    if facts.dev_shards and num_workers > n_dev:
        found.warnings.append(
            f"{n_dev} dev shard(s) for {num_workers} workers: CV reads some utterances twice"
        )


def _check_batches(
    found: _Found,
    facts: Facts,
    rules: FilterRules,
    values: dict[str, Any],
    trainer: str,
    max_frames: int,
    world: int,
    num_workers: int,
    longest_train: int,
) -> None:
    """Batches per process into ``facts``; an epoch must hold at least one optimizer step."""
    if not facts.train_shards:
        return
    accum = int(tc.as_number(tc.get_value(values, tc.ACCUM_GRAD)) or 1)
    if trainer == "voicelab":
        # The engine batches all utterances together and splits batches until every rank
        # has whole optimizer steps (voicelab.upstream.engine.batching).
        kept = [u.frames for s in facts.train_shards for u in s.utts if rules.keeps(u)]
        total = max(dynamic_batches(kept, max_frames), min(len(kept), world * accum))
        facts.batches = [total // world] * world
    else:
        facts.batches = batches_per_rank(facts.train_shards, rules, max_frames, world, num_workers)
    fewest = min(facts.batches)
    suggest = max(longest_train, max_frames // (accum + 1)) // 100 * 100
    if fewest < accum:
        found.problem(
            f"an epoch has {fewest} batch(es) per process but accum_grad is {accum}:"
            " no optimizer step would ever happen",
            f"use --batch-frames {suggest} or --accum-grad 1, or add data",
        )


def _check_config(found: _Found, values: dict[str, Any], engine: str, yaml_name: str) -> None:
    warn, errs = tc.check_values(values, engine)
    found.warnings += warn
    for e in errs:
        found.problem(e, f"edit {yaml_name} or delete it to regenerate")


def _check_cpu(found: _Found, params: int, base_ckpt: Path) -> None:
    if params > MAX_CPU_PARAMS:
        found.problem(
            f"{base_ckpt.name} has about {params / 1e6:.0f} M parameters: training it on"
            " a CPU would take days",
            "train on a GPU (--device cuda); --device cpu is for the tiny model",
        )


def _check_gpus(
    found: _Found,
    model: str,
    params: int,
    max_frames: int,
    gpus: list[Gpu] | None,
    local: int,
    memory_plan: MemoryPlan | None,
) -> None:
    """Enough visible GPUs for this machine's processes, each with the memory the run needs."""
    if gpus is None:
        gpus = query_gpus()
    if not gpus:
        found.problem(
            "no CUDA GPU found (nvidia-smi lists none)", "check the driver (voicelab doctor)"
        )
    elif len(gpus) < local:
        found.problem(
            f"{local} GPU process(es) asked for, {len(gpus)} GPU(s) visible",
            f"use --gpus {len(gpus)}",
        )
    elif memory_plan is not None:  # the planner sized mode and batch to the free memory
        if not memory_plan.fits:
            found.problem(
                memory_plan.lines[0].removeprefix("memory: "),
                "free GPU memory, shorten the longest clips, or use a larger GPU",
            )
    else:
        need_mem = memory_needed(model, params, max_frames)
        for g in gpus[:local]:
            if g.free < need_mem:
                found.problem(
                    f"GPU {g.index} has {g.free / 2**30:.1f} GiB free, training {model}"
                    f" with {max_frames} batch frames needs about {need_mem / 2**30:.1f} GiB",
                    "free the GPU, or lower --batch-frames",
                )


def _check_disk(
    found: _Found,
    ws: Workspace,
    model: str,
    base_ckpt: Path,
    epochs_to_run: int,
    keep: int | None,
    trainer: str,
) -> None:
    """Each checkpoint is a full copy of the model (fp32), plus init.pt; --keep bounds the
    count. VoiceLab's engine also keeps the newest epoch's Adam moments (twice the weights, for
    an exact resume), two of them while the next one is written."""
    ck_bytes = base_ckpt.stat().st_size if base_ckpt.exists() else 0
    if not ck_bytes:
        return
    kept = min(epochs_to_run, keep) if keep else epochs_to_run
    resume = 4 if trainer == "voicelab" else 0
    need_disk = int(ck_bytes * (kept + 1 + resume) * 1.05)
    free = free_bytes(ws.exp_root)
    if free < need_disk:
        found.problem(
            f"{free / 2**30:.1f} GiB free under {ws.exp_root}, {epochs_to_run} epochs of"
            f" {model} checkpoints need about {need_disk / 2**30:.1f} GiB",
            "free disk space, or lower --epochs",
        )
