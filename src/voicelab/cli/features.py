"""``voicelab features``: speaker embeddings and speech tokens, run alone through the runner."""

from __future__ import annotations

import click

from voicelab.cli.main import Ctx, pass_ctx
from voicelab.console import echo


@click.command("features")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default=None,
    help="ONNX Runtime device: CUDA when it works (auto), or forced. "
    "COSYVOICE_ORT_FORCE_CPU=1 forces the CPU too.",
)
@click.option(
    "--onnx-dir",
    metavar="DIR",
    help="Folder with campplus.onnx and speech_tokenizer_v3.onnx (default: the base model).",
)
@click.option("--threads", type=int, metavar="N", help="Worker threads (default: CPU cores).")
@click.option(
    "--token-batch",
    type=int,
    metavar="N",
    help="Utterances per speech-tokenizer call (default: 16 on CUDA, 1 on CPU); batches use "
    "speech_tokenizer_v3.batch.onnx when it is there.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Run even when inputs are unchanged (per-utterance results stay cached; delete "
    "data/<speaker>_sft/.features_cache.json to recompute everything).",
)
@pass_ctx
def features(
    ctx: Ctx,
    device: str | None,
    onnx_dir: str | None,
    threads: int | None,
    token_batch: int | None,
    force: bool,
) -> None:
    """Speaker embeddings and speech tokens for train and dev (upstream's utt2embedding.pt,
    spk2embedding.pt, utt2speech_token.pt).

    \b
    Audio is padded to whole 40 ms tokens before tokenizing, so 2 x tokens == mel frames as
    flow training needs. Utterances over 30 s are left out with a reason. Only changed audio
    is recomputed; an interrupted run resumes.
    """
    flags = {"device": device, "onnx_dir": onnx_dir, "threads": threads, "token_batch": token_batch}
    run_alone(ctx, "features", flags, force)


def run_alone(ctx: Ctx, stage: str, flags: dict[str, object], force: bool) -> None:
    """Check the flags (before anything is written), run ``stage`` alone through the runner,
    recorded as ``voicelab run`` records it, and print its summary."""
    from voicelab import config
    from voicelab.runner.pipeline import RunOptions, run_stage

    given = config.check_flags(stage, flags)
    ws = ctx.workspace()
    overrides = {k: v for k, v in given.items() if v is not None}
    if force:
        overrides["force"] = True
    run = run_stage(ws, stage, RunOptions(overrides={stage: overrides}))
    echo(run.result.summary())


commands = [features]
