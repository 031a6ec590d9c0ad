"""Verification of a model dir against its manifest (``.voicelab-manifest.json``): names, sizes
and hashes, offline, for ``doctor``, ``export`` and ``train`` preflight."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from voicelab.fsutil import (
    quick_fingerprint,
    read_json,
)
from voicelab.models import catalogue
from voicelab.models.catalogue import (
    COSYVOICE3_REPO,
    MANIFEST_FILE,
    TRAINABLE_FILES,
    VOICE_PROVENANCE,
    FileSpec,
    human,
    pin_error,
    pins_of,
)

log = logging.getLogger(__name__)


@dataclass
class FileCheck:
    path: str
    status: str  # ok | missing | size | hash
    required: bool
    expected_size: int | None = None
    actual_size: int | None = None
    hashed: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class VerifyReport:
    """What :func:`verify_model_dir` found. ``ok``: every required file is present and right."""

    model_dir: Path
    checks: list[FileCheck]
    manifest: str  # where the expectations came from
    deep: bool
    llm: str = "base"  # which LLM llm.pt is: base | rl | trained
    exists: bool = True
    disk_bytes: int = 0  # the checked files on disk, hard links counted once

    def _paths(self, status: str, required_only: bool = False) -> list[str]:
        return [
            c.path for c in self.checks if c.status == status and (c.required or not required_only)
        ]

    @property
    def missing(self) -> list[str]:
        return self._paths("missing")

    @property
    def wrong_size(self) -> list[str]:
        return self._paths("size")

    @property
    def wrong_hash(self) -> list[str]:
        return self._paths("hash")

    @property
    def bad(self) -> list[str]:
        """Every file that needs fetching again (required ones and present optional ones)."""
        return [c.path for c in self.checks if not c.ok]

    @property
    def ok(self) -> bool:
        return self.exists and not any(c.required and not c.ok for c in self.checks)

    @property
    def total_bytes(self) -> int:
        return self.disk_bytes or sum(c.actual_size or 0 for c in self.checks)

    @property
    def summary(self) -> str:
        if not self.exists:
            return "not downloaded"
        if self.ok:
            n = sum(1 for c in self.checks if c.ok)
            how = (
                "sizes and hashes" if self.deep and any(c.hashed for c in self.checks) else "sizes"
            )
            extra = f"; optional files bad: {', '.join(self.bad)}" if self.bad else ""
            return f"complete: {n} files, {human(self.total_bytes)}, {how} match{extra}"
        parts = []
        for label, items in (
            ("missing", self.missing),
            ("wrong size", self.wrong_size),
            ("wrong hash", self.wrong_hash),
        ):
            if items:
                parts.append(f"{label}: {', '.join(items)}")
        return "incomplete: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_dir": str(self.model_dir),
            "ok": self.ok,
            "summary": self.summary,
            "manifest": self.manifest,
            "deep": self.deep,
            "llm": self.llm,
            "missing": self.missing,
            "wrong_size": self.wrong_size,
            "wrong_hash": self.wrong_hash,
            "files": [asdict(c) for c in self.checks],
        }


def _git_blob_sha1(path: Path, size: int) -> str:
    h = hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def digest(path: Path, algo: str) -> str:
    if algo == "git_sha1":
        return _git_blob_sha1(path, path.stat().st_size)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def check_file(root: Path, spec: FileSpec, hash_mode: str, verified: dict[str, str]) -> FileCheck:
    """``hash_mode``: ``none`` (sizes), ``changed`` (hash unless this exact inode, size and
    mtime were hashed before), ``all``."""
    path = root / spec.path
    check = FileCheck(spec.path, "ok", spec.required, spec.size)
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        check.status = "missing"
        return check
    if not stat.S_ISREG(st.st_mode):
        check.status = "missing"
        return check
    check.actual_size = st.st_size
    if (spec.size is not None and st.st_size != spec.size) or (
        spec.size is None and not st.st_size
    ):
        check.status = "size"
        return check
    want = spec.digest
    if hash_mode == "none" or want is None:
        return check
    algo, value = want
    fp = quick_fingerprint(path)
    key = f"{algo}:{value}"
    if hash_mode == "changed" and verified.get(fp) == key:
        check.hashed = True
        return check
    got = digest(path, algo)
    check.hashed = True
    if got != value:
        check.status = "hash"
        verified.pop(fp, None)
    else:
        verified[fp] = key
    return check


def specs_from_json(files: Mapping[str, Any]) -> dict[str, FileSpec]:
    out = {}
    for rel, d in files.items():
        d = d if isinstance(d, dict) else {}
        out[rel] = FileSpec(
            rel,
            int(d["size"]) if d.get("size") is not None else None,
            d.get("sha256"),
            d.get("git_sha1"),
            bool(
                d.get("required", catalogue.COSYVOICE3_FILES.get(rel, FileSpec(rel, None)).required)
            ),
        )
    return out


def specs_to_json(specs: Mapping[str, FileSpec]) -> dict[str, Any]:
    return {
        rel: {k: v for k, v in asdict(s).items() if k != "path" and v is not None}
        for rel, s in sorted(specs.items())
    }


def read_manifest(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``.voicelab-manifest.json`` of a model dir ({} when absent or unreadable)."""
    try:
        data = read_json(Path(model_dir) / MANIFEST_FILE, default={})
    except ValueError:
        log.warning("%s is not valid JSON; ignoring it", Path(model_dir) / MANIFEST_FILE)
        return {}
    return data if isinstance(data, dict) else {}


