"""``voicelab ui`` in a real headless Chromium against a real server process (see ui_browser).

One module-scoped server and browser; the Data test prepares the fixture corpus with the real
Whisper base model (seconds per segment, so the job is still running when the page reloads),
then reviews it on the page and checks the files on disk.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from ui_browser import (
    audio_duration,
    chromium,
    cli_error,
    click_job,
    job_state,
    need_browser,
    run_server,
    screenshot,
    wait,
    wait_job,
)
from voicelab.blocks.kaldi import read_kaldi_dir
from voicelab.paths import to_local_path
from voicelab.workspace import Workspace

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    need_browser()
    with run_server(tmp_path_factory.mktemp("server")) as s:
        yield s


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory, server):
    with chromium(tmp_path_factory.mktemp("profile")) as d:
        yield d


def _by(driver: Any, css: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css)


def _all(driver: Any, css: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, css)


def _text(driver: Any, css: str) -> str:
    return driver.execute_script("return document.querySelector(arguments[0]).textContent", css)


def _type(el: Any, text: str) -> None:
    el.clear()
    el.send_keys(text)


def _tab(driver: Any, name: str) -> None:
    _by(driver, f'#tabs button[data-tab="{name}"]').click()
    wait(driver, lambda: _by(driver, f"#tab-{name}").is_displayed(), 10, f"tab {name}")


def _open(driver: Any, server, ws: Path, tab: str = "voice", lang: str = "en") -> None:
    driver.get(server.url(ws, tab, lang))
    wait(driver, lambda: str(ws) in _text(driver, "#ws-status"), 30, "the workspace to load")


# ---- Voice -----------------------------------------------------------------------------------
def test_voice_create_windows_path_doctor_and_error(server, browser, tmp_path: Path) -> None:
    ws = tmp_path / "voice_ws"
    _open(browser, server, ws)
    assert "no workspace" in _text(browser, "#ws-status").lower()
    # A user error: the same one line (message and hint) as `voicelab init` prints.
    _type(_by(browser, "#init-speaker"), "bad id")
    _by(browser, "#init-go").click()
    shown = wait(browser, lambda: _text(browser, "#error").strip(), 20, "the error box")
    assert shown == cli_error("-w", str(ws), "init", "--speaker", "bad id")
    assert not (ws / "voicelab.toml").exists()
    # A Windows path is stored as the CLI stores it (to_local_path).
    win = r"C:\Users\xuan\录音\set 1"
    _type(_by(browser, "#init-speaker"), "xuan")
    _type(_by(browser, "#init-wav"), win)
    _by(browser, "#init-go").click()
    wait(browser, lambda: "xuan" in _text(browser, "#ws-status"), 20, "the new workspace")
    cfg = Workspace.open(ws).config
    assert cfg.speaker == "xuan" and cfg.wav_dir == str(to_local_path(win))
    assert not _by(browser, "#error").is_displayed()
    _by(browser, "#doctor-go").click()
    wait(browser, lambda: len(_all(browser, "#doctor tr")) > 8, 120, "the doctor table")
    names = [td.text for td in _all(browser, "#doctor tr td:first-child")]
    assert "python" in " ".join(names).lower()
    screenshot(browser, "voice")


# ---- Data: prepare, reload mid-job, review, apply ---------------------------------------------
@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from voicelab.testing.corpus import build_corpus

    corpus = build_corpus()
    src = tmp_path_factory.mktemp("source") / "recordings"
    src.mkdir()
    for clip in corpus.clips[:6]:
        shutil.copy2(clip.path, src / clip.path.name)
    # Excluded by the audio checks (a QC reason to filter by), never transcribed.
    shutil.copy2(corpus.hard["clipped"], src / corpus.hard["clipped"].name)
    return src


def _prepare_form(driver: Any, whisper: Path) -> None:
    from selenium.webdriver.support.ui import Select

    Select(_by(driver, "#p-asr")).select_by_value("faster-whisper")
    _type(_by(driver, "#p-model"), str(whisper))
    Select(_by(driver, "#p-device")).select_by_value("cpu")
    _type(_by(driver, "#p-lang"), "en")


def _rows(driver: Any) -> list[dict[str, Any]]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#segments tbody tr')).map(function (tr) {"
        "  return {id: tr.dataset.id, cls: tr.className,"
        "    risk: parseFloat(tr.querySelector('td.risk').textContent),"
        "    reasons: tr.querySelector('td.reasons').textContent,"
        "    text: tr.querySelector('input').value}; });"
    )


def _manifest(ws: Workspace) -> dict[str, dict]:
    lines = (ws.prepare_dir / "segments.jsonl").read_text("utf-8").splitlines()
    return {r["utt"]: r for r in map(json.loads, lines)}


def _kaldi(ws: Workspace) -> dict[str, str]:
    texts: dict[str, str] = {}
    for split in ("train", "dev"):
        for u in read_kaldi_dir(ws.split_dir(split)):
            texts[u.utt] = u.text
    return texts


def test_data_prepare_reload_review_apply(server, browser, tmp_path: Path, source: Path) -> None:
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    from voicelab.testing.whisper import whisper_base_dir

    whisper = whisper_base_dir()
    root = tmp_path / "ws"
    ws = Workspace.init(root, "spk1", str(source))
    _open(browser, server, root, "data")
    wait(browser, lambda: "no segments" in _text(browser, "#seg-count").lower(), 20, "no list")
    _prepare_form(browser, whisper)
    _by(browser, "#prepare-go").click()
    wait(browser, lambda: job_state(browser) == ("prepare", "running"), 30, "prepare to start")
    # One job per workspace: a second one is refused with a one-line error and hint.
    status, answer = server.post("/api/prepare", {"ws": str(root)})
    assert status == 400, answer
    assert answer["error"]["line"].startswith("error: a prepare job is still running in ")
    assert answer["error"]["hint"] == "wait for it to finish, or stop it first"
    # Bound to loopback: a request naming another host (DNS rebinding) is refused.
    status, _ = server.post("/api/review/discard", {"ws": str(root)}, host="evil.example:80")
    assert status == 400
    # A reloaded (or reopened) page finds the job still running in the server.
    browser.refresh()
    wait(browser, lambda: str(root) in _text(browser, "#ws-status"), 30, "the reload")
    assert job_state(browser) == ("prepare", "running"), "the job did not survive a reload"
    assert not _by(browser, "#error").is_displayed(), _text(browser, "#error")
    screenshot(browser, "data-prepare-running")
    assert wait_job(browser, "prepare", 600) == "done"
    assert "segments kept" in _text(browser, "#job-result")
    # The job's progress is the library's own bars (intake, then ASR), counted to the end.
    job = server.get("/api/job?" + urlencode({"ws": str(root)}))["job"]
    assert [p["what"] for p in job["progress"]] == ["intake", "transcribe"]
    assert all(p["done"] == p["total"] > 0 for p in job["progress"])

    # The review list: every segment, sorted by risk, audio that really loads.
    manifest = _manifest(ws)
    wait(browser, lambda: len(_rows(browser)) == len(manifest), 30, "the review list")
    rows = _rows(browser)
    assert [r["risk"] for r in rows] == sorted((r["risk"] for r in rows), reverse=True)
    assert "clipping" in rows[0]["reasons"] or rows[0]["risk"] > 0
    audios = _all(browser, "#segments tbody audio")
    for a in audios[:2]:
        assert audio_duration(browser, a) > 0.5
    reasons = [o.get_attribute("value") for o in _all(browser, "#f-reason option")][1:]
    assert reasons, "no QC reason to filter by"
    Select(_by(browser, "#f-reason")).select_by_value(reasons[0])
    filtered = _rows(browser)
    assert 0 < len(filtered) < len(rows)
    assert all(reasons[0] in [x["code"] for x in manifest[r["id"]]["reasons"]] for r in filtered)
    Select(_by(browser, "#f-reason")).select_by_value("")

    # Keyboard: fix the first kept segment's text, exclude the second kept one.
    kept = [r for r in _rows(browser) if "kept" in r["cls"].split()]
    assert len(kept) >= 2
    order = [r["id"] for r in _rows(browser)]
    body = _by(browser, "body")
    _by(browser, "#segments tbody tr td.id").click()
    for _ in range(order.index(kept[0]["id"])):
        body.send_keys(Keys.ARROW_DOWN)
    body.send_keys("f")
    box = browser.switch_to.active_element
    assert box.get_attribute("data-id") == kept[0]["id"]
    box.send_keys(Keys.CONTROL, "a")
    # A fix of the same length: the QC rules (characters per second) still pass.
    fixed = kept[0]["text"].rstrip(".!?") + "!"
    box.send_keys(fixed, Keys.ENTER)
    wait(browser, lambda: "1 edits" in _text(browser, "#seg-count"), 20, "the text edit")
    for _ in range(order.index(kept[1]["id"]) - order.index(kept[0]["id"])):
        body.send_keys(Keys.ARROW_DOWN)
    body.send_keys("x")
    wait(browser, lambda: "2 edits" in _text(browser, "#seg-count"), 20, "the exclusion")
    # Space plays the chosen clip and pauses it again.
    sel_audio = "return document.querySelector('#segments tbody tr.sel audio')"
    browser.execute_script(sel_audio + ".muted = true")
    body.send_keys(Keys.SPACE)
    wait(browser, lambda: browser.execute_script(sel_audio + ".currentTime") > 0, 20, "playing")
    body.send_keys(Keys.SPACE)
    wait(browser, lambda: browser.execute_script(sel_audio + ".paused"), 20, "the pause")
    screenshot(browser, "data-review-edited")
    # Nothing on disk changed yet but the pending review file.
    assert not (ws.prepare_dir / "review_overrides.json").exists()
    assert kept[1]["id"] in _kaldi(ws)

    assert click_job(browser, "#apply-go", "review", 300) == "done"
    assert "2 edits applied" in _text(browser, "#job-result")
    overrides = json.loads((ws.prepare_dir / "review_overrides.json").read_text("utf-8"))
    assert overrides[kept[0]["id"]]["text"] == fixed
    assert overrides[kept[1]["id"]]["keep"] == 0
    texts = _kaldi(ws)
    assert texts[kept[0]["id"]] == fixed
    assert kept[1]["id"] not in texts
    after = _manifest(ws)
    assert after[kept[1]["id"]]["status"] == "excluded"
    assert "review_drop" in [r["code"] for r in after[kept[1]["id"]]["reasons"]]
    # The list shows the new state; the CLI reads the same record (no second mechanism).
    wait(browser, lambda: "0 edits" in _text(browser, "#seg-count"), 20, "the list to refresh")
    row = next(r for r in _rows(browser) if r["id"] == kept[1]["id"])
    assert "excluded" in row["cls"].split()
    screenshot(browser, "data-review-applied")
    for tab in ("train", "listen", "speak"):
        _tab(browser, tab)
        screenshot(browser, tab)


def test_job_error_is_the_cli_line(server, browser, tmp_path: Path) -> None:
    root = tmp_path / "ws"
    Workspace.init(root, "spk1", str(tmp_path / "does-not-exist"))
    _open(browser, server, root, "data")
    from selenium.webdriver.support.ui import Select

    Select(_by(browser, "#p-asr")).select_by_value("transcripts")
    assert click_job(browser, "#prepare-go", "prepare", 60) == "failed"
    shown = wait(browser, lambda: _text(browser, "#error").strip(), 10, "the error box")
    assert shown == cli_error("-w", str(root), "prepare", "--asr", "transcripts")
    # Speak without an exported voice: refused the same way too.
    _tab(browser, "speak")
    _by(browser, "#s-text").send_keys("hello")
    assert click_job(browser, "#say-go", "say", 120) == "failed"
    shown = wait(browser, lambda: _text(browser, "#error").strip(), 10, "the error box")
    assert shown == cli_error("-w", str(root), "say", "hello")


def test_chinese_page(server, browser, tmp_path: Path) -> None:
    root = tmp_path / "ws"
    Workspace.init(root, "小明")
    for tab in ("voice", "data"):
        _open(browser, server, root, tab, lang="zh")
        assert _by(browser, "html").get_attribute("lang") == "zh-CN"
        labels = [b.text for b in _all(browser, "#tabs button")]
        assert labels == ["音色", "数据", "训练", "检查点与试听", "合成"]
        assert "小明" in _text(browser, "#ws-status")
        assert not _by(browser, "#error").is_displayed(), _text(browser, "#error")
        screenshot(browser, f"zh-{tab}")
    wait(browser, lambda: "还没有切分结果" in _text(browser, "#seg-count"), 20, "the empty list")
    # Offline: every resource the page loaded came from this server (no CDN, no web fonts).
    urls = browser.execute_script(
        "return performance.getEntriesByType('resource').map(function (e) { return e.name; })"
    )
    assert urls and all(u.startswith(server.base + "/") for u in urls), urls
    # The switch goes back to English and remembers the choice.
    from selenium.webdriver.support.ui import Select

    Select(_by(browser, "#lang")).select_by_value("en")
    assert _by(browser, '#tabs button[data-tab="data"]').text == "Data"
