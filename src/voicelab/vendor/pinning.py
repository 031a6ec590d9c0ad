"""``voicelab vendor pin``: move a vendor's pin to another revision, rewriting ``vendors.toml``
in place (comments and layout kept)."""

from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicelab.errors import ConfigError, VendorError
from voicelab.fsutil import atomic_write_text
from voicelab.workspace import (
    find_root,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib
from voicelab.vendor.checkout import vendor_lock
from voicelab.vendor.git import GitFailed, fetch_error, git_exe, gitlink, head_of, run_git
from voicelab.vendor.manifest import VendorSpec, load_manifest, vendor_dir
from voicelab.vendor.sources import Sources, file_urls_allowed, make_sources


@dataclass
class PinResult:
    name: str
    old: str
    new: str
    submodules: dict[str, tuple[str, str]]
    manifest: Path

    @property
    def changed(self) -> bool:
        return self.old != self.new or any(a != b for a, b in self.submodules.values())


def _resolve_rev(spec: VendorSpec, repo: Path, rev: str, url: str, allow_file: bool) -> str:
    def rev_parse(cand: str) -> str | None:
        proc = run_git(
            ["rev-parse", "--verify", "--quiet", f"{cand}^{{commit}}"], cwd=repo, check=False
        )
        return proc.stdout.strip() if proc.returncode == 0 else None

    # HEAD, a local branch or tag, or a commit this checkout already has.
    sha = rev_parse(rev)
    if sha:
        return sha
    if (
        run_git(["fetch", "--", url, rev], cwd=repo, check=False, allow_file=allow_file).returncode
        == 0
    ):
        sha = rev_parse("FETCH_HEAD")
        if sha:
            return sha
    # A short id, or a commit some branch holds: fetch the branches and tags, look again.
    try:
        run_git(
            ["fetch", "--", url, "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"],
            cwd=repo,
            allow_file=allow_file,
        )
    except GitFailed as e:
        raise fetch_error(spec, url, e, repo) from None
    for cand in (rev, f"origin/{rev}"):
        sha = rev_parse(cand)
        if sha:
            return sha
    raise VendorError(
        f"revision {rev!r} of {spec.name} does not exist on {url}",
        "give a commit id, branch or tag that exists there",
    )


_TABLE_RE = re.compile(r"^\s*\[([^\[\]]+)\]\s*(?:#.*)?$")

_COMMIT_RE = re.compile(r"^(\s*commit\s*=\s*)([\"'])([^\"']*)\2(.*)$", re.DOTALL)


def _table_key(header: str) -> str:
    return ".".join(p.strip().strip("\"'") for p in header.split("."))


def rewrite_manifest_commits(path: Path, commits: dict[str, str]) -> None:
    """Set ``commit`` of the given tables (``"cosyvoice"``, ``"cosyvoice.submodules.matcha"``)
    by editing only those lines, so comments and layout stay as they were."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    table = ""
    todo = dict(commits)
    for i, line in enumerate(lines):
        m = _TABLE_RE.match(line)
        if m:
            table = _table_key(m.group(1))
            continue
        if table in todo:
            cm = _COMMIT_RE.match(line)
            if cm:
                lines[i] = f"{cm.group(1)}{cm.group(2)}{todo.pop(table)}{cm.group(2)}{cm.group(4)}"
    if todo:
        raise ConfigError(
            f"{path}: no commit line in [{', '.join(todo)}]",
            'add commit = "..." to the table, then pin again',
        )
    new_text = "".join(lines)
    data = tomllib.loads(new_text)
    for key, commit in commits.items():
        node: Any = data
        for part in key.split("."):
            node = node[part]
        if node.get("commit") != commit:  # pragma: no cover - guards the text edit
            raise ConfigError(f"{path}: could not rewrite [{key}] commit", "edit it by hand")
    atomic_write_text(path, new_text)


def pin(name: str, rev: str, root: Path | None = None, sources: Sources | None = None) -> PinResult:
    """Move ``name``'s pin to ``rev`` (a commit, branch, tag, or ``HEAD`` of the checkout) after
    checking it exists; the submodule pins follow what that commit records."""
    try:
        root = root or find_root()
        target = vendor_dir(load_manifest(root).get(name), root)
        with vendor_lock(target):  # not while a sync works on it
            return _pin(name, rev, root, sources)
    except GitFailed as e:
        raise VendorError(
            f"cannot pin {name}: git {' '.join(e.argv[:2])} failed: {e.last_line()}",
            "check vendor status and the source URL",
        ) from None


def _pin(name: str, rev: str, root: Path | None, sources: Sources | None) -> PinResult:
    git_exe()
    root = root or find_root()
    man = load_manifest(root)
    spec = man.get(name)
    sources = sources if sources is not None else make_sources(manifest=man)
    url = sources.resolve(spec.name, spec.url)
    allow_file = file_urls_allowed(spec, sources)
    target = vendor_dir(spec, root)
    scratch: Path | None = None
    if head_of(target) is not None:
        repo = target
    else:
        if rev == "HEAD":
            raise VendorError(
                f"{name} has no checkout, so it has no HEAD to adopt",
                f"give a commit, branch or tag, or run: voicelab vendor sync {name}",
            )
        scratch = target.parent / f".{target.name}.pin-scratch"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        run_git(["init", "-q", "--bare"], cwd=scratch)
        repo = scratch
    try:
        sha = _resolve_rev(spec, repo, rev, url, allow_file)
        subs: dict[str, tuple[str, str]] = {}
        for sub in spec.submodules:
            link_commit = gitlink(repo, sha, sub.path)
            if link_commit is None:
                raise VendorError(
                    f"{name} at {sha[:12]} has no submodule {sub.path}",
                    "pin a commit that has it, or drop the submodule from vendors.toml",
                )
            subs[sub.short] = (sub.commit, link_commit)
        missing = [
            p
            for p in spec.top_level_proof()
            if run_git(["cat-file", "-e", f"{sha}:{p}"], cwd=repo, check=False).returncode != 0
        ]
        if missing:
            raise VendorError(
                f"{name} at {sha[:12]} lacks {missing[0]}: not a usable {name}",
                "pin another revision",
            )
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    commits = {name: sha}
    commits.update({f"{name}.submodules.{k}": v[1] for k, v in subs.items()})
    result = PinResult(name, spec.commit, sha, subs, man.path)
    if result.changed:
        rewrite_manifest_commits(man.path, commits)
    return result
