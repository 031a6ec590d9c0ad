"""Download messages and leftovers (issue 15 item 20): the hub clients' own retry WARNINGs do not
precede our one-line error, a failed first download leaves no empty model dir, and --from-dir
never suggests another --source. Real hub clients against a real HTTP server on loopback."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from voicelab import models as dl
from voicelab.models import catalogue as known_models


@pytest.fixture
def failing_hub():
    """A hub that answers every request with HTTP 500 (the clients retry, then give up)."""

    class Hub(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = b'{"Code": 500}'
            self.send_response(500)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_GET

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def _cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "VOICELAB_CONFIG": str(tmp_path / "cfg.toml"),
        "HF_HOME": str(tmp_path / "hf"),
        "MODELSCOPE_CACHE": str(tmp_path / "ms"),
        "VOICELAB_HUB_TIMEOUT": "3",
    }
    return subprocess.run(
        [sys.executable, "-m", "voicelab", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.mark.parametrize("source", ["modelscope", "huggingface"])
def test_failed_download_is_one_line_and_leaves_no_dir(
    tmp_path: Path, failing_hub: str, source: str
) -> None:
    pytest.importorskip("modelscope_hub" if source == "modelscope" else "huggingface_hub")
    dest = tmp_path / "model"
    r = _cli(
        "download", "cosyvoice3", "--source", source, "--endpoint", failing_hub,
        "--dest", str(dest), tmp_path=tmp_path,
    )  # fmt: skip
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert "WARNING" not in r.stderr
    assert not dest.exists()  # later commands must not find an "incomplete" empty model


def test_from_dir_errors_never_suggest_another_source(tmp_path: Path, monkeypatch) -> None:
    from click.testing import CliRunner

    from voicelab.cli.main import cli

    folder = tmp_path / "usb"
    files = {"cosyvoice3.yaml": b"llm: x\n", "flow.pt": b"F" * 9, "hift.pt": b"H" * 7}
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    run = CliRunner().invoke
    # 1. a folder whose cosyvoice3.yaml is not the pinned one
    out = run(cli, ["download", "cosyvoice3", "--from-dir", str(folder), "--dest",
                    str(tmp_path / "m1")])  # fmt: skip
    line = out.exception.one_line()  # what main() prints as the one error line
    assert "pins" in line and "--source" not in line, line
    # 2. a folder that lacks required files (catalogue: these stand-ins, pins included)
    catalogue = {
        rel: dl.FileSpec(rel, len(data), hashlib.sha256(data).hexdigest())
        for rel, data in {**files, "llm.pt": b"L" * 5}.items()
    }
    monkeypatch.setattr(known_models, "COSYVOICE3_FILES", catalogue)
    monkeypatch.setattr(known_models, "COSYVOICE3_REQUIRED", tuple(catalogue))
    out = run(cli, ["download", "cosyvoice3", "--from-dir", str(folder), "--dest",
                    str(tmp_path / "m2")])  # fmt: skip
    line = out.exception.one_line()
    assert "llm.pt" in line and "--source" not in line and str(folder) in line, line
    assert not (tmp_path / "m2").exists()
