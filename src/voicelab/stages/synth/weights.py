"""Which weights speak: the exported voice, an epoch's checkpoint (``--epoch``, ``--llm-ckpt``) or
the base model's."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from voicelab.errors import ModelError, WorkspaceError
from voicelab.fsutil import read_json
from voicelab.paths import to_local_path

if TYPE_CHECKING:
    from voicelab.workspace import Workspace
from voicelab.stages.synth.voice_dir import PROVENANCE

log = logging.getLogger(__name__)


_EPOCH_FILE = re.compile(r"^epoch_(\d+)_whole\.pt$")


# ---- which model ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Weights:
    """Checkpoints hot-loaded over the voice (None: the voice's own ``llm.pt``/``flow.pt``)."""

    llm: Path | None = None
    flow: Path | None = None
    label: str = "exported voice"


def epoch_checkpoint(ws: Workspace, epoch: int, model: str = "llm") -> Path:
    return ws.exp_dir(model) / f"epoch_{int(epoch)}_whole.pt"


def epochs_on_disk(ws: Workspace, model: str = "llm") -> list[int]:
    run = ws.exp_dir(model)
    if not run.is_dir():
        return []
    return sorted(int(m.group(1)) for p in run.iterdir() if (m := _EPOCH_FILE.match(p.name)))


def _explicit_ckpt(value: str | Path, what: str) -> Path:
    path = to_local_path(value)
    if not path.is_file():
        raise ModelError(
            f"{what} {path} does not exist", "check the path (voicelab checkpoints lists them)"
        )
    return path


def exported_llm_files(voice_dir: Path) -> list[str]:
    """File names of the llm checkpoints ``voicelab export`` averaged into ``voice_dir``."""
    prov = read_json(Path(voice_dir) / PROVENANCE, default={}) or {}
    ckpts = (prov.get("llm") or {}).get("checkpoints") or []
    return [str(c.get("file")) for c in ckpts if isinstance(c, dict)]


def resolve_weights(
    ws: Workspace | None,
    llm_ckpt: str | Path | None = None,
    flow_ckpt: str | Path | None = None,
    epoch: int | None = None,
    voice_dir: Path | None = None,
) -> Weights:
    """Explicit checkpoint > ``--epoch`` > locked epoch > the exported voice (module doc).

    With ``voice_dir``, a locked epoch the voice was exported from (its ``voicelab.json``) is
    not loaded again: the voice already is that epoch.
    """
    llm: Path | None = None
    labels: list[str] = []
    if llm_ckpt is not None:
        llm = _explicit_ckpt(llm_ckpt, "--llm-ckpt")
        if epoch is not None:
            log.warning("--llm-ckpt given: --epoch %s is not used", epoch)
        labels.append(f"llm {llm.name}")
    elif epoch is not None:
        if ws is None:
            raise WorkspaceError(
                "--epoch needs a voice workspace (its training run holds the epochs)",
                "pass --workspace DIR, or --llm-ckpt PATH",
            )
        llm = epoch_checkpoint(ws, epoch)
        if not llm.is_file():
            have = epochs_on_disk(ws)
            raise ModelError(
                f"no checkpoint for epoch {epoch}: {llm} does not exist",
                f"epochs on disk: {', '.join(map(str, have))}"
                if have
                else "train first: voicelab train",
            )
        labels.append(f"epoch {epoch}")
    elif ws is not None and ws.config.locked_epoch is not None:
        locked = ws.config.locked_epoch
        path = epoch_checkpoint(ws, locked)
        if voice_dir is not None and exported_llm_files(voice_dir) == [path.name]:
            # The voice was exported from exactly this epoch: nothing to hot-load.
            labels.append(f"exported voice = epoch {locked} (locked)")
        elif path.is_file():
            llm = path
            labels.append(f"epoch {locked} (locked)")
        else:
            log.info("locked epoch %s has no checkpoint on disk: using the exported voice", locked)
    flow = _explicit_ckpt(flow_ckpt, "--flow-ckpt") if flow_ckpt is not None else None
    if flow is not None:
        labels.append(f"flow {flow.name}")
    return Weights(llm=llm, flow=flow, label=", ".join(labels) or "exported voice")
