"""Pretrained models: download, verify, repair and list them (``voicelab download``, ``models``).

Everything goes through the hubs' own client libraries (``huggingface_hub``, ``modelscope``) so
their mirrors, caches, resumable partial files and credentials work as users expect. VoiceLab adds
what the clients lack:

* a manifest of the files a model dir must hold (names, byte sizes, and the hashes the hub
  publishes), stored as ``.voicelab-manifest.json`` after a verified download so later checks
  (``doctor``, ``export``, ``train`` preflight) work offline through :func:`verify_model_dir`;
* repair that re-fetches only the missing, truncated or corrupt files (a complete dir fetches
  nothing and does not touch the network);
* one-line errors naming the endpoint that was tried and the mirror options, never a traceback.

The fetch layer is a small interface, :class:`Fetcher` (``remote_manifest()``, ``fetch(path)``):
:class:`HfFetcher` and :class:`ModelScopeFetcher` call the hub clients, :class:`LocalFetcher`
copies from a folder (an offline mirror, and the tests' local "hub").
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import socket
import stat
import time
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from voicelab.contract import RunOptions, Stage, StageResult, resolve
from voicelab.errors import ConfigError, EnvironmentProblem, ModelError, VoiceLabError
from voicelab.fsutil import (
    atomic_path,
    atomic_write_json,
    free_bytes,
    link_or_copy,
    quick_fingerprint,
    read_json,
)
from voicelab.workspace import BASE_MODEL_NAME, Workspace, load_user_config, save_user_config

log = logging.getLogger(__name__)

COSYVOICE3_REPO = "FunAudioLLM/Fun-CosyVoice3-0.5B-2512"
TTSFRD_REPOS = {"modelscope": "iic/CosyVoice-ttsfrd", "huggingface": "FunAudioLLM/CosyVoice-ttsfrd"}
TTSFRD_DIR_NAME = "CosyVoice-ttsfrd"
MANIFEST_FILE = ".voicelab-manifest.json"
VOICE_PROVENANCE = "voicelab.json"
SOURCES = ("modelscope", "huggingface")
DEFAULT_SOURCE = "modelscope"
HF_DEFAULT_ENDPOINT = "https://huggingface.co"
MS_DEFAULT_ENDPOINT = "https://modelscope.cn"
HF_MIRROR = "https://hf-mirror.com"
# Files below this size that the hub lists are fetched too (README, configuration.json): cheap,
# and they keep the dir looking like upstream's own download.
SMALL_EXTRA_BYTES = 1 << 20
# Never downloaded into a model dir, never counted as part of it.
_SKIP_REMOTE = {".gitattributes"}
_INTERNAL_DIRS = {".cache", "._____temp", ".msc", ".mdl", ".mv"}


# ---- the expected file set -----------------------------------------------------------------
@dataclass(frozen=True)
class FileSpec:
    """One file a model dir should hold. ``size``/hashes are None where unknown."""

    path: str
    size: int | None
    sha256: str | None = None
    git_sha1: str | None = None  # the hub's git blob id, for small non-LFS files
    required: bool = True

    @property
    def digest(self) -> tuple[str, str] | None:
        if self.sha256:
            return "sha256", self.sha256
        if self.git_sha1:
            return "git_sha1", self.git_sha1
        return None


def _spec(path: str, size: int | None, required: bool = True) -> FileSpec:
    return FileSpec(path, size, required=required)


# The Hugging Face revision VoiceLab downloads unless --revision says otherwise (ModelScope's
# commit ids differ; there the pinned hashes below are what holds the files to this revision).
COSYVOICE3_HF_REVISION = "29e01c4e8d000f4bcd70751be16fa94bf3d85a18"

# sha256 of the files that are code-like: the YAML that hyperpyyaml instantiates in process and
# the JSON/tokenizer files transformers reads. A mirror serving anything else is refused; the
# hub's listing never replaces these. Source: public records of this revision by independent
# projects pinning it (cosyvoice3.yaml in two of them, agreeing); not re-derived from the hub
# by VoiceLab (no network here): see docs/models.md.
COSYVOICE3_PINNED_SHA256 = {
    "cosyvoice3.yaml": "f5a6b2c6f05139d0f18861a1fe506f751e787026b77c05f7e8fef9f8a4405965",
    "CosyVoice-BlankEN/config.json": (
        "168aa1bd401abc3bc262ba15ba4e499627a8b4e006e9d050b47c22de20660185"
    ),
    "CosyVoice-BlankEN/generation_config.json": (
        "e558847a8b4402616f1273797b015104dc266fe4b520056fca88823ba8f8ebe6"
    ),
    "CosyVoice-BlankEN/merges.txt": (
        "ac8ff86a72bee70828fbc1119bc4398c6f3a9a6e490d7b0dbe917be025478bd0"
    ),
    "CosyVoice-BlankEN/tokenizer_config.json": (
        "482bd979881423375ca5414e4e0d94cd7c5349dbb17fffd46b4d36d71e62a1bc"
    ),
    "CosyVoice-BlankEN/vocab.json": (
        "ca10d7e9fb3ed18575dd1e277a2579c16d108e32f27439684afa0e10b1440910"
    ),
}
# Which files are code-like (pinned whenever a catalogue gives their sha256).
PINNED_FILES = frozenset(COSYVOICE3_PINNED_SHA256)


def _pinned(path: str, size: int) -> FileSpec:
    return FileSpec(path, size, sha256=COSYVOICE3_PINNED_SHA256[path])


# Sizes of HF revision COSYVOICE3_HF_REVISION (see docs/models.md). The hub's own listing (sizes
# and hashes) replaces these whenever it can be fetched, except the pinned hashes.
COSYVOICE3_FILES: dict[str, FileSpec] = {
    s.path: s
    for s in (
        _pinned("cosyvoice3.yaml", 6_934),
        _spec("llm.pt", 2_024_669_519),
        _spec("flow.pt", 1_329_116_148),
        _spec("hift.pt", 83_202_622),
        _spec("campplus.onnx", 28_303_423),
        _spec("speech_tokenizer_v3.onnx", 969_451_503),
        _spec("speech_tokenizer_v3.batch.onnx", 969_451_579),
        _pinned("CosyVoice-BlankEN/config.json", 659),
        _pinned("CosyVoice-BlankEN/generation_config.json", 242),
        _pinned("CosyVoice-BlankEN/merges.txt", 1_402_109),
        _spec("CosyVoice-BlankEN/model.safetensors", 988_097_824),
        _pinned("CosyVoice-BlankEN/tokenizer_config.json", 1_287),
        _pinned("CosyVoice-BlankEN/vocab.json", 2_776_833),
        _spec("llm.rl.pt", 2_024_682_701, required=False),
        _spec("flow.decoder.estimator.fp32.onnx", 1_326_216_933, required=False),
    )
}
COSYVOICE3_REQUIRED = tuple(p for p, s in COSYVOICE3_FILES.items() if s.required)
# What fine-tuning replaces in a voice dir: their sizes differ from the base model's.
TRAINABLE_FILES = ("llm.pt", "flow.pt", "hift.pt")

WHISPER_PATTERNS = ["config.json", "preprocessor_config.json", "model.bin", "tokenizer.json"]
WHISPER_PATTERNS.append("vocabulary.*")
# faster-whisper's own table (faster_whisper.utils._MODELS, 1.2). Importing faster_whisper
# loads CTranslate2 and PyAV (seconds), so it is consulted only for names not listed here.
_WHISPER_REPOS = {
    **{
        size: f"Systran/faster-whisper-{size}"
        for size in (
            "tiny.en",
            "tiny",
            "base.en",
            "base",
            "small.en",
            "small",
            "medium.en",
            "medium",
            "large-v1",
            "large-v2",
            "large-v3",
        )
    },
    "large": "Systran/faster-whisper-large-v3",
    "distil-large-v2": "Systran/faster-distil-whisper-large-v2",
    "distil-medium.en": "Systran/faster-distil-whisper-medium.en",
    "distil-small.en": "Systran/faster-distil-whisper-small.en",
    "distil-large-v3": "Systran/faster-distil-whisper-large-v3",
    "distil-large-v3.5": "distil-whisper/distil-large-v3.5-ct2",
    "large-v3-turbo": "mobiuslabsgmbh/faster-whisper-large-v3-turbo",
    "turbo": "mobiuslabsgmbh/faster-whisper-large-v3-turbo",
}
# FunASR's names (funasr/download/name_maps_from_hub.py) -> ModelScope ids.
FUNASR_MODELS = {
    "paraformer-zh": "iic/speech_seaco_paraformer_large_asr_nat-zh-cn-16k-common-vocab8404-pytorch",
    "sensevoice": "iic/SenseVoiceSmall",
    "fsmn-vad": "iic/speech_fsmn_vad_zh-cn-16k-common-pytorch",
    "ct-punc": "iic/punc_ct-transformer_cn-en-common-vocab471067-large",
}
FUNASR_DEFAULT = ("paraformer-zh", "fsmn-vad", "ct-punc")
FUNASR_REQUIRED = ("model.pt", "config.yaml", "configuration.json")


# ---- verification ----------------------------------------------------------------------------
@dataclass
class FileCheck:
    path: str
    status: str  # ok | missing | size | hash
    required: bool
    expected_size: int | None = None
    actual_size: int | None = None
    hashed: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class VerifyReport:
    """What :func:`verify_model_dir` found. ``ok``: every required file is present and right."""

    model_dir: Path
    checks: list[FileCheck]
    manifest: str  # where the expectations came from
    deep: bool
    llm: str = "base"  # which LLM llm.pt is: base | rl | trained
    exists: bool = True
    disk_bytes: int = 0  # the checked files on disk, hard links counted once

    def _paths(self, status: str, required_only: bool = False) -> list[str]:
        return [
            c.path for c in self.checks if c.status == status and (c.required or not required_only)
        ]

    @property
    def missing(self) -> list[str]:
        return self._paths("missing")

    @property
    def wrong_size(self) -> list[str]:
        return self._paths("size")

    @property
    def wrong_hash(self) -> list[str]:
        return self._paths("hash")

    @property
    def bad(self) -> list[str]:
        """Every file that needs fetching again (required ones and present optional ones)."""
        return [c.path for c in self.checks if not c.ok]

    @property
    def ok(self) -> bool:
        return self.exists and not any(c.required and not c.ok for c in self.checks)

    @property
    def total_bytes(self) -> int:
        return self.disk_bytes or sum(c.actual_size or 0 for c in self.checks)

    @property
    def summary(self) -> str:
        if not self.exists:
            return "not downloaded"
        if self.ok:
            n = sum(1 for c in self.checks if c.ok)
            how = (
                "sizes and hashes" if self.deep and any(c.hashed for c in self.checks) else "sizes"
            )
            extra = f"; optional files bad: {', '.join(self.bad)}" if self.bad else ""
            return f"complete: {n} files, {_human(self.total_bytes)}, {how} match{extra}"
        parts = []
        for label, items in (
            ("missing", self.missing),
            ("wrong size", self.wrong_size),
            ("wrong hash", self.wrong_hash),
        ):
            if items:
                parts.append(f"{label}: {', '.join(items)}")
        return "incomplete: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_dir": str(self.model_dir),
            "ok": self.ok,
            "summary": self.summary,
            "manifest": self.manifest,
            "deep": self.deep,
            "llm": self.llm,
            "missing": self.missing,
            "wrong_size": self.wrong_size,
            "wrong_hash": self.wrong_hash,
            "files": [asdict(c) for c in self.checks],
        }


def _git_blob_sha1(path: Path, size: int) -> str:
    h = hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _digest(path: Path, algo: str) -> str:
    if algo == "git_sha1":
        return _git_blob_sha1(path, path.stat().st_size)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _check_file(root: Path, spec: FileSpec, hash_mode: str, verified: dict[str, str]) -> FileCheck:
    """``hash_mode``: ``none`` (sizes), ``changed`` (hash unless this exact inode, size and
    mtime were hashed before), ``all``."""
    path = root / spec.path
    check = FileCheck(spec.path, "ok", spec.required, spec.size)
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        check.status = "missing"
        return check
    if not stat.S_ISREG(st.st_mode):
        check.status = "missing"
        return check
    check.actual_size = st.st_size
    if (spec.size is not None and st.st_size != spec.size) or (
        spec.size is None and not st.st_size
    ):
        check.status = "size"
        return check
    want = spec.digest
    if hash_mode == "none" or want is None:
        return check
    algo, value = want
    fp = quick_fingerprint(path)
    key = f"{algo}:{value}"
    if hash_mode == "changed" and verified.get(fp) == key:
        check.hashed = True
        return check
    got = _digest(path, algo)
    check.hashed = True
    if got != value:
        check.status = "hash"
        verified.pop(fp, None)
    else:
        verified[fp] = key
    return check


def _specs_from_json(files: Mapping[str, Any]) -> dict[str, FileSpec]:
    out = {}
    for rel, d in files.items():
        d = d if isinstance(d, dict) else {}
        out[rel] = FileSpec(
            rel,
            int(d["size"]) if d.get("size") is not None else None,
            d.get("sha256"),
            d.get("git_sha1"),
            bool(d.get("required", COSYVOICE3_FILES.get(rel, FileSpec(rel, None)).required)),
        )
    return out


def _specs_to_json(specs: Mapping[str, FileSpec]) -> dict[str, Any]:
    return {
        rel: {k: v for k, v in asdict(s).items() if k != "path" and v is not None}
        for rel, s in sorted(specs.items())
    }


def read_manifest(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``.voicelab-manifest.json`` of a model dir ({} when absent or unreadable)."""
    try:
        data = read_json(Path(model_dir) / MANIFEST_FILE, default={})
    except ValueError:
        log.warning("%s is not valid JSON; ignoring it", Path(model_dir) / MANIFEST_FILE)
        return {}
    return data if isinstance(data, dict) else {}


