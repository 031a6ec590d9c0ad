"""``voicelab ui``: the local web page (Voice, Data, Train, Checkpoints & listening, Speak)."""

from __future__ import annotations

import os

import click

from voicelab.cli.main import Ctx, pass_ctx
from voicelab.console import echo


@click.command("ui")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8920, show_default=True, help="Port to listen on.")
@pass_ctx
def ui(ctx: Ctx, host: str, port: int) -> None:
    """Open the web page: create a voice, prepare and review the data, train, listen, speak.

    \b
    The page works offline and runs long work in this process: keep it running while
    training (closing the browser does not stop anything). Examples:
      voicelab ui                                   # then open http://127.0.0.1:8920
      voicelab -w "/mnt/c/voices/xuan" ui --port 9000
    """
    from voicelab.errors import EnvironmentProblem

    try:
        import uvicorn

        from voicelab.web.app import LOOPBACK, create_app
    except ImportError as e:
        raise EnvironmentProblem(
            f"the web page needs {e.name or 'fastapi/uvicorn'}", "pip install -e '.[ui]'"
        ) from e
    if host not in LOOPBACK:
        echo(f"warning: listening on {host}: anyone who can reach it can use this machine")
    # Jobs show their progress on the page. Live bars in this terminal would come from several
    # job threads at once, which rich refuses ("only one live display may be active").
    os.environ["VOICELAB_NO_PROGRESS"] = "1"
    app = create_app(ctx.workspace_arg, host)
    shown = "127.0.0.1" if host == "0.0.0.0" else host
    echo(f"VoiceLab page: http://{shown}:{port}/  (Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")


commands = [ui]
