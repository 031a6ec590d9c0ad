"""The web page with the real upstream trainer and the tiny model on the CPU: train llm from
the Train tab and watch the curves fill, stop a run from the page, train flow, export with a
rule, run a blind A/B and vote, a style grid, then speak a sentence (epoch 0) and play it.
Run with::

    pytest -m vendor tests/test_ui_vendor.py
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import pytest

from speech_corpus import VENDOR_SENTENCES as CORPUS
from speech_corpus import packed_workspace
from ui_browser import (
    audio_duration,
    chromium,
    click_job,
    job_state,
    need_browser,
    run_server,
    screenshot,
    wait,
    wait_job,
)
from voicelab.stages import train as tr
from voicelab.workspace import Workspace

pytestmark = [pytest.mark.vendor, pytest.mark.slow]

SENTENCES = CORPUS[:5] + CORPUS[6:7]  # six of the vendor corpus, as before


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A workspace on the tiny model with packed data: espeak-ng clips of one speaker."""
    need_browser()
    return packed_workspace(tmp_path_factory.mktemp("ui-vendor"), SENTENCES, (150, 200),
                            dev_every=6, dev_at=2, gpus=1)  # fmt: skip


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory, packed: Workspace):
    with (
        run_server(tmp_path_factory.mktemp("server")) as server,
        chromium(tmp_path_factory.mktemp("profile")) as driver,
    ):
        yield server, driver


def _by(driver: Any, css: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css)


def _text(driver: Any, css: str) -> str:
    return driver.execute_script("return document.querySelector(arguments[0]).textContent", css)


def _points(driver: Any, chart: str) -> int:
    return int(_by(driver, f"#{chart}").get_attribute("data-points") or 0)


def _train_form(driver: Any, epochs: int, mode: str, model: str = "llm") -> None:
    from selenium.webdriver.support.ui import Select

    Select(_by(driver, "#t-model")).select_by_value(model)
    Select(_by(driver, "#t-device")).select_by_value("cpu")
    box = _by(driver, "#t-epochs")
    box.clear()
    box.send_keys(str(epochs))
    Select(_by(driver, "#t-mode")).select_by_value(mode)


