"""Termination signals: SIGTERM and SIGHUP stop a command the way Ctrl-C does.

A closed terminal (SIGHUP) or a ``kill`` (SIGTERM) would otherwise end Python at once: no
``finally``, so a trainer's torchrun group keeps running on its own, its log is cut and its
record still says running. Under :func:`stop_on_signals` either signal raises :class:`Stopped`
(a KeyboardInterrupt), so every cleanup path written for Ctrl-C runs, and records say
``stopped by SIGTERM``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """A termination signal arrived; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def _raise(signum: int, frame: Any) -> None:
    # The first signal stops the command; more of them must not cut its cleanup short.
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    raise Stopped(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM/SIGHUP raise Stopped in the main thread inside the block (elsewhere: no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _raise) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def stopped_by(exc: BaseException | None) -> Stopped | None:
    """The Stopped behind ``exc`` (click wraps a KeyboardInterrupt into Abort)."""
    while exc is not None:
        if isinstance(exc, Stopped):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None
