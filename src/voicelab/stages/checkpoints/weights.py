"""State dicts: loaded safely, stripped of training metadata, averaged in a wide dtype, checked
against the base model's shapes, saved atomically (a full disk is one line)."""

from __future__ import annotations

import errno
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voicelab.errors import ModelError
from voicelab.fsutil import atomic_path, free_bytes

if TYPE_CHECKING:
    import torch

from voicelab.stages.checkpoints.listing import META_KEYS


# ---- loading, averaging, saving -------------------------------------------------------------
def load_state_dict(path: Path) -> dict[str, Any]:
    """``torch.load`` a checkpoint or model file: CPU, ``weights_only``, memory-mapped when the
    file is a zip archive (every file torch >= 1.6 writes), so its pages are not copied."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path} does not exist", "check the path, or train/download again")
    mmap = zipfile.is_zipfile(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"{path} is not a readable torch file (truncated or corrupt?): {first}",
            "delete it and write it again (train, download or export again)",
        ) from e
    if not isinstance(obj, dict):
        raise ModelError(f"{path} holds a {type(obj).__name__}, not a state dict", None)
    return obj


def strip_meta(state: dict[str, Any]) -> dict[str, Any]:
    """Drop upstream's ``epoch``/``step`` entries; everything left must be a tensor."""
    import torch

    out = {k: v for k, v in state.items() if k not in META_KEYS}
    bad = [k for k, v in out.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelError(
            f"checkpoint entry {bad[0]!r} is a {type(out[bad[0]]).__name__}, not a tensor",
            "this is not an upstream torch_ddp checkpoint",
        )
    return out


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    import torch

    # float32 running sums for float32 weights keep the bound of two checkpoints in memory (a
    # float64 sum of a 2 GB llm would be 4 GB); half types sum in float32, float64 in float64.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _mismatch(ref: dict[str, tuple], state: dict[str, Any], path: Path, first: Path) -> str | None:
    keys, ref_keys = set(state), set(ref)
    if keys != ref_keys:
        extra, missing = sorted(keys - ref_keys), sorted(ref_keys - keys)
        what = f"has {extra[0]!r} that" if extra else f"lacks {missing[0]!r} that"
        return f"{path.name} {what} {first.name} has ({len(extra)} extra, {len(missing)} missing)"
    for k, (shape, dtype) in ref.items():
        t = state[k]
        if tuple(t.shape) != shape or t.dtype != dtype:
            return (
                f"{path.name}: {k} is {tuple(t.shape)} {t.dtype}, {first.name} has {shape} {dtype}"
            )
    return None


def average(paths: list[Path]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the state dicts in ``paths``, one file in memory at a time.

    Float tensors are summed in float32 (float64 for float64) and cast back to their dtype;
    integer/bool tensors (buffers such as counters) must be equal in every file and are kept.
    ``epoch``/``step`` are stripped. One path returns that checkpoint stripped, unchanged.
    """
    import torch

    if not paths:
        raise ModelError("no checkpoints to average", "train first, or check --select")
    paths = [Path(p) for p in paths]
    acc: dict[str, torch.Tensor] = {}
    ref: dict[str, tuple] = {}
    for i, path in enumerate(paths):
        state = strip_meta(load_state_dict(path))
        if i == 0:
            ref = {k: (tuple(v.shape), v.dtype) for k, v in state.items()}
            if len(paths) == 1:
                return state  # exported as is: memory-mapped tensors, saved without a copy
            for k, v in state.items():
                acc[k] = (
                    v.to(_acc_dtype(v.dtype), copy=True) if v.is_floating_point() else v.clone()
                )
        else:
            problem = _mismatch(ref, state, path, paths[0])
            if problem:
                raise ModelError(
                    f"checkpoints of different models: {problem}",
                    "average only checkpoints of one run (pick them with --select)",
                )
            for k, v in state.items():
                if v.is_floating_point():
                    acc[k].add_(v)
                elif not torch.equal(acc[k], v):
                    raise ModelError(
                        f"integer tensor {k} differs between {paths[0].name} and {path.name}",
                        "these checkpoints cannot be averaged; export one of them alone",
                    )
        del state
    n = len(paths)
    for k in list(acc):
        dtype = ref[k][1]
        if acc[k].is_floating_point():
            acc[k].div_(n)
            if acc[k].dtype != dtype:
                acc[k] = acc[k].to(dtype)  # one tensor at a time: the sum is freed as we go
    return acc


_OTHER_MODEL = "these checkpoints are from a different model; export those of this voice's run"


def check_against(state: dict[str, Any], base: dict[str, Any], what: str, base_name: str) -> None:
    """Raise unless ``state`` has exactly the keys and tensor shapes of ``base``."""
    keys, base_keys = set(state), set(base)
    if keys != base_keys:
        extra, missing = sorted(keys - base_keys), sorted(base_keys - keys)
        detail = f"{len(extra)} unknown keys (e.g. {extra[0]!r})" if extra else ""
        if missing:
            detail += (", " if detail else "") + f"{len(missing)} missing (e.g. {missing[0]!r})"
        raise ModelError(
            f"{what} does not fit {base_name}: {detail}",
            _OTHER_MODEL,
        )
    for k, t in state.items():
        b = base[k]
        if tuple(t.shape) != tuple(b.shape):
            raise ModelError(
                f"{what} does not fit {base_name}: {k} is {tuple(t.shape)}, "
                f"the base has {tuple(b.shape)}",
                _OTHER_MODEL,
            )


def _enospc(e: BaseException) -> bool:
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def save_state_dict(
    state: dict[str, Any],
    dest: Path,
    shown: Path | None = None,
    then: str = "run the command again",
) -> Path:
    """``torch.save`` through a temp file, fsync'ed, then renamed onto ``dest``: a full disk or a
    crash never leaves a half-written file under ``dest``; errors are one line, naming ``shown``
    (default ``dest``) and ending their hint with ``then``."""
    import torch

    dest = Path(dest)
    shown = Path(shown) if shown is not None else dest
    try:
        # A Python file object (not a path) so the OSError behind torch's RuntimeError survives.
        with atomic_path(dest) as tmp, open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as e:
        free = free_bytes(dest.parent)
        if _enospc(e):
            raise ModelError(
                f"disk full while writing {shown} ({free / 1e6:.1f} MB free)",
                f"free space on the disk of {shown.parent} and {then}",
            ) from e
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"could not write {shown}: {first}", f"check the disk and its permissions, then {then}"
        ) from e
    return dest
