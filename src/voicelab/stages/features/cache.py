"""The per-utterance cache (``<dataset>/.features_cache.json``): keyed by the audio's content hash
and the models' identities, saved atomically every few seconds so a killed run resumes."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from voicelab.fsutil import atomic_write_text, quick_fingerprint, read_json

log = logging.getLogger(__name__)


CACHE_NAME = ".features_cache.json"

CACHE_SAVE_SECONDS = 3.0  # a killed run loses at most this much work

# Bump when the computation changes, so cached entries from an older VoiceLab are recomputed.
FEATURES_VERSION = 2


class FeatureCache:
    """Per-audio results: ``entries[audio_sha] = {model, emb, tok, n24, padded24, excluded}``,
    and ``files[path] = [quick fingerprint, sha]`` so unchanged files are not re-hashed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            data = read_json(path, default={}) or {}
        except ValueError:  # not JSON (edited by hand?): start over, it is only a cache
            log.warning("ignoring the unreadable features cache %s", path)
            data = {}
        if not isinstance(data, dict) or data.get("version") != FEATURES_VERSION:
            data = {}
        self.entries: dict[str, dict[str, Any]] = data.get("entries", {})
        self.files: dict[str, list[str]] = data.get("files", {})
        self.lock = threading.Lock()
        self.dirty = False
        self.last_save = time.monotonic()
        self.save_cost = 0.0

    def audio_hash(self, path: str) -> str:
        qfp = quick_fingerprint(path)
        known = self.files.get(path)
        if known and known[0] == qfp:
            return known[1]
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        sha = h.hexdigest()[:32]
        self.files[path] = [qfp, sha]
        self.dirty = True
        return sha

    def get(self, sha: str, model_key: str) -> dict[str, Any] | None:
        e = self.entries.get(sha)
        if e is None:
            return None
        if e.get("excluded"):  # exclusions depend on the audio only
            return e
        return e if e.get("model") == model_key else None

    def put(self, sha: str, entry: dict[str, Any]) -> None:
        with self.lock:
            self.entries[sha] = entry
            self.dirty = True

    def save(self, force: bool = False) -> None:
        """Atomic save; throttled so a big cache is not rewritten after every utterance."""
        now = time.monotonic()
        every = max(CACHE_SAVE_SECONDS, 5 * self.save_cost)
        if not self.dirty or (not force and now - self.last_save < every):
            return
        with self.lock:
            t0 = time.monotonic()
            # compact: one line, no indentation (a big set's cache is tens of MB)
            blob = json.dumps(
                {"version": FEATURES_VERSION, "entries": self.entries, "files": self.files},
                separators=(",", ":"),
            )
            atomic_write_text(self.path, blob)
            self.dirty = False
            self.last_save = time.monotonic()
            self.save_cost = self.last_save - t0
