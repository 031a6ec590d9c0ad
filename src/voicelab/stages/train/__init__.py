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

The package, by job: ``options`` (options, results, resolution), ``data`` (packed-data facts),
``gpus`` (GPUs and the memory model), ``rundirs`` (run dirs, resume, the run lock), ``launch``
(torchrun's argv and environment), ``logs`` (train.log -> train_log.jsonl), ``checks`` (preflight),
``runconfig`` (a run's setup and its training YAML), ``session`` (``run_train``), ``supervise``
(the trainer's process group) and ``stage`` (the stage contract). Upstream knowledge is in
:mod:`voicelab.upstream`: ``data_rules`` (filter and batch rules), ``train_flags`` (train.py's
flags), ``train_log_format`` (its log lines), ``train_config`` (the YAML). This module
re-exports the names other packages use.
"""

from voicelab.blocks.records import TOKEN_RATE, Shard
from voicelab.stages.train.checks import check_vendor_import, preflight
from voicelab.stages.train.data import estimate_text_tokens, has_instruct, read_list, read_shards
from voicelab.stages.train.gpus import (
    Gpu,
    default_batch_frames,
    memory_needed,
    model_params,
    query_gpus,
    visible,
)
from voicelab.stages.train.launch import (
    Launch,
    build_launch,
    compile_cache_dir,
    format_cpus,
    parse_cpus,
)
from voicelab.stages.train.logs import LogParser, Progress, read_train_log, summarize
from voicelab.stages.train.options import (
    ENGINES,
    MODELS,
    PreflightError,
    Problem,
    TrainOptions,
    TrainResult,
    cuda_graphs_unused,
    resolve_device,
    resolve_trainer,
    section_of,
)
from voicelab.stages.train.rundirs import (
    CHECKPOINT_LOG,
    RunPlan,
    epoch_checkpoints,
    latest_checkpoint,
    plan_run,
    run_has_content,
    run_lock,
    run_name,
)
from voicelab.stages.train.session import memory_plan_for, run_train
from voicelab.stages.train.spec import LaunchSpec
from voicelab.stages.train.stage import STAGES
from voicelab.stages.train.supervise import result_dict, stop_training
from voicelab.upstream.data_rules import FilterRules, batches_per_rank, dynamic_batches
from voicelab.upstream.train_flags import deepspeed_json

__all__ = [
    "CHECKPOINT_LOG", "ENGINES", "MODELS", "STAGES", "TOKEN_RATE", "FilterRules", "Gpu", "Launch",
    "LaunchSpec", "LogParser", "PreflightError", "Problem", "Progress", "RunPlan", "Shard",
    "TrainOptions", "TrainResult", "batches_per_rank", "build_launch", "check_vendor_import",
    "compile_cache_dir", "cuda_graphs_unused",
    "deepspeed_json", "default_batch_frames", "dynamic_batches", "epoch_checkpoints",
    "estimate_text_tokens", "format_cpus", "has_instruct", "latest_checkpoint", "memory_needed",
    "memory_plan_for", "model_params", "parse_cpus", "plan_run", "preflight", "query_gpus",
    "read_list", "read_shards", "read_train_log", "resolve_device", "resolve_trainer",
    "result_dict", "run_has_content", "run_lock", "run_name", "run_train", "section_of",
    "stop_training", "summarize", "visible",
]  # fmt: skip
