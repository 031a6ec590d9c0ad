"""``train.log`` -> ``train_log.jsonl``: one parser owns the structured log; progress lines and
the summary of a run read it."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from voicelab.upstream.train_log_format import (
    CV_LINE,
    EPOCH_LINE,
    SAVE_LINE,
    START_LINE,
    TRAIN_LINE,
    log_pairs,
)


class LogParser:
    """Upstream's log lines -> train_log.jsonl rows (rank 0 only)."""

    def __init__(self, accum_grad: int, clock: Callable[[], float] = time.time) -> None:
        self.accum = max(1, accum_grad)
        self.clock = clock
        self.epoch = 0
        self.epoch_start_step = 0
        self.start_step = 0
        self.last_ckpt: str | None = None

    def feed(self, line: str) -> list[dict[str, Any]]:
        now = self.clock()
        m = START_LINE.search(line)
        if m:
            self.start_step = self.epoch_start_step = int(m.group(1))
            self.epoch = int(m.group(2)) + 1
            return [
                {
                    "tag": "EVENT",
                    "event": "start",
                    "step": self.start_step,
                    "epoch": self.epoch,
                    "time": now,
                }
            ]
        m = EPOCH_LINE.search(line)
        if m:
            if int(m.group(3)) != 0:
                return []
            self.epoch = int(m.group(1))
            return [
                {
                    "tag": "EVENT",
                    "event": "epoch",
                    "epoch": self.epoch,
                    "lr": float(m.group(2)),
                    "step": self.epoch_start_step,
                    "time": now,
                }
            ]
        m = TRAIN_LINE.search(line)
        if m:
            tag, epoch, batch, rest, rank = m.groups()
            if int(rank) != 0 or tag != "TRAIN":
                return []
            vals = log_pairs(rest)
            row: dict[str, Any] = {"tag": "TRAIN", "epoch": int(epoch), "batch": int(batch)}
            row["step"] = self.epoch_start_step + int(batch) // self.accum
            for k, v in vals.items():
                # The logged loss is after batch_backward divided it by accum_grad.
                row[k] = v * self.accum if k == "loss" else v
            row.update(rank=0, time=now)
            return [row]
        m = CV_LINE.search(line)
        if m:
            epoch, step, lr, rest = m.groups()
            # Upstream's format puts the rank before the word "rank" and the losses after it.
            rest_vals = log_pairs(rest.replace(" rank ", " "))
            mr = re.match(r"\s*(\d+)\s+rank\b", rest)
            rank = int(mr.group(1)) if mr else int(rest_vals.get("rank", 0))
            if rank != 0:
                return []
            row = {"tag": "CV", "epoch": int(epoch), "step": int(step) - 1, "lr": float(lr)}
            row.update({k: v for k, v in rest_vals.items() if k != "rank"})
            row["time"] = now
            self.epoch_start_step = int(step) - 1
            return [row]
        m = SAVE_LINE.search(line)
        if m and int(m.group(1)) == 0:
            name = Path(m.group(2)).name
            self.last_ckpt = name
            return [
                {
                    "tag": "EVENT",
                    "event": "checkpoint",
                    "checkpoint": name,
                    "epoch": self.epoch,
                    "time": now,
                }
            ]
        return []


def read_train_log(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.is_file():
        for line in path.read_text("utf-8").splitlines():
            with contextlib.suppress(ValueError):
                rows.append(json.loads(line))
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Best CV loss, epochs done, last checkpoint: what status and the report show."""
    cv = [r for r in rows if r.get("tag") == "CV" and isinstance(r.get("loss"), (int, float))]
    ck = [r for r in rows if r.get("event") == "checkpoint" and "whole" in str(r.get("checkpoint"))]
    best = min(cv, key=lambda r: r["loss"]) if cv else None
    return {
        "epochs_done": len({r["epoch"] for r in cv}),
        "best_cv_loss": best["loss"] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "last_checkpoint": ck[-1]["checkpoint"] if ck else None,
        "steps": max(
            (r.get("step", 0) for r in rows if r.get("tag") in ("TRAIN", "CV")), default=0
        ),
    }


class Progress:
    """The live line: epoch, step, loss, acc, lr, steps/s, ETA."""

    def __init__(self, model: str, max_epoch: int, batches_per_epoch: int, accum: int) -> None:
        self.model = model
        self.max_epoch = max_epoch
        self.batches = max(1, batches_per_epoch)
        self.accum = max(1, accum)
        self.first: tuple[float, int] | None = None  # (time, global batch)
        self.text = f"{model}: starting"

    def update(self, row: dict[str, Any]) -> str:
        if row.get("tag") == "TRAIN":
            g = row["epoch"] * self.batches + row["batch"]
            if self.first is None:
                self.first = (row["time"], g)
            rate = 0.0
            dt = row["time"] - self.first[0]
            if dt > 0:
                rate = (g - self.first[1]) / dt  # batches/s
            left = self.max_epoch * self.batches - g
            eta = _fmt_secs(left / rate) if rate > 0 else "?"
            acc = f" acc {row['acc']:.3f}" if "acc" in row else ""
            tok = f" {row['tokens_s']:.0f} tokens/s" if "tokens_s" in row else ""
            self.text = (
                f"{self.model} epoch {row['epoch'] + 1}/{self.max_epoch} step {row['step']}"
                f" loss {row.get('loss', float('nan')):.4f}{acc} lr {row.get('lr', 0):.2e}"
                f" {rate / self.accum:.2f} steps/s{tok} ETA {eta}"
            )
        elif row.get("tag") == "CV":
            acc = f" acc {row['acc']:.3f}" if "acc" in row else ""
            self.text = (
                f"{self.model} epoch {row['epoch'] + 1} CV loss {row.get('loss', 0):.4f}{acc}"
            )
        return self.text


def _fmt_secs(s: float) -> str:
    s = int(s)
    return (
        f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )
