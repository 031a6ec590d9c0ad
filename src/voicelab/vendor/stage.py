"""The stage contract (:mod:`voicelab.contract`) of ``vendor``: the CosyVoice checkout at its
pin."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from voicelab.contract import RunOptions, Stage, StageResult
from voicelab.errors import VoiceLabError
from voicelab.workspace import (
    Workspace,
)

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover
    pass
from voicelab.vendor.checkout import sync
from voicelab.vendor.handle import cosyvoice_expected_dir, cosyvoice_runtime
from voicelab.vendor.manifest import COSYVOICE, load_manifest

log = logging.getLogger(__name__)


def stage_params(ws: Workspace, opts: RunOptions) -> dict[str, Any]:
    return {"commit": load_manifest().get(COSYVOICE).commit}


def stage_outputs(ws: Workspace, opts: RunOptions) -> list[Path]:
    try:
        root = cosyvoice_runtime().root
    except VoiceLabError:  # missing or broken: its expected path is missing, so the stage is stale
        root = cosyvoice_expected_dir()
    return [root / "cosyvoice" / "bin" / "train.py"]


def run(ws: Workspace, opts: RunOptions) -> StageResult:
    (res,) = sync([COSYVOICE])
    if res.error is not None:
        raise res.error
    log.info("vendor cosyvoice: %s %s", res.action, res.detail)
    commit = cosyvoice_runtime().commit
    figures = {"commit": commit, "action": res.action}
    return StageResult(stage_outputs(ws, opts), figures, f"cosyvoice {res.action} at {commit}")


STAGE = Stage(
    "vendor",
    (),
    stage_params,
    run,
    stage_outputs,
    summary="upstream CosyVoice checkout at its pin",
)
