"""Upstream checkouts under ``vendor/``: the manifest, sync, status, link, pin, runtime handle.

``vendors.toml`` (committed, at the VoiceLab root) names every upstream repository, its pinned
commit, the submodules that must be present and the files that prove a usable checkout. The
checkouts themselves live under ``vendor/`` (git-ignored): users may delete them and sync again.

Rules every operation here keeps:

* **Never destructive.** A checkout with local changes is never reset unless ``force`` is given;
  a HEAD that carries commits no branch holds is never moved away from. Errors leave the vendor
  as it was.
* **A partial clone is never mistaken for a good one.** Clones go to ``vendor/.<dir>.partial``
  and are renamed onto the final name only after checkout, submodules and verification. A
  leftover of a killed sync is removed by the next one. A lock file stops two syncs of the same
  vendor from racing.
* **Mirrors.** ``Sources`` rewrites URLs: ``--mirror PREFIX`` replaces ``https://github.com/``
  in every URL (submodules included), ``--url NAME=URL`` overrides one repository (submodules by
  their short name). Local paths and ``file://`` URLs work, so tests and offline users sync
  without a network.
* git runs with argv lists, ``GIT_TERMINAL_PROMPT=0`` (never waits for a password) and English
  messages, so its errors can be turned into one line.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import subprocess
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voicelab import console as vconsole
from voicelab.contract import RunOptions, Stage, StageResult
from voicelab.errors import ConfigError, EnvironmentProblem, VendorError, VoiceLabError
from voicelab.fsutil import atomic_write_text
from voicelab.paths import to_local_path
from voicelab.workspace import (
    MANIFEST_NAME,
    Workspace,
    find_root,
    load_toml,
    load_user_config,
    save_user_config,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)

COSYVOICE = "cosyvoice"
COSYVOICE_DIR_ENV = "VOICELAB_COSYVOICE_DIR"
PARTIAL_SUFFIX = ".partial"
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_GITHUB_PREFIXES = (
    "https://github.com/",
    "http://github.com/",
    "git://github.com/",
    "ssh://git@github.com/",
    "git@github.com:",
)
_SCP_RE = re.compile(r"^[\w.+-]+@[\w.-]+:")
_PROGRESS_RE = re.compile(r"(?:remote: )?([A-Z][A-Za-z ]+?):\s+(\d+)% \((\d+)/(\d+)\)")
_ENOSPC_MARKERS = ("no space left on device", "disk quota exceeded", "enospc")
# Environment that would make git act on some other repository than the one we name.
_GIT_LOCATION_VARS = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
    "GIT_CEILING_DIRECTORIES",
)


# ---------------------------------------------------------------------------------------------
# manifest
# ---------------------------------------------------------------------------------------------
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
    src = Path(__file__).resolve().parents[2] / MANIFEST_NAME
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


# ---------------------------------------------------------------------------------------------
# sources: mirrors and URL overrides
# ---------------------------------------------------------------------------------------------
def is_local_url(url: str) -> bool:
    """A local path or ``file://`` URL (as opposed to https/ssh/git or ``user@host:path``)."""
    if url.startswith("file://"):
        return True
    return "://" not in url and not _SCP_RE.match(url)


def _absolute_local(url: str) -> str:
    """Local paths become absolute (git runs them from other folders); URLs stay as they are."""
    if url.startswith("file://") or not is_local_url(url):
        return url
    return str(to_local_path(url).resolve())


def rewrite_github(url: str, mirror: str) -> str:
    """Replace the GitHub part of ``url`` by ``mirror``.

    ``https://github.com/A/B.git`` with ``https://ghproxy.net/https://github.com/`` gives
    ``https://ghproxy.net/https://github.com/A/B.git``; with ``https://gitclone.com/github.com``
    ``https://gitclone.com/github.com/A/B.git``; with ``/srv/git`` ``/srv/git/A/B.git``.
    """
    for prefix in _GITHUB_PREFIXES:
        if url.startswith(prefix):
            rest = url[len(prefix) :]
            if not mirror.startswith("file://") and is_local_url(mirror):
                return str(to_local_path(mirror).resolve() / rest)
            return mirror.rstrip("/") + "/" + rest
    return url


@dataclass
class Sources:
    """Where repositories come from: an optional GitHub mirror and per-name URL overrides."""

    mirror: str | None = None
    urls: dict[str, str] = field(default_factory=dict)

    def resolve(self, short: str | None, url: str) -> str:
        if short and short in self.urls:
            return _absolute_local(self.urls[short])
        if self.mirror:
            return rewrite_github(url, self.mirror)
        return url

    def is_empty(self) -> bool:
        return not self.mirror and not self.urls


