"""The stage contract (:mod:`voicelab.contract`) of ``features``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from voicelab.contract import RunOptions, Stage, StageResult, resolve
from voicelab.stages.features.build import run_features
from voicelab.stages.features.options import (
    EMBEDDING_FILE,
    NAME,
    SPK_EMBEDDING_FILE,
    SPLITS,
    TOKEN_FILE,
    FeaturesOptions,
)
from voicelab.workspace import Workspace

Options = FeaturesOptions


def stage_options(ws: Workspace, run: RunOptions) -> FeaturesOptions:
    device = run.get(ws, "features", "device", run.device) or "auto"
    force = bool(run.overrides.get("features", {}).get("force") or run.force)
    return resolve(ws, FeaturesOptions, "features", run, device=device, force=force)


def stage_params(ws: Workspace, opts: FeaturesOptions) -> dict[str, Any]:
    return {"onnx_dir": str(opts.onnx_dir or ws.base_model_dir)}


def stage_outputs(ws: Workspace, opts: FeaturesOptions) -> list[Path]:
    names = (EMBEDDING_FILE, SPK_EMBEDDING_FILE, TOKEN_FILE)
    return [ws.split_dir(s) / n for s in SPLITS for n in names]


def run(ws: Workspace, opts: FeaturesOptions) -> StageResult:
    res = run_features(ws, opts)
    outputs = [p for s in res.splits.values() for p in s.outputs]
    figures = {"provider": res.provider, "excluded": len(res.excluded)}
    return StageResult(outputs, figures, res.summary().splitlines()[0], res)


STAGE = Stage(
    NAME,
    ("prepare", "download"),
    stage_params,
    run,
    stage_outputs,
    summary="speaker embeddings and speech tokens",
    records_itself=True,
    options=stage_options,
)
