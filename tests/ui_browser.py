"""The web page's test harness: a real ``voicelab ui`` server process on a free loopback port and
Debian's headless Chromium driven by selenium (no browser download at test time).

Screenshots go to ``.cache/ui-artifacts`` (git-ignored; ``VOICELAB_UI_ARTIFACTS`` moves it).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("VOICELAB_UI_ARTIFACTS", REPO / ".cache" / "ui-artifacts"))
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)


def need_browser() -> tuple[str, str]:
    """Paths of chromium and chromedriver, or skip with the reason."""
    pytest.importorskip("selenium", reason="selenium is not installed: pip install -e '.[test]'")
    pytest.importorskip("fastapi", reason="the ui extra is not installed: pip install -e '.[ui]'")
    pytest.importorskip("uvicorn", reason="the ui extra is not installed: pip install -e '.[ui]'")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium "
                    "chromium-driver)")  # fmt: skip
    return browser, driver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, port: int, proc: subprocess.Popen[str], log: Path) -> None:
        self.port, self.proc, self.log = port, proc, log
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.base + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict[str, Any], host: str | None = None) -> tuple[int, Any]:
        """POST JSON; returns (status, decoded body or text) for errors too."""
        headers = {"Content-Type": "application/json", **({"Host": host} if host else {})}
        data = json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.base + path, data, headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            raw = e.read().decode("utf-8", "replace")
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, raw

    def url(self, ws: Path | str, tab: str = "voice", lang: str = "en") -> str:
        from urllib.parse import urlencode

        return f"{self.base}/?{urlencode({'ws': str(ws), 'lang': lang})}#{tab}"


@contextmanager
def run_server(workdir: Path, extra_env: dict[str, str] | None = None) -> Iterator[Server]:
    """``python -m voicelab ui`` on a free port; stopped (and waited for) at the end."""
    port = free_port()
    log = workdir / "server.log"
    env = {**os.environ, "VOICELAB_NO_PROGRESS": "1", **(extra_env or {})}
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "voicelab", "ui", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
            text=True,
        )
    server = Server(port, proc, log)
    try:
        deadline = time.time() + 60
        while True:
            try:
                server.get("/api/info")
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("the ui server did not start:\n" + log.read_text()) from None
                time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def chromium(profile: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = need_browser()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in CHROME_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={profile}")
    d = webdriver.Chrome(service=Service(executable_path=driver), options=opts)
    d.set_script_timeout(60)
    try:
        yield d
    finally:
        d.quit()


def wait(driver: Any, cond: Callable[[], Any], timeout: float = 60, what: str = "") -> Any:
    """Poll ``cond`` until it is truthy; on timeout fail with the page's error box and job."""
    deadline = time.time() + timeout
    while True:
        try:
            got = cond()
        except Exception:  # the element is being re-rendered
            got = None
        if got:
            return got
        if time.time() > deadline:
            err = driver.execute_script("return document.querySelector('#error').textContent")
            job = driver.execute_script("return document.querySelector('#job').innerText")
            pytest.fail(f"timed out waiting for {what or cond}: error box {err!r}; job {job!r}")
        time.sleep(0.25)


def screenshot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 5000, f"{path} is (nearly) empty"
    return path


def job_state(driver: Any) -> tuple[str | None, str | None]:
    kind, state = driver.execute_script(
        "var j = document.querySelector('#job');"
        "return j.hidden ? [null, null] : [j.dataset.kind, j.dataset.state];"
    )
    return kind, state


def job_id(driver: Any) -> str | None:
    return driver.execute_script("return document.querySelector('#job').dataset.id || null")


def wait_job(driver: Any, kind: str, timeout: float = 300, after: str | None = None) -> str:
    """Wait for a job ``kind`` (other than job ``after``) to end; returns its state."""

    def ended() -> str | None:
        k, s = job_state(driver)
        if job_id(driver) == after:
            return None
        return s if k == kind and s in ("done", "failed", "stopped") else None

    return wait(driver, ended, timeout, f"the {kind} job to end")


def click_job(driver: Any, button: str, kind: str, timeout: float = 300) -> str:
    """Click ``button`` (a CSS selector) and wait for the job it starts to end: its state."""
    from selenium.webdriver.common.by import By

    before = job_id(driver)
    driver.find_element(By.CSS_SELECTOR, button).click()
    return wait_job(driver, kind, timeout, after=before)


def audio_duration(driver: Any, element: Any) -> float:
    """Load an <audio> element's media and return its duration (-1 on a media error)."""
    return driver.execute_async_script(
        "var a = arguments[0], done = arguments[1];"
        "if (a.readyState >= 1 && a.duration > 0) { done(a.duration); return; }"
        "a.addEventListener('loadedmetadata', function () { done(a.duration); });"
        "a.addEventListener('error', function () { done(-1); });"
        "a.preload = 'metadata'; a.load();",
        element,
    )


def cli_error(*args: str) -> str:
    """The ``error: ...`` line the CLI prints for the same mistake."""
    out = subprocess.run(
        [sys.executable, "-m", "voicelab", *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, "VOICELAB_NO_PROGRESS": "1", "COLUMNS": "1000"},
    )  # fmt: skip
    assert out.returncode == 1, out.stdout + out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert lines, out.stderr
    return lines[-1].strip()
