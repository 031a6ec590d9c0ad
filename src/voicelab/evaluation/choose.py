"""From a metrics table to a choice: the ``best-eval`` rule and early stopping.

A candidate is *eligible* when its error rate (CER/WER over all lines) is not worse than the base
model's (zero-shot) by more than :data:`ERR_MARGIN`: fine-tuning must not cost intelligibility.
Eligible candidates are ranked by :func:`score`, speaker similarity plus a tenth of the MOS
(similarity rises by hundredths when a voice improves, MOS by tenths: both count alike); on equal
scores the later epoch wins. Without a base-model row, every candidate with an error rate is
eligible.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: How much higher (absolute, 0.05 = 5 points of CER/WER) a candidate's error rate may be than
#: the base model's zero-shot error rate.
ERR_MARGIN = 0.05
MOS_WEIGHT = 0.1

Row = Mapping[str, Any]


def _num(row: Row | None, key: str) -> float:
    try:
        v = float(row[key]) if row is not None and row.get(key) not in (None, "") else math.nan
    except (TypeError, ValueError):
        return math.nan
    return v


def score(row: Row) -> float:
    """``sim + 0.1 * mos``; NaN when either is missing."""
    return _num(row, "sim") + MOS_WEIGHT * _num(row, "mos")


def eligible(row: Row, base: Row | None, margin: float = ERR_MARGIN) -> bool:
    err = _num(row, "err")
    if not math.isfinite(err) or not math.isfinite(score(row)):
        return False
    base_err = _num(base, "err")
    return not math.isfinite(base_err) or err <= base_err + margin + 1e-12


def _order(row: Row) -> float:
    e = _num(row, "epoch")
    return e if math.isfinite(e) else -1.0


def rank(rows: Iterable[Row], base: Row | None, margin: float = ERR_MARGIN) -> list[Row]:
    """Eligible rows, best first."""
    ok = [r for r in rows if eligible(r, base, margin)]
    return sorted(ok, key=lambda r: (score(r), _order(r)), reverse=True)


def best(
    rows: Iterable[Row], base: Row | None, n: int = 1, margin: float = ERR_MARGIN
) -> list[Row]:
    return rank(rows, base, margin)[:n]


@dataclass
class EarlyStop:
    """Stop when ``patience`` evaluations in a row bring no improvement of the best score
    among eligible candidates (by more than ``min_delta``)."""

    patience: int
    min_delta: float = 0.0
    margin: float = ERR_MARGIN
    best: Row | None = None
    since_best: int = 0
    history: list[tuple[Any, float, bool]] = field(default_factory=list)

    def update(self, row: Row, base: Row | None) -> bool:
        """Record one evaluation; True when training should stop now."""
        ok = eligible(row, base, self.margin)
        s = score(row) if ok else -math.inf
        self.history.append((row.get("candidate"), s, ok))
        if ok and (self.best is None or s > score(self.best) + self.min_delta):
            self.best, self.since_best = row, 0
        else:
            self.since_best += 1
        return self.patience > 0 and self.since_best >= self.patience

    @property
    def reason(self) -> str:
        if self.best is None:
            return f"{self.since_best} evaluation(s) and none beat the base model's error rate"
        return (
            f"{self.since_best} evaluation(s) without improvement over "
            f"{self.best.get('candidate')} (score {score(self.best):.4f})"
        )


def stop_index(rows: list[Row], base: Row | None, patience: int) -> int | None:
    """Index of the evaluation after which training stops (None: it never stops)."""
    stopper = EarlyStop(patience)
    for i, r in enumerate(rows):
        if stopper.update(r, base):
            return i
    return None
