"""Submodules of a checkout (Matcha-TTS ...): brought to the commits the pin records."""

from __future__ import annotations

import sys
from pathlib import Path

from voicelab.errors import VendorError

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover
    pass
from voicelab.vendor.git import (
    GitFailed,
    checkout_commit,
    ensure_commit,
    fetch_error,
    git_progress,
    gitlink,
    gitmodules,
    head_of,
    remove_partial_submodule,
    run_git,
)
from voicelab.vendor.manifest import VendorSpec
from voicelab.vendor.sources import Sources


def sync_submodules(
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
    mods = gitmodules(repo)
    if not mods:
        return []
    done: list[str] = []
    by_path = {s.path: s for s in spec.submodules}
    run_git(["submodule", "init"], cwd=repo, allow_file=allow_file)
    head = run_git(["rev-parse", "HEAD"], cwd=repo).stdout.strip()
    for name, mod in mods.items():
        path = mod["path"]
        sub_spec = by_path.get(prefix + path)
        # `init` copied the .gitmodules URL into .git/config; `update` clones from there, so
        # that is where the mirror or override goes (and goes back to upstream without one).
        url = sources.resolve(sub_spec.short if sub_spec else None, mod.get("url", ""))
        key = f"submodule.{name}.url"
        configured = run_git(["config", key], cwd=repo, check=False).stdout.strip()
        # A linked checkout keeps its own URLs unless a mirror or override rewrites them.
        wanted_url = url and not url.startswith(("./", "../"))
        if wanted_url and url != configured and (url != mod.get("url") or not linked):
            run_git(["config", "--", key, url], cwd=repo)
            configured = url
        want = sub_spec.commit if sub_spec and not linked else gitlink(repo, head, path)
        sub_dir = repo / path
        label = sub_spec.short if sub_spec else path
        current = head_of(sub_dir)
        if linked and current is not None:
            done += sync_submodules(
                spec, sub_dir, sources, allow_file, False, f"{prefix}{path}/", True
            )
            continue
        if current is None:
            remove_partial_submodule(repo, name, sub_dir)
            try:
                git_progress(
                    ["submodule", "update", "--init", "--progress", "--", path],
                    repo,
                    f"{spec.name}: {label}",
                    allow_file,
                )
            except GitFailed as e:
                if e.disk_full():
                    raise fetch_error(spec, configured, e, repo, label) from None
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
            current = head_of(sub_dir)
        if want and current != want:
            # The submodule's own `origin` may still name an old source: fetch from ours.
            ensure_commit(spec, sub_dir, want, configured, allow_file, label)
            checkout_commit(sub_dir, want, force)
            done.append(f"{label} at {want[:12]}")
        done += sync_submodules(
            spec, sub_dir, sources, allow_file, force, f"{prefix}{path}/", linked
        )
    return done
