"""The fetch layer: :class:`Fetcher` (``remote_manifest()``, ``fetch(path)``) over the hubs' own
clients (:class:`HfFetcher`, :class:`ModelScopeFetcher`) or a local folder
(:class:`LocalFetcher`)."""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from voicelab.errors import ConfigError, ModelError
from voicelab.fsutil import (
    atomic_path,
)
from voicelab.models.catalogue import (
    DEFAULT_SOURCE,
    HF_DEFAULT_ENDPOINT,
    MS_DEFAULT_ENDPOINT,
    SKIP_REMOTE,
    SOURCES,
    FileSpec,
)
from voicelab.models.verify import digest, read_manifest, specs_from_json
from voicelab.workspace import load_user_config, save_user_config


def other_source_hint(fetcher: Fetcher, what: str) -> str:
    """Where to look next: another hub for a hub, the folder itself for --from-dir."""
    if fetcher.source == "local":
        return f"the folder {fetcher.endpoint} {what}: copy the model dir again (--from-dir)"
    return f"{what}: try the other --source"


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
            listed = specs_from_json(man["files"])
            return {
                r: replace(s, required=False)
                for r, s in listed.items()
                if self._source_path(r).is_file()
            }
        out = {}
        for p in sorted(self.remote.rglob("*")):
            rel = p.relative_to(self.remote).as_posix()
            if p.is_file() and not rel.startswith(".") and rel not in SKIP_REMOTE:
                out[rel] = FileSpec(rel, p.stat().st_size, digest(p, "sha256"), required=False)
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
            self.repo, revision=self.revision, files_metadata=True, timeout=timeout()
        )
        # Pin the commit so every file of this run comes from the same revision.
        self.revision = getattr(info, "sha", None) or self.revision
        out = {}
        for s in info.siblings or []:
            if s.rfilename in SKIP_REMOTE:
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

        quiet_hf_bars()
        path = hf_hub_download(
            self.repo,
            rel,
            revision=self.revision,
            local_dir=str(self.dest),
            endpoint=self.endpoint,
            etag_timeout=timeout(),
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
        return self.endpoint if (self._explicit or ms_config_endpoint()) else None

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
            if typ == "tree" or not path or path in SKIP_REMOTE:
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


def quiet_hf_bars() -> None:
    # The client's own tqdm bars (with ETA) show where a person watches; not in logs or -q.
    from voicelab.console import progress_enabled

    if not progress_enabled():
        with contextlib.suppress(ImportError):
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()


def ms_config_endpoint() -> str | None:
    return load_user_config().get("download", {}).get("modelscope_endpoint")


def timeout() -> float:
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