def _apply_llm_state(specs: dict[str, FileSpec], llm: str) -> dict[str, FileSpec]:
    """With the RL LLM active, llm.pt must equal llm.rl.pt and llm.base.pt holds the base."""
    if llm != "rl" or "llm.rl.pt" not in specs or "llm.pt" not in specs:
        return specs
    specs = dict(specs)
    base = specs["llm.pt"]
    specs["llm.pt"] = replace(specs["llm.rl.pt"], path="llm.pt", required=True)
    specs["llm.base.pt"] = replace(base, path="llm.base.pt", required=False)
    return specs


def expected_files(
    model_dir: str | os.PathLike[str], builtin: Mapping[str, FileSpec] | None = None
) -> tuple[dict[str, FileSpec], str, str]:
    """(specs, where they came from, llm state) for a model dir, without network.

    Order: a voice dir's ``voicelab.json`` ``files`` table; the dir's ``.voicelab-manifest.json``
    (the hub's listing, stored after a verified download); the built-in sizes. In a voice dir
    without its own table the trained files (llm.pt, flow.pt, hift.pt) only have to exist.
    """
    root = Path(model_dir)
    base = dict(builtin if builtin is not None else COSYVOICE3_FILES)
    prov = (
        read_json(root / VOICE_PROVENANCE, default=None)
        if (root / VOICE_PROVENANCE).is_file()
        else None
    )
    if isinstance(prov, dict):
        if isinstance(prov.get("files"), dict) and prov["files"]:
            return _specs_from_json(prov["files"]), f"{VOICE_PROVENANCE} file table", "trained"
        where = "built-in sizes"
        base_dir = _voice_base_dir(root, prov)
        listed = _base_listing(prov) if builtin is None else {}
        if listed:
            # export's record of the base files it linked: sizes, and hashes where known.
            base, where = listed, f"base listing in {VOICE_PROVENANCE}"
        elif builtin is None and base_dir is not None and base_dir.resolve() != root.resolve():
            bspecs, bwhere, _ = expected_files(base_dir)
            if bwhere.startswith("hub manifest"):
                base = {r: s for r, s in bspecs.items() if r != "llm.base.pt"}
                base = {
                    r: replace(s, required=COSYVOICE3_FILES.get(r, s).required)
                    for r, s in base.items()
                }
                where = f"{bwhere} of {base_dir.name}"
        specs = {
            rel: replace(s, size=None, sha256=None, git_sha1=None) if rel in TRAINABLE_FILES else s
            for rel, s in base.items()
        }
        return specs, f"{where} (voice dir; {', '.join(TRAINABLE_FILES)} trained)", "trained"
    own = _own_manifest(root)
    if own is not None:
        return own
    man = read_manifest(root)
    llm = str(man.get("llm", "base"))
    if isinstance(man.get("files"), dict) and man["files"]:
        specs = _specs_from_json(man["files"])
        for rel, s in base.items():  # our notion of required wins over an old manifest's
            if rel in specs:
                specs[rel] = replace(specs[rel], required=s.required)
        where = f"hub manifest ({man.get('source', '?')} {str(man.get('revision') or '')[:12]})"
        return _apply_llm_state(specs, llm), where.replace(" )", ")"), llm
    return _apply_llm_state(base, llm), "built-in sizes", llm


