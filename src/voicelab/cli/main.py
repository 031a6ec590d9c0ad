"""``voicelab`` entry point: global options, logging, and one-line errors.

Each command module under ``voicelab.cli`` exposes ``commands`` (a list of click commands or
groups), registered here explicitly. Commands parse options, open the workspace, call one library
function and print its summary; heavy imports stay inside the command bodies.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import time
from pathlib import Path

import click
from rich.markup import escape

from voicelab import __version__
from voicelab.console import console, setup_logging
from voicelab.errors import VoiceLabError
from voicelab.signals import stop_on_signals, stopped_by
from voicelab.workspace import Workspace

COMMAND_MODULES = (
    "voicelab.cli.setup",  # init, doctor
    "voicelab.cli.vendor",  # vendor sync|status|link|pin
    "voicelab.cli.models",  # download, models
    "voicelab.cli.prepare",  # prepare
    "voicelab.cli.features",  # features
    "voicelab.cli.pack",  # pack
    "voicelab.cli.train",  # train, tensorboard
    "voicelab.cli.export",  # checkpoints, export
    "voicelab.cli.synth",  # say
    "voicelab.cli.audition",  # audition
    "voicelab.cli.runner",  # run, status, demo, report
    "voicelab.cli.evaluate",  # eval
    "voicelab.cli.ui",  # ui
    "voicelab.cli.serve",  # serve
    "voicelab.cli.config",  # config show|get|set|unset
)


# Commands that write into the workspace take its lock; the others (status, say, doctor ...)
# read and never wait. `checkpoints --lock` and `config set` lock on their own.
WRITE_COMMANDS = frozenset(
    {"init", "prepare", "features", "pack", "train", "export", "audition", "run", "demo"}
)
# Commands that choose their own workspace and log there: `-w` naming another voice must not get
# even a log file from them (the demo refuses such a folder untouched).
OWN_WORKSPACE = frozenset({"demo"})


class Ctx:
    """Per-invocation state shared by commands."""

    def __init__(self, workspace: str | None, verbose: bool, quiet: bool) -> None:
        self.workspace_arg = workspace
        self.verbose = verbose
        self.quiet = quiet
        self.command: str | None = None
        self.log_file: Path | None = None

    def workspace(self, must_exist: bool = True, write: bool | None = None) -> Workspace:
        """The selected workspace; a writing command also takes its lock (see WRITE_COMMANDS)."""
        ws = Workspace.open(self.workspace_arg, must_exist=must_exist)
        if write if write is not None else self.command in WRITE_COMMANDS:
            self.lock(ws)
        return ws

    def lock(self, ws: Workspace) -> None:
        """Take the workspace's writer lock (once it is a workspace) and log into it."""
        from voicelab.locks import workspace_lock

        if ws.config_file.is_file():
            lock = workspace_lock(ws.root, f"voicelab {self.command or ''}".strip())
            click.get_current_context().call_on_close(lock.release)
            self.start_log(ws)

    def start_log(self, ws: Workspace) -> None:
        """Log this command into ``ws``'s logs/ (when the workspace was chosen late: demo)."""
        if self.log_file is not None and self.log_file.is_relative_to(ws.logs_dir):
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.log_file = ws.logs_dir / f"{stamp}-{self.command or 'voicelab'}.log"
        setup_logging(verbose=self.verbose, quiet=self.quiet, log_file=self.log_file)

    def set_workspace(self, value: str | None) -> None:
        """``-w`` given after the subcommand: same meaning as before it."""
        if value and value != self.workspace_arg:
            self.workspace_arg = value
            self.log_file = None
            with contextlib.suppress(VoiceLabError):
                ws = Workspace.open(value, must_exist=False)
                if ws.config_file.is_file() and self.command not in OWN_WORKSPACE:
                    self.start_log(ws)


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
    obj.command = ctx.invoked_subcommand
    ctx.obj = obj
    setup_logging(verbose=verbose, quiet=quiet)
    try:
        ws = Workspace.open(workspace, must_exist=False)
        if ws.config_file.is_file() and ctx.invoked_subcommand not in (None, *OWN_WORKSPACE):
            obj.start_log(ws)
    except VoiceLabError:
        pass


def _late_workspace(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    obj = ctx.find_object(Ctx)
    if obj is not None:
        obj.set_workspace(value)


def accept_workspace(command: click.Command) -> None:
    """Let ``-w/--workspace`` follow the subcommand too (``voicelab status -w DIR``)."""
    if any("--workspace" in getattr(p, "opts", ()) for p in command.params):
        return
    command.params.append(
        click.Option(
            ["-w", "--workspace"],
            metavar="DIR",
            expose_value=False,
            is_eager=True,
            callback=_late_workspace,
            help="Voice workspace folder (also accepted before the command).",
        )
    )
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            accept_workspace(sub)


def _register() -> None:
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        for command in getattr(module, "commands", []):
            accept_workspace(command)
            cli.add_command(command)


_register()


def _log_error(e: BaseException) -> None:
    """The error the user sees, into the per-run log as well (only the file handler: the
    console prints it once, below)."""
    import logging

    text = e.one_line() if isinstance(e, VoiceLabError) else f"{type(e).__name__}: {e}"
    record = logging.LogRecord("voicelab", logging.ERROR, "", 0, "error: %s", (text,), None)
    for h in logging.getLogger("voicelab").handlers:
        if isinstance(h, logging.FileHandler):
            h.handle(record)
            h.flush()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors become one line and exit code 1."""
    verbose = "-v" in (argv or sys.argv[1:]) or "--verbose" in (argv or sys.argv[1:])
    try:
        with stop_on_signals():  # SIGTERM/SIGHUP clean up like Ctrl-C
            cli.main(args=argv, prog_name="voicelab", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt) as e:
        stopped = stopped_by(e)
        _log_error(stopped or KeyboardInterrupt("interrupted"))
        with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
            console.print(f"{stopped or 'interrupted'}: run the same command again to resume")
        sys.exit(128 + stopped.signum if stopped else 130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except VoiceLabError as e:
        if verbose:
            console.print_exception()
        _log_error(e)
        # The message may hold brackets ("pip install -e '.[train]'"): never read it as markup.
        console.print(f"[bold red]error:[/] {escape(e.one_line())}", markup=True, highlight=False)
        sys.exit(1)
    except Exception as e:  # a bug: its traceback goes to the console, its line to the log
        _log_error(e)
        raise
    sys.exit(0)
