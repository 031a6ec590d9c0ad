"""``vendors.toml``: every upstream repository, its pinned commit, the submodules that must be
present and the files that prove a usable checkout."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voicelab.errors import ConfigError
from voicelab.workspace import (
    MANIFEST_NAME,
    find_root,
    load_toml,
)

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover
    pass


COSYVOICE = "cosyvoice"

COSYVOICE_DIR_ENV = "VOICELAB_COSYVOICE_DIR"

PARTIAL_SUFFIX = ".partial"

_SHA_RE = re.compile(r"^[0-9a-f]{40}$")


@dataclass
class SubmoduleSpec:
    """A submodule that must be present. ``short`` is the name ``--url SHORT=URL`` uses."""

    short: str
    path: str
    url: str
    commit: str


@dataclass
class VendorSpec:
    name: str
    url: str
    commit: str
    path: str
    proof: list[str] = field(default_factory=list)
    import_paths: list[str] = field(default_factory=lambda: ["."])
    submodules: list[SubmoduleSpec] = field(default_factory=list)
    optional: bool = False

    def top_level_proof(self) -> list[str]:
        """Proof files that are not inside a submodule (a fresh checkout has them)."""
        subs = [s.path.rstrip("/") + "/" for s in self.submodules]
        return [p for p in self.proof if not any(p.startswith(s) for s in subs)]


@dataclass
class Manifest:
    path: Path
    vendors: dict[str, VendorSpec]

    def get(self, name: str) -> VendorSpec:
        try:
            return self.vendors[name]
        except KeyError:
            known = ", ".join(self.vendors) or "none"
            raise ConfigError(
                f"unknown vendor {name!r} (vendors.toml lists: {known})",
                "use one of the names vendors.toml lists",
            ) from None

    def short_names(self) -> set[str]:
        names = set(self.vendors)
        for spec in self.vendors.values():
            names.update(s.short for s in spec.submodules)
        return names


def manifest_path(root: Path | None = None) -> Path:
    """``vendors.toml`` of the VoiceLab root, else the one of the source tree this runs from."""
    root = root or find_root()
    path = root / MANIFEST_NAME
    if path.is_file():
        return path
    src = Path(__file__).resolve().parents[3] / MANIFEST_NAME
    return src if src.is_file() else path


def load_manifest(root: Path | None = None) -> Manifest:
    path = manifest_path(root)
    if not path.is_file():
        raise ConfigError(
            f"no {MANIFEST_NAME} at {path.parent}",
            "run voicelab from inside the VoiceLab folder, or set VOICELAB_ROOT",
        )
    data = load_toml(path)
    vendors: dict[str, VendorSpec] = {}
    for name, entry in data.items():
        if not isinstance(entry, dict):
            continue
        vendors[name] = _parse_spec(path, name, entry)
    return Manifest(path, vendors)


def _parse_spec(path: Path, name: str, entry: dict[str, Any]) -> VendorSpec:
    def need(table: dict[str, Any], key: str, where: str) -> str:
        value = table.get(key)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{path}: [{where}] has no {key}", f'add {key} = "..." to [{where}]')
        return value

    def commit_of(table: dict[str, Any], where: str) -> str:
        commit = need(table, "commit", where).lower()
        if not _SHA_RE.match(commit):
            raise ConfigError(
                f"{path}: [{where}] commit {commit!r} is not a full 40-digit commit id",
                f"run: voicelab vendor pin {name} REV (it writes the full id)",
            )
        return commit

    subs = []
    for short, sub in (entry.get("submodules") or {}).items():
        where = f"{name}.submodules.{short}"
        subs.append(
            SubmoduleSpec(
                short=short,
                path=need(sub, "path", where).strip("/"),
                url=need(sub, "url", where),
                commit=commit_of(sub, where),
            )
        )
    return VendorSpec(
        name=name,
        url=need(entry, "url", name),
        commit=commit_of(entry, name),
        path=entry.get("path") or f"vendor/{name}",
        proof=list(entry.get("proof") or []),
        import_paths=list(entry.get("import_paths") or ["."]),
        submodules=subs,
        optional=bool(entry.get("optional", False)),
    )


def vendor_dir(spec: VendorSpec, root: Path) -> Path:
    return root / spec.path


def partial_dir(target: Path) -> Path:
    return target.parent / f".{target.name}{PARTIAL_SUFFIX}"