def _own_manifest(root: Path) -> tuple[dict[str, FileSpec], str, str] | None:
    """A model VoiceLab built itself (the tiny random model) is checked against the file table
    it was built with, never against Fun-CosyVoice3-0.5B's sizes."""
    from voicelab.upstream.tinymodel import MARKER, REQUIRED_FILES

    mark = read_json(root / MARKER, default=None) if (root / MARKER).is_file() else None
    if not isinstance(mark, dict):
        return None
    files = mark.get("files")
    if isinstance(files, dict) and files:
        return _specs_from_json(files), f"tiny model manifest ({MARKER})", "base"
    # Built before the marker had a file table: the files only have to exist.
    return {r: FileSpec(r, None) for r in REQUIRED_FILES}, f"tiny model ({MARKER})", "base"


def verify_model_dir(
    model_dir: str | os.PathLike[str],
    deep: bool = False,
    expected: Mapping[str, FileSpec] | None = None,
) -> VerifyReport:
    """Check a model dir against its expected file set, without network.

    Required files must exist with the expected size; optional files are checked only when
    present. ``deep`` also hashes every file the hub published a hash for (seconds per GB).
    ``expected`` replaces the built-in CosyVoice 3 file set (tests, other models); the dir's
    stored hub manifest still wins over it. Never raises for a bad dir: read ``report.ok``.
    """
    root = Path(model_dir)
    specs, where, llm = expected_files(root, expected)
    if not root.is_dir():
        checks = [
            FileCheck(s.path, "missing", s.required, s.size) for s in specs.values() if s.required
        ]
        return VerifyReport(root, checks, where, deep, llm, exists=False)
    man = read_manifest(root)
    verified: dict[str, str] = dict(man.get("verified") or {})
    # A dir VoiceLab downloaded (or copied --from-dir) records the pins it was checked against:
    # its code-like files are checked against them every time (small files; hashed once per
    # change), so a file swapped later is found too. A tiny or custom model records none.
    pins = pins_of(expected) if expected is not None else man.get("pins")
    if not isinstance(pins, dict):  # a manifest from before pins: the catalogue's, for the hub
        pins = pins_of(COSYVOICE3_FILES) if man.get("repo") == COSYVOICE3_REPO else {}
    specs = _apply_pins(specs, pins, None)
    checks = []
    for spec in specs.values():
        if not spec.required and not (root / spec.path).exists():
            continue
        mode = "all" if deep else "changed" if spec.path in pins else "none"
        checks.append(_check_file(root, spec, mode, verified))
    inodes: dict[tuple[int, int], int] = {}
    for c in checks:
        with contextlib.suppress(OSError):
            if c.actual_size is not None:
                st = (root / c.path).stat()
                inodes[(st.st_dev, st.st_ino)] = st.st_size
    return VerifyReport(root, checks, where, deep, llm, disk_bytes=sum(inodes.values()))


# ---- hub errors -> one line ------------------------------------------------------------------
_NET_ERRORS = {
    "ConnectError",
    "ConnectTimeout",
    "ReadTimeout",
    "WriteTimeout",
    "PoolTimeout",
    "TimeoutException",
    "NetworkError",
    "TransportError",
    "RemoteProtocolError",
    "ReadError",
    "ProxyError",
    "SSLError",
    "ConnectionError",
    "NewConnectionError",
    "NameResolutionError",
    "MaxRetryError",
    "ChunkedEncodingError",
    "RequestTimeoutError",
    "IncompleteRead",
}
_NOT_FOUND = {
    "RepositoryNotFoundError",
    "RevisionNotFoundError",
    "RemoteEntryNotFoundError",
    "NotExistError",
}
_AUTH = {"GatedRepoError", "AuthenticationError", "PermissionDeniedError"}
_HTTP = {"HfHubHTTPError", "HTTPError", "HTTPStatusError", "HubError", "APIError", "ServerError"}
_HUB_NAMES = {
    "huggingface": "Hugging Face",
    "modelscope": "ModelScope",
    "local": "the local mirror",
}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def classify_hub_error(exc: BaseException) -> str | None:
    """offline | network | notfound | auth | disk | http, or None for a bug (keep the traceback)."""
    chain = list(_chain(exc))
    names = [type(e).__name__ for e in chain]
    if "OfflineModeIsEnabled" in names:
        return "offline"
    for e in chain:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return "disk"
    if any(n in _NOT_FOUND for n in names):
        return "notfound"
    if any(n in _AUTH for n in names):
        return "auth"
    for e, n in zip(chain, names, strict=True):
        if n in _NET_ERRORS or isinstance(e, (ConnectionError, TimeoutError, socket.gaierror)):
            return "network"
    if "LocalEntryNotFoundError" in names:  # HF: no network and nothing cached
        return "network"
    if any(n in _HTTP for n in names):
        return "http"
    return None


def _reason(exc: BaseException) -> str:
    """The innermost readable cause, one short line (``[Errno 111] Connection refused``)."""
    text = ""
    for e in _chain(exc):
        line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if line:
            text = line
    if "Failed to resolve" in text or "Name or service not known" in text:
        text = "host name not resolved"
    return text[:120]


def mirror_hint(source: str) -> str:
    if source == "huggingface":
        return (
            "no network or Hugging Face is blocked: use --source modelscope, or a mirror: "
            f"--endpoint {HF_MIRROR} (or export HF_ENDPOINT={HF_MIRROR}); "
            "run the same command again to resume"
        )
    if source == "modelscope":
        return (
            "no network or ModelScope is unreachable: use --source huggingface "
            f"(in mainland China with --endpoint {HF_MIRROR}), check proxy settings; "
            "run the same command again to resume"
        )
    return "check that the mirror folder exists"


