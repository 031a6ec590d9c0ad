"""Replacing a voice dir safely: build beside it, swap in, and recover from an interrupted swap."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from voicelab.errors import ConfigError, ModelError
from voicelab.fsutil import (
    free_bytes,
)

log = logging.getLogger(__name__)


def restore_interrupted(pretrained: Path, name: str, target: Path) -> None:
    """Undo what a killed export left: a previous voice moved aside, staging dirs."""
    olds = sorted(pretrained.glob(f".{name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds and not target.exists():
        log.warning("restoring %s, moved aside by an interrupted export", target.name)
        os.rename(olds.pop(), target)
    for leftover in [*olds, *pretrained.glob(f".{name}.staging-*")]:
        log.info("removing leftover %s", leftover.name)
        _remove(leftover)


def swap_in(staging: Path, target: Path) -> None:
    old = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{int(time.time())}")
        os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        _remove(old)


def _remove(path: Path) -> None:
    if path.is_symlink():  # a voice dir linked from elsewhere: drop the link, not its target
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


EXPORT_AGAIN = "export again; the previous voice is kept"


def write_fail(e: OSError, what: Path) -> ModelError:
    from voicelab.stages.checkpoints.weights import _enospc

    if _enospc(e):
        return ModelError(
            f"disk full while writing {what} ({free_bytes(what.parent) / 1e6:.1f} MB free)",
            f"free space on the disk of {what.parent} and {EXPORT_AGAIN}",
        )
    return ModelError(f"could not write {what}: {e}", "check the disk and permissions")


def check_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise ConfigError(
            f"bad voice dir name {name!r}", "use a plain folder name, e.g. --name myvoice"
        )
    return name
