"""``reports/index.html``: one static, self-contained page about a voice.

It reads only files the stages wrote (segments.jsonl, train_log.jsonl, checkpoint yamls,
voicelab.json, the audition pages) and draws its plots as inline SVG, so the page opens from disk
with no server and no network. Audio is linked by relative path. Rebuilt after each stage.
"""

from __future__ import annotations

import html
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from voicelab.fsutil import atomic_write_text
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


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                log.debug("skipping a bad line in %s", path)
    return rows


# ---- SVG plots -----------------------------------------------------------------------------
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values (1, 2 or 5 times a power of ten) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


def _tick_label(v: float) -> str:
    return f"{v:.6g}"


def _axes(
    left: float,
    top: float,
    w: float,
    h: float,
    xs: tuple[float, float],
    ys: tuple[float, float],
    xlabel: str,
    ylabel: str,
) -> list[str]:
    """Frame, ticks with values and grid lines on both axes, and the axis titles (with units)."""
    (x0, x1), (y0, y1) = xs, ys
    parts = [f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#ccc"/>']
    for t in nice_ticks(x0, x1):
        x = left + (t - x0) / (x1 - x0) * w
        parts.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + h + 4}" stroke="#eee"/>'
            f'<text x="{x:.1f}" y="{top + h + 15}" font-size="10" text-anchor="middle">'
            f"{_tick_label(t)}</text>"
        )
    for t in nice_ticks(y0, y1):
        y = top + h - (t - y0) / (y1 - y0) * h
        parts.append(
            f'<line x1="{left - 4}" y1="{y:.1f}" x2="{left + w}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{left - 6}" y="{y + 3:.1f}" font-size="10" text-anchor="end">'
            f"{_tick_label(t)}</text>"
        )
    parts.append(
        f'<text x="{left + w / 2:.1f}" y="{top + h + 28}" font-size="11" '
        f'text-anchor="middle">{esc(xlabel)}</text>'
    )
    parts.append(
        f'<text x="12" y="{top + h / 2:.1f}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 12 {top + h / 2:.1f})">{esc(ylabel)}</text>'
    )
    return parts