def hub_error(
    exc: BaseException, source: str, endpoint: str, repo: str, hint: str | None = None
) -> VoiceLabError | None:
    """The one-line error for a hub client's exception, or None when it is not a hub problem.
    ``hint`` replaces the mirror advice (where the other hub is no option)."""
    kind = classify_hub_error(exc)
    hub = _HUB_NAMES.get(source, source)
    if kind is None:
        return None
    if kind == "offline":
        return EnvironmentProblem(
            f"HF_HUB_OFFLINE is set: cannot download {repo} from {endpoint}",
            "unset HF_HUB_OFFLINE to download; "
            + (hint or f"or use --source modelscope, or a mirror: --endpoint {HF_MIRROR}"),
        )
    if kind == "network":
        return EnvironmentProblem(
            f"cannot reach {hub} at {endpoint} ({_reason(exc)})", hint or mirror_hint(source)
        )
    if kind == "notfound":
        return ModelError(
            f"{hub} at {endpoint} has no {repo} (or not that revision/file): {_reason(exc)}",
            "check --revision and --source; some mirrors do not carry every repository",
        )
    if kind == "auth":
        return ModelError(
            f"{hub} at {endpoint} refused access to {repo}: {_reason(exc)}",
            "log in with the hub's CLI (hf auth login / modelscope login) or use the other source",
        )
    if kind == "disk":
        return EnvironmentProblem(
            f"disk full while downloading {repo}", "free some space and run the same command again"
        )
    return EnvironmentProblem(
        f"{hub} at {endpoint} failed for {repo}: {_reason(exc)}",
        f"try again later; {mirror_hint(source)}",
    )


@contextlib.contextmanager
def _hub_errors(source: str, endpoint: str, repo: str, hint: str | None = None) -> Iterator[None]:
    """Hub failures as one VoiceLab line; the clients' own retry WARNINGs are held back (they
    would precede that line, and it says what they say)."""
    try:
        with _quiet_client_loggers():
            yield
    except VoiceLabError:
        raise
    except ImportError as e:
        if (e.name or "").split(".")[0] not in ("huggingface_hub", "modelscope", "modelscope_hub"):
            raise
        raise EnvironmentProblem(
            f"the {e.name.split('.')[0]} client library is not installed",
            "pip install 'voicelab[download]' (or choose the other --source)",
        ) from e
    except Exception as e:
        mapped = hub_error(e, source, endpoint, repo, hint)
        if mapped is None:
            raise
        raise mapped from e


@contextlib.contextmanager
def _quiet_client_loggers() -> Iterator[None]:
    """The hub clients' WARNING lines (retries) only with -v. They log through loggers they
    create on first use, so no level can be set on them beforehand: logging below ERROR is
    switched off for the call (VoiceLab itself logs nothing inside one)."""
    from voicelab.console import is_verbose

    if is_verbose():
        yield
        return
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(before)


def _other_source_hint(fetcher: Fetcher, what: str) -> str:
    """Where to look next: another hub for a hub, the folder itself for --from-dir."""
    if fetcher.source == "local":
        return f"the folder {fetcher.endpoint} {what}: copy the model dir again (--from-dir)"
    return f"{what}: try the other --source"


# ---- sources, endpoints, user config -----------------------------------------------------------
def resolve_source(
    source: str | None = None, endpoint: str | None = None
) -> tuple[str, str | None]:
    """(source, endpoint) from the options, then the user config's ``[download]``, then defaults.

    An endpoint alone picks its hub (``--endpoint https://hf-mirror.com`` means Hugging Face).
    The returned endpoint is None where the client's own default (and env) applies.
    """
    cfg = load_user_config().get("download", {})
    if source is None and endpoint:
        low = endpoint.lower()
        if "modelscope" in low:
            source = "modelscope"
        elif "hf-mirror" in low or "huggingface" in low:
            source = "huggingface"
    source = (source or cfg.get("source") or DEFAULT_SOURCE).lower()
    if source in ("hf", "hugging-face"):
        source = "huggingface"
    if source in ("ms",):
        source = "modelscope"
    if source not in SOURCES:
        raise ConfigError(
            f"unknown download source {source!r}", "use --source modelscope or --source huggingface"
        )
    if endpoint is None:
        endpoint = cfg.get("hf_endpoint" if source == "huggingface" else "modelscope_endpoint")
        # The environment beats the user config: it is the more specific setting.
        if source == "huggingface" and os.environ.get("HF_ENDPOINT"):
            endpoint = None
        if source == "modelscope" and (
            os.environ.get("MODELSCOPE_ENDPOINT") or os.environ.get("MODELSCOPE_DOMAIN")
        ):
            endpoint = None
    return source, (endpoint.rstrip("/") if endpoint else None)


def save_download_settings(source: str | None, endpoint: str | None) -> Path:
    """Remember the source (and its endpoint) in the user config, for every later download."""
    data = load_user_config()
    sec = dict(data.get("download", {}))
    src, ep = resolve_source(source, endpoint)
    sec["source"] = src
    if endpoint:
        sec["hf_endpoint" if src == "huggingface" else "modelscope_endpoint"] = ep
    data["download"] = sec
    return save_user_config(data)


def hf_endpoint(endpoint: str | None = None) -> str:
    """The Hugging Face endpoint a call will use: option, ``HF_ENDPOINT``, config, default."""
    if endpoint:
        return endpoint.rstrip("/")
    env = os.environ.get("HF_ENDPOINT")
    if env:
        return env.rstrip("/")
    cfg = load_user_config().get("download", {}).get("hf_endpoint")
    return (cfg or HF_DEFAULT_ENDPOINT).rstrip("/")


def ms_endpoint(endpoint: str | None = None) -> str:
    """The ModelScope endpoint: option, ``MODELSCOPE_ENDPOINT``/``MODELSCOPE_DOMAIN``, config."""
    value = (
        endpoint
        or os.environ.get("MODELSCOPE_ENDPOINT")
        or os.environ.get("MODELSCOPE_DOMAIN")
        or load_user_config().get("download", {}).get("modelscope_endpoint")
        or MS_DEFAULT_ENDPOINT
    ).strip()
    if not value.startswith(("http://", "https://")):
        value = "https://" + value
    return value.rstrip("/")


