"""The stage contract (:mod:`voicelab.contract`) of ``export``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from voicelab.contract import RunOptions, Stage, StageResult, resolve
from voicelab.stages.export.build import run_export
from voicelab.stages.export.options import ExportOptions
from voicelab.upstream.model_files import SPK2INFO
from voicelab.workspace import Workspace

Options = ExportOptions


def stage_options(ws: Workspace, run_opts: RunOptions) -> ExportOptions:
    """The runner exports over the last voice dir, with the flow only when it was trained."""
    return resolve(ws, ExportOptions, "export", run_opts, no_flow=not run_opts.train_flow,
                   overwrite=True)  # fmt: skip


def stage_params(ws: Workspace, opts: ExportOptions) -> dict[str, Any]:
    return {
        "llm_select": opts.llm_select,
        "flow_select": opts.flow_select,
        "flow": not opts.no_flow,
        "name": ws.voice_name,
        "locked_epoch": ws.config.locked_epoch,
    }


def stage_outputs(ws: Workspace, opts: ExportOptions) -> list[Path]:
    return [ws.voice_dir / "llm.pt", ws.voice_dir / SPK2INFO]


def run(ws: Workspace, opts: ExportOptions) -> StageResult:
    res = run_export(ws, opts)
    figures = {"voice_dir": str(res.voice_dir), "llm": [c.label for c in res.llm]}
    line = f"voice {res.speaker} exported to {res.voice_dir}"
    return StageResult([res.voice_dir], figures, line, res)


STAGE = Stage(
    "export",
    ("train_llm", "train_flow"),
    stage_params,
    run,
    stage_outputs,
    summary="voice model dir",
    records_itself=True,
    options=stage_options,
)