def svg_lines(
    title: str,
    series: dict[str, Sequence[tuple[float, float]]],
    xlabel: str = "step (optimizer updates)",
    ylabel: str = "",
    width: int = 520,
    height: int = 260,
) -> str:
    """A line chart of one or more (x, y) series, as inline SVG, with ticked, titled axes."""
    pts = [(x, y) for s in series.values() for x, y in s if math.isfinite(y)]
    if not pts:
        return ""
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-9 + abs(y0) * 0.01 + 1e-6)
    left, right, top, bottom = 62, 10, 24, 40
    w, h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * w

    def sy(y: float) -> float:
        return top + h - (y - y0) / (y1 - y0) * h

    parts = [
        f'<svg class="chart" role="img" aria-label="{esc(title)}" width="{width}" '
        f'height="{height}" xmlns="http://www.w3.org/2000/svg">',
        f'<text x="{left}" y="15" font-size="13" font-weight="bold">{esc(title)}</text>',
        *_axes(left, top, w, h, (x0, x1), (y0, y1), xlabel, ylabel or title),
    ]
    for i, (name, s) in enumerate(series.items()):
        good = [(x, y) for x, y in s if math.isfinite(y)]
        if not good:
            continue
        color = COLORS[i % len(COLORS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in good)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}"/>')
        if len(good) <= 40:
            parts += [
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"/>'
                for x, y in good
            ]
        parts.append(
            f'<text x="{left + w - 4}" y="{top + 14 + 13 * i}" font-size="11" fill="{color}" '
            f'text-anchor="end">{esc(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def svg_histogram(
    title: str,
    values: Iterable[float],
    bins: int = 20,
    width: int = 520,
    height: int = 220,
    xlabel: str = "duration (s)",
    ylabel: str = "utterances",
) -> str:
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    hi = hi if hi > lo else lo + 1
    counts = [0] * bins
    for v in vals:
        counts[min(bins - 1, int((v - lo) / (hi - lo) * bins))] += 1
    left, top, bottom = 62, 24, 40
    w, h = width - left - 10, height - top - bottom
    peak = max(counts)
    bw = w / bins
    parts = [
        f'<svg class="chart" role="img" aria-label="{esc(title)}" width="{width}" '
        f'height="{height}" xmlns="http://www.w3.org/2000/svg">',
        f'<text x="{left}" y="15" font-size="13" font-weight="bold">{esc(title)}</text>',
        *_axes(left, top, w, h, (lo, hi), (0.0, float(peak)), xlabel, ylabel),
    ]
    for i, c in enumerate(counts):
        bh = h * c / peak
        parts.append(
            f'<rect x="{left + i * bw:.1f}" y="{top + h - bh:.1f}" width="{bw - 1:.1f}" '
            f'height="{bh:.1f}" fill="#1f77b4"><title>{c}</title></rect>'
        )
    parts.append("</svg>")
    return "".join(parts)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], num_cols: int = 0) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for r in rows:
        cells = []
        for i, v in enumerate(r):
            cls = ' class="num"' if i >= len(headers) - num_cols else ""
            cells.append(f"<td{cls}>{v if isinstance(v, Raw) else esc(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


class Raw(str):
    """HTML that is already safe (links, players)."""


# ---- sections ------------------------------------------------------------------------------
def _rel(path: Path, base: Path) -> str:
    import os

    return Path(os.path.relpath(path, base)).as_posix()


def _url(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` as a URL: a ``#``, ``%`` or ``?`` in a file name would
    otherwise cut the link (the players would not find the file)."""
    from urllib.parse import quote

    return quote(_rel(path, base), safe="/")


def _kept(row: dict[str, Any]) -> bool:
    """prepare's segments.jsonl says ``status: kept|excluded``."""
    if "status" in row:
        return row["status"] == "kept"
    return bool(row.get("keep", not row.get("reasons")))


def _duration(row: dict[str, Any]) -> float:
    qc = row.get("qc") or {}
    if "duration" in qc:
        return float(qc["duration"])
    if "duration" in row:
        return float(row["duration"])
    return max(0.0, float(row.get("end", 0.0)) - float(row.get("start", 0.0)))


def _reason_codes(row: dict[str, Any]) -> list[str]:
    """The rule codes of a segment's reasons (``low_snr``, ``too_short`` ...), for counts."""
    r = row.get("reasons", row.get("reason", []))
    if isinstance(r, str):
        return [x.split("(")[0] for x in r.replace(";", ",").split(",") if x]
    return [
        str(x.get("code") or x.get("rule") or "?") if isinstance(x, dict) else str(x)
        for x in r or []
    ]


def _reasons_text(row: dict[str, Any]) -> str:
    """What prepare wrote for people (``low_snr(12.6<15)``), else the codes."""
    return str(row.get("reasons_text") or ", ".join(_reason_codes(row)))


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
    rows = read_jsonl(ws.prepare_dir / "segments.jsonl")
    rec = load_record(ws, "prepare")
    if not rows and not rec:
        return "<p class='muted'>No dataset yet: run <code>voicelab prepare</code>.</p>"
    kept = [r for r in rows if _kept(r)]
    dropped = [r for r in rows if not _kept(r)]
    durs = [_duration(r) for r in kept]
    unusable = _unusable_files(ws)
    reasons = Counter(x for r in dropped for x in _reason_codes(r))
    file_reasons = Counter(f"{why} (whole file)" for _, why in unusable)
    counts = [
        ["kept segments", len(kept), f"{sum(durs) / 60:.1f}"],
        ["excluded segments", len(dropped), f"{sum(_duration(r) for r in dropped) / 60:.1f}"],
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
        out.append(f'<p>Per-clip QC: <a href="{esc(_url(qc, ws.reports_dir))}">qc.tsv</a></p>')
    if dropped:
        worst = dropped[:30]
        out.append(
            "<details><summary>Excluded clips (first 30)</summary>"
            + table(
                ["id", "duration", "reasons", "text"],
                [
                    [
                        r.get("utt", r.get("id", "")),
                        f"{_duration(r):.1f}",
                        _reasons_text(r),
                        r.get("text", ""),
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
        from voicelab.checkpoints import list_checkpoints
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
            _rel(w, latest.parent),
            Raw(f'<audio controls preload="none" src="{esc(_url(w, ws.reports_dir))}"></audio>'),
        ]
        for w in wavs
    ]
    older = "".join(
        f'<li><a href="{esc(_url(p, ws.reports_dir))}">{esc(p.parent.name)}</a></li>'
        for p in pages[:-1]
    )
    return (
        f'<p>Latest: <a href="{esc(_url(latest, ws.reports_dir))}">'
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
    from voicelab.stages import STAGE_NAMES

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
