"""The inventory (``voicelab models``): the model dirs and cached models on this machine and the
disk they use (hard links counted once)."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from voicelab.models.cache import (
    check_hf_snapshot,
    check_plain_dir,
    dir_bytes,
    hf_cache_dir,
    modelscope_repo_dirs,
)
from voicelab.models.catalogue import (
    COSYVOICE3_REPO,
    FUNASR_MODELS,
    INTERNAL_DIRS,
    MANIFEST_FILE,
    TTSFRD_DIR_NAME,
    TTSFRD_REPOS,
    VOICE_PROVENANCE,
)
from voicelab.models.verify import verify_model_dir, voice_base
from voicelab.workspace import Workspace


@dataclass
class ModelInfo:
    name: str
    kind: str  # base | voice | ttsfrd | other | whisper | funasr | hub-cache
    path: Path
    complete: bool | None
    size_bytes: int
    shared_bytes: int = 0  # bytes hard-linked with its base (not extra disk)
    base: str | None = None
    where: str = "pretrained"  # pretrained | hf-cache | modelscope-cache
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def _inodes(folder: Path) -> dict[tuple[int, int], int]:
    out: dict[tuple[int, int], int] = {}
    for dirpath, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in INTERNAL_DIRS]
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                if stat.S_ISREG(st.st_mode):
                    out[(st.st_dev, st.st_ino)] = st.st_size
    return out


def disk_usage(folders: Iterable[str | os.PathLike[str]]) -> int:
    """Bytes the folders take together, each hard-linked file counted once."""
    seen: dict[tuple[int, int], int] = {}
    for f in folders:
        if Path(f).is_dir():
            seen.update(_inodes(Path(f)))
    return sum(seen.values())


def list_models(ws: Workspace, caches: bool = True) -> list[ModelInfo]:
    """Models in the workspace's pretrained_models (base models, voices and which base each
    derives from, ttsfrd) and VoiceLab-relevant models in the HF and ModelScope caches."""
    out: list[ModelInfo] = []
    pdir = ws.pretrained_dir
    dirs = sorted(p for p in pdir.iterdir() if p.is_dir()) if pdir.is_dir() else []
    base_dir = ws.base_model_dir
    if base_dir.is_dir() and base_dir.resolve() not in {d.resolve() for d in dirs}:
        dirs.insert(0, base_dir)
    inodes = {d: _inodes(d) for d in dirs}
    base_resolved = base_dir.resolve() if base_dir.is_dir() else None
    candidates = [
        d
        for d in dirs
        if not (d / VOICE_PROVENANCE).is_file() and (d / "cosyvoice3.yaml").is_file()
    ]
    # A real base: the workspace's base model dir or a dir VoiceLab downloaded (has a manifest).
    # A dir without provenance that shares files (hard links) with a real base derives from it.
    real_bases = [
        d for d in candidates if d.resolve() == base_resolved or (d / MANIFEST_FILE).is_file()
    ]
    for d in dirs:
        own = inodes[d]
        size = sum(own.values())
        if d.name == TTSFRD_DIR_NAME or (d / "resource.zip").is_file():
            out.append(ModelInfo(d.name, "ttsfrd", d, (d / "resource").is_dir(), size))
            continue
        if not (d / "cosyvoice3.yaml").is_file() and not (d / VOICE_PROVENANCE).is_file():
            out.append(ModelInfo(d.name, "other", d, None, size))
            continue
        report = verify_model_dir(d)
        declared = voice_base(d)
        linked_base, shared = None, 0
        for b in real_bases:
            if b == d:
                continue
            common = set(own) & set(inodes[b])
            if common and sum(own[i] for i in common) > shared:
                shared = sum(own[i] for i in common)
                linked_base = b.name
        if declared is not None or (linked_base and d not in real_bases):
            kind, base = "voice", (declared if declared not in (None, "?") else linked_base)
        else:
            kind, base, shared = "base", None, 0
        detail = report.summary
        if kind == "base" and report.llm == "rl":
            detail += "; llm.pt = RL LLM"
        out.append(
            ModelInfo(
                d.name,
                kind,
                d,
                report.ok,
                size,
                shared if kind == "voice" else 0,
                base,
                detail=detail,
            )
        )
    if caches:
        out.extend(_cached_models())
    return out


def _relevant_hf(repo: str) -> str | None:
    low = repo.lower()
    if "faster-whisper" in low or "faster-distil-whisper" in low or low.endswith("-ct2"):
        return "whisper"
    if "cosyvoice" in low or low.startswith("funaudiollm/"):
        return "hub-cache"
    return None


def _cached_models() -> list[ModelInfo]:
    out = []
    hf = hf_cache_dir()
    if hf.is_dir():
        for folder in sorted(hf.glob("models--*")):
            repo = folder.name[len("models--") :].replace("--", "/", 1)
            kind = _relevant_hf(repo)
            if not kind:
                continue
            if kind == "whisper":
                c = check_hf_snapshot(repo, cache_dir=hf)
                out.append(
                    ModelInfo(
                        repo,
                        kind,
                        folder,
                        c.ok,
                        c.size_bytes,
                        where="hf-cache",
                        detail="; ".join(c.problems) or "complete",
                    )
                )
            else:
                out.append(ModelInfo(repo, kind, folder, None, dir_bytes(folder), where="hf-cache"))
    ms_repos = {
        **FUNASR_MODELS,
        "cosyvoice3": COSYVOICE3_REPO,
        "ttsfrd": TTSFRD_REPOS["modelscope"],
    }
    for name, repo in ms_repos.items():
        for folder in modelscope_repo_dirs(repo):
            if name in ("cosyvoice3", "ttsfrd"):
                out.append(
                    ModelInfo(
                        repo,
                        "hub-cache",
                        folder,
                        None,
                        dir_bytes(folder),
                        where="modelscope-cache",
                        detail=name,
                    )
                )
                continue
            problems = check_plain_dir(folder, ("model.pt", "configuration.json"))
            out.append(
                ModelInfo(
                    repo,
                    "funasr",
                    folder,
                    not problems,
                    dir_bytes(folder),
                    where="modelscope-cache",
                    detail="; ".join(problems) or name,
                )
            )
    return out
