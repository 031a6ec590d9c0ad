"""The stage contract (:mod:`voicelab.contract`) of ``pack``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from voicelab.contract import RunOptions, Stage, StageResult, resolve
from voicelab.stages.pack.build import run_pack
from voicelab.stages.pack.options import NAME, PackOptions
from voicelab.workspace import Workspace

Options = PackOptions


def stage_options(ws: Workspace, run: RunOptions) -> PackOptions:
    """[pack] falls back to [train] for the DataLoader workers and GPUs (they shape shards)."""
    force = bool(run.overrides.get("pack", {}).get("force") or run.force)
    return resolve(ws, PackOptions, "pack", run, also=("train",), force=force)


def stage_params(ws: Workspace, opts: PackOptions) -> dict[str, Any]:
    return {
        "utts_per_shard": opts.utts_per_shard,
        "num_workers": opts.num_workers,
        "gpus": opts.num_gpus,
    }


def stage_outputs(ws: Workspace, opts: PackOptions) -> list[Path]:
    return [ws.data_list("train"), ws.data_list("dev")]


def run(ws: Workspace, opts: PackOptions) -> StageResult:
    res = run_pack(ws, opts)
    figures = {f"{s}_shards": len(sp.shards) for s, sp in res.splits.items()}
    return StageResult(stage_outputs(ws, opts), figures, res.summary().splitlines()[0], res)


STAGE = Stage(
    NAME,
    ("features",),
    stage_params,
    run,
    stage_outputs,
    summary="parquet shards",
    records_itself=True,
    options=stage_options,
)
