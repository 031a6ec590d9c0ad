"""``voicelab prepare``: recordings -> transcribed, checked, split kaldi dirs (notes step 5.1)."""

from __future__ import annotations

from pathlib import Path

import click

from voicelab.cli.main import Ctx, pass_ctx
from voicelab.console import echo
from voicelab.errors import ConfigError


@click.command()
@click.option(
    "--wav-dir", "--wav_dir", metavar="DIR", help="Source folder (overrides voicelab.toml)."
)
@click.option(
    "--asr",
    "--backend",
    type=click.Choice(["faster-whisper", "funasr", "transcripts"]),
    help="Transcription: faster-whisper (default), funasr, or import existing transcripts.",
)
@click.option(
    "--whisper-model", "--whisper_model", metavar="NAME|DIR",
    help="Whisper size, HF repo or local CTranslate2 folder (default large-v3).",
)  # fmt: skip
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="ASR device.")
@click.option(
    "--compute-type", "--compute_type", metavar="TYPE",
    help="CTranslate2 compute type (default: int8_float16 on CUDA, int8 on CPU).",
)  # fmt: skip
@click.option(
    "--language", metavar="CODE", help="Spoken language, e.g. zh or en (default: detect)."
)
@click.option(
    "--text-norm/--no-text-norm", "--wetext/--no-wetext", " /--no_wetext", "text_norm",
    default=None,
    help="wetext normalization (default on); --no-wetext is the notes' --no_wetext. "
    "Traditional->simplified applies either way.",
)  # fmt: skip
@click.option("--limit", type=int, metavar="N", help="Only the first N segments (a trial run).")
@click.option("--min-seconds", type=float, help="Merge pieces shorter than this (default 2).")
@click.option("--max-seconds", type=float, help="Cut utterances longer than this (default 20).")
@click.option("--dev-ratio", type=float, help="Share of utterances for dev (default 0.05).")
@click.option("--review", is_flag=True, help="Write prepare/review.tsv (worst first) to edit.")
@click.option(
    "--apply-review", metavar="[FILE]", is_flag=False, flag_value="-", default=None,
    help="Apply an edited review file (default prepare/review.tsv): text fixes and keep=0/1.",
)  # fmt: skip
@click.option(
    "--transcripts", metavar="FILE",
    help="With --asr transcripts: a GPT-SoVITS .list or CSV/TSV of file,text "
    "(default: a .txt/.lab beside each audio file).",
)  # fmt: skip
@click.option(
    "--vad-filter/--no-vad-filter", "--vad_filter", default=True,
    help="Accepted for the notes' compatibility: segments are always cut with the VAD.",
)  # fmt: skip
@pass_ctx
def prepare(
    ctx: Ctx,
    wav_dir: str | None,
    asr: str | None,
    whisper_model: str | None,
    device: str | None,
    compute_type: str | None,
    language: str | None,
    text_norm: bool | None,
    limit: int | None,
    min_seconds: float | None,
    max_seconds: float | None,
    dev_ratio: float | None,
    review: bool,
    apply_review: str | None,
    transcripts: str | None,
    vad_filter: bool,
) -> None:
    """Transcribe, check and split the speaker's recordings into train/dev kaldi dirs.

    \b
    examples:
      voicelab prepare --wav-dir "/mnt/c/AIGC/数据集/xuan" --limit 10   # a trial
      voicelab prepare --whisper-model large-v3 --device cuda --compute-type int8_float16
      voicelab prepare --asr transcripts --transcripts slicer_opt.list
      voicelab prepare --review           # then edit data/<spk>_sft/prepare/review.tsv
      voicelab prepare --apply-review     # text fixes and keep=0 drops, no ASR redone

    Options apply to this run; keep one with: voicelab config set prepare.KEY VALUE.
    """
    from voicelab import config
    from voicelab.paths import to_local_path
    from voicelab.runner.pipeline import RunOptions, run_stage
    from voicelab.workspace import check_source_dir

    given = config.check_flags(
        "prepare",
        {
            "asr": asr,
            "whisper_model": whisper_model,
            "device": device,
            "compute_type": compute_type,
            "language": language,
            "text_norm": text_norm,
            "min_seconds": min_seconds,
            "max_seconds": max_seconds,
            "dev_ratio": dev_ratio,
            "transcripts": str(to_local_path(transcripts)) if transcripts else None,
        },
    )
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit {limit} is out of range", "use a whole number >= 1, e.g. 10")
    ws = ctx.workspace()
    # Flags are for this run only (a trial --limit 10 --device cpu changes nothing kept);
    # keep a setting with: voicelab config set prepare.KEY VALUE.
    run_only = {
        "wav_dir": str(check_source_dir(wav_dir)) if wav_dir else None,
        "limit": limit,
        "review": review or None,
        "apply_review": Path(apply_review) if apply_review else None,
        "vad_filter": vad_filter,
    }
    overrides = {k: v for k, v in {**given, **run_only}.items() if v is not None}
    state = run_stage(ws, "prepare", RunOptions(overrides={"prepare": overrides}))
    result = state.result
    for line in result.summary_lines() if result is not None else [state.reason]:
        echo(line)
    echo(f"train: {ws.split_dir('train')}")
    echo(f"qc:    {ws.prepare_dir / 'qc.tsv'}")


commands = [prepare]
