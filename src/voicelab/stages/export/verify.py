"""Checking a voice dir (``voicelab export --check``): every file upstream loads, the shapes,
the speaker, the YAML; and the lock on an epoch."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from voicelab.errors import ModelError
from voicelab.fsutil import (
    read_json,
)
from voicelab.stages.checkpoints import (
    META_KEYS,
    check_against,
    load_state_dict,
    run_checkpoints,
)
from voicelab.stages.export.base import base_files
from voicelab.stages.export.options import (
    BLANKEN_REQUIRED,
    EMBED_DIM,
    PROVENANCE,
    REQUIRED_FILES,
    STATE_FILES,
    VerifyReport,
)
from voicelab.upstream.artifacts import is_stale
from voicelab.upstream.model_files import BLANKEN, SPK2INFO
from voicelab.workspace import Workspace


# ---- verification ---------------------------------------------------------------------------
def verify_voice_dir(
    model_dir: Path, base_dir: Path | None = None, speaker: str | None = None
) -> VerifyReport:
    """Check ``model_dir`` as upstream's ``CosyVoice3(model_dir)`` will use it, without importing
    upstream: the files it opens exist; the weights load (``weights_only``) as plain state dicts,
    and those that differ from the base have exactly its keys and shapes; every other base file
    is there with its size; ``spk2info.pt`` loads and holds (1, 192) float embeddings.

    ``base_dir`` defaults to the one recorded in ``voicelab.json``; without a base, files are
    compared with the sizes recorded there.
    """
    model_dir = Path(model_dir)
    rep = VerifyReport(model_dir)
    if not model_dir.is_dir():
        rep.problems.append(f"{model_dir} is not a folder")
        return rep
    prov = read_json(model_dir / PROVENANCE, default={}) or {}
    recorded: dict[str, Any] = (prov.get("base_model") or {}).get("files") or {}
    if base_dir is None and (prov.get("base_model") or {}).get("path"):
        candidate = Path(prov["base_model"]["path"])
        base_dir = candidate if candidate.is_dir() else None
    speaker = speaker or prov.get("speaker")
    _check_required(rep, model_dir)
    _check_base_files(rep, model_dir, base_dir, recorded)
    _check_state_dicts(rep, model_dir, base_dir, recorded)
    _check_spk2info(rep, model_dir, speaker)
    return rep


def _check_required(rep: VerifyReport, model_dir: Path) -> None:
    """The files upstream opens, and its text frontend's folder."""
    for f in REQUIRED_FILES:
        p = model_dir / f
        if not p.is_file():
            rep.problems.append(f"{f} missing")
        elif p.stat().st_size == 0:
            rep.problems.append(f"{f} is empty")
    blank = model_dir / BLANKEN
    if not blank.is_dir():
        rep.problems.append(f"{BLANKEN}/ missing")
    else:
        rep.problems += [
            f"{BLANKEN}/{f} missing" for f in BLANKEN_REQUIRED if not (blank / f).is_file()
        ]
    rep.checked.append("required files")


def _check_base_files(
    rep: VerifyReport, model_dir: Path, base_dir: Path | None, recorded: dict[str, Any]
) -> None:
    """Every other base file, with its size (a truncated copy has another size)."""
    if base_dir is not None:
        expected = {rel: (base_dir / rel).stat().st_size for rel in base_files(base_dir)}
    else:
        expected = {rel: int(e["bytes"]) for rel, e in recorded.items()}
    for rel, size in expected.items():
        if rel in STATE_FILES or rel in (SPK2INFO, PROVENANCE) or is_stale(rel, True):
            continue
        p = model_dir / rel
        if not p.is_file():
            if f"{rel} missing" not in rep.problems:
                rep.problems.append(f"{rel} missing")
        elif p.stat().st_size != size:
            rep.problems.append(f"{rel} has {p.stat().st_size} bytes, the base has {size}")
    if expected:
        rep.checked.append("base files")


def _check_state_dicts(
    rep: VerifyReport, model_dir: Path, base_dir: Path | None, recorded: dict[str, Any]
) -> None:
    """Each weights file loads as a plain state dict with the keys and shapes of the base's (or,
    without a base, of what the dir's cosyvoice3.yaml builds: worked out once, when needed)."""
    yaml_ref = functools.cache(lambda: _yaml_reference(model_dir))
    for f in STATE_FILES:
        p = model_dir / f
        if not p.is_file() or p.stat().st_size == 0:
            continue  # the required files' check reports it
        state = _load_plain(rep, p)
        if state is None:
            continue
        base_file = base_dir / f if base_dir is not None else None
        if base_file is not None and base_file.is_file():
            if not os.path.samefile(p, base_file):
                _against_base(rep, state, base_file)
        else:
            if base_file is None and _size_differs(p, recorded):
                rep.problems.append(f"{f} differs in size from the base")
            _against_yaml(rep, state, f, yaml_ref())
        del state
    rep.checked.append("state dicts")