def parse_url_overrides(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    urls: dict[str, str] = {}
    for item in items:
        name, sep, url = item.partition("=")
        if not sep or not name.strip() or not url.strip():
            raise ConfigError(
                f"--url {item!r} is not NAME=URL",
                "e.g. --url cosyvoice=https://gitee.com/x/CosyVoice.git --url matcha=/srv/Matcha",
            )
        urls[name.strip()] = _absolute_local(url.strip())
    return urls


def saved_sources() -> Sources:
    """The mirror and URL overrides kept in the user config file (``[vendor]``)."""
    section = load_user_config().get("vendor", {})
    if not isinstance(section, dict):
        return Sources()
    urls = section.get("urls") or {}
    return Sources(
        mirror=section.get("mirror") or None, urls={str(k): str(v) for k, v in urls.items()}
    )


def make_sources(
    mirror: str | None = None,
    urls: dict[str, str] | None = None,
    use_saved: bool = True,
    manifest: Manifest | None = None,
) -> Sources:
    """Command-line values over the saved ones. Unknown short names are refused."""
    base = saved_sources() if use_saved else Sources()
    merged = Sources(mirror=mirror or base.mirror, urls={**base.urls, **(urls or {})})
    if manifest is not None:
        unknown = sorted(set(urls or {}) - manifest.short_names())
        if unknown:
            raise ConfigError(
                f"--url names {', '.join(unknown)}, which vendors.toml does not list",
                f"use one of: {', '.join(sorted(manifest.short_names()))}",
            )
    return merged


def save_sources(mirror: str | None, urls: dict[str, str], clear: bool = False) -> Path:
    """Keep a mirror and URL overrides for every later sync (``clear`` drops the old ones)."""
    data = load_user_config()
    section = {} if clear else dict(data.get("vendor") or {})
    if mirror:
        section["mirror"] = mirror
    if urls:
        section["urls"] = {**(section.get("urls") or {}), **urls}
    if section:
        data["vendor"] = section
    else:
        data.pop("vendor", None)
    return save_user_config(data)


# ---------------------------------------------------------------------------------------------
# git
# ---------------------------------------------------------------------------------------------
class GitFailed(Exception):
    def __init__(self, argv: list[str], rc: int, output: str) -> None:
        super().__init__(f"{' '.join(argv)} exited {rc}")
        self.argv = argv
        self.rc = rc
        self.output = output

    def last_line(self) -> str:
        lines = [ln.strip() for ln in self.output.splitlines() if ln.strip()]
        fatal = [ln for ln in lines if ln.startswith(("fatal:", "error:"))]
        # The first fatal line is the cause; later ones ("clone of X failed") restate it.
        line = fatal[0] if fatal else (lines or [f"git exited {self.rc}"])[-1]
        return re.sub(r"^(fatal|error): ", "", line)

    def disk_full(self) -> bool:
        return any(m in self.output.lower() for m in _ENOSPC_MARKERS)


def git_exe() -> str:
    exe = shutil.which("git")
    if not exe:
        raise EnvironmentProblem(
            "git is not installed (vendor checkouts need it)",
            "install git, e.g. sudo apt install git",
        )
    return exe


def _git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _GIT_LOCATION_VARS}
    env.update(GIT_TERMINAL_PROMPT="0", GCM_INTERACTIVE="never", LC_ALL="C", LANGUAGE="C")
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    return env


def _git_argv(args: list[str], allow_file: bool) -> list[str]:
    argv = [git_exe(), "-c", "advice.detachedHead=false", "-c", "core.quotepath=false"]
    # A stalled network must end in an error, not a hang.
    argv += ["-c", "http.lowSpeedLimit=1000", "-c", "http.lowSpeedTime=60"]
    if allow_file:
        # Local submodule URLs are refused by default since git 2.38.1 (CVE-2022-39253); we only
        # allow them when the user named a local source.
        argv += ["-c", "protocol.file.allow=always"]
    return argv + args


