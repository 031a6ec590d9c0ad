"""Starting the server: safe defaults first, then uvicorn.

The server binds to the loopback address by default. Any other address (a LAN, ``0.0.0.0``)
needs an API key (``--api-key`` or ``VOICELAB_API_KEY``): the service runs a GPU for whoever
can reach it. With a key, every route but ``/health`` asks for it, on any address.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from voicelab.errors import ConfigError, EnvironmentProblem

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8910
API_KEY_VAR = "VOICELAB_API_KEY"
_NEEDED = ("fastapi", "uvicorn", "prometheus_client")


@dataclass
class ServeOptions:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    voices: list[str] = field(default_factory=list)
    api_key: str | None = None
    device: str = "auto"
    fp16: bool = False
    max_queue: int = 8
    timeout: float = 300.0
    max_input: int = 4096


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_options(opts: ServeOptions) -> None:
    if not is_loopback(opts.host) and not opts.api_key:
        raise ConfigError(
            f"refusing to serve on {opts.host} without an API key: anyone who can reach it "
            "could use the GPU",
            f"pass --api-key KEY (or set {API_KEY_VAR}), or keep the default --host {DEFAULT_HOST}",
        )
    if not 0 < opts.port < 65536:
        raise ConfigError(f"--port {opts.port} is not a port", "use 1-65535, e.g. 8910")
    if opts.max_queue < 0 or opts.timeout <= 0 or opts.max_input <= 0:
        raise ConfigError(
            "--max-queue must be 0 or more, --timeout and --max-input more than 0", None
        )


def check_port(host: str, port: int) -> None:
    """A one-line error now, rather than uvicorn's log line after the voices were read, when a
    server already answers on the port (an earlier ``voicelab serve``, often)."""
    target = "127.0.0.1" if host in ("0.0.0.0", "") else host.strip("[]")
    if target == "::":
        target = "::1"
    try:
        with socket.create_connection((target, port), timeout=1.0):
            pass
    except OSError:
        return  # nothing listens there: free (binding may still fail, uvicorn then says why)
    raise ConfigError(
        f"cannot listen on {host}:{port}: another program already does",
        "is another voicelab serve running? stop it, or pass --port N",
    )


def select_device(device: str) -> None:
    """``--device``: which GPU upstream sees (it picks ``cuda`` whenever one is visible), set
    before torch is first imported."""
    d = device.strip().lower()
    if d in ("", "auto", "cuda"):
        return
    if d == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    elif d.startswith("cuda:") and d[5:].isdigit():
        os.environ["CUDA_VISIBLE_DEVICES"] = d[5:]
    else:
        raise ConfigError(f"--device {device!r} is not a device", "use auto, cpu, cuda or cuda:N")


def check_packages() -> None:
    missing = [m for m in _NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        raise EnvironmentProblem(
            f"voicelab serve needs {', '.join(missing)}",
            "install VoiceLab's 'serve' extra: pip install -e '.[serve]'",
        )


def run_server(pretrained_dir: Path, instruct: str, opts: ServeOptions) -> None:
    """Serve until interrupted (Ctrl+C)."""
    check_options(opts)
    check_packages()
    check_port(opts.host, opts.port)
    select_device(opts.device)
    import uvicorn

    from voicelab.serve.app import create_app
    from voicelab.serve.encode import check_encoders
    from voicelab.serve.server import ServeConfig, Server
    from voicelab.serve.voices import find_voices

    check_encoders()
    voices = find_voices(pretrained_dir, opts.voices)
    config = ServeConfig(
        instruct=instruct,
        api_key=opts.api_key or None,
        max_queue=opts.max_queue,
        timeout=opts.timeout,
        max_input=opts.max_input,
        fp16=opts.fp16,
    )
    server = Server(voices, config)
    app = create_app(server)
    where = f"http://{opts.host}:{opts.port}"
    log.info("voices: %s", ", ".join(v.name for v in voices))
    log.info("serving on %s/v1 (models load in the background: %s/health)", where, where)
    # Ctrl+C: requests still running get a few seconds, then are cancelled (see Engine.shutdown).
    uvicorn.run(
        app,
        host=opts.host,
        port=opts.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=3,
    )
