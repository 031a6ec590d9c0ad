"""``reports/index.html``: one static, self-contained page about a voice.

It reads only files the stages wrote (segments.jsonl, train_log.jsonl, checkpoint yamls,
voicelab.json, the audition pages) and draws its plots as inline SVG, so the page opens from disk
with no server and no network. Audio is linked by relative path. Rebuilt after each stage.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from voicelab.blocks.records import read_segments
from voicelab.fsutil import atomic_write_text
from voicelab.htmlpage import (
    Raw,
    esc,
    read_jsonl,
    rel_path,
    svg_histogram,
    svg_lines,
    table,
    url_path,
)
from voicelab.state import load_record
from voicelab.workspace import Workspace

log = logging.getLogger(__name__)

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f5f5f5}.num{text-align:right}
.muted{color:#777}.ok{color:#176f2c}.bad{color:#a11}
.chart{margin:.5em 1em .5em 0;display:inline-block}
code{background:#f3f3f3;padding:0 .25em}audio{height:32px;vertical-align:middle}
"""


def _unusable_files(ws: Workspace) -> list[tuple[str, str]]:
    """(source, reason) of the files prepare could not use at all (corrupt, silent, empty ...):
    they have no segment, only a row in qc.tsv."""
    import csv

    qc = ws.prepare_dir / "qc.tsv"
    if not qc.is_file():
        return []
    with open(qc, encoding="utf-8", newline="") as f:
        rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [
            (r.get("source") or "", r.get("reasons") or "?")
            for r in rows
            if r.get("status") == "unusable"
        ]


def dataset_section(ws: Workspace) -> str:
    rows = read_segments(ws.prepare_dir / "segments.jsonl")
    rec = load_record(ws, "prepare")
    if not rows and not rec:
        return "<p class='muted'>No dataset yet: run <code>voicelab prepare</code>.</p>"
    kept = [r for r in rows if r.kept]
    dropped = [r for r in rows if not r.kept]
    durs = [r.duration for r in kept]
    unusable = _unusable_files(ws)
    reasons = Counter(x for r in dropped for x in r.reason_codes)
    file_reasons = Counter(f"{why} (whole file)" for _, why in unusable)
    counts = [
        ["kept segments", len(kept), f"{sum(durs) / 60:.1f}"],
        ["excluded segments", len(dropped), f"{sum(r.duration for r in dropped) / 60:.1f}"],
    ]
    if unusable:
        counts.append(["unusable source files", len(unusable), ""])
    out = [table(["", "count", "minutes"], counts, num_cols=2)]
    if reasons or file_reasons:
        out.append(
            "<h3>Exclusions</h3>"
            + table(["reason", "count"], [*reasons.most_common(), *file_reasons.most_common()], 1)
        )
    out.append(svg_histogram("Kept utterance durations", durs))
    for split in ("train", "dev"):
        text = ws.split_dir(split) / "text"
        if text.is_file():
            n = sum(1 for ln in text.read_text(encoding="utf-8").splitlines() if ln.strip())
            out.append(f"<p>{split}: {n} utterances</p>")
    qc = ws.prepare_dir / "qc.tsv"
    if qc.is_file():
        out.append(f'<p>Per-clip QC: <a href="{esc(url_path(qc, ws.reports_dir))}">qc.tsv</a></p>')
    if dropped:
        worst = dropped[:30]
        out.append(
            "<details><summary>Excluded clips (first 30)</summary>"
            + table(
                ["id", "duration", "reasons", "text"],
                [
                    [
                        r.utt,
                        f"{r.duration:.1f}",
                        r.reasons_text,
                        r.text,
                    ]
                    for r in worst
                ],
            )
            + "</details>"
        )
    if unusable:
        out.append(
            "<details><summary>Unusable source files</summary>"
            + table(["file", "reason"], unusable)
            + "</details>"
        )
    return "".join(out)


def _train_series(rows: list[dict[str, Any]], tag: str, key: str) -> list[tuple[float, float]]:
    pts = []
    for r in rows:
        if str(r.get("tag", r.get("kind", ""))).upper() != tag:
            continue
        v = r.get(key, (r.get("loss_dict") or {}).get(key))
        x = r.get("step", r.get("batch", 0))
        try:
            pts.append((float(x), float(v)))
        except (TypeError, ValueError):
            continue
    return pts


def training_section(ws: Workspace) -> str:
    out = []
    for model in ("llm", "flow"):
        log_file = ws.exp_dir(model) / "train_log.jsonl"
        rows = read_jsonl(log_file)
        if not rows:
            continue
        charts = []
        for key in ("loss", "acc"):
            series = {
                "train": _train_series(rows, "TRAIN", key),
                "cv": _train_series(rows, "CV", key),
            }
            ylabel = "loss (nats per token)" if key == "loss" else "accuracy (fraction of tokens)"
            charts.append(svg_lines(f"{model} {key}", series, ylabel=ylabel))
        out.append(f"<h3>{model}</h3>" + "".join(c for c in charts if c))
        out.append(checkpoint_table(ws, model))
    if out:
        out.append(
            "<p>Every logged value, live while training: "
            f"<code>{esc(tensorboard_command(ws))}</code> (or <code>voicelab tensorboard</code>)"
            "</p>"
        )
    return (
        "".join(out) or "<p class='muted'>No training yet: run <code>voicelab train llm</code>.</p>"
    )


def tensorboard_command(ws: Workspace) -> str:
    """The command that shows the event files of every training run of this workspace."""
    return f'tensorboard --logdir "{ws.tensorboard_root}"'


