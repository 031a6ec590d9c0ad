"""The stage contract (:mod:`voicelab.contract`) of ``train_llm`` and ``train_flow``."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voicelab.contract import RunOptions, Stage, StageResult

if TYPE_CHECKING:
    from voicelab.workspace import Workspace
from voicelab.stages.train.options import TrainOptions, section_of
from voicelab.stages.train.rundirs import run_has_content, run_name
from voicelab.stages.train.session import run_train

Options = TrainOptions

# The options recorded for skip/redo (a change retrains); as 0.1 recorded them.
PARAM_KEYS = (
    "epochs", "batch_frames", "accum_grad", "lr", "save_per_step", "engine", "amp", "gpus",
    "num_workers", "prefetch", "trainer",
)  # fmt: skip


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