def _git(
    args: list[str], cwd: Path | None = None, check: bool = True, allow_file: bool = False
) -> subprocess.CompletedProcess[str]:
    argv = _git_argv(args, allow_file)
    log.debug("git %s (in %s)", " ".join(args), cwd or ".")
    proc = subprocess.run(
        argv,
        cwd=cwd,
        env=_git_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    if check and proc.returncode != 0:
        raise GitFailed(args, proc.returncode, proc.stderr + proc.stdout)
    return proc


def _git_progress(args: list[str], cwd: Path | None, label: str, allow_file: bool) -> None:
    """Run a long git command (clone, fetch, submodule update) with a progress bar."""
    argv = _git_argv(args, allow_file)
    log.debug("git %s (in %s)", " ".join(args), cwd or ".")
    tail: deque[str] = deque(maxlen=40)
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=_git_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    try:
        with vconsole.make_progress(transient=True) as prog:
            task = prog.add_task(label, total=100)
            buf = b""
            while True:
                chunk = proc.stdout.read1(65536)  # type: ignore[attr-defined]
                if not chunk:
                    break
                parts = re.split(rb"[\r\n]", buf + chunk)
                buf = parts.pop()
                for raw in parts:
                    line = raw.decode("utf-8", "replace").strip()
                    if not line:
                        continue
                    m = _PROGRESS_RE.search(line)
                    if m:
                        prog.update(
                            task, description=f"{label}: {m[1].lower()}", completed=int(m[2])
                        )
                    else:
                        tail.append(line)
                        log.debug("git: %s", line)
            if buf.strip():
                tail.append(buf.decode("utf-8", "replace").strip())
            rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if rc != 0:
        raise GitFailed(args, rc, "\n".join(tail))


def _head(path: Path) -> str | None:
    """HEAD of the checkout whose top is exactly ``path``; None for anything else (a plain
    folder inside some other repository included)."""
    if not path.is_dir():
        return None
    proc = _git(["rev-parse", "--show-toplevel", "HEAD"], cwd=path, check=False)
    lines = proc.stdout.splitlines()  # the path may hold spaces
    if proc.returncode != 0 or len(lines) != 2:
        return None
    with contextlib.suppress(OSError):
        if Path(lines[0]).resolve() == path.resolve():
            return lines[1]
    return None


def _has_commit(repo: Path, rev: str) -> bool:
    return _git(["cat-file", "-e", f"{rev}^{{commit}}"], cwd=repo, check=False).returncode == 0


def _changed_files(repo: Path, prefix: str = "") -> list[str]:
    """Modified, staged, deleted and untracked (not ignored) files, submodules included."""
    out = _git(
        ["status", "--porcelain=v1", "-z", "--untracked-files=all", "--ignore-submodules=all"],
        cwd=repo,
    ).stdout
    changed: list[str] = []
    entries = iter(out.split("\0"))
    for entry in entries:
        if len(entry) < 4:
            continue
        changed.append(f"{entry[:2].strip()} {prefix}{entry[3:]}")
        if entry[0] in "RC":
            next(entries, None)  # the rename's source path
    for sub in _initialised_submodules(repo):
        changed += _changed_files(repo / sub, prefix=f"{prefix}{sub}/")
    return changed


def _gitmodules(repo: Path) -> dict[str, dict[str, str]]:
    """``{name: {"path": ..., "url": ...}}`` from the checkout's ``.gitmodules``."""
    if not (repo / ".gitmodules").is_file():
        return {}
    proc = _git(
        ["config", "-f", ".gitmodules", "-z", "--get-regexp", r"^submodule\..*\.(path|url)$"],
        cwd=repo,
        check=False,
    )
    mods: dict[str, dict[str, str]] = {}
    for entry in proc.stdout.split("\0"):
        key, _, value = entry.partition("\n")
        if not key.startswith("submodule."):
            continue
        name, _, attr = key[len("submodule.") :].rpartition(".")
        mods.setdefault(name, {})[attr] = value
    return {n: m for n, m in mods.items() if "path" in m}


def _initialised_submodules(repo: Path) -> list[str]:
    return [m["path"] for m in _gitmodules(repo).values() if _head(repo / m["path"]) is not None]


def _gitlink(repo: Path, rev: str, path: str) -> str | None:
    """The commit ``rev`` records for the submodule at ``path``."""
    out = _git(["ls-tree", "-z", rev, "--", path], cwd=repo, check=False).stdout
    for entry in out.split("\0"):
        meta, _, p = entry.partition("\t")
        parts = meta.split()
        if p == path and len(parts) == 3 and parts[1] == "commit":
            return parts[2]
    return None


# ---------------------------------------------------------------------------------------------
# status
# ---------------------------------------------------------------------------------------------
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


def vendor_dir(spec: VendorSpec, root: Path) -> Path:
    return root / spec.path


def _partial_dir(target: Path) -> Path:
    return target.parent / f".{target.name}{PARTIAL_SUFFIX}"


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
    st.partial = _partial_dir(d).exists()
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
    st.current = _head(d)
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
    st.changed = _changed_files(d)
    st.clean = not st.changed
    for sub in spec.submodules:
        st.submodules.append(SubmoduleState(sub.short, sub.path, sub.commit, _head(d / sub.path)))
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


# ---------------------------------------------------------------------------------------------
# sync
# ---------------------------------------------------------------------------------------------
@dataclass
class SyncResult:
    name: str
    action: str  # cloned | updated | up to date | linked | failed
    detail: str = ""
    commit: str | None = None
    error: VendorError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@contextlib.contextmanager
def _vendor_lock(target: Path) -> Iterator[None]:
    """One sync per vendor at a time: a second one would delete the first one's clone."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows runs VoiceLab under WSL
        yield
        return
    lock_path = target.parent / f".{target.name}.lock"
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise VendorError(
                f"another voicelab is syncing {target.name} right now",
                "wait for it to finish, then run the command again",
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_partial(target: Path) -> None:
    partial = _partial_dir(target)
    if partial.exists() or partial.is_symlink():
        log.info("removing the leftover of an interrupted clone: %s", partial)
        if partial.is_dir() and not partial.is_symlink():
            shutil.rmtree(partial)
        else:
            partial.unlink()


def _allow_file(spec: VendorSpec, sources: Sources) -> bool:
    urls = [sources.resolve(spec.name, spec.url)]
    urls += [sources.resolve(s.short, s.url) for s in spec.submodules]
    return any(is_local_url(u) for u in urls) or any(is_local_url(u) for u in sources.urls.values())


def _fetch_error(
    spec: VendorSpec, url: str, e: GitFailed, target: Path, label: str | None = None
) -> VendorError:
    """``label``: the repository fetched (a submodule's short name), default the vendor."""
    label = label or spec.name
    if e.disk_full():
        return VendorError(
            f"disk full while fetching {label} into {target.parent}",
            f"free some space there, then run: voicelab vendor sync {spec.name}",
        )
    return VendorError(
        f"cannot fetch {label} from {url}: {e.last_line()}",
        "check the network or the URL; behind a firewall use a mirror: voicelab vendor sync "
        f"{spec.name} --mirror https://MIRROR/ or --url {label}=URL",
    )


def _ensure_commit(
    spec: VendorSpec, repo: Path, commit: str, url: str, allow_file: bool, label: str
) -> None:
    """Make ``commit`` present in ``repo``, fetching from ``url`` if needed."""
    if _has_commit(repo, commit):
        return
    try:
        _git_progress(
            ["fetch", "--progress", "--", url, "+refs/heads/*:refs/remotes/origin/*"],
            repo,
            label,
            allow_file,
        )
    except GitFailed as e:
        raise _fetch_error(spec, url, e, repo, label) from None
    if not _has_commit(repo, commit):
        # Not on any branch: ask for the commit itself (GitHub and protocol v2 serve that).
        _git(["fetch", "--", url, commit], cwd=repo, check=False, allow_file=allow_file)
    if not _has_commit(repo, commit):
        raise VendorError(
            f"commit {commit[:12]} pinned for {label} is not on {url}",
            "the pin in vendors.toml may be wrong, or the mirror is behind upstream; "
            "voicelab vendor pin NAME REV moves a pin",
        )


def _checkout(repo: Path, commit: str, force: bool) -> None:
    _git(["checkout", "--detach", *(["--force"] if force else []), commit], cwd=repo)


def _remove_partial_submodule(repo: Path, name: str, sub_dir: Path) -> None:
    """Drop what a killed ``submodule update`` leaves (a module repository with no commit),
    which git itself never recovers from. A module that holds any commit is left alone."""
    gitdir = Path(_git(["rev-parse", "--absolute-git-dir"], cwd=repo).stdout.strip())
    module = gitdir / "modules" / name
    if not module.is_dir():
        return
    refs = _git(["--git-dir", str(module), "for-each-ref", "--count=1"], check=False)
    head = _git(["--git-dir", str(module), "rev-parse", "-q", "--verify", "HEAD"], check=False)
    if refs.returncode != 0 or refs.stdout.strip() or head.returncode == 0:
        return
    log.info("removing the leftover of an interrupted submodule clone: %s", module)
    shutil.rmtree(module)
    gitfile = sub_dir / ".git"
    if gitfile.is_file():
        gitfile.unlink()


def _sync_submodules(
    spec: VendorSpec,
    repo: Path,
    sources: Sources,
    allow_file: bool,
    force: bool,
    prefix: str = "",
    linked: bool = False,
) -> list[str]:
    """Initialise submodules (recursively) with rewritten URLs and check out their pins.

    The pin of a submodule is the manifest's commit where it lists the submodule, else the
    commit the superproject records. Only submodules that are missing or off their pin are
    touched, so a second sync does nothing. Returns what was done.

    In a ``linked`` checkout (the user's own) only missing submodules are added, at the commits
    that checkout records, and its URLs change only where a mirror or override asks for it.
    """
    mods = _gitmodules(repo)
    if not mods:
        return []
    done: list[str] = []
    by_path = {s.path: s for s in spec.submodules}
    _git(["submodule", "init"], cwd=repo, allow_file=allow_file)
    head = _git(["rev-parse", "HEAD"], cwd=repo).stdout.strip()
    for name, mod in mods.items():
        path = mod["path"]
        sub_spec = by_path.get(prefix + path)
        # `init` copied the .gitmodules URL into .git/config; `update` clones from there, so
        # that is where the mirror or override goes (and goes back to upstream without one).
        url = sources.resolve(sub_spec.short if sub_spec else None, mod.get("url", ""))
        key = f"submodule.{name}.url"
        configured = _git(["config", key], cwd=repo, check=False).stdout.strip()
        # A linked checkout keeps its own URLs unless a mirror or override rewrites them.
        wanted_url = url and not url.startswith(("./", "../"))
        if wanted_url and url != configured and (url != mod.get("url") or not linked):
            _git(["config", "--", key, url], cwd=repo)
            configured = url
        want = sub_spec.commit if sub_spec and not linked else _gitlink(repo, head, path)
        sub_dir = repo / path
        label = sub_spec.short if sub_spec else path
        current = _head(sub_dir)
        if linked and current is not None:
            done += _sync_submodules(
                spec, sub_dir, sources, allow_file, False, f"{prefix}{path}/", True
            )
            continue
        if current is None:
            _remove_partial_submodule(repo, name, sub_dir)
            try:
                _git_progress(
                    ["submodule", "update", "--init", "--progress", "--", path],
                    repo,
                    f"{spec.name}: {label}",
                    allow_file,
                )
            except GitFailed as e:
                if e.disk_full():
                    raise _fetch_error(spec, configured, e, repo, label) from None
                if "did not contain" in e.output or "not our ref" in e.output:
                    raise VendorError(
                        f"commit {(want or '')[:12]} of submodule {label} is not on {configured}",
                        "the mirror may be behind upstream; try another --url or --mirror",
                    ) from None
                raise VendorError(
                    f"cannot fetch submodule {label} of {spec.name} from {configured}: "
                    f"{e.last_line()}",
                    "check the network or the URL; behind a firewall use a mirror: "
                    f"--mirror https://MIRROR/ or --url {label}=URL",
                ) from None
            done.append(f"{label} checked out")
            current = _head(sub_dir)
        if want and current != want:
            # The submodule's own `origin` may still name an old source: fetch from ours.
            _ensure_commit(spec, sub_dir, want, configured, allow_file, label)
            _checkout(sub_dir, want, force)
            done.append(f"{label} at {want[:12]}")
        done += _sync_submodules(
            spec, sub_dir, sources, allow_file, force, f"{prefix}{path}/", linked
        )
    return done


def _verify(spec: VendorSpec, repo: Path) -> None:
    head = _head(repo)
    if head != spec.commit:
        raise VendorError(
            f"{spec.name} is at {(head or 'nothing')[:12]} after sync, not at {spec.commit[:12]}",
            f"run: voicelab vendor sync {spec.name} --force",
        )
    for sub in spec.submodules:
        cur = _head(repo / sub.path)
        if cur != sub.commit:
            raise VendorError(
                f"submodule {sub.short} ({sub.path}) is at {(cur or 'nothing')[:12]}, "
                f"not at {sub.commit[:12]}",
                f"run: voicelab vendor sync {spec.name} --force",
            )
    changed = _changed_files(repo)
    if changed:
        # e.g. a mirror that lacks some blobs: git checks out what it can and moves on.
        raise VendorError(
            f"{spec.name} at {spec.commit[:12]} did not check out cleanly: "
            f"{len(changed)} files differ (e.g. {changed[0][2:].strip()})",
            "the source may lack some objects; try another --mirror or --url",
        )
    missing = [p for p in spec.proof if not (repo / p).exists()]
    if missing:
        raise VendorError(
            f"{spec.name} at {spec.commit[:12]} lacks {missing[0]}",
            "the pin in vendors.toml may be wrong: voicelab vendor pin NAME REV",
        )


def _usable_partial(partial: Path) -> bool:
    """Whether ``partial`` is a repository an earlier, failed sync left (its objects can be
    reused), not a folder inside some other repository."""
    if not partial.is_dir() or partial.is_symlink():
        return False
    r = _git(["rev-parse", "--absolute-git-dir"], cwd=partial, check=False)
    return r.returncode == 0 and Path(r.stdout.strip()) == (partial / ".git").resolve()


def _clone(spec: VendorSpec, target: Path, sources: Sources) -> SyncResult:
    """Clone into ``.<dir>.partial``, then rename. Once the pinned commit is in, a later failure
    (a submodule's remote, the network, Ctrl-C) keeps that clone: the next sync fetches only
    what is missing instead of the whole history again."""
    url = sources.resolve(spec.name, spec.url)
    allow_file = _allow_file(spec, sources)
    partial = _partial_dir(target)
    keep = False  # whether a failure leaves the clone for the next sync to resume

    def discard() -> None:
        if not keep:
            shutil.rmtree(partial, ignore_errors=True)

    try:
        if _usable_partial(partial):
            log.info("%s: resuming the clone an earlier sync left (%s)", spec.name, partial)
        else:
            try:
                _git_progress(
                    ["clone", "--no-checkout", "--progress", "--", url, str(partial)],
                    None,
                    f"{spec.name}: cloning",
                    allow_file,
                )
            except GitFailed as e:
                raise _fetch_error(spec, url, e, target) from None
        _ensure_commit(spec, partial, spec.commit, url, allow_file, spec.name)
        keep = True
        _checkout(partial, spec.commit, force=False)
        subs = _sync_submodules(spec, partial, sources, allow_file, force=False)
        _verify(spec, partial)
        partial.rename(target)
    except GitFailed as e:
        if e.disk_full():
            keep = False  # the space is what the user needs back
            discard()
            raise _fetch_error(spec, url, e, target) from None
        discard()
        raise VendorError(
            f"cannot set up {spec.name}: git {' '.join(e.argv[:3])}: {e.last_line()}",
            f"run again: voicelab vendor sync {spec.name}",
        ) from None
    except OSError as e:
        keep = False
        discard()
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise VendorError(
                f"disk full while cloning {spec.name} into {target.parent}",
                f"free some space there, then run: voicelab vendor sync {spec.name}",
            ) from None
        raise VendorError(
            f"cannot write {spec.name} into {target.parent}: {e}",
            "check the folder's permissions and free space",
        ) from None
    except BaseException:
        # Ctrl-C, our own errors: nothing half-made stays behind but a resumable clone, which
        # keeps its .partial name and is never taken for a checkout.
        discard()
        raise
    detail = f"{spec.path} at {spec.commit[:12]}"
    if subs:
        detail += " (" + ", ".join(subs) + ")"
    return SyncResult(spec.name, "cloned", detail, spec.commit)


def _unreferenced_head(repo: Path) -> bool:
    """HEAD is detached and no branch or tag holds it: moving away would hide commits."""
    if _git(["symbolic-ref", "-q", "HEAD"], cwd=repo, check=False).returncode == 0:
        return False
    refs = _git(["for-each-ref", "--contains", "HEAD", "--count=1"], cwd=repo, check=False)
    return refs.returncode == 0 and not refs.stdout.strip()


def _dirty_error(spec: VendorSpec, changed: list[str]) -> VendorError:
    shown = ", ".join(c[2:].strip() for c in changed[:8])
    more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
    return VendorError(
        f"{spec.path} has local changes, left as is: {shown}{more}",
        f"drop them: voicelab vendor sync {spec.name} --force; keep them: commit them there, "
        f"then voicelab vendor pin {spec.name} HEAD",
    )


def _update(spec: VendorSpec, target: Path, sources: Sources, force: bool) -> SyncResult:
    url = sources.resolve(spec.name, spec.url)
    allow_file = _allow_file(spec, sources)
    changed = _changed_files(target)
    if changed and not force:
        raise _dirty_error(spec, changed)
    head = _head(target) or ""
    if head != spec.commit and not force and _unreferenced_head(target):
        raise VendorError(
            f"{spec.path} is at {head[:12]}, a commit no branch holds, not at the pin",
            f"keep it: voicelab vendor pin {spec.name} HEAD; drop it: "
            f"voicelab vendor sync {spec.name} --force",
        )
    did: list[str] = []
    try:
        origin = _git(["remote", "get-url", "origin"], cwd=target, check=False)
        if origin.returncode != 0:
            _git(["remote", "add", "--", "origin", url], cwd=target)
        elif origin.stdout.strip() != url:
            _git(["remote", "set-url", "--", "origin", url], cwd=target)
        if changed:
            _git(["reset", "--hard", "-q"], cwd=target)
            _git(["clean", "-ffdq"], cwd=target)
            for sub in _initialised_submodules(target):
                _git(["reset", "--hard", "-q"], cwd=target / sub)
                _git(["clean", "-ffdq"], cwd=target / sub)
            did.append(f"discarded {len(changed)} local changes")
        if head != spec.commit:
            _ensure_commit(spec, target, spec.commit, url, allow_file, spec.name)
            _checkout(target, spec.commit, force)
            did.append(f"{head[:12]} -> {spec.commit[:12]}")
        did += _sync_submodules(spec, target, sources, allow_file, force)
    except GitFailed as e:
        if e.disk_full():
            raise _fetch_error(spec, url, e, target) from None
        raise _git_error(spec, e) from None
    _verify(spec, target)
    if did:
        return SyncResult(spec.name, "updated", ", ".join(did), spec.commit)
    return SyncResult(spec.name, "up to date", f"{spec.path} at {spec.commit[:12]}", spec.commit)


def _sync_linked(spec: VendorSpec, root: Path, sources: Sources) -> SyncResult:
    """A linked checkout is the user's: only missing submodules are added, HEAD never moves."""
    target = vendor_dir(spec, root)
    if not target.exists():
        raise VendorError(
            f"{spec.path} links to {os.readlink(target)}, which does not exist",
            f"voicelab vendor link {spec.name} DIR, or delete the link and sync again",
        )
    head = _head(target)
    did: list[str] = []
    if head is not None:
        missing = [s for s in spec.submodules if _head(target / s.path) is None]
        if missing:
            allow_file = _allow_file(spec, sources)
            try:
                did = _sync_submodules(spec, target, sources, allow_file, False, linked=True)
            except GitFailed as e:
                raise VendorError(
                    f"cannot add the submodules of the linked {spec.name}: {e.last_line()}",
                    f"run git submodule update --init --recursive in {target.resolve()}",
                ) from None
    st = inspect_vendor(spec, root)
    if st.problem:
        raise VendorError(f"linked {spec.name}: {st.problem}", st.action)
    detail = f"{spec.path} -> {target.resolve()}"
    if st.warning:
        detail += f"; warning: {st.warning}"
        log.warning("%s: %s", spec.name, st.warning)
    return SyncResult(spec.name, "linked", detail + ("; " + ", ".join(did) if did else ""), head)


def _git_error(spec: VendorSpec, e: GitFailed) -> VendorError:
    """A git failure we did not foresee, as one line with the most likely way out."""
    if "index.lock" in e.output:
        return VendorError(
            f"{spec.name}: git is locked ({e.last_line()})",
            "an interrupted git left an index.lock there: delete it if no git runs in that "
            f"checkout, then run voicelab vendor sync {spec.name} again",
        )
    return VendorError(
        f"{spec.name}: git {' '.join(e.argv[:2])} failed: {e.last_line()}",
        f"see voicelab vendor status {spec.name}; --force resets the checkout",
    )


def sync_vendor(spec: VendorSpec, root: Path, sources: Sources, force: bool = False) -> SyncResult:
    """Bring one vendor to its pin. Raises VendorError; the vendor is left as it was."""
    try:
        return _sync_vendor(spec, root, sources, force)
    except GitFailed as e:
        raise _git_error(spec, e) from None


def _sync_vendor(spec: VendorSpec, root: Path, sources: Sources, force: bool) -> SyncResult:
    target = vendor_dir(spec, root)
    with _vendor_lock(target):
        if not (_usable_partial(_partial_dir(target)) and not target.exists()):
            _remove_partial(target)
        if target.is_symlink():
            return _sync_linked(spec, root, sources)
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        if not target.exists():
            return _clone(spec, target, sources)
        if _head(target) is None:
            raise VendorError(
                f"{spec.path} is a plain folder, not a git checkout: left as is",
                f"move it away, then voicelab vendor sync {spec.name}, "
                f"or use voicelab vendor link {spec.name} DIR",
            )
        return _update(spec, target, sources, force)


def sync(
    names: list[str] | None = None,
    root: Path | None = None,
    sources: Sources | None = None,
    force: bool = False,
) -> list[SyncResult]:
    """Sync ``names`` (all vendors by default). Each vendor is tried; failures are returned
    per vendor so one bad vendor does not hide the others' results."""
    git_exe()
    root = root or find_root()
    man = load_manifest(root)
    specs = [man.get(n) for n in names] if names else list(man.vendors.values())
    sources = sources if sources is not None else make_sources(manifest=man)
    results = []
    for spec in specs:
        try:
            results.append(sync_vendor(spec, root, sources, force))
        except VendorError as e:
            results.append(SyncResult(spec.name, "failed", e.one_line(), error=e))
    return results


# ---------------------------------------------------------------------------------------------
# link
# ---------------------------------------------------------------------------------------------
def link(name: str, path: str | os.PathLike[str], root: Path | None = None) -> VendorState:
    """Use an existing checkout at ``path`` for ``name`` (a symlink under vendor/)."""
    root = root or find_root()
    spec = load_manifest(root).get(name)
    src = to_local_path(path).resolve()
    if not src.is_dir():
        raise VendorError(f"{src} is not a folder", f"give the folder of a {name} checkout")
    missing = [p for p in spec.top_level_proof() if not (src / p).exists()]
    if missing:
        raise VendorError(
            f"{src} is not a {name} checkout: {missing[0]} is missing",
            f"give the folder of a clone of {spec.url}",
        )
    dest = vendor_dir(spec, root)
    if dest.resolve() == src and not dest.is_symlink():
        raise VendorError(f"{src} is already {spec.path}", "nothing to link")
    if dest.exists() and not dest.is_symlink():
        if not dest.is_dir() or any(dest.iterdir()):
            raise VendorError(
                f"{spec.path} already holds a checkout or folder: left as is",
                f"move or delete {dest} first (a sync can re-create it), then link again",
            )
        dest.rmdir()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.link-tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(src, tmp, target_is_directory=True)
    os.replace(tmp, dest)
    st = inspect_vendor(spec, root)
    if st.warning:
        log.warning("%s: %s", name, st.warning)
    return st


# ---------------------------------------------------------------------------------------------
# pin
# ---------------------------------------------------------------------------------------------
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
        proc = _git(
            ["rev-parse", "--verify", "--quiet", f"{cand}^{{commit}}"], cwd=repo, check=False
        )
        return proc.stdout.strip() if proc.returncode == 0 else None

    # HEAD, a local branch or tag, or a commit this checkout already has.
    sha = rev_parse(rev)
    if sha:
        return sha
    if (
        _git(["fetch", "--", url, rev], cwd=repo, check=False, allow_file=allow_file).returncode
        == 0
    ):
        sha = rev_parse("FETCH_HEAD")
        if sha:
            return sha
    # A short id, or a commit some branch holds: fetch the branches and tags, look again.
    try:
        _git(
            ["fetch", "--", url, "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"],
            cwd=repo,
            allow_file=allow_file,
        )
    except GitFailed as e:
        raise _fetch_error(spec, url, e, repo) from None
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
        with _vendor_lock(target):  # not while a sync works on it
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
    allow_file = _allow_file(spec, sources)
    target = vendor_dir(spec, root)
    scratch: Path | None = None
    if _head(target) is not None:
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
        _git(["init", "-q", "--bare"], cwd=scratch)
        repo = scratch
    try:
        sha = _resolve_rev(spec, repo, rev, url, allow_file)
        subs: dict[str, tuple[str, str]] = {}
        for sub in spec.submodules:
            link_commit = _gitlink(repo, sha, sub.path)
            if link_commit is None:
                raise VendorError(
                    f"{name} at {sha[:12]} has no submodule {sub.path}",
                    "pin a commit that has it, or drop the submodule from vendors.toml",
                )
            subs[sub.short] = (sub.commit, link_commit)
        missing = [
            p
            for p in spec.top_level_proof()
            if _git(["cat-file", "-e", f"{sha}:{p}"], cwd=repo, check=False).returncode != 0
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


# ---------------------------------------------------------------------------------------------
# runtime handle
# ---------------------------------------------------------------------------------------------
@dataclass
class VendorRuntime:
    """What later stages need to run upstream code: the checkout, import paths, environment."""

    name: str
    root: Path
    commit: str
    import_paths: list[Path]

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """A copy of ``base`` (default ``os.environ``) with the import paths first on
        PYTHONPATH and UTF-8 stdio for the subprocess."""
        env = dict(os.environ if base is None else base)
        paths = [str(p) for p in self.import_paths]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env["PYTHONIOENCODING"] = "UTF-8"
        return env


_COSYVOICE_DEFAULT = VendorSpec(
    name=COSYVOICE,
    url="https://github.com/FunAudioLLM/CosyVoice.git",
    commit="ace7c47f41bbd303aa6bf1ea80e6f9fbd595cd40",
    path="vendor/CosyVoice",
    proof=[
        "cosyvoice/bin/train.py",
        "cosyvoice/cli/cosyvoice.py",
        "examples/libritts/cosyvoice3/conf/cosyvoice3.yaml",
        "third_party/Matcha-TTS/matcha/utils/audio.py",
    ],
    import_paths=[".", "third_party/Matcha-TTS"],
)


def runtime(name: str, root: Path | None = None, checkout: Path | None = None) -> VendorRuntime:
    """The runtime handle of any vendor; ``checkout`` overrides where it lives."""
    hint = f"run: voicelab vendor sync {name}"
    try:
        spec = load_manifest(root).get(name)
    except ConfigError:
        if name != COSYVOICE:
            raise
        spec = _COSYVOICE_DEFAULT
    d = checkout if checkout is not None else vendor_dir(spec, root or find_root())
    where = str(d) if checkout is not None else spec.path
    if not d.exists():
        raise VendorError(f"upstream {name} is missing ({where} does not exist)", hint)
    commit = ""
    if shutil.which("git"):
        commit = _head(d) or ""
        if not commit and checkout is None:
            raise VendorError(f"upstream {name} is broken ({where} is not a git checkout)", hint)
    missing = [p for p in spec.proof if not (d / p).exists()]
    if missing:
        raise VendorError(
            f"upstream {name} is missing or broken ({where} lacks {missing[0]})", hint
        )
    if commit and commit != spec.commit:
        log.warning(
            "%s at %s is at %s, not at the pin %s", name, where, commit[:12], spec.commit[:12]
        )
    root_dir = d.resolve()
    return VendorRuntime(
        name=name,
        root=root_dir,
        commit=commit or "unknown",
        import_paths=[(root_dir / p).resolve() for p in spec.import_paths],
    )


def cosyvoice_runtime(root: Path | None = None) -> VendorRuntime:
    """The CosyVoice checkout later stages run: ``VOICELAB_COSYVOICE_DIR`` if set (used as is),
    else ``vendor/CosyVoice`` of the VoiceLab root. Raises VendorError when it is missing or
    broken; a checkout off its pin only logs a warning."""
    override = os.environ.get(COSYVOICE_DIR_ENV)
    checkout = to_local_path(override) if override else None
    return runtime(COSYVOICE, root, checkout)


def cosyvoice_expected_dir(root: Path | None = None) -> Path:
    """Where the CosyVoice checkout is looked for (``VOICELAB_COSYVOICE_DIR``, else the path
    ``voicelab vendor sync`` creates), whether it exists or not."""
    override = os.environ.get(COSYVOICE_DIR_ENV)
    if override:
        return to_local_path(override)
    try:
        spec = load_manifest(root).get(COSYVOICE)
    except ConfigError:
        spec = _COSYVOICE_DEFAULT
    return vendor_dir(spec, root or find_root())


# ---------------------------------------------------------------------------------------------
# The stage contract (voicelab.contract): the checkout at its pin
# ---------------------------------------------------------------------------------------------
def stage_params(ws: Workspace, opts: RunOptions) -> dict[str, Any]:
    return {"commit": load_manifest().get(COSYVOICE).commit}


def stage_outputs(ws: Workspace, opts: RunOptions) -> list[Path]:
    try:
        root = cosyvoice_runtime().root
    except VoiceLabError:  # missing or broken: its expected path is missing, so the stage is stale
        root = cosyvoice_expected_dir()
    return [root / "cosyvoice" / "bin" / "train.py"]


def run(ws: Workspace, opts: RunOptions) -> StageResult:
    (res,) = sync([COSYVOICE])
    if res.error is not None:
        raise res.error
    log.info("vendor cosyvoice: %s %s", res.action, res.detail)
    commit = cosyvoice_runtime().commit
    figures = {"commit": commit, "action": res.action}
    return StageResult(stage_outputs(ws, opts), figures, f"cosyvoice {res.action} at {commit}")


STAGE = Stage(
    "vendor",
    (),
    stage_params,
    run,
    stage_outputs,
    summary="upstream CosyVoice checkout at its pin",
)
