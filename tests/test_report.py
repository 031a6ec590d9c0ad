"""The HTML report built from fixture artifacts in the stages' own formats."""

import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import soundfile as sf

from voicelab.pipeline import RunOptions, Stage, run_pipeline
from voicelab.report import build_report
from voicelab.workspace import Workspace


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.svgs = 0
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "svg":
            self.svgs += 1
        for key in ("href", "src"):
            if a.get(key):
                self.refs.append(a[key] or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _seg(utt: str, status: str, dur: float, reasons: list[str]) -> dict:
    return {
        "utt": utt,
        "status": status,
        "text": "hello",
        "reasons": reasons,
        "qc": {"duration": dur},
        "start": 0.0,
        "end": dur,
    }


def _fixture(ws: Workspace) -> None:
    ws.prepare_dir.mkdir(parents=True)
    rows = [_seg(f"u{i}", "kept", 2.0 + i, []) for i in range(8)]
    rows += [_seg("x1", "excluded", 0.5, ["too_short"]), _seg("x2", "excluded", 3, ["clipping"])]
    (ws.prepare_dir / "segments.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (ws.prepare_dir / "qc.tsv").write_text("utt\tstatus\n")
    run = ws.exp_dir("llm")
    run.mkdir(parents=True)
    log = [{"tag": "EVENT", "event": "start"}]
    for step in range(1, 7):
        log.append(
            {
                "tag": "TRAIN",
                "epoch": step // 3,
                "step": step,
                "loss": 9 - step * 0.1,
                "acc": 0.1 * step,
            }
        )
    log += [
        {"tag": "CV", "epoch": e, "step": 3 * e + 3, "loss": 8.5 - e, "acc": 0.3} for e in (0, 1)
    ]
    (run / "train_log.jsonl").write_text("\n".join(json.dumps(r) for r in log))
    ws.voice_dir.mkdir(parents=True)
    (ws.voice_dir / "voicelab.json").write_text(json.dumps({"speaker": ws.speaker}))
    aud = ws.reports_dir / "audition-20260101-000000"
    (aud / "neutral").mkdir(parents=True)
    (aud / "index.html").write_text("<html></html>")
    sf.write(aud / "neutral" / "s01.wav", np.zeros(2400, dtype=np.float32), 24000)


def test_report_links_exist_and_plots_are_present(tmp_workspace: Workspace) -> None:
    _fixture(tmp_workspace)
    run_pipeline(
        tmp_workspace, [Stage("prepare", (), lambda w, o: {}, lambda w, o: {"n": 1})], RunOptions()
    )
    out = build_report(tmp_workspace)
    page = Links()
    page.feed(out.read_text(encoding="utf-8"))
    text = " ".join(page.text)
    assert page.svgs >= 3  # duration histogram, loss and acc curves
    assert "too_short" in text and "clipping" in text
    assert "Exclusions" in text and "Provenance" in text
    local = [r for r in page.refs if not r.startswith(("http:", "https:", "data:"))]
    assert any(r.endswith(".wav") for r in local)
    for ref in local:
        assert (out.parent / unquote(ref)).exists(), ref
    assert not any(r.startswith(("http:", "https:")) for r in page.refs)  # works offline


def test_report_on_an_empty_workspace_says_what_to_run(tmp_workspace: Workspace) -> None:
    page = build_report(tmp_workspace).read_text(encoding="utf-8")
    for cmd in ("voicelab prepare", "voicelab train llm", "voicelab export", "voicelab audition"):
        assert cmd in page


def test_report_escapes_text(tmp_workspace: Workspace) -> None:
    tmp_workspace.prepare_dir.mkdir(parents=True)
    bad = _seg("<script>", "excluded", 1.0, ["<b>x</b>"])
    (tmp_workspace.prepare_dir / "segments.jsonl").write_text(json.dumps(bad))
    page = build_report(tmp_workspace).read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_report_is_rewritten_atomically(tmp_workspace: Workspace) -> None:
    first = build_report(tmp_workspace)
    second = build_report(tmp_workspace)
    assert first == second == tmp_workspace.reports_dir / "index.html"
    assert [p.name for p in tmp_workspace.reports_dir.iterdir()] == ["index.html"]


def test_paths_in_report_are_relative(tmp_workspace: Workspace) -> None:
    _fixture(tmp_workspace)
    html = build_report(tmp_workspace).read_text(encoding="utf-8")
    assert 'src="audition-20260101-000000/neutral/s01.wav"' in html
    assert Path(tmp_workspace.reports_dir / "audition-20260101-000000/neutral/s01.wav").exists()


def test_report_links_are_url_quoted(tmp_workspace: Workspace) -> None:
    # Issue 15 item 28: '#' or '%' in a file name must not cut the link.
    _fixture(tmp_workspace)
    aud = tmp_workspace.reports_dir / "audition-20260101-000000"
    (aud / "neutral" / "s01.wav").rename(aud / "neutral" / "take #1 100%.wav")
    html = build_report(tmp_workspace).read_text(encoding="utf-8")
    assert 'src="audition-20260101-000000/neutral/take%20%231%20100%25.wav"' in html
