"""The HTML report built from fixture artifacts in the stages' own formats."""

import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import soundfile as sf

from voicelab.runner.pipeline import RunOptions, Stage, run_pipeline
from voicelab.runner.report import build_report
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


# ---- issue 15 item 25 ---------------------------------------------------------------------------


def _prepare_outputs(ws: Workspace) -> None:
    """segments.jsonl and qc.tsv as prepare writes them (reason dicts, unusable file rows)."""
    ws.prepare_dir.mkdir(parents=True, exist_ok=True)
    low = {"code": "low_snr", "metric": "snr_db", "value": 12.58, "threshold": 15.0, "hard": False}
    rows = [
        {**_seg("u0", "kept", 3.0, []), "reasons_text": ""},
        {**_seg("x1", "excluded", 2.0, [low]), "reasons_text": "low_snr(12.58<15)"},
    ]
    (ws.prepare_dir / "segments.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    head = "id\tstatus\tsplit\treasons\trisk\tduration\tsource\ttext\n"
    (ws.prepare_dir / "qc.tsv").write_text(
        head
        + "u0\tkept\ttrain\t\t0.1\t3\ta.wav\thello\n"
        + "x1\texcluded\t\tlow_snr(12.58<15)\t0.5\t2\tb.wav\thello\n"
        + "-\tunusable\t\tcorrupt\t\t\t/src/broken.flac\t\n"
        + "-\tunusable\t\tzero_length\t\t\t/src/empty.wav\t\n"
    )


def test_report_reasons_are_readable_and_unusable_files_counted(
    tmp_workspace: Workspace,
) -> None:
    _prepare_outputs(tmp_workspace)
    html = build_report(tmp_workspace).read_text(encoding="utf-8")
    body = html.split("</style>", 1)[1]
    page = Links()
    page.feed(body)
    text = " ".join(page.text)
    assert "{" not in text and "code" not in text  # no raw Python dicts
    assert "low_snr(12.58<15)" in text
    assert "unusable source files" in text and "corrupt (whole file)" in text
    assert "/src/broken.flac" in text and "zero_length" in text


def test_pipeline_table_in_run_order(tmp_workspace: Workspace) -> None:
    stages = [
        Stage(name, (), lambda w, o: {}, lambda w, o: {"n": 1})
        for name in ("prepare", "features", "pack", "train_llm", "export", "audition")
    ]
    run_pipeline(tmp_workspace, stages, RunOptions())
    html = build_report(tmp_workspace).read_text(encoding="utf-8")
    pipeline = html.split("<h2>Pipeline</h2>")[1].split("<h2>")[0]
    cells = [c.split("</td>")[0] for c in pipeline.split("<tr><td>")[1:]]
    assert cells == ["prepare", "features", "pack", "train_llm", "export", "audition"]


def test_plots_have_ticks_and_units() -> None:
    from voicelab.htmlpage import nice_ticks, svg_histogram, svg_lines

    assert nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(3.1, 97) == [20, 40, 60, 80]
    chart = svg_lines("llm loss", {"train": [(0, 9.0), (500, 4.0)]}, ylabel="loss (nats)")
    for t in ("100", "200", "300", "400", "500", "5", "6", "7", "8", "9"):
        assert f">{t}</text>" in chart, t
    assert "step (optimizer updates)" in chart and "loss (nats)" in chart
    hist = svg_histogram("durations", [1.0, 2.5, 4.0, 12.0])
    assert "duration (s)" in hist and "utterances" in hist and ">10</text>" in hist


def test_audition_refreshes_the_report(tmp_workspace: Workspace) -> None:
    from voicelab.runner.report import refresh_after_audition

    build_report(tmp_workspace)
    aud = tmp_workspace.reports_dir / "audition-20270101-000000"
    aud.mkdir()
    (aud / "index.html").write_text("<html></html>")
    refresh_after_audition(tmp_workspace, aud)
    html = (tmp_workspace.reports_dir / "index.html").read_text(encoding="utf-8")
    assert 'href="audition-20270101-000000/index.html"' in html


def test_tensorboard_command(tmp_workspace: Workspace) -> None:
    import os
    import subprocess
    import sys

    tmp_workspace.exp_dir("llm").mkdir(parents=True)
    (tmp_workspace.exp_dir("llm") / "train_log.jsonl").write_text(
        json.dumps({"tag": "TRAIN", "step": 1, "loss": 2.0, "acc": 0.1}) + "\n"
    )
    html = build_report(tmp_workspace).read_text(encoding="utf-8")
    assert f"tensorboard --logdir &quot;{tmp_workspace.tensorboard_root}&quot;" in html
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "voicelab", "-w", str(tmp_workspace.root), "tensorboard"]
    out = subprocess.run([*cmd, "--print"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    want = f'tensorboard --logdir "{tmp_workspace.tensorboard_root}" --port 6006'
    assert out.stdout.strip() == want
    none = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert none.returncode == 1 and "no training event files" in none.stderr
