"""The Train tab's view of a run: progress and curves read from ``<run>/train_log.jsonl``.

Everything comes from the run folder on disk, not from the job that started it: a page
reopened later (or a run started by ``voicelab train`` in a terminal) shows the same thing.
"""

from __future__ import annotations

from typing import Any

from voicelab.fsutil import quick_fingerprint
from voicelab.stages.train import (
    CHECKPOINT_LOG,
    FilterRules,
    Progress,
    read_list,
    read_shards,
    read_train_log,
    summarize,
)
from voicelab.upstream import train_config as tc
from voicelab.workspace import Workspace

MAX_POINTS = 400
# Speech tokens per epoch, by the data list's shard fingerprints (the page polls every second).
_tokens_cache: dict[tuple[str, ...], int] = {}


def tokens_per_epoch(ws: Workspace, model: str) -> int | None:
    """Speech tokens one epoch trains on: the packed train set after upstream's filter."""
    data_list, cfg = ws.data_list("train"), ws.exp_dir(model) / "train_config.yaml"
    if not data_list.is_file() or not cfg.is_file():
        return None
    try:
        key = tuple(quick_fingerprint(p) for p in [data_list, cfg, *read_list(data_list)])
    except OSError:
        return None
    if key not in _tokens_cache:
        rules = FilterRules.from_config(tc.read_values(cfg.read_text("utf-8")))
        shards, _ = read_shards(data_list)
        _tokens_cache[key] = sum(u.speech_tokens for s in shards for u in s.utts if rules.keeps(u))
    return _tokens_cache[key]


def _max_epoch(ws: Workspace, model: str) -> int | None:
    cfg = ws.exp_dir(model) / "train_config.yaml"
    if not cfg.is_file():
        return None
    values = tc.read_values(cfg.read_text("utf-8"))
    n = tc.as_number(tc.get_value(values, tc.MAX_EPOCH))
    return int(n) if n else None


def _thin(points: list[list[float]]) -> list[list[float]]:
    """At most MAX_POINTS points, evenly picked, the last one always kept."""
    if len(points) <= MAX_POINTS:
        return points
    step = len(points) / MAX_POINTS
    out = [points[int(i * step)] for i in range(MAX_POINTS)]
    out[-1] = points[-1]
    return out


def run_view(ws: Workspace, model: str) -> dict[str, Any]:
    """Curves (train loss/acc by step, CV loss/acc by epoch), the live line and the summary."""
    run_dir = ws.exp_dir(model)
    rows = read_train_log(run_dir / CHECKPOINT_LOG)
    train = [r for r in rows if r.get("tag") == "TRAIN"]
    cv = [r for r in rows if r.get("tag") == "CV"]
    events = [r for r in rows if r.get("tag") == "EVENT"]
    max_epoch = _max_epoch(ws, model)
    # Batches per epoch: the largest batch index of a finished epoch, else the one seen so far.
    done_epochs = {r["epoch"] for r in cv}
    per_epoch = max((r["batch"] for r in train if r["epoch"] in done_epochs), default=0)
    per_epoch = per_epoch or max((r["batch"] for r in train), default=1)
    line, tokens_per_s = "", None
    if train or cv:
        prog = Progress(model, max_epoch or 1, per_epoch, 1)
        launches = [i for i, r in enumerate(rows) if r.get("event") == "launch"]
        # Rates and ETA from the latest launch only (a resume restarts the clock).
        recent = [r for r in rows[launches[-1] if launches else 0 :] if r.get("tag") == "TRAIN"]
        for r in rows[launches[-1] if launches else 0 :]:
            if r.get("tag") in ("TRAIN", "CV"):
                line = prog.update(r)
        per_epoch_tokens = tokens_per_epoch(ws, model) if len(recent) >= 2 else None
        if per_epoch_tokens and recent[-1]["time"] > recent[0]["time"]:
            a, b = recent[0], recent[-1]
            batches = (b["epoch"] - a["epoch"]) * per_epoch + b["batch"] - a["batch"]
            tokens = per_epoch_tokens * batches / per_epoch
            tokens_per_s = round(tokens / (b["time"] - a["time"]))
    last_event = events[-1]["event"] if events else None
    last = train[-1] if train else None
    return {
        "model": model,
        "run_dir": str(run_dir),
        "exists": run_dir.is_dir(),
        "running": last_event not in (None, "end"),
        "max_epoch": max_epoch,
        "epoch": (last["epoch"] + 1) if last else None,
        "step": last.get("step") if last else None,
        "line": line,
        "tokens_per_s": tokens_per_s,
        "summary": summarize(rows),
        "train_loss": _thin([[r["step"], r["loss"]] for r in train if "loss" in r]),
        "train_acc": _thin([[r["step"], r["acc"]] for r in train if "acc" in r]),
        # By epoch number as the checkpoints are named (epoch_0_whole.pt is the first).
        "cv_loss": [[r["epoch"], r["loss"]] for r in cv if "loss" in r],
        "cv_acc": [[r["epoch"], r["acc"]] for r in cv if "acc" in r],
    }