def _load_plain(rep: VerifyReport, p: Path) -> dict[str, Any] | None:
    """The state dict in ``p`` if it loads and is a plain one (tensors only, no training meta
    keys), else None with the problem noted."""
    import torch

    try:
        state = load_state_dict(p)
    except ModelError as e:
        rep.problems.append(f"{p.name} does not load ({e.message.split(': ', 1)[-1]})")
        return None
    meta = [k for k in META_KEYS if k in state]
    odd = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if meta or odd:
        rep.problems.append(f"{p.name} is not a plain state dict (has {(meta or odd)[0]!r})")
        return None
    return state


def _against_base(rep: VerifyReport, state: dict[str, Any], base_file: Path) -> None:
    f = base_file.name
    try:
        check_against(state, load_state_dict(base_file), f, f"the base {f}")
    except ModelError as e:
        rep.problems.append(e.message)


def _size_differs(p: Path, recorded: dict[str, Any]) -> bool:
    """Against the size ``voicelab.json`` recorded for the base; the new weights may differ."""
    return (
        p.name in recorded
        and p.name not in ("llm.pt", "flow.pt")
        and p.stat().st_size != int(recorded[p.name]["bytes"])
    )


def _against_yaml(
    rep: VerifyReport, state: dict[str, Any], f: str, ref: dict[str, dict[str, Any]] | str
) -> None:
    """No base to compare with: the dir's own cosyvoice3.yaml says what fits."""
    if isinstance(ref, str):  # it cannot be checked: say so once
        if ref not in rep.problems:
            rep.problems.append(ref)
        return
    try:
        check_against(state, ref[f.removesuffix(".pt")], f, "cosyvoice3.yaml")
    except ModelError as e:
        rep.problems.append(e.message)


def _check_spk2info(rep: VerifyReport, model_dir: Path, speaker: str | None) -> None:
    """spk2info.pt, where ``inference_sft`` looks the speaker up, holds it with a good
    embedding."""
    p = model_dir / SPK2INFO
    if not p.is_file():
        rep.problems.append(f"{SPK2INFO} missing (inference_sft would know no speaker)")
        return
    try:
        info = load_state_dict(p)
    except ModelError as e:
        rep.problems.append(f"{SPK2INFO} does not load ({e.message.split(': ', 1)[-1]})")
        info = {}
    rep.problems += [x for x in (_entry_problem(spk, e) for spk, e in info.items()) if x]
    rep.speakers = sorted(map(str, info))
    if speaker and info and speaker not in info:
        rep.problems.append(f"{SPK2INFO} has no speaker {speaker!r}")
    rep.checked.append(SPK2INFO)


def _entry_problem(spk: Any, entry: Any) -> str | None:
    import torch

    if not isinstance(entry, dict):
        return f"{SPK2INFO}: entry {spk!r} is not a dict"
    emb = entry.get("embedding")
    if emb is None:
        return None  # a zero-shot entry (add_zero_shot_spk): not for inference_sft
    is_tensor = isinstance(emb, torch.Tensor)
    if is_tensor and tuple(emb.shape) == (1, EMBED_DIM) and emb.is_floating_point():
        return None
    shape = tuple(emb.shape) if is_tensor else type(emb).__name__
    return f"{SPK2INFO}: embedding of {spk!r} is {shape}, not a float (1, {EMBED_DIM})"


def _yaml_reference(model_dir: Path) -> dict[str, dict[str, Any]] | str:
    """Meta tensors of the keys and shapes ``model_dir/cosyvoice3.yaml`` builds, or the problem
    that keeps them from being checked."""
    import torch

    from voicelab.errors import VendorError
    from voicelab.upstream.model_shapes import yaml_shapes
    from voicelab.vendor import cosyvoice_runtime

    try:
        shapes = yaml_shapes(model_dir, cosyvoice_runtime())
    except VendorError:
        return (
            "keys and shapes of the state dicts not checked: no base model dir and no upstream "
            "checkout to build cosyvoice3.yaml's modules (voicelab vendor sync cosyvoice, or put "
            "the base model back where voicelab.json says)"
        )
    except ModelError as e:
        return e.message
    return {
        m: {k: torch.empty(s, device="meta") for k, s in keys.items()} for m, keys in shapes.items()
    }


def check_dir(path: Path, base_dir: Path | None = None) -> VerifyReport:
    """``voicelab export --check DIR``: verification alone; raises on the first problem."""
    return verify_voice_dir(Path(path), base_dir).raise_if_failed()


def set_lock(ws: Workspace, epoch: int | None) -> int | None:
    """Lock (or with None unlock) an llm epoch in voicelab.toml; selection and say honour it."""
    if epoch is not None:
        ckpts = run_checkpoints(ws, "llm")
        epochs = [c.epoch for c in ckpts if c.kind == "epoch"]
        if epoch not in epochs:
            have = ",".join(map(str, epochs)) or "none"
            raise ModelError(
                f"no epoch_{epoch}_whole.pt in {ws.exp_dir('llm')} (epochs there: {have})",
                "lock an epoch that exists",
            )
    ws.config.locked_epoch = epoch
    ws.save()
    return epoch
