"""The stage contract (:mod:`voicelab.contract`) of ``prepare``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from voicelab.contract import RunOptions, Stage, StageResult, plain
from voicelab.stages.prepare.build import run_prepare
from voicelab.stages.prepare.options import NAME, PrepareOptions, options_from_workspace
from voicelab.workspace import Workspace

Options = PrepareOptions


def stage_options(ws: Workspace, run: RunOptions) -> PrepareOptions:
    return options_from_workspace(ws, **run.overrides.get("prepare", {}))


def stage_params(ws: Workspace, opts: PrepareOptions) -> dict[str, Any]:
    """Every option but those that do not change the dataset (review files, device)."""
    p = plain(opts)
    for volatile in ("review", "apply_review", "device", "vad_filter"):
        p.pop(volatile, None)
    p["wav_dir"] = p.get("wav_dir") or ws.config.wav_dir
    return p


def stage_outputs(ws: Workspace, opts: PrepareOptions) -> list[Path]:
    return [ws.split_dir(s) / f for s in ("train", "dev") for f in ("wav.scp", "text")]


def run(ws: Workspace, opts: PrepareOptions) -> StageResult:
    res = run_prepare(ws, opts)
    return StageResult(list(res.outputs), res.figures(), res.summary_lines()[0], res)


STAGE = Stage(
    NAME,
    (),
    stage_params,
    run,
    stage_outputs,
    summary="intake, segmentation, ASR, QC, split",
    records_itself=True,
    options=stage_options,
)
