"""``voicelab vendor sync | status | link | pin | config``: the upstream checkouts under vendor/."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from voicelab.console import echo
from voicelab.errors import VendorError

if TYPE_CHECKING:
    from voicelab.vendor import Sources

_MIRROR_HELP = (
    "Replace https://github.com/ in every URL (submodules too) by this prefix, e.g. "
    "https://ghproxy.net/https://github.com/ or a local folder of mirrors."
)
_URL_HELP = (
    "Override one repository: NAME=URL, NAME a vendor (cosyvoice) or a submodule short name "
    "(matcha). A local path or file:// URL works. Repeatable."
)


def _sources(mirror: str | None, urls: tuple[str, ...], no_saved: bool = False) -> Sources:
    from voicelab import vendor as v

    man = v.load_manifest()
    return v.make_sources(mirror, v.parse_url_overrides(urls), not no_saved, manifest=man)


@click.group()
def vendor() -> None:
    """Upstream checkouts under vendor/ (CosyVoice, GPT-SoVITS, RVC), pinned in vendors.toml.

    \b
    examples:
      voicelab vendor sync cosyvoice
      voicelab vendor sync --mirror https://ghproxy.net/https://github.com/ --save
      voicelab vendor sync cosyvoice --url cosyvoice=/srv/CosyVoice.git --url matcha=/srv/Matcha.git
      voicelab vendor status
      voicelab vendor link cosyvoice ~/src/CosyVoice
      voicelab vendor pin cosyvoice 1822c5c
    """


@vendor.command()
@click.argument("names", nargs=-1)
@click.option("--mirror", metavar="PREFIX", help=_MIRROR_HELP)
@click.option("--url", "urls", multiple=True, metavar="NAME=URL", help=_URL_HELP)
@click.option("--force", is_flag=True, help="Discard local changes in the checkouts (reset).")
@click.option(
    "--save", is_flag=True, help="Keep --mirror/--url in the user config for later syncs."
)
@click.option(
    "--no-saved", is_flag=True, help="Ignore the mirror and URLs kept in the user config."
)
def sync(
    names: tuple[str, ...],
    mirror: str | None,
    urls: tuple[str, ...],
    force: bool,
    save: bool,
    no_saved: bool,
) -> None:
    """Clone or update vendors (all by default) to their pins, submodules included.

    A checkout with local changes is left as is unless --force is given. Running it again
    does nothing when everything is at its pin.
    """
    from voicelab import vendor as v

    sources = _sources(mirror, urls, no_saved)
    if save:
        path = v.save_sources(mirror, v.parse_url_overrides(urls))
        echo(f"saved the vendor sources in {path}")
    results = v.sync(list(names) or None, sources=sources, force=force)
    failed = [r for r in results if not r.ok]
    if len(results) == 1 and failed and failed[0].error is not None:
        raise failed[0].error  # one vendor: its error is the whole story
    width = max(len(r.name) for r in results)
    for r in results:
        if r.error is None:
            echo(f"{r.name:<{width}}  {r.action:<10}  {r.detail}")
            continue
        echo(f"{r.name:<{width}}  {r.action:<10}  {r.error.message}")
        if r.error.hint:
            echo(f"{'':<{width}}  {'':<10}  fix: {r.error.hint}")
    if failed:
        raise VendorError(
            f"{len(failed)} of {len(results)} vendors failed: "
            + ", ".join(r.name for r in failed)
            + ("; the others are fine" if len(failed) < len(results) else ""),
            "see the fix under each failed vendor above",
        )


@vendor.command()
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(names: tuple[str, ...], as_json: bool) -> None:
    """Show each vendor: path, pinned and current commit, clean, submodules, what to do."""
    from rich.console import Console
    from rich.table import Table

    from voicelab import vendor as v

    states = v.vendor_status(names=list(names) or None)
    if as_json:
        echo(json.dumps([s.to_dict() for s in states], ensure_ascii=False, indent=2))
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("vendor", "path", "kind", "pinned", "current", "tree", "submodules"):
        table.add_column(col, no_wrap=True)
    table.add_column("to do", overflow="fold")
    for s in states:
        tree = "-" if s.clean is None else "clean" if s.clean else f"dirty ({len(s.changed)})"
        if not s.submodules:
            subs = "-" if s.current is None or s.kind == "missing" else "none"
        else:
            subs = (
                "ok"
                if s.submodules_ok
                else ", ".join(
                    f"{x.short} {'missing' if x.current is None else 'off pin'}"
                    for x in s.submodules
                    if not x.ok
                )
            )
        kind = s.kind + (" (optional)" if s.optional and s.kind == "missing" else "")
        current = (s.current or "-")[:12]
        if s.current and not s.at_pin:
            current += " (off pin)"
        todo = "ok" if s.ok and not s.warning else ""
        if s.problem:
            todo = f"{s.problem}: {s.action}" if s.action else s.problem
        elif s.warning:
            todo = f"warning: {s.warning}" + (f" ({s.action})" if s.action else "")
        if s.partial:
            todo += " [leftover of an interrupted clone: the next sync removes it]"
        table.add_row(s.name, s.path, kind, s.pinned[:12], current, tree, subs, todo)
    # Piped output (CI logs, less) gets a wide table instead of rich's 80 columns.
    # Laid out 200 wide whatever the terminal: a narrow one wraps lines but loses nothing
    # (rich would cut commit ids to fit), and logs and pipes get the full table.
    out = Console(file=sys.stdout, highlight=False, width=200, color_system=None)
    with out.capture() as cap:
        out.print(table)
    for line in cap.get().splitlines():
        echo(line.rstrip())


@vendor.command()
@click.argument("name")
@click.argument("path", type=click.Path(file_okay=False))
def link(name: str, path: str) -> None:
    """Use an existing checkout at PATH for NAME (a symlink under vendor/, as in the notes)."""
    from voicelab import vendor as v

    st = v.link(name, path)
    echo(f"{name}: {st.path} -> {st.dir.resolve()}")
    if st.problem:
        echo(f"{name}: {st.problem} ({st.action})")
    elif st.warning:
        echo(f"{name}: warning: {st.warning}")
    else:
        echo(f"{name}: at the pin {st.pinned[:12]}")


@vendor.command()
@click.argument("name")
@click.argument("rev")
@click.option("--mirror", metavar="PREFIX", help=_MIRROR_HELP)
@click.option("--url", "urls", multiple=True, metavar="NAME=URL", help=_URL_HELP)
def pin(name: str, rev: str, mirror: str | None, urls: tuple[str, ...]) -> None:
    """Move NAME's pin to REV (commit, branch, tag, or HEAD of the checkout) in vendors.toml.

    The revision is checked first (fetched if needed); submodule pins follow the commits
    REV records. Run `voicelab vendor sync NAME` afterwards to check it out.
    """
    from voicelab import vendor as v

    res = v.pin(name, rev, sources=_sources(mirror, urls))
    if not res.changed:
        echo(f"{name}: already pinned at {res.new}")
        return
    echo(f"{name}: {res.old[:12]} -> {res.new} ({res.manifest})")
    for short, (old, new) in res.submodules.items():
        if old != new:
            echo(f"  {short}: {old[:12]} -> {new}")
    echo(f"next: voicelab vendor sync {name}")


@vendor.command()
@click.option("--mirror", metavar="PREFIX", help=_MIRROR_HELP)
@click.option("--url", "urls", multiple=True, metavar="NAME=URL", help=_URL_HELP)
@click.option("--clear", is_flag=True, help="Forget the saved mirror and URLs first.")
def config(mirror: str | None, urls: tuple[str, ...], clear: bool) -> None:
    """Show or set the mirror and URL overrides every sync uses (user config file)."""
    from voicelab import vendor as v
    from voicelab.workspace import user_config_path

    if mirror or urls or clear:
        _sources(mirror, urls)  # refuses unknown names before anything is written
        v.save_sources(mirror, v.parse_url_overrides(urls), clear=clear)
    saved = v.saved_sources()
    echo(f"file:   {user_config_path()}")
    echo(f"mirror: {saved.mirror or '(none: GitHub)'}")
    for name, url in sorted(saved.urls.items()):
        echo(f"url:    {name} = {url}")


commands = [vendor]
