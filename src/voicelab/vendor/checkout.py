"""``voicelab vendor sync``: clone or update a checkout to its pin. Never destructive (local changes
are kept unless forced); a partial clone goes to ``vendor/.<dir>.partial`` and is renamed only
after checkout, submodules and verification; a lock stops two syncs of one vendor racing."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from voicelab.errors import VendorError
from voicelab.paths import to_local_path
from voicelab.workspace import (
    find_root,
)

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover
    pass
from voicelab.vendor.git import (
    GitFailed,
    changed_files,
    checkout_commit,
    ensure_commit,
    fetch_error,
    git_exe,
    git_progress,
    head_of,
    initialised_submodules,
    run_git,
)
from voicelab.vendor.manifest import VendorSpec, load_manifest, partial_dir, vendor_dir
from voicelab.vendor.sources import Sources, file_urls_allowed, make_sources
from voicelab.vendor.status import VendorState, inspect_vendor
from voicelab.vendor.submodules import sync_submodules

log = logging.getLogger(__name__)


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
def vendor_lock(target: Path) -> Iterator[None]:
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
    partial = partial_dir(target)
    if partial.exists() or partial.is_symlink():
        log.info("removing the leftover of an interrupted clone: %s", partial)
        if partial.is_dir() and not partial.is_symlink():
            shutil.rmtree(partial)
        else:
            partial.unlink()


def _verify(spec: VendorSpec, repo: Path) -> None:
    head = head_of(repo)
    if head != spec.commit:
        raise VendorError(
            f"{spec.name} is at {(head or 'nothing')[:12]} after sync, not at {spec.commit[:12]}",
            f"run: voicelab vendor sync {spec.name} --force",
        )
    for sub in spec.submodules:
        cur = head_of(repo / sub.path)
        if cur != sub.commit:
            raise VendorError(
                f"submodule {sub.short} ({sub.path}) is at {(cur or 'nothing')[:12]}, "
                f"not at {sub.commit[:12]}",
                f"run: voicelab vendor sync {spec.name} --force",
            )
    changed = changed_files(repo)
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
    r = run_git(["rev-parse", "--absolute-git-dir"], cwd=partial, check=False)
    return r.returncode == 0 and Path(r.stdout.strip()) == (partial / ".git").resolve()


def _clone(spec: VendorSpec, target: Path, sources: Sources) -> SyncResult:
    """Clone into ``.<dir>.partial``, then rename. Once the pinned commit is in, a later failure
    (a submodule's remote, the network, Ctrl-C) keeps that clone: the next sync fetches only
    what is missing instead of the whole history again."""
    url = sources.resolve(spec.name, spec.url)
    allow_file = file_urls_allowed(spec, sources)
    partial = partial_dir(target)
    keep = False  # whether a failure leaves the clone for the next sync to resume

    def discard() -> None:
        if not keep:
            shutil.rmtree(partial, ignore_errors=True)

    try:
        if _usable_partial(partial):
            log.info("%s: resuming the clone an earlier sync left (%s)", spec.name, partial)
        else:
            try:
                git_progress(
                    ["clone", "--no-checkout", "--progress", "--", url, str(partial)],
                    None,
                    f"{spec.name}: cloning",
                    allow_file,
                )
            except GitFailed as e:
                raise fetch_error(spec, url, e, target) from None
        ensure_commit(spec, partial, spec.commit, url, allow_file, spec.name)
        keep = True
        checkout_commit(partial, spec.commit, force=False)
        subs = sync_submodules(spec, partial, sources, allow_file, force=False)
        _verify(spec, partial)
        partial.rename(target)
    except GitFailed as e:
        if e.disk_full():
            keep = False  # the space is what the user needs back
            discard()
            raise fetch_error(spec, url, e, target) from None
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
    if run_git(["symbolic-ref", "-q", "HEAD"], cwd=repo, check=False).returncode == 0:
        return False
    refs = run_git(["for-each-ref", "--contains", "HEAD", "--count=1"], cwd=repo, check=False)
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
    allow_file = file_urls_allowed(spec, sources)
    changed = changed_files(target)
    if changed and not force:
        raise _dirty_error(spec, changed)
    head = head_of(target) or ""
    if head != spec.commit and not force and _unreferenced_head(target):
        raise VendorError(
            f"{spec.path} is at {head[:12]}, a commit no branch holds, not at the pin",
            f"keep it: voicelab vendor pin {spec.name} HEAD; drop it: "
            f"voicelab vendor sync {spec.name} --force",
        )
    did: list[str] = []
    try:
        origin = run_git(["remote", "get-url", "origin"], cwd=target, check=False)
        if origin.returncode != 0:
            run_git(["remote", "add", "--", "origin", url], cwd=target)
        elif origin.stdout.strip() != url:
            run_git(["remote", "set-url", "--", "origin", url], cwd=target)
        if changed:
            run_git(["reset", "--hard", "-q"], cwd=target)
            run_git(["clean", "-ffdq"], cwd=target)
            for sub in initialised_submodules(target):
                run_git(["reset", "--hard", "-q"], cwd=target / sub)
                run_git(["clean", "-ffdq"], cwd=target / sub)
            did.append(f"discarded {len(changed)} local changes")
        if head != spec.commit:
            ensure_commit(spec, target, spec.commit, url, allow_file, spec.name)
            checkout_commit(target, spec.commit, force)
            did.append(f"{head[:12]} -> {spec.commit[:12]}")
        did += sync_submodules(spec, target, sources, allow_file, force)
    except GitFailed as e:
        if e.disk_full():
            raise fetch_error(spec, url, e, target) from None
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
    head = head_of(target)
    did: list[str] = []
    if head is not None:
        missing = [s for s in spec.submodules if head_of(target / s.path) is None]
        if missing:
            allow_file = file_urls_allowed(spec, sources)
            try:
                did = sync_submodules(spec, target, sources, allow_file, False, linked=True)
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
    with vendor_lock(target):
        if not (_usable_partial(partial_dir(target)) and not target.exists()):
            _remove_partial(target)
        if target.is_symlink():
            return _sync_linked(spec, root, sources)
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        if not target.exists():
            return _clone(spec, target, sources)
        if head_of(target) is None:
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