def hf_cache_dir() -> Path:
    """Where huggingface_hub (and faster-whisper through it) caches repos, per its env vars."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def modelscope_cache_dir() -> Path:
    env = os.environ.get("MODELSCOPE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "modelscope"


# ---- fetchers --------------------------------------------------------------------------------
class Fetcher(Protocol):
    """Where files come from. ``remote_manifest()`` lists the repo's files with sizes and hashes
    (raising the client's error when offline); ``fetch(path)`` puts one file at
    ``dest/path`` and returns that path. Both clients resume partial files by themselves."""

    source: str
    endpoint: str
    repo: str

    def remote_manifest(self) -> dict[str, FileSpec]: ...

    def fetch(self, rel: str) -> Path: ...

    @property
    def revision(self) -> str | None: ...


class LocalFetcher:
    """A folder laid out like the repo (an offline mirror, a copy from another machine).

    When the folder carries a ``.voicelab-manifest.json`` (it is a model dir VoiceLab verified)
    that listing, with the hub's hashes, is what files are checked against; otherwise the
    folder's own files are listed and hashed. A mirror with the RL LLM active serves its kept
    ``llm.base.pt`` as ``llm.pt``.
    """

    source = "local"

    def __init__(self, remote_dir: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
        self.remote = Path(remote_dir)
        self.dest = Path(dest)
        self.endpoint = str(self.remote)
        self.repo = self.remote.name
        self.revision: str | None = None
        self.fetched: list[str] = []

    def _source_path(self, rel: str) -> Path:
        man = read_manifest(self.remote)
        if rel == "llm.pt" and man.get("llm") == "rl" and (self.remote / "llm.base.pt").is_file():
            return self.remote / "llm.base.pt"
        return self.remote / rel

    def remote_manifest(self) -> dict[str, FileSpec]:
        if not self.remote.is_dir():
            raise ModelError(f"no mirror folder at {self.remote}", "check the path")
        man = read_manifest(self.remote)
        if isinstance(man.get("files"), dict) and man["files"]:
            self.revision = man.get("revision")
            listed = _specs_from_json(man["files"])
            return {
                r: replace(s, required=False)
                for r, s in listed.items()
                if self._source_path(r).is_file()
            }
        out = {}
        for p in sorted(self.remote.rglob("*")):
            rel = p.relative_to(self.remote).as_posix()
            if p.is_file() and not rel.startswith(".") and rel not in _SKIP_REMOTE:
                out[rel] = FileSpec(rel, p.stat().st_size, _digest(p, "sha256"), required=False)
        return out

    def fetch(self, rel: str) -> Path:
        dest = self.dest / rel
        with atomic_path(dest) as tmp:
            shutil.copyfile(self._source_path(rel), tmp)
        self.fetched.append(rel)
        return dest


class HfFetcher:
    """Hugging Face through ``huggingface_hub`` (``hf_hub_download(local_dir=...)``)."""

    source = "huggingface"

    def __init__(
        self,
        repo: str,
        dest: str | os.PathLike[str],
        revision: str | None = None,
        endpoint: str | None = None,
    ) -> None:
        self.repo = repo
        self.dest = Path(dest)
        self.revision = revision
        self.endpoint = hf_endpoint(endpoint)

    def remote_manifest(self) -> dict[str, FileSpec]:
        from huggingface_hub import HfApi

        info = HfApi(endpoint=self.endpoint).model_info(
            self.repo, revision=self.revision, files_metadata=True, timeout=_timeout()
        )
        # Pin the commit so every file of this run comes from the same revision.
        self.revision = getattr(info, "sha", None) or self.revision
        out = {}
        for s in info.siblings or []:
            if s.rfilename in _SKIP_REMOTE:
                continue
            lfs = getattr(s, "lfs", None)
            sha = (
                (lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None))
                if lfs
                else None
            )
            out[s.rfilename] = FileSpec(
                s.rfilename, s.size, sha, None if sha else getattr(s, "blob_id", None), False
            )
        return out

    def fetch(self, rel: str) -> Path:
        from huggingface_hub import hf_hub_download

        _quiet_hf_bars()
        path = hf_hub_download(
            self.repo,
            rel,
            revision=self.revision,
            local_dir=str(self.dest),
            endpoint=self.endpoint,
            etag_timeout=_timeout(),
        )
        return Path(path)


class ModelScopeFetcher:
    """ModelScope through ``modelscope`` (``model_file_download(local_dir=...)``)."""

    source = "modelscope"

    def __init__(
        self,
        repo: str,
        dest: str | os.PathLike[str],
        revision: str | None = None,
        endpoint: str | None = None,
    ) -> None:
        self.repo = repo
        self.dest = Path(dest)
        # Always a revision: without one the client resolves it against its default site,
        # ignoring the endpoint given.
        self.revision = revision or "master"
        self._explicit = endpoint
        self.endpoint = ms_endpoint(endpoint)

    def _client_endpoint(self) -> str | None:
        # Only pass what the user chose; otherwise the client applies its own env and defaults.
        return self.endpoint if (self._explicit or _ms_config_endpoint()) else None

    def remote_manifest(self) -> dict[str, FileSpec]:
        rows: list[tuple[str, int | None, str | None, str]] = []
        try:
            from modelscope_hub.api import HubApi as _Hub  # modelscope >= 1.3x: has sha256
        except ImportError:
            _Hub = None
        if _Hub is not None:
            api = _Hub(endpoint=self._client_endpoint())
            for f in api.list_repo_files(self.repo, "model", revision=self.revision):
                rows.append((f.path, f.size, getattr(f, "sha256", None), f.type))
        else:  # older modelscope
            from modelscope.hub.api import HubApi

            kw = {"endpoint": self._client_endpoint()} if self._client_endpoint() else {}
            for d in HubApi(**kw).get_model_files(
                self.repo, revision=self.revision, recursive=True
            ):
                rows.append(
                    (d.get("Path", ""), d.get("Size"), d.get("Sha256"), d.get("Type", "blob"))
                )
        out = {}
        for path, size, sha, typ in rows:
            if typ == "tree" or not path or path in _SKIP_REMOTE:
                continue
            out[path] = FileSpec(
                path, int(size) if size is not None else None, sha or None, None, False
            )
        return out

    def fetch(self, rel: str) -> Path:
        try:  # modelscope >= 1.3x delegates to modelscope_hub; `import modelscope` loads torch
            from modelscope_hub.compat.file_download import model_file_download
        except ImportError:
            from modelscope.hub.file_download import model_file_download

        kw: dict[str, Any] = {"revision": self.revision, "local_dir": str(self.dest)}
        if self._client_endpoint():
            kw["endpoint"] = self._client_endpoint()
        return Path(model_file_download(self.repo, rel, **kw))


def _quiet_hf_bars() -> None:
    # The client's own tqdm bars (with ETA) show where a person watches; not in logs or -q.
    from voicelab.console import progress_enabled

    if not progress_enabled():
        with contextlib.suppress(ImportError):
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()


def _ms_config_endpoint() -> str | None:
    return load_user_config().get("download", {}).get("modelscope_endpoint")


def _timeout() -> float:
    return float(os.environ.get("VOICELAB_HUB_TIMEOUT", "20"))


def make_fetcher(
    source: str,
    repo: str,
    dest: str | os.PathLike[str],
    revision: str | None = None,
    endpoint: str | None = None,
) -> Fetcher:
    if source == "huggingface":
        return HfFetcher(repo, dest, revision, endpoint)
    if source == "modelscope":
        return ModelScopeFetcher(repo, dest, revision, endpoint)
    raise ConfigError(f"unknown download source {source!r}", "use modelscope or huggingface")


# ---- pinned hashes of code-like files ---------------------------------------------------------
def pins_of(catalogue: Mapping[str, FileSpec]) -> dict[str, str]:
    """The code-like files a catalogue pins, with their sha256."""
    return {r: s.sha256 for r, s in catalogue.items() if r in PINNED_FILES and s.sha256}


def pin_error(rel: str, got: str, want: str, where: str, local: bool = False) -> ModelError:
    return ModelError(
        f"{rel} from {where} is not the file VoiceLab pins "
        f"(sha256 {got[:16]}..., expected {want[:16]}...): refused, nothing was loaded",
        "that folder holds a modified copy: copy the model from a trusted source"
        if local
        else "the mirror serves a modified file: use another --source or --endpoint",
    )


def _apply_pins(
    specs: Mapping[str, FileSpec],
    pins: Mapping[str, str],
    where: str | None,
    local: bool = False,
) -> dict[str, FileSpec]:
    """``specs`` checked against the pins: a listing that names another sha256 is refused
    (``where`` set) and every pinned file is verified against our hash, not the listing's."""
    out = dict(specs)
    for rel, want in pins.items():
        spec = out.get(rel)
        if spec is None:
            continue
        if where is not None and spec.sha256 and spec.sha256 != want:
            raise pin_error(rel, spec.sha256, want, where, local)
        out[rel] = replace(spec, sha256=want, git_sha1=None)
    return out


# ---- sync: verify, fetch only what is bad, record ------------------------------------------
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
    builtin = dict(COSYVOICE3_FILES if builtin is None else builtin)
    want_set = (
        set(want) if want is not None else ({p for p, s in builtin.items() if s.required} or None)
    )
    man = read_manifest(root)
    verified: dict[str, str] = dict(man.get("verified") or {})
    pins = pins_of(builtin)
    stored = _specs_from_json(man["files"]) if isinstance(man.get("files"), dict) else {}
    stored = _apply_pins(stored, pins, None)
    same_revision = fetcher.revision in (None, "master") or fetcher.revision == man.get("revision")

    # 1. Verified before, same revision, and every wanted file still as it was: done, offline.
    local_want = want_set if want_set is not None else set(stored)
    if stored and same_revision and local_want <= set(stored):
        checks = [_check_file(root, stored[r], "changed", verified) for r in sorted(local_want)]
        if all(c.ok for c in checks):
            report = verify_model_dir(root, expected=builtin)
            return SyncResult(root, report, hashes_checked=True, note="already complete")

    # 2. Ask the hub what the files should be.
    try:
        with _hub_errors(fetcher.source, fetcher.endpoint, fetcher.repo):
            remote = fetcher.remote_manifest()
    except VoiceLabError as err:
        if classify_hub_error(err.__cause__ or err) not in ("offline", "network"):
            raise
        # Offline: a dir whose sizes all match is usable; say what could not be checked.
        local = {r: s for r, s in (stored or builtin).items() if want_set is None or r in want_set}
        checks = [
            _check_file(root, s, "changed" if s.path in pins else "none", verified)
            for s in _apply_pins(local, pins, None).values()
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
    specs = _apply_pins(specs, pins, fetcher.endpoint, fetcher.source == "local")
    missing_required = [
        r for r in (want_set or ()) if r not in specs and builtin.get(r, FileSpec(r, None)).required
    ]
    if missing_required:
        raise ModelError(
            f"{fetcher.repo} at {fetcher.endpoint} lacks {', '.join(sorted(missing_required))}",
            _other_source_hint(fetcher, "is incomplete or the hub's copy changed"),
        )
    targets = _wanted(specs, builtin, want_set) & set(specs)
    # Also repair optional files that are present (a truncated llm.rl.pt is still wrong).
    targets |= {r for r in specs if (root / r).exists()}

    checks = {r: _check_file(root, specs[r], "changed", verified) for r in sorted(targets)}
    bad = [r for r, c in checks.items() if not c.ok]
    state = llm or str(man.get("llm", "base"))
    # Record the listing and the hashes done so far at once, and after every file: an
    # interrupted run then neither re-hashes nor re-fetches what was already right.
    _write_manifest(root, fetcher, specs, verified, llm=state, pins=pins)
    need = sum(specs[r].size or 0 for r in bad)
    if need and free_bytes(root) < need + (64 << 20):
        raise EnvironmentProblem(
            f"{_human(need)} to download but only {_human(free_bytes(root))} free at {root}",
            "free some space or pass --dest on a bigger disk",
        )
    fetched = []
    for rel in bad:
        why = checks[rel].status
        log.info(
            "%s %s (%s) from %s",
            "fetching" if why == "missing" else f"re-fetching ({why})",
            rel,
            _human(specs[rel].size or 0),
            fetcher.endpoint,
        )
        target = root / rel
        if target.exists() or target.is_symlink():
            # A present but wrong file would be taken as done by the client (local_dir keeps
            # its own metadata): remove it so it is really fetched again.
            target.unlink()
        with _hub_errors(fetcher.source, fetcher.endpoint, fetcher.repo):
            got = fetcher.fetch(rel)
        if Path(got).resolve() != target.resolve() and Path(got).exists():
            link_or_copy(got, target)
        check = _check_file(root, specs[rel], "all", verified)
        if not check.ok and rel in pins and check.status == "hash":
            got_hash = _digest(target, "sha256")
            target.unlink()  # never leave a modified code-like file where upstream loads it
            raise pin_error(rel, got_hash, pins[rel], fetcher.endpoint, fetcher.source == "local")
        if not check.ok:
            raise ModelError(
                f"{rel} from {fetcher.endpoint} is still wrong after download "
                f"({check.status}: {check.actual_size} bytes, expected {specs[rel].size})",
                _other_source_hint(fetcher, "may hold a different revision")
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
            "files": _specs_to_json(specs),
            "pins": dict(pins or {}),
            "verified": {fp: d for fp, d in verified.items() if fp in live},
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )


# ---- the RL LLM switch -------------------------------------------------------------------------
def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _clear_stale_exports(root: Path) -> None:
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
    before = _inode(llm)
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
    if clear_stale and before is not None and before != _inode(llm):
        _clear_stale_exports(root)
    man["llm"] = new
    atomic_write_json(root / MANIFEST_FILE, man)
    return new


def _restore_base_layout(root: Path) -> str:
    """Put the hub's layout back (llm.pt = base) before checking against the hub's listing;
    returns the LLM state the dir had."""
    state = str(read_manifest(root).get("llm", "base"))
    if state == "rl" and (root / "llm.base.pt").is_file():
        link_or_copy(root / "llm.base.pt", root / "llm.pt")
    return state


# ---- CosyVoice 3 ---------------------------------------------------------------------------------
@dataclass
class DownloadResult:
    model_dir: Path
    source: str
    endpoint: str
    sync: SyncResult
    llm: str
    report: VerifyReport
    ttsfrd: TtsfrdResult | None = None

    def lines(self) -> list[str]:
        s = self.sync
        how = f"fetched {len(s.fetched)} file(s)" if s.fetched else "nothing to download"
        if s.hashes_checked:
            how += ", hashes verified"
        which = {"rl": "the RL-tuned LLM", "base": "the base LLM"}.get(self.llm, self.llm)
        out = [f"{self.model_dir}: {self.report.summary} ({how}; llm.pt = {which})"]
        if s.note and s.note != "already complete":
            out.append(f"note: {s.note}")
        if self.ttsfrd:
            out.extend(self.ttsfrd.lines())
        return out


def download_cosyvoice3(
    dest: str | os.PathLike[str],
    source: str | None = None,
    endpoint: str | None = None,
    revision: str | None = None,
    rl: bool | None = None,
    ttsfrd: bool = False,
    all_files: bool = False,
    fetcher: Fetcher | None = None,
    expected: Mapping[str, FileSpec] | None = None,
    vendor_dir: str | os.PathLike[str] | None = None,
) -> DownloadResult:
    """Download (or check and repair) Fun-CosyVoice3-0.5B into ``dest``.

    ``rl``: True makes llm.pt the RL-tuned LLM, False the base one, None keeps the current
    choice. ``all_files`` also fetches the TensorRT estimator ONNX and the rest of the repo.
    ``fetcher``/``expected`` replace the hub client and the built-in file set (tests, mirrors).
    Raises a one-line :class:`VoiceLabError` for network, hub and disk problems.
    """
    root = Path(dest)
    if fetcher is None:
        source, endpoint = resolve_source(source, endpoint)
        if revision is None and source == "huggingface":
            revision = COSYVOICE3_HF_REVISION  # not the hub's latest: the pinned release
        fetcher = make_fetcher(source, COSYVOICE3_REPO, root, revision, endpoint)
    builtin = dict(expected if expected is not None else COSYVOICE3_FILES)
    created = not root.exists()
    start = _inode(root / "llm.pt")
    was = _restore_base_layout(root) if root.is_dir() else "base"
    want_rl = was == "rl" if rl is None else rl
    want: set[str] | None = {p for p, s in builtin.items() if s.required}
    if want_rl:
        want.add("llm.rl.pt")
    try:
        result = sync_model_dir(root, fetcher, builtin, None if all_files else want, llm=was)
    except BaseException:
        if was == "rl" and (root / "llm.rl.pt").is_file():  # leave the user's choice in place
            with contextlib.suppress(VoiceLabError, OSError):
                set_rl(root, True, clear_stale=False)
        if created:  # an offline first try leaves no empty dir that looks like a broken model
            _remove_if_empty(root)
        raise
    llm = set_rl(root, want_rl, clear_stale=False) if (want_rl or was == "rl") else "base"
    if start is not None and _inode(root / "llm.pt") != start:
        _clear_stale_exports(root)
    report = verify_model_dir(root, expected=expected)
    if not report.ok:
        raise ModelError(f"{root}: {report.summary}", "run the same command again")
    tts = None
    if ttsfrd:
        tts = download_ttsfrd(
            root.parent / TTSFRD_DIR_NAME,
            fetcher.source if fetcher.source in SOURCES else None,
            endpoint,
            vendor_dir=vendor_dir,
        )
    return DownloadResult(root, fetcher.source, fetcher.endpoint, result, llm, report, tts)


def _remove_if_empty(root: Path) -> None:
    """Remove ``root`` when it holds no file (empty folders, the clients' own cache dirs)."""
    with contextlib.suppress(OSError):
        if root.is_dir() and not any(p.is_file() for p in root.rglob("*")):
            shutil.rmtree(root)


# ---- ttsfrd ---------------------------------------------------------------------------------
@dataclass
class TtsfrdResult:
    dir: Path
    resource_dir: Path | None
    wheels: list[Path]
    linked: Path | None = None

    @property
    def pip_command(self) -> str:
        if not self.wheels:
            return ""
        # The dependency wheel first, as upstream's README installs them.
        ordered = sorted(self.wheels, key=lambda p: (0 if "dependency" in p.name else 1, p.name))
        return "pip install " + " ".join(f'"{p}"' for p in ordered)

    def lines(self) -> list[str]:
        out = [f"ttsfrd resource: {self.resource_dir or 'no resource.zip in the download'}"]
        if self.wheels:
            out.append(
                "ttsfrd is optional (wetext is used without it); VoiceLab does not install "
                f"downloaded wheels. To install it yourself: {self.pip_command}"
            )
        if self.linked:
            out.append(f"linked for upstream: {self.linked}")
        elif self.resource_dir:
            from voicelab.workspace import find_root

            vendor = find_root() / "vendor" / "CosyVoice"
            where = str(vendor) if vendor.is_dir() else "DIR (the CosyVoice checkout)"
            out.append(
                "upstream looks for <vendor>/pretrained_models/CosyVoice-ttsfrd/resource: "
                f"add --link-vendor {where} to link it there"
            )
        return out


#: The most bytes one archive may unpack to: ttsfrd's resource is a few hundred MB; a damaged
#: or hostile zip (a "zip bomb") would otherwise fill the disk.
MAX_UNZIP_BYTES = 4 << 30


def _safe_unzip(zpath: Path, into: Path, max_bytes: int = MAX_UNZIP_BYTES) -> None:
    """Extract ``zpath`` under ``into``, refusing absolute paths, ``..``, links and more than
    ``max_bytes`` of content (counted as written: the sizes a zip declares can lie)."""
    into.mkdir(parents=True, exist_ok=True)
    base = into.resolve()
    too_big = ModelError(
        f"{zpath} unpacks to more than {max_bytes / (1 << 30):.1f} GiB: not the archive expected",
        "delete it and download again",
    )
    written = 0
    with zipfile.ZipFile(zpath) as zf:
        if sum(i.file_size for i in zf.infolist()) > max_bytes:
            raise too_big
        for info in zf.infolist():
            target = (into / info.filename).resolve()
            if base not in (target, *target.parents):
                raise ModelError(
                    f"{zpath} holds an unsafe path {info.filename!r}",
                    "delete it and download again",
                )
            mode = (info.external_attr >> 16) & 0o170000
            if mode == stat.S_IFLNK:
                continue
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                while block := src.read(1 << 20):
                    written += len(block)
                    if written > max_bytes:
                        raise too_big
                    out.write(block)


def unpack_ttsfrd_resource(ttsfrd_dir: str | os.PathLike[str]) -> Path | None:
    """Unzip ``resource.zip`` to ``<dir>/resource`` once (again when the zip changes)."""
    root = Path(ttsfrd_dir)
    zpath = root / "resource.zip"
    if not zpath.is_file():
        return None
    final = root / "resource"
    marker = root / ".resource.unzipped"
    stamp = quick_fingerprint(zpath)
    if final.is_dir() and marker.is_file() and marker.read_text().strip() == stamp:
        return final
    tmp = root / ".resource.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        with zipfile.ZipFile(zpath) as zf:
            names = [n for n in zf.namelist() if n.strip("/")]
        top_is_resource = names and all(n.split("/")[0] == "resource" for n in names)
        _safe_unzip(zpath, tmp if top_is_resource else tmp / "resource")
    except zipfile.BadZipFile as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"{zpath} is not a valid zip ({e})", "delete it and download again") from e
    except ModelError:
        shutil.rmtree(tmp, ignore_errors=True)  # no half-unpacked bomb left on the disk
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp / "resource", final)
    shutil.rmtree(tmp, ignore_errors=True)
    marker.write_text(stamp + "\n")
    return final


