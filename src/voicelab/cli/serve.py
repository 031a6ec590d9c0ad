"""``voicelab serve``."""

from __future__ import annotations

import click

from voicelab.cli.main import Ctx, pass_ctx


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8910, show_default=True, help="Port to listen on.")
@click.option(
    "--voice",
    "voices",
    multiple=True,
    metavar="NAME",
    help="Serve only this exported voice (repeatable; default: all of the workspace's).",
)
@click.option(
    "--api-key",
    envvar="VOICELAB_API_KEY",
    metavar="KEY",
    help="Require 'Authorization: Bearer KEY' (needed to listen on any non-loopback address).",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    metavar="DEV",
    help="auto, cpu, cuda or cuda:N.",
)
@click.option("--fp16", is_flag=True, help="Half precision on a CUDA GPU (faster).")
@click.option(
    "--max-queue",
    type=int,
    default=8,
    show_default=True,
    help="Requests that may wait per model; more get 503 + Retry-After.",
)
@click.option(
    "--timeout",
    type=float,
    default=300.0,
    show_default=True,
    help="Seconds a request may take, queue included.",
)
@click.option(
    "--max-input", type=int, default=4096, show_default=True, help="Longest input, in characters."
)
@pass_ctx
def serve(
    ctx: Ctx,
    host: str,
    port: int,
    voices: tuple[str, ...],
    api_key: str | None,
    device: str,
    fp16: bool,
    max_queue: int,
    timeout: float,
    max_input: int,
) -> None:
    """Speak with the workspace's exported voices as an OpenAI-compatible service.

    \b
    POST /v1/audio/speech   (model, input, voice, response_format, speed, stream, seed, ...)
    GET  /v1/models, /v1/voices, /health, /metrics
    Example:
      voicelab serve
      curl -o hi.wav localhost:8910/v1/audio/speech -H 'Content-Type: application/json' \\
        -d '{"input": "你好", "voice": "xuan", "response_format": "wav"}'
    """
    from voicelab.serve.run import ServeOptions, run_server

    ws = ctx.workspace()
    opts = ServeOptions(
        host=host,
        port=port,
        voices=list(voices),
        api_key=api_key,
        device=device,
        fp16=fp16,
        max_queue=max_queue,
        timeout=timeout,
        max_input=max_input,
    )
    run_server(ws.pretrained_dir, ws.instruct, opts)


commands = [serve]
