"""The stage contract (:mod:`voicelab.contract`) of ``download``: the base model, or the tiny
random one with ``--tiny``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicelab.contract import RunOptions, Stage, StageResult, resolve
from voicelab.models.base import download_cosyvoice3
from voicelab.workspace import BASE_MODEL_NAME, Workspace


@dataclass
class DownloadOptions:
    source: str | None = None  # modelscope | huggingface (default: the user's choice, else ...)
    endpoint: str | None = None
    rl: bool | None = None  # None keeps the dir's current choice
    tiny: bool = False  # the tiny random model (voicelab demo --tiny), built, not downloaded


Options = DownloadOptions


def stage_options(ws: Workspace, run_opts: RunOptions) -> DownloadOptions:
    return resolve(ws, DownloadOptions, "download", run_opts, tiny=run_opts.tiny)


def stage_params(ws: Workspace, opts: DownloadOptions) -> dict[str, Any]:
    if opts.tiny:
        return {"model": "tiny", "dir": str(ws.base_model_dir)}
    return {"model": BASE_MODEL_NAME, "dir": str(ws.base_model_dir), "source": opts.source,
            "rl": opts.rl}  # fmt: skip


def stage_outputs(ws: Workspace, opts: DownloadOptions) -> list[Path]:
    return [ws.base_model_dir / "llm.pt", ws.base_model_dir / "campplus.onnx"]


def run(ws: Workspace, opts: DownloadOptions) -> StageResult:
    if opts.tiny:
        from voicelab.upstream.tinymodel import build_tiny_model

        path = build_tiny_model(ws.base_model_dir)
        return StageResult([path], {"model_dir": str(path), "tiny": True}, f"tiny model at {path}")
    res = download_cosyvoice3(
        ws.base_model_dir, source=opts.source, endpoint=opts.endpoint, rl=opts.rl
    )
    line = res.lines()[0] if res.lines() else f"base model at {res.model_dir}"
    return StageResult([res.model_dir], {"model_dir": str(res.model_dir)}, line, res)


STAGE = Stage(
    "download",
    (),
    stage_params,
    run,
    stage_outputs,
    summary="base model",
    found_by_outputs=True,
    options=stage_options,
)