def link_ttsfrd_resource(resource_dir: Path, vendor_dir: str | os.PathLike[str]) -> Path:
    """Make ``<vendor>/pretrained_models/CosyVoice-ttsfrd/resource`` point at ours (a symlink)."""
    link = Path(vendor_dir) / "pretrained_models" / TTSFRD_DIR_NAME / "resource"
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():
        if link.resolve() == resource_dir.resolve():
            return link
        raise ModelError(f"{link} already exists as a folder", "remove it, then link again")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(resource_dir.resolve(), target_is_directory=True)
    return link


def download_ttsfrd(
    dest: str | os.PathLike[str],
    source: str | None = None,
    endpoint: str | None = None,
    fetcher: Fetcher | None = None,
    vendor_dir: str | os.PathLike[str] | None = None,
) -> TtsfrdResult:
    """Fetch the optional ttsfrd text-normalization resource and unzip ``resource.zip``.

    The wheels it carries are never installed or run by VoiceLab: the result's ``pip_command``
    is printed for the user to run if they want ttsfrd.
    """
    root = Path(dest)
    if fetcher is None:
        source, endpoint = resolve_source(source, endpoint)
        fetcher = make_fetcher(source, TTSFRD_REPOS[source], root, None, endpoint)
    sync_model_dir(root, fetcher, builtin={}, want=None)
    resource = unpack_ttsfrd_resource(root)
    wheels = sorted(root.glob("*.whl"))
    linked = link_ttsfrd_resource(resource, vendor_dir) if (vendor_dir and resource) else None
    return TtsfrdResult(root, resource, wheels, linked)


