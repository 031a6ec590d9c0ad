"""What a checkout is (``voicelab vendor status``): present, at its pin, dirty, its submodules;
looked at without changing anything."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voicelab.errors import EnvironmentProblem
from voicelab.workspace import (
    find_root,
)

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover
    pass
from voicelab.vendor.git import GitFailed, changed_files, git_exe, head_of
from voicelab.vendor.manifest import VendorSpec, load_manifest, partial_dir, vendor_dir


@dataclass
class SubmoduleState:
    short: str
    path: str
    pinned: str
    current: str | None

    @property
    def ok(self) -> bool:
        return self.current == self.pinned

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.short,
            "path": self.path,
            "pinned": self.pinned,
            "current": self.current,
            "ok": self.ok,
        }


@dataclass
class VendorState:
    """What ``vendor status`` shows for one vendor and ``doctor`` checks."""

    name: str
    path: str
    dir: Path
    pinned: str
    optional: bool = False
    kind: str = "missing"  # cloned | linked | missing | plain folder | broken link
    link_target: str | None = None
    current: str | None = None
    clean: bool | None = None
    changed: list[str] = field(default_factory=list)
    submodules: list[SubmoduleState] = field(default_factory=list)
    proof_missing: list[str] = field(default_factory=list)
    partial: bool = False
    problem: str | None = None
    warning: str | None = None
    action: str | None = None
    summary: str = ""  # one line for doctor and logs

    @property
    def ok(self) -> bool:
        """Usable: present, clean, at the pin (a link may be off the pin: that only warns)."""
        return self.problem is None and self.kind in ("cloned", "linked")

    @property
    def at_pin(self) -> bool:
        return self.current == self.pinned

    @property
    def submodules_ok(self) -> bool:
        return all(s.ok for s in self.submodules)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "dir": str(self.dir),
            "kind": self.kind,
            "link_target": self.link_target,
            "optional": self.optional,
            "pinned": self.pinned,
            "current": self.current,
            "at_pin": self.at_pin,
            "clean": self.clean,
            "changed": self.changed,
            "submodules": [s.to_dict() for s in self.submodules],
            "submodules_ok": self.submodules_ok,
            "proof_missing": self.proof_missing,
            "partial_clone_leftover": self.partial,
            "ok": self.ok,
            "problem": self.problem,
            "warning": self.warning,
            "action": self.action,
            "summary": self.summary,
        }


def inspect_vendor(spec: VendorSpec, root: Path) -> VendorState:
    """Look at one vendor without changing anything."""
    st = _inspect(spec, root)
    if st.problem:
        st.summary = f"{spec.path}: {st.problem}"
    else:
        where = f"{spec.path} at {(st.current or 'unknown commit')[:12]}"
        subs = ", submodules ok" if st.submodules else ""
        st.summary = f"{where} ({st.kind}{', clean' if st.clean else ''}{subs})"
        if st.warning:
            st.summary += f"; warning: {st.warning}"
    return st


def _inspect(spec: VendorSpec, root: Path) -> VendorState:
    d = vendor_dir(spec, root)
    st = VendorState(spec.name, spec.path, d, spec.commit, optional=spec.optional)
    st.partial = partial_dir(d).exists()
    sync_cmd = f"voicelab vendor sync {spec.name}"
    if d.is_symlink():
        st.kind = "linked"
        st.link_target = os.readlink(d)
        if not d.exists():
            st.kind = "broken link"
            st.problem = f"{spec.path} links to {st.link_target}, which does not exist"
            st.action = f"voicelab vendor link {spec.name} DIR, or delete the link and {sync_cmd}"
            return st
    elif not d.exists():
        st.problem = "not synced"
        st.action = sync_cmd
        return st
    try:
        git_exe()
    except EnvironmentProblem as e:
        st.kind = st.kind if st.kind == "linked" else "cloned"
        st.problem = e.message
        st.action = e.hint
        return st
    try:
        return _inspect_checkout(spec, d, st)
    except GitFailed as e:
        st.kind = st.kind if st.kind == "linked" else "cloned"
        st.problem = f"git {' '.join(e.argv[:2])} failed: {e.last_line()}"
        st.action = (
            f"look at the linked checkout {d.resolve()}"
            if st.kind == "linked"
            else f"delete {d} (vendor/ is re-creatable), then voicelab vendor sync {spec.name}"
        )
        return st


def _inspect_checkout(spec: VendorSpec, d: Path, st: VendorState) -> VendorState:
    sync_cmd = f"voicelab vendor sync {spec.name}"
    st.current = head_of(d)
    st.proof_missing = [p for p in spec.proof if not (d / p).exists()]
    if st.current is None:
        if st.kind != "linked":
            st.kind = "plain folder"
            st.problem = f"{spec.path} is a plain folder, not a git checkout"
            st.action = (
                f"move it away, then {sync_cmd}, or use voicelab vendor link {spec.name} DIR"
            )
        elif st.proof_missing:
            st.problem = f"the linked folder lacks {st.proof_missing[0]}"
            st.action = f"voicelab vendor link {spec.name} DIR_OF_A_CHECKOUT"
        else:
            st.warning = "the linked folder is not a git checkout: its commit is unknown"
        return st
    if st.kind != "linked":
        st.kind = "cloned"
    st.changed = changed_files(d)
    st.clean = not st.changed
    for sub in spec.submodules:
        st.submodules.append(SubmoduleState(sub.short, sub.path, sub.commit, head_of(d / sub.path)))
    linked = st.kind == "linked"
    missing_subs = [s for s in st.submodules if s.current is None]
    off_subs = [s for s in st.submodules if s.current is not None and not s.ok]
    if st.changed and not linked:
        st.problem = f"{len(st.changed)} changed or untracked files (e.g. {st.changed[0][2:]})"
        st.action = (
            f"drop them: {sync_cmd} --force; keep them: commit them in {spec.path}, then "
            f"voicelab vendor pin {spec.name} HEAD"
        )
    elif not st.at_pin and not linked:
        st.problem = f"at {st.current[:12]}, pinned {spec.commit[:12]}"
        st.action = sync_cmd
    elif missing_subs:
        st.problem = f"submodule {missing_subs[0].path} is not checked out"
        st.action = sync_cmd
    elif off_subs and not linked:
        s = off_subs[0]
        st.problem = f"submodule {s.path} at {(s.current or '')[:12]}, pinned {s.pinned[:12]}"
        st.action = sync_cmd
    elif st.proof_missing:
        st.problem = f"{st.proof_missing[0]} is missing"
        st.action = f"{sync_cmd} --force" if not linked else f"check the checkout at {d.resolve()}"
    if linked and st.problem is None:
        notes = []
        if not st.at_pin:
            notes.append(f"at {st.current[:12]}, pinned {spec.commit[:12]}")
        notes += [f"{s.path} at {(s.current or '')[:12]}" for s in off_subs]
        if st.changed:
            notes.append(f"{len(st.changed)} changed files")
        if notes:
            st.warning = "linked checkout " + "; ".join(notes)
            st.action = (
                f"to adopt its commit: voicelab vendor pin {spec.name} HEAD; to use the pin: "
                f"git -C {d.resolve()} checkout {spec.commit[:12]}"
            )
    return st


def vendor_status(root: Path | None = None, names: list[str] | None = None) -> list[VendorState]:
    """The state of every vendor (or of ``names``): used by ``vendor status`` and ``doctor``."""
    root = root or find_root()
    man = load_manifest(root)
    specs = [man.get(n) for n in names] if names else list(man.vendors.values())
    return [inspect_vendor(spec, root) for spec in specs]
