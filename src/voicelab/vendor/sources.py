"""Where repositories are fetched from: ``--mirror PREFIX`` rewrites ``https://github.com/`` in
every URL (submodules included), ``--url NAME=URL`` overrides one; local paths and ``file://``
work."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from voicelab.errors import ConfigError
from voicelab.paths import to_local_path
from voicelab.workspace import (
    load_user_config,
    save_user_config,
)

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover
    pass
from voicelab.vendor.manifest import Manifest, VendorSpec

_GITHUB_PREFIXES = (
    "https://github.com/",
    "http://github.com/",
    "git://github.com/",
    "ssh://git@github.com/",
    "git@github.com:",
)

_SCP_RE = re.compile(r"^[\w.+-]+@[\w.-]+:")


def is_local_url(url: str) -> bool:
    """A local path or ``file://`` URL (as opposed to https/ssh/git or ``user@host:path``)."""
    if url.startswith("file://"):
        return True
    return "://" not in url and not _SCP_RE.match(url)


def _absolute_local(url: str) -> str:
    """Local paths become absolute (git runs them from other folders); URLs stay as they are."""
    if url.startswith("file://") or not is_local_url(url):
        return url
    return str(to_local_path(url).resolve())


def rewrite_github(url: str, mirror: str) -> str:
    """Replace the GitHub part of ``url`` by ``mirror``.

    ``https://github.com/A/B.git`` with ``https://ghproxy.net/https://github.com/`` gives
    ``https://ghproxy.net/https://github.com/A/B.git``; with ``https://gitclone.com/github.com``
    ``https://gitclone.com/github.com/A/B.git``; with ``/srv/git`` ``/srv/git/A/B.git``.
    """
    for prefix in _GITHUB_PREFIXES:
        if url.startswith(prefix):
            rest = url[len(prefix) :]
            if not mirror.startswith("file://") and is_local_url(mirror):
                return str(to_local_path(mirror).resolve() / rest)
            return mirror.rstrip("/") + "/" + rest
    return url


@dataclass
class Sources:
    """Where repositories come from: an optional GitHub mirror and per-name URL overrides."""

    mirror: str | None = None
    urls: dict[str, str] = field(default_factory=dict)

    def resolve(self, short: str | None, url: str) -> str:
        if short and short in self.urls:
            return _absolute_local(self.urls[short])
        if self.mirror:
            return rewrite_github(url, self.mirror)
        return url

    def is_empty(self) -> bool:
        return not self.mirror and not self.urls


def parse_url_overrides(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    urls: dict[str, str] = {}
    for item in items:
        name, sep, url = item.partition("=")
        if not sep or not name.strip() or not url.strip():
            raise ConfigError(
                f"--url {item!r} is not NAME=URL",
                "e.g. --url cosyvoice=https://gitee.com/x/CosyVoice.git --url matcha=/srv/Matcha",
            )
        urls[name.strip()] = _absolute_local(url.strip())
    return urls


def saved_sources() -> Sources:
    """The mirror and URL overrides kept in the user config file (``[vendor]``)."""
    section = load_user_config().get("vendor", {})
    if not isinstance(section, dict):
        return Sources()
    urls = section.get("urls") or {}
    return Sources(
        mirror=section.get("mirror") or None, urls={str(k): str(v) for k, v in urls.items()}
    )


def make_sources(
    mirror: str | None = None,
    urls: dict[str, str] | None = None,
    use_saved: bool = True,
    manifest: Manifest | None = None,
) -> Sources:
    """Command-line values over the saved ones. Unknown short names are refused."""
    base = saved_sources() if use_saved else Sources()
    merged = Sources(mirror=mirror or base.mirror, urls={**base.urls, **(urls or {})})
    if manifest is not None:
        unknown = sorted(set(urls or {}) - manifest.short_names())
        if unknown:
            raise ConfigError(
                f"--url names {', '.join(unknown)}, which vendors.toml does not list",
                f"use one of: {', '.join(sorted(manifest.short_names()))}",
            )
    return merged


def save_sources(mirror: str | None, urls: dict[str, str], clear: bool = False) -> Path:
    """Keep a mirror and URL overrides for every later sync (``clear`` drops the old ones)."""
    data = load_user_config()
    section = {} if clear else dict(data.get("vendor") or {})
    if mirror:
        section["mirror"] = mirror
    if urls:
        section["urls"] = {**(section.get("urls") or {}), **urls}
    if section:
        data["vendor"] = section
    else:
        data.pop("vendor", None)
    return save_user_config(data)


def file_urls_allowed(spec: VendorSpec, sources: Sources) -> bool:
    urls = [sources.resolve(spec.name, spec.url)]
    urls += [sources.resolve(s.short, s.url) for s in spec.submodules]
    return any(is_local_url(u) for u in urls) or any(is_local_url(u) for u in sources.urls.values())