# ---- Hugging Face cache (faster-whisper) ----------------------------------------------------
def whisper_repo(model: str) -> str:
    """faster-whisper's repository for a size name (``large-v3``) or a repo id."""
    if "/" in model:
        return model
    if model in _WHISPER_REPOS:
        return _WHISPER_REPOS[model]
    table: dict[str, str] = dict(_WHISPER_REPOS)
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


def _dir_bytes(folder: Path) -> int:
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
            repo, folder, None, ["not downloaded"], [], _dir_bytes(folder) if folder.is_dir() else 0
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
                if algo and _digest(blob, algo) != name:
                    problems.append(f"{rel} is corrupt (hash mismatch)")
                    bad.append(rel)
    return CacheCheck(repo, folder, snap, problems, bad, _dir_bytes(folder))


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
    with _hub_errors("huggingface", ep, repo, hint):
        from huggingface_hub import snapshot_download

        _quiet_hf_bars()
        snapshot_download(
            repo,
            allow_patterns=WHISPER_PATTERNS,
            cache_dir=str(cache_dir) if cache_dir else None,
            endpoint=ep,
            etag_timeout=_timeout(),
        )
    after = check_hf_snapshot(repo, cache_dir=cache_dir, deep=deep)
    if not after.ok:
        raise ModelError(
            f"the cached {repo} is still broken after download: {'; '.join(after.problems)}",
            f"delete {after.folder} and run the same command again",
        )
    return after.snapshot  # type: ignore[return-value]


