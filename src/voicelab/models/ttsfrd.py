"""The optional ttsfrd text frontend: its resource zip, unpacked safely."""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

from voicelab.errors import ModelError
from voicelab.fsutil import (
    quick_fingerprint,
)
from voicelab.models.catalogue import TTSFRD_DIR_NAME, TTSFRD_REPOS
from voicelab.models.hubs import Fetcher, make_fetcher, resolve_source
from voicelab.models.sync import sync_model_dir


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
