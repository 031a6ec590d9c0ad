"""``voicelab init`` and ``voicelab doctor``."""

from __future__ import annotations

import json
import sys

import click

from voicelab.cli.main import Ctx, pass_ctx
from voicelab.console import echo
from voicelab.workspace import Workspace


@click.command()
@click.option("--speaker", required=True, help="Speaker id: letters, digits, Chinese, '_' or '-'.")
@click.option(
    "--wav-dir", metavar="DIR", help="Folder of the speaker's recordings (any path form)."
)
@click.option("--instruct", help="Instruct prefix used in training and by 'say' (keep the marker).")
@pass_ctx
def init(ctx: Ctx, speaker: str, wav_dir: str | None, instruct: str | None) -> None:
    """Create or update a voice workspace (voicelab.toml, data/, exp/, ...).

    \b
    example:
      voicelab init --speaker xuan --wav-dir "/mnt/c/AIGC/数据集/xuan"
    """
    from voicelab.workspace import check_source_dir, check_workspace_path

    if wav_dir:
        check_source_dir(wav_dir)
    ws = ctx.workspace(must_exist=False)  # an existing workspace: wait for no writer (its lock)
    check_workspace_path(ws.root)
    options = {"prepare": {"instruct": instruct}} if instruct else None
    ws = Workspace.init(ctx.workspace_arg, speaker, wav_dir, options)
    echo(f"workspace: {ws.root}")
    echo(f"speaker:   {ws.config.speaker}")
    if ws.config.wav_dir:
        echo(f"source:    {ws.config.wav_dir}")
    echo("next:      voicelab doctor, then voicelab run")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def doctor(ctx: Ctx, as_json: bool) -> None:
    """Check this machine and workspace: one line per check, with the fix for each failure."""
    from voicelab.doctor import render, run_checks

    ws = ctx.workspace(must_exist=False)
    checks = run_checks(ws)
    if as_json:
        echo(json.dumps([c.to_dict() for c in checks], ensure_ascii=False, indent=2))
    else:
        render(checks)
    if any(c.status == "fail" and c.required for c in checks):
        sys.exit(1)


commands = [init, doctor]
