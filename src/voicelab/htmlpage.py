"""Pieces of static HTML pages (the report, the evaluation section): escaping, tables, links
relative to the page, and line charts and histograms as inline SVG with ticks and units. No
network, no scripts: a page built from these opens from disk."""

from __future__ import annotations

import html
import json
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


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


def rel_path(path: Path, base: Path) -> str:
    import os

    return Path(os.path.relpath(path, base)).as_posix()


def url_path(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` as a URL: a ``#``, ``%`` or ``?`` in a file name would
    otherwise cut the link (the players would not find the file)."""
    from urllib.parse import quote

    return quote(rel_path(path, base), safe="/")