def _apply_llm_state(specs: dict[str, FileSpec], llm: str) -> dict[str, FileSpec]:
    """With the RL LLM active, llm.pt must equal llm.rl.pt and llm.base.pt holds the base."""
    if llm != "rl" or "llm.rl.pt" not in specs or "llm.pt" not in specs:
        return specs
    specs = dict(specs)
    base = specs["llm.pt"]
    specs["llm.pt"] = replace(specs["llm.rl.pt"], path="llm.pt", required=True)
    specs["llm.base.pt"] = replace(base, path="llm.base.pt", required=False)
    return specs


def expected_files(
    model_dir: str | os.PathLike[str], builtin: Mapping[str, FileSpec] | None = None
) -> tuple[dict[str, FileSpec], str, str]:
    """(specs, where they came from, llm state) for a model dir, without network.

    Order: a voice dir's ``voicelab.json`` ``files`` table; the dir's ``.voicelab-manifest.json``
    (the hub's listing, stored after a verified download); the built-in sizes. In a voice dir
    without its own table the trained files (llm.pt, flow.pt, hift.pt) only have to exist.
    """
    root = Path(model_dir)
    base = dict(builtin if builtin is not None else catalogue.COSYVOICE3_FILES)
    prov = (
        read_json(root / VOICE_PROVENANCE, default=None)
        if (root / VOICE_PROVENANCE).is_file()
        else None
    )
    if isinstance(prov, dict):
        if isinstance(prov.get("files"), dict) and prov["files"]:
            return specs_from_json(prov["files"]), f"{VOICE_PROVENANCE} file table", "trained"
        where = "built-in sizes"
        base_dir = _voice_base_dir(root, prov)
        listed = _base_listing(prov) if builtin is None else {}
        if listed:
            # export's record of the base files it linked: sizes, and hashes where known.
            base, where = listed, f"base listing in {VOICE_PROVENANCE}"
        elif builtin is None and base_dir is not None and base_dir.resolve() != root.resolve():
            bspecs, bwhere, _ = expected_files(base_dir)
            if bwhere.startswith("hub manifest"):
                base = {r: s for r, s in bspecs.items() if r != "llm.base.pt"}
                base = {
                    r: replace(s, required=catalogue.COSYVOICE3_FILES.get(r, s).required)
                    for r, s in base.items()
                }
                where = f"{bwhere} of {base_dir.name}"
        specs = {
            rel: replace(s, size=None, sha256=None, git_sha1=None) if rel in TRAINABLE_FILES else s
            for rel, s in base.items()
        }
        return specs, f"{where} (voice dir; {', '.join(TRAINABLE_FILES)} trained)", "trained"
    own = _own_manifest(root)
    if own is not None:
        return own
    man = read_manifest(root)
    llm = str(man.get("llm", "base"))
    if isinstance(man.get("files"), dict) and man["files"]:
        specs = specs_from_json(man["files"])
        for rel, s in base.items():  # our notion of required wins over an old manifest's
            if rel in specs:
                specs[rel] = replace(specs[rel], required=s.required)
        where = f"hub manifest ({man.get('source', '?')} {str(man.get('revision') or '')[:12]})"
        return _apply_llm_state(specs, llm), where.replace(" )", ")"), llm
    return _apply_llm_state(base, llm), "built-in sizes", llm


def _own_manifest(root: Path) -> tuple[dict[str, FileSpec], str, str] | None:
    """A model VoiceLab built itself (the tiny random model) is checked against the file table
    it was built with, never against Fun-CosyVoice3-0.5B's sizes."""
    from voicelab.upstream.tinymodel import MARKER, REQUIRED_FILES

    mark = read_json(root / MARKER, default=None) if (root / MARKER).is_file() else None
    if not isinstance(mark, dict):
        return None
    files = mark.get("files")
    if isinstance(files, dict) and files:
        return specs_from_json(files), f"tiny model manifest ({MARKER})", "base"
    # Built before the marker had a file table: the files only have to exist.
    return {r: FileSpec(r, None) for r in REQUIRED_FILES}, f"tiny model ({MARKER})", "base"