def test_train_curves_stop_export_blind_and_speak(page, packed: Workspace) -> None:
    server, d = page
    ws = packed
    d.get(server.url(ws.root, "train"))
    wait(d, lambda: str(ws.root) in _text(d, "#ws-status"), 30, "the workspace")
    # Preflight first: its messages, nothing launched.
    _train_form(d, 2, "")
    assert click_job(d, "#train-check", "check-llm", 300) == "done"
    assert not (ws.exp_dir("llm") / "train_log.jsonl").exists()
    # Train; the page reloads mid-run and still shows it; the curves fill from train_log.jsonl.
    _by(d, "#train-go").click()
    wait(d, lambda: job_state(d) == ("train-llm", "running"), 60, "training to start")
    d.refresh()
    wait(d, lambda: _points(d, "chart-train") > 0, 600, "training points on the chart")
    assert job_state(d)[0] == "train-llm"
    assert wait_job(d, "train-llm", 1200) == "done"
    wait(d, lambda: _points(d, "chart-cv") >= 2, 30, "two CV points (one per epoch)")
    assert "best CV" in _text(d, "#train-line")
    # Epoch, rate and ETA as the CLI's live line, and the speech tokens per second.
    view = server.get("/api/train/view?" + urlencode({"ws": str(ws.root), "model": "llm"}))
    assert view["max_epoch"] == 2 and view["line"].startswith("llm epoch 2")
    assert view["tokens_per_s"] > 0 and "speech tokens/s" in _text(d, "#train-line")
    screenshot(d, "vendor-train")
    rows = tr.read_train_log(ws.exp_dir("llm") / "train_log.jsonl")
    assert len([r for r in rows if r["tag"] == "CV"]) == 2

    # Stop from the page: a resumed run for many more epochs (VoiceLab's engine trains the tiny
    # model's epoch in seconds), stopped as soon as it trains.
    _train_form(d, 40, "resume")
    _by(d, "#train-go").click()
    wait(d, lambda: job_state(d) == ("train-llm", "running"), 60, "the resumed run")

    def launched() -> bool:
        rows = tr.read_train_log(ws.exp_dir("llm") / "train_log.jsonl")
        return [r.get("event") for r in rows].count("launch") == 2

    wait(d, launched, 300, "the resumed run's launch")
    _by(d, "#train-stop").click()
    assert wait_job(d, "train-llm", 300) == "stopped"
    ends = [r for r in tr.read_train_log(ws.exp_dir("llm") / "train_log.jsonl")
            if r.get("event") == "end"]  # fmt: skip
    assert len(ends) == 2 and ends[-1]["rc"] != 0
    assert "training exited" in _text(d, "#error")

    # The flow model from the same tab, its own curves.
    _train_form(d, 2, "", model="flow")
    _by(d, "#train-go").click()
    wait(d, lambda: job_state(d) == ("train-flow", "running"), 60, "flow training")
    assert wait_job(d, "train-flow", 1200) == "done"
    wait(d, lambda: _points(d, "chart-cv") >= 2, 30, "the flow run's CV points")
    assert _text(d, "#train-line").startswith("flow:")
    assert (ws.exp_dir("flow") / "epoch_1_whole.pt").is_file()

    # Checkpoints, export with a rule, a blind A/B with votes saved in the workspace.
    _by(d, '#tabs button[data-tab="listen"]').click()
    wait(d, lambda: "epoch_1_whole.pt" in _text(d, "#checkpoints"), 60, "the checkpoint table")
    _by(d, "#e-llm").send_keys("epochs:1")
    assert click_job(d, "#export-go", "export", 600) == "done"
    prov = json.loads((ws.voice_dir / "voicelab.json").read_text("utf-8"))
    assert [c["file"] for c in prov["llm"]["checkpoints"]] == ["epoch_1_whole.pt"]
    assert [c["file"] for c in prov["flow"]["checkpoints"]] == [
        "epoch_0_whole.pt",
        "epoch_1_whole.pt",
    ]
    _by(d, "#a-ckpts").send_keys("epoch_0,avg")
    _by(d, "#a-blind").click()
    _by(d, "#a-sentences").send_keys("Hello there.")
    assert click_job(d, "#audition-go", "audition", 900) == "done"
    wait(d, lambda: d.find_elements("css selector", ".report input[type=radio]"), 30, "the A/B")
    radio = d.find_elements("css selector", ".report input[type=radio]")[0]
    assert audio_duration(d, d.find_elements("css selector", ".report audio")[0]) > 0
    picked = radio.get_attribute("value")
    radio.click()  # the list is drawn again with the vote and, all voted, the tally
    wait(d, lambda: "Result" in _text(d, "#auditions"), 30, "the tally")
    report = d.find_element("css selector", ".report").get_attribute("data-report")
    votes = json.loads((ws.reports_dir / f"{report}.choices.json").read_text("utf-8"))
    assert list(votes["choices"].values()) == [picked]
    screenshot(d, "vendor-listen")
    # The style grid (not blind): four takes of one sentence, named by variant.
    _by(d, "#a-blind").click()
    _by(d, "#a-ckpts").clear()
    _by(d, "#a-compare").click()
    assert click_job(d, "#audition-go", "audition", 900) == "done"
    wait(d, lambda: len(d.find_elements("css selector", ".report")) == 2, 30, "the grid report")
    grid = d.find_elements("css selector", ".report")[0]
    heads = [th.text for th in grid.find_elements("css selector", "th")][1:]
    assert heads == ["neutral-1.0", "neutral-1.1", "hype-1.0", "hype-1.1"]
    assert len(grid.find_elements("css selector", "audio")) == 4

    # Speak a sentence with a seed and play it.
    _by(d, '#tabs button[data-tab="speak"]').click()
    _by(d, "#s-text").send_keys("Hello, this is the page speaking.")
    _by(d, "#s-seed").send_keys("7")
    from selenium.webdriver.support.ui import Select

    Select(_by(d, "#s-epoch")).select_by_value("0")  # hot-load epoch 0 over the voice
    assert click_job(d, "#say-go", "say", 600) == "done"
    audio = wait(d, lambda: d.find_elements("css selector", "#say-out audio.said"), 30, "audio")[0]
    assert audio_duration(d, audio) > 0
    played = d.execute_async_script(
        "var a = arguments[0], done = arguments[1]; a.muted = true;"
        "a.play().then(function () { setTimeout(function () { done(a.currentTime); }, 400); },"
        " function (e) { done(-1); });",
        audio,
    )
    assert played > 0
    assert "epoch 0" in _text(d, "#job-result")
    link = d.find_element("css selector", "#say-out a[download]")
    assert link.get_attribute("href").startswith(server.base + "/api/file?")
    screenshot(d, "vendor-speak")
