"""The report's Evaluation section: CER/WER, similarity and MOS per epoch against both
baselines (inline SVG), the latest run's table, and its worst lines with audio players."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voicelab.evaluation.choose import ERR_MARGIN, best
from voicelab.evaluation.results import TABLE, epoch_rows, merged, read_table, run_dirs
from voicelab.fsutil import read_json

if TYPE_CHECKING:
    from voicelab.workspace import Workspace

WORST = 8
PLOTS = (("err", "CER/WER (lower is better)"), ("sim", "speaker similarity"), ("mos", "DNSMOS"))


def _f(v: Any, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) and math.isfinite(v) else "-"


def _plots(ws: Workspace) -> str:
    from voicelab.htmlpage import svg_lines

    by_epoch, base = epoch_rows(ws)
    rows, _ = merged(ws)
    real = next((r for r in rows.values() if r.get("kind") == "real"), None)
    if not by_epoch:
        return ""
    epochs = sorted(by_epoch)
    span = (epochs[0], epochs[-1])
    out = []
    for key, title in PLOTS:
        series: dict[str, list[tuple[float, float]]] = {
            "epochs": [(e, by_epoch[e][key]) for e in epochs if by_epoch[e].get(key) is not None]
        }
        for name, ref in (("base model (zero-shot)", base), ("real recordings", real)):
            if ref is not None and ref.get(key) is not None:
                series[name] = [(x, ref[key]) for x in span]
        out.append(svg_lines(title, series, xlabel="epoch"))
    return "".join(out)


def _worst(ws: Workspace, run: Path) -> str:
    from voicelab.htmlpage import Raw, esc, rel_path, table

    lines = []
    for cand in sorted(p for p in run.iterdir() if (p / "lines").is_dir() and p.name != "real"):
        for f in sorted((cand / "lines").glob("*.json")):
            row = read_json(f, default=None)
            if isinstance(row, dict) and isinstance(row.get("err"), (int, float)):
                lines.append((cand.name, f.stem, row))
    lines.sort(key=lambda t: (-t[2]["err"], t[2].get("sim") or 0.0))

    def player(path: Path) -> str:
        src = esc(rel_path(path, ws.reports_dir))
        return f'<audio controls preload="none" src="{src}"></audio>'

    out = []
    for cand, stem, row in lines[:WORST]:
        real = run / "real" / "audio" / f"{stem}.wav"
        listen = player(run / cand / "audio" / f"{stem}.wav")
        if real.is_file():
            listen += " real: " + player(real)
        out.append(
            [
                cand,
                row.get("text", ""),
                row.get("transcript", ""),
                _f(row.get("err")),
                _f(row.get("sim")),
                Raw(listen),
            ]
        )
    if not out:
        return ""
    return "<h3>Worst lines</h3>" + table(
        ["candidate", "text", "heard (ASR)", "CER/WER", "SIM", "listen"], out
    )


def eval_section(ws: Workspace) -> str:
    from voicelab.htmlpage import esc, table

    runs = run_dirs(ws)
    if not runs:
        return "<p class='muted'>No evaluation yet: run <code>voicelab eval</code>.</p>"
    latest = runs[-1]
    rows = read_table(latest / TABLE)
    base = next((r for r in rows if r.get("kind") == "base"), None)
    chosen = {r["candidate"] for r in best([r for r in rows if r["kind"] == "epoch"], base)}
    body = [
        [
            r["candidate"] + (" (best)" if r["candidate"] in chosen else ""),
            r.get("kind", ""),
            r.get("lines", ""),
            _f(r.get("err")),
            _f(r.get("sim")),
            _f(r.get("sim_ref")),
            _f(r.get("mos"), 2),
            _f(r.get("dur_ratio"), 2),
            _f(r.get("rtf"), 2),
        ]
        for r in rows
    ]
    head = ["candidate", "kind", "lines", "CER/WER", "SIM", "SIM ref", "MOS", "dur ratio", "RTF"]
    return (
        f"<p>Latest run: <code>{esc(latest.name)}</code>. Every candidate speaks the same lines "
        "(<code>eval/set.json</code>). <b>best</b>: highest similarity + MOS/10 among epochs whose "
        f"CER/WER is at most {ERR_MARGIN:.2f} above the base model's (rule "
        "<code>best-eval</code>, export's default).</p>"
        + _plots(ws)
        + table(head, body, num_cols=7)
        + _worst(ws, latest)
    )
