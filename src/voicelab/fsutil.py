"""Atomic writes, fingerprints and hard links.

Every output VoiceLab writes goes through a temp file in the same folder and ``os.replace``, so a
crash or Ctrl-C never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask can only be
    read by setting it, which races with other threads creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike[str], directory: bool = False) -> None:
    """Give ``path`` the mode a plain open()/mkdir() would have: mkstemp/mkdtemp make 0600/0700
    whatever the umask, which hides a user's outputs from their group."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def make_temp_dir(parent: str | os.PathLike[str], prefix: str) -> Path:
    """A fresh staging folder in ``parent`` with the umask's mode (to be renamed into place)."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    apply_umask(tmp, directory=True)
    return tmp


def _fsync(path: Path) -> None:
    # Writers (soundfile, torch, pyarrow) close the temp file without fsync: without this, a
    # power cut after os.replace can leave a zero-length file under the final name.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems (and Windows) refuse a dir fsync
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temp path for ``dest``; on success it is synced and renamed onto ``dest``.

    The temp file has ``dest``'s own name (``suffix`` replaces its extension) inside a fresh
    hidden folder beside it: writers that sniff the extension (soundfile) work, and writers
    that record the name (torch.save names its zip folder after the file) write the same bytes
    as they would to ``dest`` itself, so outputs are byte-reproducible. The file is created by a
    plain open(), so it gets the umask's mode. On error the temp folder is removed.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    real = tmp_dir / (dest.stem + suffix if suffix else dest.name)
    try:
        real.touch()
        yield real
        if real.is_file() and not real.is_symlink():
            _fsync(real)
        os.replace(real, dest)
        _fsync_dir(dest.parent)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def atomic_write_text(dest: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(dest)


def atomic_write_bytes(dest: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def atomic_write_json(dest: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(
        dest, json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
    )


def read_user_text(path: str | os.PathLike[str]) -> str:
    """A text file a user may have written: UTF-8, with the BOM Windows editors put first
    dropped (it would become part of the first utterance id, or a phantom speaker)."""
    return Path(path).read_text(encoding="utf-8-sig")


def read_json(path: str | os.PathLike[str], default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default


def quick_fingerprint(path: str | os.PathLike[str]) -> str:
    """Cheap identity of a file: size, mtime in ns and inode. Good to skip unchanged inputs."""
    st = Path(path).stat()
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_obj(obj: Any) -> str:
    """Stable short hash of a JSON-able object (options, lists of fingerprints)."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def link_or_copy(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> str:
    """Hard-link ``src`` to ``dest`` (replacing it), or copy where links are impossible.

    Returns ``"link"`` or ``"copy"``. Links make a derived model dir cost no extra disk.
    """
    src, dest = Path(src), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
            how = "link"
        except OSError:
            shutil.copy2(src, tmp)
            how = "copy"
    return how


def free_bytes(path: str | os.PathLike[str]) -> int:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free
