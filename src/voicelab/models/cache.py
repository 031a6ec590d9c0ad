"""ASR models in the hubs' caches (Whisper for faster-whisper, FunASR): check, repair, download."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicelab.errors import ConfigError, ModelError
from voicelab.models.catalogue import FUNASR_MODELS, HF_MIRROR, WHISPER_PATTERNS, WHISPER_REPOS
from voicelab.models.hub_errors import hub_errors
from voicelab.models.hubs import (
    hf_endpoint,
    ms_config_endpoint,
    ms_endpoint,
    quiet_hf_bars,
    timeout,
)
from voicelab.models.verify import digest
from voicelab.paths import user_cache_dir

log = logging.getLogger(__name__)


def hf_cache_dir() -> Path:
    """Where huggingface_hub (and faster-whisper through it) caches repos, per its env vars."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(user_cache_dir(), "huggingface")
    return Path(home).expanduser() / "hub"


def modelscope_cache_dir() -> Path:
    env = os.environ.get("MODELSCOPE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "modelscope"


def whisper_repo(model: str) -> str:
    """faster-whisper's repository for a size name (``large-v3``) or a repo id."""
    if "/" in model:
        return model
    if model in WHISPER_REPOS:
        return WHISPER_REPOS[model]
    table: dict[str, str] = dict(WHISPER_REPOS)
    with contextlib.suppress(ImportError):
        from faster_whisper.utils import _MODELS  # names added after this table was written

        table.update(_MODELS)
    if model not in table:
        raise ConfigError(
            f"unknown Whisper model {model!r}",
            f"use one of {', '.join(sorted(table))} or a repo id (Systran/faster-whisper-large-v3)",
        )
    return table[model]


def hf_repo_folder(repo: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    base = Path(cache_dir) if cache_dir else hf_cache_dir()
    return base / ("models--" + repo.replace("/", "--"))


@dataclass
class CacheCheck:
    repo: str
    folder: Path
    snapshot: Path | None
    problems: list[str]
    bad_files: list[str]
    size_bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.snapshot is not None and not self.problems


def _snapshot_of(folder: Path, revision: str | None = None) -> Path | None:
    snaps = folder / "snapshots"
    if not snaps.is_dir():
        return None
    ref = folder / "refs" / (revision or "main")
    if ref.is_file():
        p = snaps / ref.read_text().strip()
        if p.is_dir():
            return p
    if revision and (snaps / revision).is_dir():
        return snaps / revision
    dirs = [p for p in snaps.iterdir() if p.is_dir()]
    return max(dirs, key=lambda p: p.stat().st_mtime) if dirs else None


def dir_bytes(folder: Path) -> int:
    """Bytes under ``folder``, each inode once (hard links and snapshot symlinks not doubled)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_size
    return total


def check_hf_snapshot(
    repo: str,
    required: Iterable[str] = ("config.json", "model.bin", "tokenizer.json", "vocabulary.*"),
    cache_dir: str | os.PathLike[str] | None = None,
    deep: bool = False,
) -> CacheCheck:
    """Is a repo in the HF cache usable? Missing, empty or dangling files are problems (the
    notes' "Cannot load the target vocabulary"); ``deep`` also checks each blob's hash, which the
    cache layout names it by (sha256 for LFS files, the git blob id for small ones)."""
    folder = hf_repo_folder(repo, cache_dir)
    snap = _snapshot_of(folder)
    if snap is None:
        return CacheCheck(
            repo, folder, None, ["not downloaded"], [], dir_bytes(folder) if folder.is_dir() else 0
        )
    problems, bad = [], []
    for pattern in required:
        matches = sorted(snap.glob(pattern))
        if not matches:
            problems.append(f"{pattern} missing")
            continue
        for p in matches:
            rel = p.relative_to(snap).as_posix()
            if not p.exists():
                problems.append(f"{rel} points to a missing blob")
                bad.append(rel)
            elif p.stat().st_size == 0:
                problems.append(f"{rel} is empty")
                bad.append(rel)
            elif deep and p.is_symlink():
                blob = p.resolve()
                name = blob.name
                algo = "sha256" if len(name) == 64 else "git_sha1" if len(name) == 40 else None
                if algo and digest(blob, algo) != name:
                    problems.append(f"{rel} is corrupt (hash mismatch)")
                    bad.append(rel)
    return CacheCheck(repo, folder, snap, problems, bad, dir_bytes(folder))


def repair_hf_snapshot(check: CacheCheck) -> list[str]:
    """Remove the broken files (snapshot entry and the blob it points to) so the client fetches
    just those again; a bare blob left behind would be linked back in unchecked."""
    removed = []
    if check.snapshot is None:
        return removed
    for rel in check.bad_files:
        entry = check.snapshot / rel
        if entry.is_symlink():
            target = Path(os.path.realpath(entry))
            entry.unlink()
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
        elif entry.exists():
            entry.unlink()
        removed.append(rel)
    return removed


def download_whisper(
    model: str = "large-v3",
    endpoint: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    deep: bool = False,
) -> Path:
    """Put a faster-whisper (CTranslate2) model in the HF cache, where faster-whisper finds it.

    A complete cached copy fetches nothing. A broken one (empty or missing vocabulary/model
    files, or with ``deep`` a blob whose hash is wrong) loses just the broken files, which are
    fetched again. Returns the snapshot folder.
    """
    repo = whisper_repo(model)
    check = check_hf_snapshot(repo, cache_dir=cache_dir, deep=deep)
    if check.ok:
        return check.snapshot  # type: ignore[return-value]
    if check.bad_files:
        log.warning("repairing the cached %s: %s", repo, "; ".join(check.problems))
        repair_hf_snapshot(check)
    ep = hf_endpoint(endpoint)
    hint = (
        f"no network or Hugging Face is blocked: use a mirror: --endpoint {HF_MIRROR} "
        f"(or export HF_ENDPOINT={HF_MIRROR}); run the same command again to resume"
    )
    with hub_errors("huggingface", ep, repo, hint):
        from huggingface_hub import snapshot_download

        quiet_hf_bars()
        snapshot_download(
            repo,
            allow_patterns=WHISPER_PATTERNS,
            cache_dir=str(cache_dir) if cache_dir else None,
            endpoint=ep,
            etag_timeout=timeout(),
        )
    after = check_hf_snapshot(repo, cache_dir=cache_dir, deep=deep)
    if not after.ok:
        raise ModelError(
            f"the cached {repo} is still broken after download: {'; '.join(after.problems)}",
            f"delete {after.folder} and run the same command again",
        )
    return after.snapshot  # type: ignore[return-value]


def modelscope_repo_dirs(repo: str, cache_dir: Path | None = None) -> list[Path]:
    """Folders where the installed (or an older) modelscope client may have cached ``repo``."""
    base = cache_dir or modelscope_cache_dir()
    owner, _, name = repo.partition("/")
    safe = name.replace(".", "___")
    cands = [
        base / "models" / owner / safe,
        base / "models" / owner / name,
        base / "hub" / "models" / owner / safe,
        base / "hub" / owner / name,
        base / owner / name,
    ]
    out = [p for p in cands if p.is_dir() and any(p.iterdir())]
    hub = base / "models" / f"{owner}--{name}"
    snap = _snapshot_of(hub) if hub.is_dir() else None
    if snap is not None:
        out.append(snap)
    return out


def check_plain_dir(folder: Path, required: Iterable[str]) -> list[str]:
    problems = []
    for rel in required:
        p = folder / rel
        if not p.exists():
            problems.append(f"{rel} missing")
        elif p.is_file() and p.stat().st_size == 0:
            problems.append(f"{rel} is empty")
    return problems


def download_funasr(
    model: str = "paraformer-zh",
    endpoint: str | None = None,
    revision: str = "master",
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Prefetch a FunASR model into the ModelScope cache (``MODELSCOPE_CACHE``, or
    ``cache_dir``), where ``funasr.AutoModel`` looks."""
    repo = FUNASR_MODELS.get(model, model if "/" in model else "")
    if not repo:
        raise ConfigError(
            f"unknown FunASR model {model!r}",
            f"use one of {', '.join(FUNASR_MODELS)} or a ModelScope id",
        )
    ep = ms_endpoint(endpoint)
    kw: dict[str, Any] = {"revision": revision}
    if cache_dir:
        kw["cache_dir"] = str(cache_dir)
    if endpoint or ms_config_endpoint():
        kw["endpoint"] = ep
    for attempt in (1, 2):
        with hub_errors("modelscope", ep, repo):
            from modelscope import snapshot_download

            path = Path(snapshot_download(repo, **kw))
        problems = check_plain_dir(path, ("model.pt", "configuration.json"))
        if not problems:
            return path
        if attempt == 1:
            log.warning("repairing the cached %s: %s", repo, "; ".join(problems))
            for rel in ("model.pt", "configuration.json", "config.yaml"):
                p = path / rel
                if p.is_file() and p.stat().st_size == 0:
                    p.unlink()
    raise ModelError(
        f"the cached {repo} is incomplete: {'; '.join(problems)}",
        f"delete {path} and run the same command again",
    )
