"""Owner locks: one writer per workspace, one trainer per run dir.

A lock is a small JSON file (owner PID, command, start time, and for a trainer the process group
of torchrun) held with ``flock``. The kernel drops the flock when its owner dies however it dies,
so a lock never outlives its process; the JSON left behind tells the next owner that the previous
one ended without cleaning up (a stale lock, reported), and whether the process group it
started is still alive (then it is refused: two trainers must never share a run dir).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voicelab.errors import VoiceLabError

log = logging.getLogger(__name__)


class LockBusy(VoiceLabError):
    """Another live process owns the lock."""


def alive(pid: int | None) -> bool:
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def group_alive(pgid: int | None) -> bool:
    if not pgid or pgid <= 1:
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def command_line() -> str:
    """``voicelab run`` style name of this process, for the message another process shows."""
    args = [a for a in sys.argv[1:] if not a.startswith("-")][:2]
    return "voicelab " + " ".join(args) if args else os.path.basename(sys.argv[0] or "python")


@dataclass
class Lock:
    """An exclusive lock file. ``what`` names the thing locked in messages ("workspace X")."""

    path: Path
    what: str
    info: dict[str, Any] = field(default_factory=dict)
    stale: dict[str, Any] | None = None  # what a dead previous owner left behind
    _fd: int | None = None

    def read(self) -> dict[str, Any]:
        try:
            text = self.path.read_text("utf-8")
            return json.loads(text) if text.strip() else {}
        except (OSError, ValueError):
            return {}

    def acquire(self, command: str | None = None) -> Lock:
        """Take the lock or raise LockBusy naming the owner (command and PID)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = self.read()
            raise LockBusy(
                f"{self.what} is in use by {owner.get('command', 'another command')} "
                f"(PID {owner.get('pid', '?')})",
                "wait for it to finish (or stop it), then run this command again",
            ) from None
        except OSError as e:  # a filesystem without flock (some network or Windows mounts)
            os.close(fd)
            log.warning("%s: cannot lock %s (%s); going on without a lock", self.what, self.path, e)
            return self
        return self._took(fd, command)

    def _took(self, fd: int, command: str | None) -> Lock:
        self._fd = fd
        previous = self.read()
        if previous.get("pid") and previous.get("pid") != os.getpid():
            self.stale = previous
            pgid = previous.get("pgid")
            if group_alive(pgid):
                self.release(keep=True)
                raise LockBusy(
                    f"{self.what}: processes started by PID {previous.get('pid')} "
                    f"({previous.get('command', '?')}) are still running (process group {pgid})",
                    f"stop them first: kill -- -{pgid}",
                )
            log.warning(
                "%s: a stale lock of PID %s (%s, started %s) was found: that process ended "
                "without releasing it; taking over",
                self.what,
                previous.get("pid"),
                previous.get("command", "?"),
                time.strftime("%Y-%m-%d %H:%M", time.localtime(previous.get("started", 0))),
            )
        self.info = {
            "pid": os.getpid(),
            "command": command or command_line(),
            "started": time.time(),
        }
        self._write()
        return self

    def update(self, **values: Any) -> None:
        """Record more about the owner (e.g. the child's process group)."""
        self.info.update(values)
        self._write()

    def _write(self) -> None:
        if self._fd is None:
            return
        data = json.dumps(self.info).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self, keep: bool = False) -> None:
        """Unlock; the JSON is emptied (a clean end) unless ``keep``."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if not keep:
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> Lock:
        if not self.held:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


_held: dict[Path, Lock] = {}


def workspace_lock(root: Path, command: str | None = None) -> Lock:
    """The workspace's writer lock, taken once per process (later calls return the same)."""
    path = (root / ".voicelab" / "lock").resolve()
    lock = _held.get(path)
    if lock is None or not lock.held:
        lock = Lock(path, f"workspace {root}").acquire(command)
        _held[path] = lock
    return lock
