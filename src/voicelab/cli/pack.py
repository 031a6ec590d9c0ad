"""``voicelab pack``: parquet shards in upstream's format, run alone through the runner."""

from __future__ import annotations

import click

from voicelab.cli.features import run_alone
from voicelab.cli.main import Ctx, pass_ctx


@click.command("pack")
@click.option(
    "--utts-per-shard",
    type=int,
    metavar="N",
    help="Utterances per parquet shard (upstream's --num_utts_per_parquet). Default: enough "
    "shards for 2 per DataLoader worker per GPU.",
)
@click.option(
    "--num-workers",
    type=int,
    metavar="N",
    help="DataLoader workers training will use per GPU (default: [train] num_workers, else 4).",
)
@click.option(
    "--gpus", type=int, metavar="N", help="GPUs training will use (default: [train] gpus, else 1)."
)
@click.option("--jobs", type=int, metavar="N", help="Shards written in parallel (default: cores).")
@click.option("--force", is_flag=True, help="Rewrite every shard even when inputs are unchanged.")
@pass_ctx
def pack(
    ctx: Ctx,
    utts_per_shard: int | None,
    num_workers: int | None,
    gpus: int | None,
    jobs: int | None,
    force: bool,
) -> None:
    """Parquet shards and data.list for train and dev, in upstream's format."""
    flags = {
        "utts_per_shard": utts_per_shard,
        "num_workers": num_workers,
        "gpus": gpus,
        "jobs": jobs,
    }
    run_alone(ctx, "pack", flags, force)


commands = [pack]