# ---- ModelScope cache (FunASR) -----------------------------------------------------------------
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


def _check_plain_dir(folder: Path, required: Iterable[str]) -> list[str]:
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
    if endpoint or _ms_config_endpoint():
        kw["endpoint"] = ep
    for attempt in (1, 2):
        with _hub_errors("modelscope", ep, repo):
            from modelscope import snapshot_download

            path = Path(snapshot_download(repo, **kw))
        problems = _check_plain_dir(path, ("model.pt", "configuration.json"))
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


# ---- listing ----------------------------------------------------------------------------------
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
        dirs[:] = [d for d in dirs if d not in _INTERNAL_DIRS]
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


def _prov_base(prov: Mapping[str, Any]) -> Any:
    # export writes "base_model": {path, name, id, download, files}; "base" is the short form.
    return prov.get("base_model") or prov.get("base")


def _base_listing(prov: Mapping[str, Any]) -> dict[str, FileSpec]:
    """FileSpecs from export's ``base_model.files`` ({rel: {bytes, sha256 | verified}})."""
    base = _prov_base(prov)
    files = base.get("files") if isinstance(base, dict) else None
    if not isinstance(files, dict):
        return {}
    out = {}
    for rel, e in files.items():
        if not isinstance(e, dict):
            continue
        size = e.get("bytes", e.get("size"))
        sha, git = e.get("sha256"), e.get("git_sha1")
        verified = e.get("verified")
        if not (sha or git) and isinstance(verified, str) and ":" in verified:
            algo, value = verified.split(":", 1)
            sha, git = (value, None) if algo == "sha256" else (None, value)
        req = rel in COSYVOICE3_REQUIRED
        out[rel] = FileSpec(rel, int(size) if size is not None else None, sha, git, req)
    return out


def _voice_base_dir(root: Path, prov: Mapping[str, Any]) -> Path | None:
    """The base model dir a voice's ``voicelab.json`` names (a path, or a sibling's name)."""
    base = _prov_base(prov)
    if isinstance(base, dict):
        base = base.get("path") or base.get("dir") or base.get("name")
    if not base or not isinstance(base, str):
        return None
    p = Path(base)
    cands = (
        [p, root.parent / p.name] if p.is_absolute() else [root.parent / p, root.parent / p.name]
    )
    return next((c for c in cands if c.is_dir()), None)


def _voice_base(folder: Path) -> str | None:
    prov = (
        read_json(folder / VOICE_PROVENANCE, default=None)
        if (folder / VOICE_PROVENANCE).is_file()
        else None
    )
    if not isinstance(prov, dict):
        return None
    base = _prov_base(prov)
    if isinstance(base, dict):
        base = base.get("name") or base.get("path") or base.get("dir")
    return Path(str(base)).name if base else "?"


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
        declared = _voice_base(d)
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
                out.append(
                    ModelInfo(repo, kind, folder, None, _dir_bytes(folder), where="hf-cache")
                )
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
                        _dir_bytes(folder),
                        where="modelscope-cache",
                        detail=name,
                    )
                )
                continue
            problems = _check_plain_dir(folder, ("model.pt", "configuration.json"))
            out.append(
                ModelInfo(
                    repo,
                    "funasr",
                    folder,
                    not problems,
                    _dir_bytes(folder),
                    where="modelscope-cache",
                    detail="; ".join(problems) or name,
                )
            )
    return out


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


human_bytes = _human

__all__ = [
    "BASE_MODEL_NAME",
    "COSYVOICE3_FILES",
    "COSYVOICE3_REPO",
    "CacheCheck",
    "DownloadResult",
    "Fetcher",
    "FileCheck",
    "FileSpec",
    "HfFetcher",
    "LocalFetcher",
    "ModelInfo",
    "ModelScopeFetcher",
    "SyncResult",
    "TtsfrdResult",
    "VerifyReport",
    "check_hf_snapshot",
    "classify_hub_error",
    "disk_usage",
    "download_cosyvoice3",
    "download_funasr",
    "download_ttsfrd",
    "download_whisper",
    "hub_error",
    "list_models",
    "resolve_source",
    "save_download_settings",
    "set_rl",
    "sync_model_dir",
    "verify_model_dir",
]


# ---------------------------------------------------------------------------------------------
# The stage contract (voicelab.contract): the base model (or the tiny one with --tiny)
# ---------------------------------------------------------------------------------------------
@dataclass
class DownloadOptions:
    source: str | None = None  # modelscope | huggingface (default: the user's choice, else ...)
    endpoint: str | None = None
    rl: bool | None = None  # None keeps the dir's current choice
    tiny: bool = False  # the tiny random model (voicelab demo --tiny), built, not downloaded


Options = DownloadOptions


def stage_options(ws: Workspace, run_opts: RunOptions) -> DownloadOptions:
    return resolve(ws, DownloadOptions, "download", run_opts, tiny=run_opts.tiny)


def stage_params(ws: Workspace, opts: DownloadOptions) -> dict[str, Any]:
    if opts.tiny:
        return {"model": "tiny", "dir": str(ws.base_model_dir)}
    return {"model": BASE_MODEL_NAME, "dir": str(ws.base_model_dir), "source": opts.source,
            "rl": opts.rl}  # fmt: skip


def stage_outputs(ws: Workspace, opts: DownloadOptions) -> list[Path]:
    return [ws.base_model_dir / "llm.pt", ws.base_model_dir / "campplus.onnx"]


def run(ws: Workspace, opts: DownloadOptions) -> StageResult:
    if opts.tiny:
        from voicelab.upstream.tinymodel import build_tiny_model

        path = build_tiny_model(ws.base_model_dir)
        return StageResult([path], {"model_dir": str(path), "tiny": True}, f"tiny model at {path}")
    res = download_cosyvoice3(
        ws.base_model_dir, source=opts.source, endpoint=opts.endpoint, rl=opts.rl
    )
    line = res.lines()[0] if res.lines() else f"base model at {res.model_dir}"
    return StageResult([res.model_dir], {"model_dir": str(res.model_dir)}, line, res)


STAGE = Stage(
    "download",
    (),
    stage_params,
    run,
    stage_outputs,
    summary="base model",
    found_by_outputs=True,
    options=stage_options,
)
