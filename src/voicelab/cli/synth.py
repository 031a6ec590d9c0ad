"""``voicelab say``: speak text with a voice (the synth stage's front end)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from voicelab.cli.main import Ctx, pass_ctx
from voicelab.console import echo


def voice_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by say and audition: which voice, which weights, how to speak; the
    command receives them as ``voice`` (the keyword arguments of :class:`VoiceChoice`)."""
    options = [
        click.option(
            "--model-dir",
            metavar="DIR",
            help="Exported voice dir (default: the workspace's pretrained_models/<voice>).",
        ),
        click.option(
            "--speaker", metavar="ID", help="Speaker in spk2info.pt (default: the voice's)."
        ),
        click.option(
            "--llm-ckpt",
            metavar="PATH",
            help="Hot-load this llm training checkpoint over the voice.",
        ),
        click.option(
            "--flow-ckpt",
            metavar="PATH",
            help="Hot-load this flow training checkpoint over the voice.",
        ),
        click.option(
            "--epoch",
            type=int,
            metavar="N",
            help="Hot-load llm epoch N of the training run (default: the locked epoch).",
        ),
        click.option(
            "--preset",
            type=click.Choice(["neutral", "hype"], case_sensitive=False),
            help="Instruct preset: neutral (the training instruct, default) or hype "
            "(马头有大！马头来啦！).",
        ),
        click.option(
            "--prompt-text",
            metavar="TEXT",
            help="Instruct to use instead, e.g. '温柔地说<|endofprompt|>' "
            "(the marker is added if missing).",
        ),
        click.option("--speed", type=float, default=1.0, show_default=True, help="Speaking rate."),
        click.option(
            "--no-text-frontend",
            "no_frontend",
            is_flag=True,
            help="Skip normalization (numbers, dates read as typed); text is still split.",
        ),
        click.option("--fp16", is_flag=True, help="Half precision on a CUDA GPU (faster)."),
    ]
    names = ("model_dir", "speaker", "llm_ckpt", "flow_ckpt", "epoch", "preset", "prompt_text",
             "speed", "fp16")  # fmt: skip

    @functools.wraps(f)
    def with_voice(*args: Any, **kwargs: Any) -> Any:
        # The command gets one ``voice`` dict: VoiceChoice's fields, as its options extend it.
        voice = {k: kwargs.pop(k) for k in names}
        voice["text_frontend"] = not kwargs.pop("no_frontend")
        return f(*args, voice=voice, **kwargs)

    for opt in reversed(options):
        with_voice = opt(with_voice)
    return with_voice


def voice_workspace(ctx: Ctx, model_dir: str | None) -> Any:
    """The workspace if there is one: say/audition also work on a bare --model-dir."""
    ws = ctx.workspace(must_exist=False)
    if ws.config_file.is_file():
        return ws
    if ctx.workspace_arg and model_dir is None:
        return ctx.workspace()  # the one-line "no voice workspace at ..." error
    return None


@click.command("say")
@click.argument("text", required=False)
@click.option(
    "--text-file",
    metavar="FILE",
    help="Read the text from FILE: one utterance per line (or per paragraph).",
)
@click.option(
    "--paragraphs", is_flag=True, help="One utterance per blank-line separated paragraph."
)
@click.option(
    "-o",
    "--out",
    metavar="PATH",
    help="A .wav file, or a folder for one NNN-<text>.wav per utterance (default: out_wav/).",
)
@click.option("--join", is_flag=True, help="Also write all utterances in one file, with pauses.")
@click.option(
    "--pause", type=float, default=0.3, show_default=True, help="Seconds between joined utterances."
)
@voice_options
@click.option("--stream", is_flag=True, help="Write audio to the file as it arrives.")
@click.option("--seed", type=int, help="Seed the sampling: the same seed gives the same audio.")
@pass_ctx
def say(
    ctx: Ctx,
    text: str | None,
    text_file: str | None,
    paragraphs: bool,
    out: str | None,
    join: bool,
    pause: float,
    voice: dict[str, Any],
    stream: bool,
    seed: int | None,
) -> None:
    """Speak TEXT in the voice: one 24 kHz wav per line (TEXT, - for stdin, or --text-file).

    \b
    Uses the exported voice, or the locked epoch / --epoch / --llm-ckpt hot-loaded over it.
    Every segment gets the training instruct (or --preset / --prompt-text) in front, as
    CosyVoice 3 needs; long text is normalized and split first. Examples:
      voicelab say "你好，这是一个推理测试。" --out hello.wav
      voicelab say --text-file lines.txt --out out_wav/ --join --pause 0.5
      voicelab say "今天天气真好！" --preset hype --speed 1.1 --epoch 6
      echo "Hello there." | voicelab say - --stream --out hi.wav
    """
    from pathlib import Path

    from voicelab.blocks.tts_text import read_texts
    from voicelab.stages.synth import SayOptions, describe, run_say

    texts = read_texts(text, text_file, paragraphs)
    opts = SayOptions(
        **voice, out=Path(out) if out else None, stream=stream, seed=seed, join=join, pause=pause
    )
    ws = voice_workspace(ctx, opts.model_dir)
    from voicelab.runner.pipeline import voice_hint

    with voice_hint(ws, opts.model_dir):
        result = run_say(ws, texts, opts)
    for line in describe(result):
        echo(line)


commands = [say]
