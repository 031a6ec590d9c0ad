"""What a voice records about itself (``voicelab.json``): the speaker embedding, the training run,
the data, the vendor commit, the checkpoints it averages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from voicelab.errors import ModelError, VoiceLabError, WorkspaceError
from voicelab.fsutil import (
    hash_obj,
    sha256_file,
)
from voicelab.stages.checkpoints import (
    META_KEYS,
    Checkpoint,
    load_state_dict,
)
from voicelab.stages.export.options import EMBED_DIM
from voicelab.workspace import Workspace


def speaker_embedding(ws: Workspace, speaker: str) -> Any:
    import torch

    path = ws.split_dir("train") / "spk2embedding.pt"
    if not path.is_file():
        raise WorkspaceError(
            f"no speaker embedding at {path}", "run: voicelab features (it writes spk2embedding.pt)"
        )
    data = load_state_dict(path)
    if speaker not in data:
        have = ", ".join(sorted(map(str, data))[:5]) or "none"
        raise WorkspaceError(
            f"{path} has no embedding for speaker {speaker!r} (speakers there: {have})",
            "run voicelab features again for this workspace",
        )
    emb = torch.as_tensor(data[speaker], dtype=torch.float32).detach().reshape(-1)
    if emb.numel() != EMBED_DIM or not bool(torch.isfinite(emb).all()):
        raise WorkspaceError(
            f"speaker embedding of {speaker!r} in {path} is not {EMBED_DIM} finite numbers",
            "run voicelab features again",
        )
    return emb.reshape(1, EMBED_DIM).clone()


def load_spk2info(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = load_state_dict(path)
    except ModelError as e:
        raise ModelError(
            f"cannot merge speakers: {e.message}",
            f"move {path} away (it holds the other speakers), then export again",
        ) from e
    return dict(data)


def training_info(ckpts: list[Checkpoint]) -> dict[str, Any]:
    """Training settings from the last chosen checkpoint's yaml (train_conf + CLI args)."""
    if not ckpts:
        return {}
    per_step = {"loss_dict", "grad_norm", "lr", "batch_idx", "save_time", "tag", *META_KEYS}
    return {k: v for k, v in ckpts[-1].info.items() if k not in per_step}


def data_fingerprint(ws: Workspace) -> dict[str, Any]:
    from voicelab.state import load_record

    out: dict[str, Any] = {}
    emb = ws.split_dir("train") / "spk2embedding.pt"
    if emb.is_file():
        out["spk2embedding_sha256"] = sha256_file(emb)
    for split in ("train", "dev"):
        lst = ws.data_list(split)
        if lst.is_file():
            out[f"{split}_data_list_sha256"] = sha256_file(lst)
    stages = {}
    if ws.state_dir.is_dir():
        for rec_file in sorted(ws.state_dir.glob("*.json")):
            rec = load_record(ws, rec_file.stem)
            if rec and rec.stage != "export" and rec.status == "done":
                stages[rec.stage] = {"inputs": rec.inputs, "params": rec.params}
    out["stages"] = stages
    out["fingerprint"] = hash_obj(out)
    return out


def vendor_info() -> dict[str, Any]:
    try:
        from voicelab.vendor import cosyvoice_runtime

        rt = cosyvoice_runtime()
        return {"commit": getattr(rt, "commit", None)}
    except (ImportError, VoiceLabError) as e:
        return {"commit": None, "note": str(e)[:200]}


def provenance_of(c: Checkpoint) -> dict[str, Any]:
    return {k: v for k, v in c.summary().items() if k not in ("chosen", "exported")}


def state_shapes(path: Path) -> dict[str, Any]:
    return load_state_dict(path)  # memory-mapped: keys and shapes cost nothing