def verify_model_dir(
    model_dir: str | os.PathLike[str],
    deep: bool = False,
    expected: Mapping[str, FileSpec] | None = None,
) -> VerifyReport:
    """Check a model dir against its expected file set, without network.

    Required files must exist with the expected size; optional files are checked only when
    present. ``deep`` also hashes every file the hub published a hash for (seconds per GB).
    ``expected`` replaces the built-in CosyVoice 3 file set (tests, other models); the dir's
    stored hub manifest still wins over it. Never raises for a bad dir: read ``report.ok``.
    """
    root = Path(model_dir)
    specs, where, llm = expected_files(root, expected)
    if not root.is_dir():
        checks = [
            FileCheck(s.path, "missing", s.required, s.size) for s in specs.values() if s.required
        ]
        return VerifyReport(root, checks, where, deep, llm, exists=False)
    man = read_manifest(root)
    verified: dict[str, str] = dict(man.get("verified") or {})
    # A dir VoiceLab downloaded (or copied --from-dir) records the pins it was checked against:
    # its code-like files are checked against them every time (small files; hashed once per
    # change), so a file swapped later is found too. A tiny or custom model records none.
    pins = pins_of(expected) if expected is not None else man.get("pins")
    if not isinstance(pins, dict):  # a manifest from before pins: the catalogue's, for the hub
        pins = pins_of(catalogue.COSYVOICE3_FILES) if man.get("repo") == COSYVOICE3_REPO else {}
    specs = apply_pins(specs, pins, None)
    checks = []
    for spec in specs.values():
        if not spec.required and not (root / spec.path).exists():
            continue
        mode = "all" if deep else "changed" if spec.path in pins else "none"
        checks.append(check_file(root, spec, mode, verified))
    inodes: dict[tuple[int, int], int] = {}
    for c in checks:
        with contextlib.suppress(OSError):
            if c.actual_size is not None:
                st = (root / c.path).stat()
                inodes[(st.st_dev, st.st_ino)] = st.st_size
    return VerifyReport(root, checks, where, deep, llm, disk_bytes=sum(inodes.values()))


def apply_pins(
    specs: Mapping[str, FileSpec],
    pins: Mapping[str, str],
    where: str | None,
    local: bool = False,
) -> dict[str, FileSpec]:
    """``specs`` checked against the pins: a listing that names another sha256 is refused
    (``where`` set) and every pinned file is verified against our hash, not the listing's."""
    out = dict(specs)
    for rel, want in pins.items():
        spec = out.get(rel)
        if spec is None:
            continue
        if where is not None and spec.sha256 and spec.sha256 != want:
            raise pin_error(rel, spec.sha256, want, where, local)
        out[rel] = replace(spec, sha256=want, git_sha1=None)
    return out


def _prov_base(prov: Mapping[str, Any]) -> Any:
    # export writes "base_model": {path, name, id, download, files}; "base" is the short form.
    return prov.get("base_model") or prov.get("base")


def _base_listing(prov: Mapping[str, Any]) -> dict[str, FileSpec]:
    """FileSpecs from export's ``base_model.files`` ({rel: {bytes, sha256 | verified}})."""
    base = _prov_base(prov)
    files = base.get("files") if isinstance(base, dict) else None
    if not isinstance(files, dict):
        return {}
    out = {}
    for rel, e in files.items():
        if not isinstance(e, dict):
            continue
        size = e.get("bytes", e.get("size"))
        sha, git = e.get("sha256"), e.get("git_sha1")
        verified = e.get("verified")
        if not (sha or git) and isinstance(verified, str) and ":" in verified:
            algo, value = verified.split(":", 1)
            sha, git = (value, None) if algo == "sha256" else (None, value)
        req = rel in catalogue.COSYVOICE3_REQUIRED
        out[rel] = FileSpec(rel, int(size) if size is not None else None, sha, git, req)
    return out


def _voice_base_dir(root: Path, prov: Mapping[str, Any]) -> Path | None:
    """The base model dir a voice's ``voicelab.json`` names (a path, or a sibling's name)."""
    base = _prov_base(prov)
    if isinstance(base, dict):
        base = base.get("path") or base.get("dir") or base.get("name")
    if not base or not isinstance(base, str):
        return None
    p = Path(base)
    cands = (
        [p, root.parent / p.name] if p.is_absolute() else [root.parent / p, root.parent / p.name]
    )
    return next((c for c in cands if c.is_dir()), None)


def voice_base(folder: Path) -> str | None:
    prov = (
        read_json(folder / VOICE_PROVENANCE, default=None)
        if (folder / VOICE_PROVENANCE).is_file()
        else None
    )
    if not isinstance(prov, dict):
        return None
    base = _prov_base(prov)
    if isinstance(base, dict):
        base = base.get("name") or base.get("path") or base.get("dir")
    return Path(str(base)).name if base else "?"
