"""``voicelab audition``: the test sentences in one or more voices, as a listening page."""

from __future__ import annotations

from typing import Any

import click

from voicelab.cli.main import Ctx, pass_ctx
from voicelab.cli.synth import voice_options, voice_workspace
from voicelab.console import echo


@click.command("audition")
@click.option(
    "--sentences", metavar="FILE", help="Test sentences, one per line ('id<TAB>text' names one)."
)
@click.option("--compare", is_flag=True, help="The 2 x 2 grid: neutral/hype x speed 1.0/1.1.")
@click.option(
    "--compare-ckpts",
    metavar="LIST",
    help="Checkpoints side by side, e.g. epoch_4,epoch_6,avg (avg = the exported voice).",
)
@click.option("--blind", is_flag=True, help="Shuffle and hide the variant names; record picks.")
@click.option(
    "--unblind",
    "unblind_file",
    metavar="FILE",
    help="Read a blind test's downloaded choices and print which variants won.",
)
@click.option("--key", "key_file", metavar="FILE", help="The blind key (found by default).")
@click.option(
    "-o", "--out", metavar="DIR", help="Report folder (default: reports/audition-<time>)."
)
@voice_options
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for every take.")
@pass_ctx
def audition(
    ctx: Ctx,
    sentences: str | None,
    compare: bool,
    compare_ckpts: str | None,
    blind: bool,
    unblind_file: str | None,
    key_file: str | None,
    out: str | None,
    voice: dict[str, Any],
    seed: int,
) -> None:
    """Speak fixed test sentences and write a static HTML page to listen and compare.

    \b
    Sentences: Chinese and English, numbers, dates, polyphones (银行/行走, 重要/重复), a long
    paragraph (or --sentences FILE). One wav per sentence per variant, same seed for all.
    Examples:
      voicelab audition                              # the voice as `say` would speak it
      voicelab audition --compare                    # neutral/hype x speed 1.0/1.1
      voicelab audition --compare-ckpts epoch_4,epoch_6,avg --blind
      voicelab audition --unblind ~/Downloads/audition-20261125-101500-choices.json
    """
    from pathlib import Path

    from voicelab.stages.audition import (
        AuditionOptions,
        describe_unblind,
        run_audition,
        run_unblind,
    )

    ws = voice_workspace(ctx, voice["model_dir"])
    if unblind_file is not None:
        dirs = [ws.reports_dir] if ws is not None else []
        dirs.append(Path.cwd() / "reports")
        for line in describe_unblind(run_unblind(unblind_file, key_file, dirs)):
            echo(line)
        return
    opts = AuditionOptions(
        **voice,
        sentences=sentences,
        compare=compare,
        compare_ckpts=compare_ckpts,
        blind=blind,
        seed=seed,
        out=out,
    )
    from voicelab.runner.pipeline import voice_hint

    with voice_hint(ws, opts.model_dir):
        res = run_audition(ws, opts)
    from voicelab.runner.report import refresh_after_audition

    refresh_after_audition(ws, res.report_dir)
    echo(f"{res.index}")
    echo(
        f"{res.takes} takes ({len(res.variants)} variant(s): {', '.join(res.variants)}), "
        f"{res.audio_seconds:.1f} s of audio, RTF {res.rtf:.2f}"
    )
    if res.key is not None:
        echo(f"blind key (keep it from the listener): {res.key}")


commands = [audition]
