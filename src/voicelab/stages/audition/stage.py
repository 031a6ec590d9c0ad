"""The stage contract (:mod:`voicelab.contract`) of ``audition``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from voicelab.contract import RunOptions, Stage, StageResult, resolve

if TYPE_CHECKING:
    from voicelab.workspace import Workspace
from voicelab.stages.audition.build import AuditionOptions, run_audition

Options = AuditionOptions


def stage_options(ws: Workspace, run_opts: RunOptions) -> AuditionOptions:
    return resolve(ws, AuditionOptions, "audition", run_opts, model_dir=ws.voice_dir)


def stage_params(ws: Workspace, opts: AuditionOptions) -> dict[str, Any]:
    return {"sentences": opts.sentences, "compare": bool(opts.compare)}


def stage_outputs(ws: Workspace, opts: AuditionOptions) -> list[Path]:
    from voicelab.state import load_record

    rec = load_record(ws, "audition")
    index = rec.figures.get("index") if rec else None
    return [Path(index)] if index else []


def run(ws: Workspace, opts: AuditionOptions) -> StageResult:
    res = run_audition(ws, opts)
    figures = {"index": str(res.index), "takes": res.takes, "rtf": round(res.rtf, 3)}
    line = f"{res.takes} takes in {res.index}"
    return StageResult([res.index], figures, line, res)


STAGE = Stage(
    "audition",
    ("export",),
    stage_params,
    run,
    stage_outputs,
    summary="test sentences",
    options=stage_options,
)
