"""The base model dir a voice is assembled from: its files and their identity (hashes for small
files, the download's verified digests for large ones)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from voicelab.errors import ModelError
from voicelab.fsutil import (
    hash_obj,
    quick_fingerprint,
    read_json,
    sha256_file,
)
from voicelab.stages.export.options import DOWNLOAD_MANIFEST, REQUIRED_FILES
from voicelab.upstream.model_files import BLANKEN

# Files up to this size are identified by sha256; larger ones (weights, ONNX) by size and mtime:
# hashing the 5 GB of a base model on every export would cost a minute on a Windows drive, and
# `voicelab download` already verifies the download itself.
HASH_LIMIT = 64 * 1024 * 1024


# ---- helpers --------------------------------------------------------------------------------
def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def base_files(base_dir: Path) -> list[str]:
    """Relative paths of the base model's files (hidden files and dirs, e.g. download caches,
    skipped)."""
    out = []
    for root, dirs, files in os.walk(base_dir, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            rel = Path(root, name).relative_to(base_dir)
            if not _hidden(rel):
                out.append(rel.as_posix())
    return out


def base_identity(base_dir: Path, files: list[str]) -> dict[str, Any]:
    """Sizes of every base file, sha256 of the small ones, size + mtime of the large ones, plus
    the digest ``voicelab download`` verified for a large file when this very file (same size,
    mtime and inode) was verified, and the repo/revision it was downloaded from."""
    manifest = read_json(base_dir / DOWNLOAD_MANIFEST, default={}) or {}
    verified = manifest.get("verified") if isinstance(manifest, dict) else None
    verified = verified if isinstance(verified, dict) else {}
    listing: dict[str, dict[str, Any]] = {}
    for rel in files:
        st = (base_dir / rel).stat()
        entry: dict[str, Any] = {"bytes": st.st_size}
        if st.st_size <= HASH_LIMIT:
            entry["sha256"] = sha256_file(base_dir / rel)
        else:
            entry["mtime_ns"] = st.st_mtime_ns
            digest = verified.get(quick_fingerprint(base_dir / rel))
            if digest:
                entry["verified"] = digest  # "sha256:..." or "git_sha1:..." (hub's own hashes)
        listing[rel] = entry
    out: dict[str, Any] = {"path": str(base_dir), "name": base_dir.name, "id": hash_obj(listing)}
    download = {k: manifest.get(k) for k in ("repo", "source", "revision", "llm")}
    if any(download.values()):
        out["download"] = download
    out["files"] = listing
    return out


def check_base_dir(base_dir: Path) -> None:
    if not base_dir.is_dir():
        raise ModelError(
            f"no base model at {base_dir}",
            "run: voicelab download (or set [model] base_dir in voicelab.toml)",
        )
    missing = [f for f in REQUIRED_FILES if not (base_dir / f).is_file()]
    if not (base_dir / BLANKEN).is_dir():
        missing.append(BLANKEN + "/")
    if missing:
        raise ModelError(
            f"base model at {base_dir} is incomplete: {', '.join(missing)} missing",
            "run: voicelab download (it resumes and verifies)",
        )
