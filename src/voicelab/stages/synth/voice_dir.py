"""The model dir a voice speaks from: found, checked, and its speakers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from voicelab.errors import ConfigError, ModelError, WorkspaceError
from voicelab.paths import to_local_path
from voicelab.upstream.model_files import BLANKEN, INFERENCE_FILES, SPK2INFO

if TYPE_CHECKING:
    from voicelab.workspace import Workspace

log = logging.getLogger(__name__)


SAMPLE_RATE = 24000

EMBEDDING_SHAPE = (1, 192)

# What CosyVoice3(model_dir) opens, plus the SFT speaker table VoiceLab writes on export.
BASE_FILES = (*INFERENCE_FILES, BLANKEN)

PROVENANCE = "voicelab.json"  # written by voicelab export


def resolve_model_dir(ws: Workspace | None, model_dir: str | Path | None) -> Path:
    if model_dir is not None:
        return to_local_path(model_dir)
    if ws is None:
        raise WorkspaceError(
            "no voice to speak with: no workspace here and no --model-dir",
            "pass --model-dir DIR of an exported voice, or --workspace DIR",
        )
    return ws.voice_dir


def check_model_dir(model_dir: Path) -> None:
    """One-line error naming every missing file and the command that makes them."""
    if not model_dir.is_dir():
        raise ModelError(
            f"model dir {model_dir} does not exist",
            "run: voicelab export, or pass --model-dir DIR of an exported voice",
        )
    missing = [name for name in (*BASE_FILES, SPK2INFO) if not (model_dir / name).exists()]
    if not missing:
        return
    if missing == [SPK2INFO]:
        hint = "run: voicelab export; it writes spk2info.pt with the speaker's embedding"
    else:
        hint = (
            "run: voicelab export; it assembles the voice from the base model, "
            "which voicelab download cosyvoice3 fetches"
        )
    raise ModelError(f"model dir {model_dir} is incomplete: missing {', '.join(missing)}", hint)


def choose_speaker(available: list[str], requested: str | None, default: str | None) -> str:
    """``--speaker``, else the workspace's speaker, else the only one in ``spk2info.pt``."""
    listing = ", ".join(sorted(available)) or "none"
    if requested:
        if requested in available:
            return requested
        raise ModelError(f"speaker {requested!r} is not in this voice", f"available: {listing}")
    if default and default in available:
        return default
    if len(available) == 1:
        return available[0]
    if not available:
        raise ModelError("spk2info.pt lists no speakers", "run: voicelab export")
    raise ConfigError("this voice has several speakers", f"choose one with --speaker: {listing}")


def read_speakers(model_dir: Path) -> list[str]:
    """Speaker ids of ``spk2info.pt`` whose embedding ``inference_sft`` can use ((1, 192))."""
    import torch

    path = model_dir / SPK2INFO
    try:
        info = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated/corrupt: torch raises several types
        raise ModelError(f"{path} is not readable: {e}", "run: voicelab export") from e
    if not isinstance(info, dict):
        raise ModelError(f"{path} is not a speaker table", "run: voicelab export")
    good = []
    for spk, entry in info.items():
        emb = entry.get("embedding") if isinstance(entry, dict) else None
        if isinstance(emb, torch.Tensor) and tuple(emb.shape) == EMBEDDING_SHAPE:
            good.append(str(spk))
        else:
            log.debug("spk2info entry %r has no (1, 192) 'embedding': not an SFT speaker", spk)
    return good
