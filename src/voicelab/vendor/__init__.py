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

The package, by job: ``manifest``, ``sources``, ``git``, ``status``, ``checkout`` (sync and
link; ``submodules``), ``pinning``, ``handle`` (the runtime handle later stages run upstream
code with) and ``stage`` (the ``vendor`` stage). This module re-exports the names other packages
use.
"""

from voicelab.vendor.checkout import SyncResult, link, sync, sync_vendor
from voicelab.vendor.handle import (
    VendorRuntime,
    cosyvoice_expected_dir,
    cosyvoice_runtime,
    runtime,
)
from voicelab.vendor.manifest import (
    COSYVOICE,
    COSYVOICE_DIR_ENV,
    Manifest,
    SubmoduleSpec,
    VendorSpec,
    load_manifest,
    manifest_path,
    vendor_dir,
)
from voicelab.vendor.pinning import PinResult, pin, rewrite_manifest_commits
from voicelab.vendor.sources import (
    Sources,
    is_local_url,
    make_sources,
    parse_url_overrides,
    rewrite_github,
    save_sources,
    saved_sources,
)
from voicelab.vendor.status import SubmoduleState, VendorState, inspect_vendor, vendor_status

__all__ = [
    "COSYVOICE", "COSYVOICE_DIR_ENV", "Manifest", "PinResult", "Sources", "SubmoduleSpec",
    "SubmoduleState", "SyncResult", "VendorRuntime", "VendorSpec", "VendorState",
    "cosyvoice_expected_dir", "cosyvoice_runtime", "inspect_vendor", "is_local_url", "link",
    "load_manifest", "make_sources", "manifest_path", "parse_url_overrides", "pin",
    "rewrite_github", "rewrite_manifest_commits", "runtime", "save_sources", "saved_sources",
    "sync", "sync_vendor", "vendor_dir", "vendor_status",
]  # fmt: skip
