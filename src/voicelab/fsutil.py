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
    """Yield a temp path beside ``dest``; on success it is synced and renamed onto ``dest``.

    The temp name keeps ``dest``'s suffix (``suffix`` overrides it) so writers that look at the
    extension (soundfile, torch) still work. On error the temp file is removed. The result has
    the umask's mode, as a plain open() would give.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{dest.name}.", suffix=(suffix or dest.suffix) + ".tmp", dir=dest.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    # Keep the real extension last for libraries that sniff it (x.wav.tmp confuses soundfile).
    real = tmp_path.with_name(tmp_path.name[: -len(".tmp")])
    tmp_path.rename(real)
    try:
        apply_umask(real)
        yield real
        if real.is_file():  # a writer may have replaced it with a link (link_or_copy)
            _fsync(real)
        os.replace(real, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            real.unlink()
        raise


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
        tmp.unlink()
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
