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

The package, by job: ``catalogue`` (which models, repos, files, pinned hashes), ``hubs`` (the
:class:`Fetcher` interface over the hub clients or a local folder, and the choice of hub),
``hub_errors``, ``verify`` (manifests), ``sync`` (repair a dir to its manifest), ``base``
(``download_cosyvoice3``), ``ttsfrd``, ``cache`` (ASR models in the hubs' caches),
``inventory`` (``voicelab models``) and ``stage`` (the ``download`` stage). This module
re-exports the names other packages use.
"""

from voicelab.models.base import DownloadResult, download_cosyvoice3
from voicelab.models.cache import (
    CacheCheck,
    check_hf_snapshot,
    download_funasr,
    download_whisper,
    hf_cache_dir,
    whisper_repo,
)
from voicelab.models.catalogue import (
    COSYVOICE3_FILES,
    COSYVOICE3_HF_REVISION,
    COSYVOICE3_REPO,
    COSYVOICE3_REQUIRED,
    FUNASR_DEFAULT,
    FUNASR_MODELS,
    MANIFEST_FILE,
    PINNED_FILES,
    TTSFRD_DIR_NAME,
    VOICE_PROVENANCE,
    FileSpec,
    human_bytes,
)
from voicelab.models.hub_errors import classify_hub_error, hub_error
from voicelab.models.hubs import (
    Fetcher,
    HfFetcher,
    LocalFetcher,
    ModelScopeFetcher,
    hf_endpoint,
    resolve_source,
    save_download_settings,
)
from voicelab.models.inventory import ModelInfo, disk_usage, list_models
from voicelab.models.sync import SyncResult, set_rl, sync_model_dir
from voicelab.models.ttsfrd import TtsfrdResult, download_ttsfrd, unpack_ttsfrd_resource
from voicelab.models.verify import FileCheck, VerifyReport, verify_model_dir
from voicelab.workspace import BASE_MODEL_NAME

__all__ = [
    "BASE_MODEL_NAME", "COSYVOICE3_FILES", "COSYVOICE3_HF_REVISION", "COSYVOICE3_REPO",
    "COSYVOICE3_REQUIRED", "FUNASR_DEFAULT", "FUNASR_MODELS", "MANIFEST_FILE", "PINNED_FILES",
    "TTSFRD_DIR_NAME", "VOICE_PROVENANCE", "CacheCheck", "DownloadResult", "Fetcher", "FileCheck",
    "FileSpec", "HfFetcher", "LocalFetcher", "ModelInfo", "ModelScopeFetcher", "SyncResult",
    "TtsfrdResult", "VerifyReport", "check_hf_snapshot", "classify_hub_error", "disk_usage",
    "download_cosyvoice3", "download_funasr", "download_ttsfrd", "download_whisper",
    "hf_cache_dir", "hf_endpoint", "hub_error", "human_bytes", "list_models", "resolve_source",
    "save_download_settings", "set_rl", "sync_model_dir", "unpack_ttsfrd_resource",
    "verify_model_dir", "whisper_repo",
]  # fmt: skip
