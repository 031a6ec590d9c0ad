"""A real ``voicelab serve`` process on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``python -m voicelab -w WORKSPACE serve --host H --port P ARGS`` until ``stop()``.

    ``start()`` returns once the server answers ``/health`` (any status: the models may still
    be loading); ``wait_ready()`` waits for ``"ok"``. Output goes to ``log`` for post-mortems.
    """

    def __init__(
        self,
        workspace: Path,
        args: list[str] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        log: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workspace = Path(workspace)
        self.host = host
        self.port = port or free_port(host)
        self.args = list(args or [])
        self.log = log or self.workspace / "serve.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "voicelab", "-w", str(self.workspace), "serve"]
        return [*cmd, "--host", self.host, "--port", str(self.port), *self.args]

    def start(self, timeout: float = 60.0) -> ServerProcess:
        import httpx

        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                self.command(), stdout=out, stderr=subprocess.STDOUT, env=self.env
            )
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"voicelab serve exited ({self.proc.returncode}): {self.output()}"
                )
            try:
                httpx.get(f"{self.url}/health", timeout=2.0)
                return self
            except httpx.TransportError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"voicelab serve did not answer in {timeout:g} s: {self.output()}")

    def wait_ready(self, timeout: float = 300.0) -> dict[str, object]:
        """/health once it says ``ok``; RuntimeError when a model failed or time ran out."""
        import httpx

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            health = httpx.get(f"{self.url}/health", timeout=5.0).json()
            if health["status"] == "ok":
                return dict(health)
            if health["status"] == "error":
                raise RuntimeError(f"models failed to load: {health}")
            time.sleep(0.3)
        raise RuntimeError(f"models not ready in {timeout:g} s: {self.output()}")

    def output(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # uvicorn's graceful stop
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
