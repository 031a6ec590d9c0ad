"""Bringing a model dir to its manifest: fetch only what is missing, truncated or corrupt, keep
the manifest, switch the RL llm; ``download_cosyvoice3``."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from voicelab.errors import EnvironmentProblem, ModelError, VoiceLabError
from voicelab.fsutil import (
    atomic_write_json,
    free_bytes,
    link_or_copy,
    quick_fingerprint,
)
from voicelab.models import catalogue
from voicelab.models.catalogue import (
    MANIFEST_FILE,
    SMALL_EXTRA_BYTES,
    FileSpec,
    human,
    pin_error,
    pins_of,
)
from voicelab.models.hub_errors import classify_hub_error, hub_errors
from voicelab.models.hubs import Fetcher, other_source_hint
from voicelab.models.verify import (
    VerifyReport,
    apply_pins,
    check_file,
    digest,
    read_manifest,
    specs_from_json,
    specs_to_json,
    verify_model_dir,
)

log = logging.getLogger(__name__)


@dataclass
class SyncResult:
    model_dir: Path
    report: VerifyReport
    fetched: list[str] = field(default_factory=list)
    contacted_hub: bool = False
    hashes_checked: bool = False
    note: str = ""


def _wanted(
    remote: Mapping[str, FileSpec], builtin: Mapping[str, FileSpec], want: set[str] | None
) -> set[str]:
    if want is None:
        return set(remote)
    # Small files we know nothing about (README, configuration.json) come along; known optional
    # files (llm.rl.pt, the TRT ONNX: gigabytes) only when asked for.
    extras = {
        r for r, s in remote.items() if r not in builtin and (s.size or 0) <= SMALL_EXTRA_BYTES
    }
    return set(want) | extras


def sync_model_dir(
    dest: str | os.PathLike[str],
    fetcher: Fetcher,
    builtin: Mapping[str, FileSpec] | None = None,
    want: Iterable[str] | None = None,
    llm: str | None = None,
) -> SyncResult:
    """Make ``dest`` hold a verified copy of the files in ``want`` (default: the required ones of
    ``builtin``; ``want=None`` with an empty ``builtin`` means every file of the repo).

    A dir already verified against the hub (stored manifest, unchanged files) is complete
    without any network call. Otherwise the hub's listing (sizes, hashes) is fetched, every
    present file is checked against it (hashed once, then trusted while its inode, size and
    mtime stay the same) and only missing or bad files are fetched again.
    """
    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    builtin = dict(catalogue.COSYVOICE3_FILES if builtin is None else builtin)
    want_set = (
        set(want) if want is not None else ({p for p, s in builtin.items() if s.required} or None)
    )
    man = read_manifest(root)
    verified: dict[str, str] = dict(man.get("verified") or {})
    pins = pins_of(builtin)
    stored = specs_from_json(man["files"]) if isinstance(man.get("files"), dict) else {}
    stored = apply_pins(stored, pins, None)
    same_revision = fetcher.revision in (None, "master") or fetcher.revision == man.get("revision")

    # 1. Verified before, same revision, and every wanted file still as it was: done, offline.
    local_want = want_set if want_set is not None else set(stored)
    if stored and same_revision and local_want <= set(stored):
        checks = [check_file(root, stored[r], "changed", verified) for r in sorted(local_want)]
        if all(c.ok for c in checks):
            report = verify_model_dir(root, expected=builtin)
            return SyncResult(root, report, hashes_checked=True, note="already complete")

    # 2. Ask the hub what the files should be.
    try:
        with hub_errors(fetcher.source, fetcher.endpoint, fetcher.repo):
            remote = fetcher.remote_manifest()
    except VoiceLabError as err:
        if classify_hub_error(err.__cause__ or err) not in ("offline", "network"):
            raise
        # Offline: a dir whose sizes all match is usable; say what could not be checked.
        local = {r: s for r, s in (stored or builtin).items() if want_set is None or r in want_set}
        checks = [
            check_file(root, s, "changed" if s.path in pins else "none", verified)
            for s in apply_pins(local, pins, None).values()
        ]
        if local and all(c.ok for c in checks):
            report = verify_model_dir(root, expected=builtin)
            log.warning("%s; sizes match, hashes not checked", err.message)
            return SyncResult(root, report, note="offline: sizes match, hashes not checked")
        raise
    if not remote:
        raise ModelError(
            f"{fetcher.repo} at {fetcher.endpoint} lists no files", "check --revision and --source"
        )
    specs = {
        rel: replace(s, required=builtin[rel].required if rel in builtin else False)
        for rel, s in remote.items()
    }
    # a listing never overrides a pin
    specs = apply_pins(specs, pins, fetcher.endpoint, fetcher.source == "local")
    missing_required = [
        r for r in (want_set or ()) if r not in specs and builtin.get(r, FileSpec(r, None)).required
    ]
    if missing_required:
        raise ModelError(
            f"{fetcher.repo} at {fetcher.endpoint} lacks {', '.join(sorted(missing_required))}",
            other_source_hint(fetcher, "is incomplete or the hub's copy changed"),
        )
    targets = _wanted(specs, builtin, want_set) & set(specs)
    # Also repair optional files that are present (a truncated llm.rl.pt is still wrong).
    targets |= {r for r in specs if (root / r).exists()}

    checks = {r: check_file(root, specs[r], "changed", verified) for r in sorted(targets)}
    bad = [r for r, c in checks.items() if not c.ok]
    state = llm or str(man.get("llm", "base"))
    # Record the listing and the hashes done so far at once, and after every file: an
    # interrupted run then neither re-hashes nor re-fetches what was already right.
    _write_manifest(root, fetcher, specs, verified, llm=state, pins=pins)
    need = sum(specs[r].size or 0 for r in bad)
    if need and free_bytes(root) < need + (64 << 20):
        raise EnvironmentProblem(
            f"{human(need)} to download but only {human(free_bytes(root))} free at {root}",
            "free some space or pass --dest on a bigger disk",
        )
    fetched = []
    for rel in bad:
        why = checks[rel].status
        log.info(
            "%s %s (%s) from %s",
            "fetching" if why == "missing" else f"re-fetching ({why})",
            rel,
            human(specs[rel].size or 0),
            fetcher.endpoint,
        )
        target = root / rel
        if target.exists() or target.is_symlink():
            # A present but wrong file would be taken as done by the client (local_dir keeps
            # its own metadata): remove it so it is really fetched again.
            target.unlink()
        with hub_errors(fetcher.source, fetcher.endpoint, fetcher.repo):
            got = fetcher.fetch(rel)
        if Path(got).resolve() != target.resolve() and Path(got).exists():
            link_or_copy(got, target)
        check = check_file(root, specs[rel], "all", verified)
        if not check.ok and rel in pins and check.status == "hash":
            got_hash = digest(target, "sha256")
            target.unlink()  # never leave a modified code-like file where upstream loads it
            raise pin_error(rel, got_hash, pins[rel], fetcher.endpoint, fetcher.source == "local")
        if not check.ok:
            raise ModelError(
                f"{rel} from {fetcher.endpoint} is still wrong after download "
                f"({check.status}: {check.actual_size} bytes, expected {specs[rel].size})",
                other_source_hint(fetcher, "may hold a different revision")
                + ("" if fetcher.source == "local" else ", or --revision"),
            )
        fetched.append(rel)
        _write_manifest(root, fetcher, specs, verified, llm=state, pins=pins)
    report = verify_model_dir(root, expected=builtin)
    return SyncResult(root, report, fetched, contacted_hub=True, hashes_checked=True)


def _write_manifest(
    root: Path,
    fetcher: Fetcher,
    specs: Mapping[str, FileSpec],
    verified: Mapping[str, str],
    llm: str,
    pins: Mapping[str, str] | None = None,
) -> None:
    # Keep only fingerprints of files that are still there (the map would otherwise grow).
    live = set()
    for p in root.rglob("*"):
        with contextlib.suppress(OSError):
            if p.is_file():
                live.add(quick_fingerprint(p))
    atomic_write_json(
        root / MANIFEST_FILE,
        {
            "format": 1,
            "repo": fetcher.repo,
            "source": fetcher.source,
            "endpoint": fetcher.endpoint,
            "revision": fetcher.revision,
            "llm": llm,
            "files": specs_to_json(specs),
            "pins": dict(pins or {}),
            "verified": {fp: d for fp, d in verified.items() if fp in live},
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def inode(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def clear_stale_exports(root: Path) -> None:
    # Upstream reuses <model>/vllm instead of re-exporting a replaced llm.pt.
    stale = root / "vllm"
    if stale.is_dir():
        log.info("removing %s: it was exported from the previous llm.pt", stale)
        shutil.rmtree(stale)


def set_rl(model_dir: str | os.PathLike[str], enable: bool, clear_stale: bool = True) -> str:
    """Make ``llm.pt`` the RL-tuned LLM (``enable``) or the base one again; returns the state.

    The base LLM is kept as ``llm.base.pt`` and ``llm.rl.pt`` stays too: they are hard links
    (copies where links are impossible), so switching costs no disk and is reversible. The
    state is recorded in ``.voicelab-manifest.json`` (``"llm": "rl" | "base"``), which
    :func:`verify_model_dir` reads. A stale ``vllm/`` export is removed when llm.pt changes.
    """
    root = Path(model_dir)
    man = read_manifest(root)
    llm, base, rl = root / "llm.pt", root / "llm.base.pt", root / "llm.rl.pt"
    before = inode(llm)
    if enable:
        if not rl.is_file():
            raise ModelError(
                f"{rl} is missing", "voicelab download cosyvoice3 --rl (fetches llm.rl.pt, ~2 GB)"
            )
        if llm.is_file() and not _same_file(llm, rl):
            link_or_copy(llm, base)  # llm.pt holds the base LLM now: keep it
        link_or_copy(rl, llm)
        new = "rl"
    else:
        if man.get("llm") == "rl" or (llm.is_file() and _same_file(llm, rl)):
            if not base.is_file():
                raise ModelError(
                    f"{base} (the base LLM kept by --rl) is missing",
                    "voicelab download cosyvoice3 --no-rl (fetches llm.pt again)",
                )
            link_or_copy(base, llm)
        new = "base"
    if clear_stale and before is not None and before != inode(llm):
        clear_stale_exports(root)
    man["llm"] = new
    atomic_write_json(root / MANIFEST_FILE, man)
    return new


def restore_base_layout(root: Path) -> str:
    """Put the hub's layout back (llm.pt = base) before checking against the hub's listing;
    returns the LLM state the dir had."""
    state = str(read_manifest(root).get("llm", "base"))
    if state == "rl" and (root / "llm.base.pt").is_file():
        link_or_copy(root / "llm.base.pt", root / "llm.pt")
    return state
