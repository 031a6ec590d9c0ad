"""``voicelab config show|get|set|unset``: the explicit way to keep a setting in voicelab.toml.

Command-line flags of prepare, features, train ... apply to that one run; what a workspace keeps
is set here (checked against the typed schema of :mod:`voicelab.config` before it is written).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from voicelab.cli.main import Ctx, pass_ctx
from voicelab.console import echo

if TYPE_CHECKING:
    from voicelab.config import Key
    from voicelab.workspace import Workspace


@click.group("config")
def config_group() -> None:
    """Show or keep workspace settings (voicelab.toml), e.g. prepare.language or train.epochs.

    \b
    examples:
      voicelab config show
      voicelab config set train.epochs 8
      voicelab config set prepare.qc.min_snr_db 10
      voicelab config unset prepare.language
    """


def _kept(ws: Workspace, key: Key) -> object:
    if key.section == "voice":
        return {
            "speaker": ws.config.speaker or None,
            "wav_dir": ws.config.wav_dir or None,
            "locked_epoch": ws.config.locked_epoch,
        }[key.name]
    return ws.config.section(key.section).get(key.name)


@config_group.command("show")
@click.option("--all", "show_all", is_flag=True, help="Also every key left at its default.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def show(ctx: Ctx, show_all: bool, as_json: bool) -> None:
    """Every kept setting (and with --all the defaults): KEY = VALUE  (source)."""
    from voicelab import config

    ws = ctx.workspace()
    rows = []
    for section in config.SECTIONS:
        for key in config.section_keys(section).values():
            value = _kept(ws, key)
            if value is not None:
                rows.append((key.dotted, value, "voicelab.toml"))
            elif show_all:
                rows.append((key.dotted, key.default, "default"))
    if as_json:
        echo(json.dumps({k: v for k, v, _ in rows}, ensure_ascii=False, indent=2, default=str))
        return
    echo(f"# {ws.config_file}")
    for k, v, src in rows:
        echo(f"{k} = {json.dumps(v, ensure_ascii=False, default=str)}  ({src})")


@config_group.command("get")
@click.argument("key")
@pass_ctx
def get(ctx: Ctx, key: str) -> None:
    """The value of KEY (SECTION.NAME): kept in voicelab.toml, else the default."""
    from voicelab import config

    k = config.lookup(key)
    value = _kept(ctx.workspace(), k)
    echo(json.dumps(value if value is not None else k.default, ensure_ascii=False, default=str))


@config_group.command("set")
@click.argument("key")
@click.argument("value")
@pass_ctx
def set_(ctx: Ctx, key: str, value: str) -> None:
    """Keep KEY = VALUE in voicelab.toml (checked first: a bad value is not written)."""
    from voicelab import config
    from voicelab.workspace import check_source_dir, check_speaker_id

    k = config.lookup(key)
    typed = config.check_value(k, config.parse_text(k, value), key)
    ws = ctx.workspace(write=True)
    if k.section == "voice":
        if k.name == "speaker":
            ws.config.speaker = check_speaker_id(typed)
        elif k.name == "wav_dir":
            ws.config.wav_dir = str(check_source_dir(typed))
        else:
            ws.config.locked_epoch = typed
        ws.save()
    else:
        ws.set_option(k.section, k.name, typed)
    echo(f"{key} = {json.dumps(typed, ensure_ascii=False)}")


@config_group.command("unset")
@click.argument("key")
@pass_ctx
def unset(ctx: Ctx, key: str) -> None:
    """Remove KEY from voicelab.toml (its default applies again)."""
    from voicelab import config
    from voicelab.errors import ConfigError

    k = config.lookup(key)
    ws = ctx.workspace(write=True)
    if k.section == "voice":
        if k.name != "locked_epoch":
            raise ConfigError(f"{key} cannot be removed", "change it with: voicelab config set")
        ws.config.locked_epoch = None
        ws.save()
    else:
        ws.set_option(k.section, k.name, None)
    echo(f"{key} removed (default: {json.dumps(k.default, ensure_ascii=False, default=str)})")


commands = [config_group]
