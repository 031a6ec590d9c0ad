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
