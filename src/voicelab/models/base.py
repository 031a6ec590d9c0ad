"""``voicelab download cosyvoice3``: the base model dir, fetched or repaired and verified."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from voicelab.errors import ModelError, VoiceLabError
from voicelab.models import catalogue
from voicelab.models.catalogue import (
    COSYVOICE3_HF_REVISION,
    COSYVOICE3_REPO,
    SOURCES,
    TTSFRD_DIR_NAME,
    FileSpec,
)
from voicelab.models.hubs import Fetcher, make_fetcher, resolve_source
from voicelab.models.sync import (
    SyncResult,
    clear_stale_exports,
    inode,
    restore_base_layout,
    set_rl,
    sync_model_dir,
)
from voicelab.models.ttsfrd import TtsfrdResult, download_ttsfrd
from voicelab.models.verify import VerifyReport, verify_model_dir


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
    builtin = dict(expected if expected is not None else catalogue.COSYVOICE3_FILES)
    created = not root.exists()
    start = inode(root / "llm.pt")
    was = restore_base_layout(root) if root.is_dir() else "base"
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
    if start is not None and inode(root / "llm.pt") != start:
        clear_stale_exports(root)
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
