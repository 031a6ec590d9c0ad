"""git, run with argv lists, ``GIT_TERMINAL_PROMPT=0`` (never waits for a password) and English
messages so its errors turn into one line; small queries of a checkout."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
from collections import deque
from pathlib import Path

from voicelab import console as vconsole
from voicelab.errors import EnvironmentProblem, VendorError

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover
    pass
from voicelab.vendor.manifest import VendorSpec

log = logging.getLogger(__name__)


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


def run_git(
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


def git_progress(args: list[str], cwd: Path | None, label: str, allow_file: bool) -> None:
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


def head_of(path: Path) -> str | None:
    """HEAD of the checkout whose top is exactly ``path``; None for anything else (a plain
    folder inside some other repository included)."""
    if not path.is_dir():
        return None
    proc = run_git(["rev-parse", "--show-toplevel", "HEAD"], cwd=path, check=False)
    lines = proc.stdout.splitlines()  # the path may hold spaces
    if proc.returncode != 0 or len(lines) != 2:
        return None
    with contextlib.suppress(OSError):
        if Path(lines[0]).resolve() == path.resolve():
            return lines[1]
    return None


def _has_commit(repo: Path, rev: str) -> bool:
    return run_git(["cat-file", "-e", f"{rev}^{{commit}}"], cwd=repo, check=False).returncode == 0


def changed_files(repo: Path, prefix: str = "") -> list[str]:
    """Modified, staged, deleted and untracked (not ignored) files, submodules included."""
    out = run_git(
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
    for sub in initialised_submodules(repo):
        changed += changed_files(repo / sub, prefix=f"{prefix}{sub}/")
    return changed


def gitmodules(repo: Path) -> dict[str, dict[str, str]]:
    """``{name: {"path": ..., "url": ...}}`` from the checkout's ``.gitmodules``."""
    if not (repo / ".gitmodules").is_file():
        return {}
    proc = run_git(
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


def initialised_submodules(repo: Path) -> list[str]:
    return [m["path"] for m in gitmodules(repo).values() if head_of(repo / m["path"]) is not None]


def gitlink(repo: Path, rev: str, path: str) -> str | None:
    """The commit ``rev`` records for the submodule at ``path``."""
    out = run_git(["ls-tree", "-z", rev, "--", path], cwd=repo, check=False).stdout
    for entry in out.split("\0"):
        meta, _, p = entry.partition("\t")
        parts = meta.split()
        if p == path and len(parts) == 3 and parts[1] == "commit":
            return parts[2]
    return None


def fetch_error(
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


def ensure_commit(
    spec: VendorSpec, repo: Path, commit: str, url: str, allow_file: bool, label: str
) -> None:
    """Make ``commit`` present in ``repo``, fetching from ``url`` if needed."""
    if _has_commit(repo, commit):
        return
    try:
        git_progress(
            ["fetch", "--progress", "--", url, "+refs/heads/*:refs/remotes/origin/*"],
            repo,
            label,
            allow_file,
        )
    except GitFailed as e:
        raise fetch_error(spec, url, e, repo, label) from None
    if not _has_commit(repo, commit):
        # Not on any branch: ask for the commit itself (GitHub and protocol v2 serve that).
        run_git(["fetch", "--", url, commit], cwd=repo, check=False, allow_file=allow_file)
    if not _has_commit(repo, commit):
        raise VendorError(
            f"commit {commit[:12]} pinned for {label} is not on {url}",
            "the pin in vendors.toml may be wrong, or the mirror is behind upstream; "
            "voicelab vendor pin NAME REV moves a pin",
        )


def checkout_commit(repo: Path, commit: str, force: bool) -> None:
    run_git(["checkout", "--detach", *(["--force"] if force else []), commit], cwd=repo)


def remove_partial_submodule(repo: Path, name: str, sub_dir: Path) -> None:
    """Drop what a killed ``submodule update`` leaves (a module repository with no commit),
    which git itself never recovers from. A module that holds any commit is left alone."""
    gitdir = Path(run_git(["rev-parse", "--absolute-git-dir"], cwd=repo).stdout.strip())
    module = gitdir / "modules" / name
    if not module.is_dir():
        return
    refs = run_git(["--git-dir", str(module), "for-each-ref", "--count=1"], check=False)
    head = run_git(["--git-dir", str(module), "rev-parse", "-q", "--verify", "HEAD"], check=False)
    if refs.returncode != 0 or refs.stdout.strip() or head.returncode == 0:
        return
    log.info("removing the leftover of an interrupted submodule clone: %s", module)
    shutil.rmtree(module)
    gitfile = sub_dir / ".git"
    if gitfile.is_file():
        gitfile.unlink()