def checkpoint_table(ws: Workspace, model: str) -> str:
    try:
        from voicelab.stages.checkpoints import list_checkpoints
    except ImportError:
        return ""
    try:
        cks = list_checkpoints(ws, model)
    except Exception as e:  # the report must never fail on one broken section
        return f"<p class='bad'>checkpoints: {esc(e)}</p>"
    rows = []
    for c in cks:
        d = c if isinstance(c, dict) else vars(c)
        rows.append(
            [
                d.get("name", ""),
                d.get("epoch", ""),
                d.get("step", ""),
                _fmt(d.get("cv_loss")),
                _fmt(d.get("cv_acc")),
                f"{(d.get('size') or 0) / 1e6:.1f} MB",
                " ".join(
                    m
                    for m in (
                        "locked" if d.get("locked") else "",
                        "chosen" if d.get("chosen") else "",
                    )
                    if m
                ),
            ]
        )
    return (
        table(["checkpoint", "epoch", "step", "CV loss", "CV acc", "size", ""], rows)
        if rows
        else ""
    )


def _fmt(v: Any) -> str:
    try:
        return f"{float(v):.4f}"
    except (TypeError, ValueError):
        return ""


def voice_section(ws: Workspace) -> str:
    prov_file = ws.voice_dir / "voicelab.json"
    if not prov_file.is_file():
        return "<p class='muted'>No exported voice yet: run <code>voicelab export</code>.</p>"
    prov = json.loads(prov_file.read_text(encoding="utf-8"))
    say = f'voicelab say "你好，这是一个推理测试。" --model-dir "{ws.voice_dir}" --out hello.wav'
    return (
        f"<p>Voice dir: <code>{esc(ws.voice_dir)}</code></p><p>Try it: <code>{esc(say)}</code></p>"
        f"<details><summary>Provenance (voicelab.json)</summary><pre>"
        f"{esc(json.dumps(prov, ensure_ascii=False, indent=2))}</pre></details>"
    )


def audition_section(ws: Workspace) -> str:
    pages = sorted(ws.reports_dir.glob("audition-*/index.html"))
    if not pages:
        return "<p class='muted'>No audition yet: run <code>voicelab audition</code>.</p>"
    latest = pages[-1]
    wavs = sorted(latest.parent.rglob("*.wav"))[:24]
    players = [
        [
            rel_path(w, latest.parent),
            Raw(
                f'<audio controls preload="none" src="{esc(url_path(w, ws.reports_dir))}"></audio>'
            ),
        ]
        for w in wavs
    ]
    older = "".join(
        f'<li><a href="{esc(url_path(p, ws.reports_dir))}">{esc(p.parent.name)}</a></li>'
        for p in pages[:-1]
    )
    return (
        f'<p>Latest: <a href="{esc(url_path(latest, ws.reports_dir))}">'
        f"{esc(latest.parent.name)}</a></p>"
        + table(["file", "listen"], players)
        + (
            f"<details><summary>Earlier auditions</summary><ul>{older}</ul></details>"
            if older
            else ""
        )
    )


def _run_order(path: Path) -> tuple[int, str]:
    """Stages in the order the pipeline runs them (an unknown one last, by name)."""
    from voicelab.runner.pipeline import STAGE_NAMES

    name = path.stem.removeprefix("run-")
    return (STAGE_NAMES.index(name) if name in STAGE_NAMES else len(STAGE_NAMES), name)


def status_section(ws: Workspace) -> str:
    rows = []
    for path in sorted(ws.state_dir.glob("*.json"), key=_run_order):
        rec = None if path.stem.startswith("run-") else load_record(ws, path.stem)  # 0.1's
        if rec:
            rows.append(
                [
                    rec.stage.removeprefix("run-"),
                    rec.status,
                    f"{rec.seconds:.1f} s",
                    time.strftime("%Y-%m-%d %H:%M", time.localtime(rec.finished or rec.started)),
                    rec.error or "",
                ]
            )
    return table(["stage", "status", "time", "when", "error"], rows) if rows else ""


def _eval_section(ws: Workspace) -> str:
    from voicelab.evaluation.report import eval_section

    try:
        return eval_section(ws)
    except Exception as e:  # the report must never fail on one broken section
        return f"<p class='bad'>evaluation: {esc(e)}</p>"


def build_report(ws: Workspace) -> Path:
    """Write ``reports/index.html`` from whatever the stages have produced so far."""
    sections = [
        ("Pipeline", status_section(ws)),
        ("Dataset", dataset_section(ws)),
        ("Training", training_section(ws)),
        ("Voice", voice_section(ws)),
        ("Audition", audition_section(ws)),
        ("Evaluation", _eval_section(ws)),
    ]
    body = "".join(f"<h2>{esc(t)}</h2>{s}" for t, s in sections if s)
    title = f"VoiceLab report: {ws.config.speaker or ws.root.name}"
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1>"
        f"<p class='muted'>Workspace <code>{esc(ws.root)}</code>, built "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}</p>{body}</body></html>\n"
    )
    out = ws.reports_dir / "index.html"
    atomic_write_text(out, page)
    return out


def refresh_after_audition(ws: Workspace | None, report_dir: Path) -> None:
    """reports/index.html links the latest audition: rebuild it when this one is listed there
    (a standalone ``voicelab audition`` would otherwise leave it pointing at the previous one).
    Front ends call this after ``run_audition``; ``voicelab run`` rebuilds after every stage."""
    if ws is None or not ws.config_file.is_file():
        return
    if report_dir.resolve().parent != ws.reports_dir.resolve():
        return
    build_report(ws)
