"""Background jobs of the web UI: long work (prepare, train, export, audition, say) runs in a
thread of the server process, one job per workspace at a time, so a closed or reloaded page
neither stops nor loses it; the page polls :meth:`Job.snapshot`.

A job calls the same library function as the CLI command. Its progress bars come from
:func:`voicelab.console.collect_progress` (the bars the library makes anyway), its log lines from
the ``voicelab`` logger (records of the job's thread), and a failure is the same one-line
message and hint the CLI prints.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voicelab.console import collect_progress
from voicelab.errors import VoiceLabError
from voicelab.locks import Lock

log = logging.getLogger(__name__)

MAX_LOG_LINES = 200
_ids = itertools.count(1)


class JobBusy(VoiceLabError):
    """Another job holds the workspace."""


#: Jobs that only read the workspace (the CLI's `say` takes no lock either).
READ_ONLY_JOBS = frozenset({"say"})


@dataclass
class Job:
    kind: str  # prepare | review | train-llm | train-flow | export | audition | say | ...
    workspace: Path
    id: int = field(default_factory=lambda: next(_ids))
    state: str = "running"  # running | done | failed | stopped
    started: float = field(default_factory=time.time)
    finished: float | None = None
    error: dict[str, Any] | None = None
    result: dict[str, Any] = field(default_factory=dict)
    log: list[dict[str, Any]] = field(default_factory=list)
    bars: list[Any] = field(default_factory=list)
    stop_requested: bool = False
    on_stop: Callable[[], None] | None = None
    thread: threading.Thread | None = None
    lock: Lock | None = None  # the workspace's writer lock while the job runs

    def progress(self) -> list[dict[str, Any]]:
        out = []
        for bar in list(self.bars):
            for t in bar.tasks:
                out.append(
                    {
                        "what": t.description,
                        "done": t.completed,
                        "total": t.total,
                        "eta": t.time_remaining,
                        "finished": t.finished,
                    }
                )
        return out

    def snapshot(self) -> dict[str, Any]:
        end = self.finished or time.time()
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "workspace": str(self.workspace),
            "started": self.started,
            "seconds": round(end - self.started, 1),
            "progress": self.progress(),
            "log": self.log[-50:],
            "error": self.error,
            "result": self.result,
        }


def error_dict(e: VoiceLabError) -> dict[str, Any]:
    """What the page shows of a user error: the CLI's exact ``error: ...`` line, and its parts."""
    return {
        "line": f"error: {e.one_line()}",
        "message": e.message,
        "hint": e.hint,
        "type": type(e).__name__,
    }


class _JobLogHandler(logging.Handler):
    """Copies ``voicelab`` log records of a job's thread into that job."""

    def __init__(self, manager: JobManager) -> None:
        super().__init__(logging.INFO)
        self.manager = manager

    def emit(self, record: logging.LogRecord) -> None:
        job = self.manager.by_thread.get(record.thread or 0)
        if job is None:
            return
        try:
            msg = record.getMessage()
        except Exception:  # a bad format string must not kill the job
            msg = str(record.msg)
        job.log.append({"level": record.levelname.lower(), "text": msg, "time": record.created})
        del job.log[:-MAX_LOG_LINES]


class JobManager:
    """The jobs of this server process; one running job per workspace (its lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.current: dict[Path, Job] = {}  # the running or last job of each workspace
        self.by_thread: dict[int, Job] = {}
        self.handler = _JobLogHandler(self)
        logger = logging.getLogger("voicelab")
        logger.addHandler(self.handler)
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)

    def close(self) -> None:
        logging.getLogger("voicelab").removeHandler(self.handler)

    def get(self, workspace: Path) -> Job | None:
        return self.current.get(workspace)

    def running(self, workspace: Path) -> Job | None:
        job = self.current.get(workspace)
        return job if job is not None and job.state == "running" else None

    def start(
        self,
        workspace: Path,
        kind: str,
        fn: Callable[[Job], dict[str, Any] | None],
        on_stop: Callable[[], None] | None = None,
    ) -> Job:
        """Run ``fn(job)`` in a thread; refuse while another job of this page, or a writing
        command in a terminal (the workspace lock), holds the workspace."""
        with self.lock:
            busy = self.running(workspace)
            if busy is not None:
                raise JobBusy(
                    f"a {busy.kind} job is still running in {workspace}",
                    "wait for it to finish, or stop it first",
                )
            # The CLI's writer lock, held for the job's life: `voicelab train` in a terminal and
            # a training job of the page never run on one workspace at once. Speaking only reads.
            held = None
            if kind not in READ_ONLY_JOBS:
                held = Lock((workspace / ".voicelab" / "lock").resolve(), f"workspace {workspace}")
                held.acquire(f"voicelab ui: {kind}")
            job = Job(kind, workspace, on_stop=on_stop)
            job.lock = held
            self.current[workspace] = job
            job.thread = threading.Thread(
                target=self._run, args=(job, fn), name=f"voicelab-job-{job.id}", daemon=True
            )
            job.thread.start()
        return job

    def _run(self, job: Job, fn: Callable[[Job], dict[str, Any] | None]) -> None:
        self.by_thread[threading.get_ident()] = job
        try:
            with collect_progress(job.bars):
                job.result = fn(job) or {}
            job.state = "done"
        except VoiceLabError as e:
            job.error = error_dict(e)
            job.state = "stopped" if job.stop_requested else "failed"
        except BaseException as e:  # a bug: keep the traceback for the log, show its line
            log.error("%s job failed:\n%s", job.kind, traceback.format_exc())
            job.error = {"line": f"error: {type(e).__name__}: {e}", "message": str(e),
                         "hint": None, "type": type(e).__name__}  # fmt: skip
            job.state = "stopped" if job.stop_requested else "failed"
        finally:
            job.finished = time.time()
            self.by_thread.pop(threading.get_ident(), None)
            if job.lock is not None:
                job.lock.release()

    def stop(self, workspace: Path) -> Job:
        """Ask the running job to stop (training: as Ctrl-C would). Returns it."""
        job = self.running(workspace)
        if job is None:
            raise JobBusy(f"no job is running in {workspace}", "nothing to stop")
        if job.on_stop is None:
            raise JobBusy(f"a {job.kind} job cannot be stopped", "wait for it to finish")
        job.stop_requested = True
        threading.Thread(target=job.on_stop, name=f"voicelab-stop-{job.id}", daemon=True).start()
        return job
