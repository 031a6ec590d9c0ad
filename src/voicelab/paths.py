"""One place that turns user-supplied path strings into local paths.

Users copy paths from Windows Explorer (``C:\\AIGC\\数据集\\xuan\\a.wav``), from WSL
(``/mnt/c/...``) or from list files written on Windows. Every path that comes from a user or a
list file goes through :func:`to_local_path`.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

_DRIVE = re.compile(r"^([A-Za-z]):[\\/]*(.*)$")
_WSL_UNC = re.compile(r"^(?:\\\\|//)wsl(?:\$|\.localhost)[\\/]+[^\\/]+[\\/]*(.*)$", re.IGNORECASE)


def user_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """The user's cache root (``$XDG_CACHE_HOME``, else ``~/.cache``) as ``env`` (default: this
    process's environment) names it."""
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".cache")
    return Path(base).expanduser()


def to_local_path(value: str | os.PathLike[str]) -> Path:
    """Map a Windows, WSL UNC or POSIX path string to its Linux/WSL form.

    ``C:\\a\\b.wav`` and ``C:/a/b.wav`` -> ``/mnt/c/a/b.wav``; ``\\\\wsl$\\Ubuntu\\home\\u`` ->
    ``/home/u``; ``~`` is expanded; POSIX paths pass through unchanged. Non-ASCII and spaces
    are kept as they are.
    """
    text = os.fspath(value).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1]
    m = _WSL_UNC.match(text)
    if m:
        return Path("/" + m.group(1).replace("\\", "/")).expanduser()
    m = _DRIVE.match(text)
    if m:
        rest = m.group(2).replace("\\", "/")
        return Path(str(PurePosixPath("/mnt", m.group(1).lower(), rest)))
    return Path(text).expanduser()


def is_windows_mount(path: Path) -> bool:
    """True for paths on a Windows drive seen from WSL (``/mnt/c/...``): slow IO, no hard links."""
    parts = Path(path).resolve().parts
    return len(parts) >= 3 and parts[1] == "mnt" and len(parts[2]) == 1


def has_whitespace(path: str | os.PathLike[str]) -> bool:
    """Upstream's kaldi readers split lines on whitespace: such paths must never reach them."""
    return any(ch.isspace() for ch in os.fspath(path))


def safe_name(text: str, max_len: int = 80) -> str:
    """A file-name stem with no whitespace or path separators that stays unique per input.

    Keeps readable characters (Chinese included) and appends a short hash when anything had to
    be replaced or cut, so two different inputs never map to the same name.
    """
    norm = unicodedata.normalize("NFC", text)
    cleaned = re.sub(r"[\s/\\:*?\"<>|]+", "_", norm).strip("._") or "x"
    if cleaned != norm or len(cleaned) > max_len:
        digest = hashlib.sha1(norm.encode("utf-8")).hexdigest()[:8]
        cleaned = f"{cleaned[: max_len - 9]}_{digest}"
    return cleaned
