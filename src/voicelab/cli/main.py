"""``voicelab`` entry point: global options, logging, and one-line errors.

Each command module under ``voicelab.cli`` exposes ``commands`` (a list of click commands or
groups), registered here explicitly. Commands parse options, open the workspace, call one library
function and print its summary; heavy imports stay inside the command bodies.
"""

from __future__ import annotations

import importlib
import sys
import time

import click
from rich.markup import escape

from voicelab import __version__
from voicelab.console import console, setup_logging
from voicelab.errors import VoiceLabError
from voicelab.workspace import Workspace

COMMAND_MODULES = (
    "voicelab.cli.setup",  # init, doctor
    "voicelab.cli.vendor",  # vendor sync|status|link|pin
    "voicelab.cli.models",  # download, models
    "voicelab.cli.prepare",  # prepare
    "voicelab.cli.features",  # features, pack
    "voicelab.cli.training",  # train
    "voicelab.cli.export",  # checkpoints, export
    "voicelab.cli.speak",  # say, audition
    "voicelab.cli.pipeline",  # run, status, demo, report
    "voicelab.cli.evaluate",  # eval
    "voicelab.cli.ui",  # ui
    "voicelab.cli.serve",  # serve
)


class Ctx:
    """Per-invocation state shared by commands."""

    def __init__(self, workspace: str | None, verbose: bool, quiet: bool) -> None:
        self.workspace_arg = workspace
        self.verbose = verbose
        self.quiet = quiet

    def workspace(self, must_exist: bool = True) -> Workspace:
        return Workspace.open(self.workspace_arg, must_exist=must_exist)


pass_ctx = click.make_pass_decorator(Ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "-w",
    "--workspace",
    envvar="VOICELAB_WORKSPACE",
    metavar="DIR",
    help="Voice workspace folder (default: workflows/cosyvoice under the VoiceLab root).",
)
@click.option("-v", "--verbose", is_flag=True, help="Show debug output and tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors; no progress bars.")
@click.version_option(__version__, prog_name="voicelab")
@click.pass_context
def cli(ctx: click.Context, workspace: str | None, verbose: bool, quiet: bool) -> None:
    """VoiceLab: turn a folder of one speaker's recordings into a CosyVoice 3 voice.

    \b
    Quick start:
      voicelab demo                                  # the whole pipeline on a built-in corpus
      voicelab run --wav-dir "/mnt/c/data/xuan" --speaker xuan
      voicelab say "你好，世界" --out hello.wav
    """
    obj = Ctx(workspace, verbose, quiet)
    ctx.obj = obj
    log_file = None
    try:
        ws = obj.workspace(must_exist=False)
        if ws.config_file.is_file() and ctx.invoked_subcommand:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            log_file = ws.logs_dir / f"{stamp}-{ctx.invoked_subcommand}.log"
    except VoiceLabError:
        log_file = None
    setup_logging(verbose=verbose, quiet=quiet, log_file=log_file)


def _register() -> None:
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        for command in getattr(module, "commands", []):
            cli.add_command(command)


_register()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors become one line and exit code 1."""
    verbose = "-v" in (argv or sys.argv[1:]) or "--verbose" in (argv or sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="voicelab", standalone_mode=False)
    except click.exceptions.Abort:
        console.print("interrupted: run the same command again to resume")
        sys.exit(130)
    except KeyboardInterrupt:
        console.print("interrupted: run the same command again to resume")
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except VoiceLabError as e:
        if verbose:
            console.print_exception()
        # The message may hold brackets ("pip install -e '.[train]'"): never read it as markup.
        console.print(f"[bold red]error:[/] {escape(e.one_line())}", markup=True, highlight=False)
        sys.exit(1)
    sys.exit(0)
