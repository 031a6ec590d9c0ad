"""Console output, logging and progress bars: the conventions every command follows.

Library modules log through ``logging.getLogger(__name__)`` (under ``voicelab``) and never print.
Only the CLI calls :func:`setup_logging`, which sends INFO to the console (WARNING with ``-q``,
DEBUG with ``-v``) and everything at DEBUG to a per-run log file in the workspace.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

console = Console(stderr=True, highlight=False, soft_wrap=True)
_state = {"quiet": False, "verbose": False}
# Per thread: a list that collects every progress bar made in it (the web UI's background jobs
# read their bars from it; the bars keep counting while hidden).
_watched = threading.local()


def setup_logging(verbose: bool = False, quiet: bool = False, log_file: Path | None = None) -> None:
    """Configure the ``voicelab`` logger once per process (CLI only)."""
    _state.update(quiet=quiet, verbose=verbose)
    root = logging.getLogger("voicelab")
    for h in root.handlers:  # a second call (demo: its own workspace's log) closes the first
        h.close()
    root.handlers.clear()
    root.setLevel(logging.DEBUG)
    root.propagate = False
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler: logging.Handler
    if console.is_terminal:
        handler = RichHandler(
            console=console,
            show_time=False,
            show_path=verbose,
            markup=False,
            rich_tracebacks=verbose,
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        # Piped or redirected (CI, nohup, tee): rich would wrap every line at 80 columns,
        # splitting paths and commands a user copies; one record, one line.
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)-8s %(message)s"))
    handler.setLevel(level)
    root.addHandler(handler)
    if log_file is not None:
        # delay: the file (and its folder) appears with the first record, so a command refused
        # before any output (demo pointed at another voice) leaves nothing behind.
        fh = _LazyFileHandler(log_file, encoding="utf-8", delay=True)
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(fh)


class _LazyFileHandler(logging.FileHandler):
    def _open(self) -> Any:
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler on whatever ``sys.stderr`` is at emit time (tests swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def is_quiet() -> bool:
    return _state["quiet"]


def is_verbose() -> bool:
    return _state["verbose"]


def progress_enabled() -> bool:
    """Bars only where a person watches: not with -q, not in CI logs, not when piped."""
    if _state["quiet"] or os.environ.get("VOICELAB_NO_PROGRESS"):
        return False
    return console.is_terminal or bool(os.environ.get("VOICELAB_FORCE_PROGRESS"))


def make_progress(transient: bool = False) -> Progress:
    """A rich progress bar with count, elapsed time and ETA."""
    prog = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=not progress_enabled(),
    )
    bars = getattr(_watched, "bars", None)
    if bars is not None:
        bars.append(prog)
    return prog


@contextmanager
def collect_progress(bars: list[Progress]) -> Iterator[list[Progress]]:
    """Append every progress bar this thread makes inside the block to ``bars``."""
    _watched.bars = bars
    try:
        yield bars
    finally:
        _watched.bars = None


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar (ETA); plain iteration when progress is off."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with make_progress() as prog:
        task = prog.add_task(description, total=total)
        for item in items:
            yield item
            prog.advance(task)


@contextmanager
def status(message: str) -> Iterator[None]:
    """A spinner for work with no count (a clone, a model load)."""
    if progress_enabled():
        with console.status(message):
            yield
    else:
        logging.getLogger("voicelab").info(message)
        yield


def echo(message: str = "") -> None:
    """Command results meant for the user (summaries, tables) go to stdout."""
    Console(file=sys.stdout, highlight=False, soft_wrap=True).print(message, markup=False)
