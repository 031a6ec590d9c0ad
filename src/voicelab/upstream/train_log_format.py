"""The lines upstream's training writes to its log (loguru), as regular expressions."""

from __future__ import annotations

import re

TRAIN_LINE = re.compile(r"\b(TRAIN|CV) Batch (\d+)/(\d+) (.*?)\s*rank (\d+)\s*$")

CV_LINE = re.compile(r"Epoch (\d+) Step (\d+) CV info lr (\S+) (.*)$")

EPOCH_LINE = re.compile(r"Epoch (\d+) TRAIN info lr (\S+) rank (\d+)")

START_LINE = re.compile(r"start step (\d+) start epoch (-?\d+)")

SAVE_LINE = re.compile(r"\[Rank (\d+)\] Checkpoint: save to checkpoint (\S+)")


def log_pairs(text: str) -> dict[str, float]:
    toks = text.split()
    out: dict[str, float] = {}
    i = 0
    while i + 1 < len(toks):
        key, val = toks[i], toks[i + 1]
        try:
            num = float(val)
        except ValueError:
            i += 1
            continue
        if re.fullmatch(r"[A-Za-z_]\w*", key):
            out[key] = num
            i += 2
        else:
            i += 1
    return out
