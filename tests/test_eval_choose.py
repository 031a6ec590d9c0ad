"""The best-eval rule and early stopping on metrics tables."""

from __future__ import annotations

import math

import pytest

from voicelab.evaluation import choose

BASE = {"candidate": "base", "err": 0.10, "sim": 0.60, "mos": 3.0}


def row(epoch: int, err: float, sim: float, mos: float) -> dict:
    return {"candidate": f"epoch_{epoch}", "epoch": epoch, "err": err, "sim": sim, "mos": mos}


def test_rule_prefers_similarity_within_the_error_margin() -> None:
    rows = [
        row(1, 0.08, 0.70, 3.0),
        row(2, 0.12, 0.78, 3.1),  # 2 points worse than base: within the 5-point margin
        row(3, 0.40, 0.90, 3.5),  # most similar, but unintelligible: never chosen
        row(4, 0.09, 0.74, 3.2),
    ]
    assert [r["epoch"] for r in choose.rank(rows, BASE)] == [2, 4, 1]
    assert [r["epoch"] for r in choose.best(rows, BASE, 2)] == [2, 4]
    # A stricter margin drops epoch 2.
    assert choose.best(rows, BASE, 1, margin=0.0)[0]["epoch"] == 4
    # Without a base row every candidate with scores is eligible.
    assert choose.best(rows, None)[0]["epoch"] == 3


def test_mos_counts_and_ties_go_to_the_later_epoch() -> None:
    a, b = row(1, 0.05, 0.70, 2.5), row(2, 0.05, 0.69, 3.0)  # 0.01 sim < 0.5 MOS * 0.1
    assert choose.best([a, b], BASE)[0]["epoch"] == 2
    c, d = row(3, 0.05, 0.70, 3.0), row(5, 0.05, 0.70, 3.0)
    assert choose.best([d, c], BASE)[0]["epoch"] == 5


def test_missing_values_are_not_eligible() -> None:
    rows = [row(1, math.nan, 0.9, 3.0), {"candidate": "epoch_2", "epoch": 2, "err": 0.1}]
    assert choose.rank(rows, BASE) == []
    assert choose.score({"sim": "0.5", "mos": "3"}) == pytest.approx(0.8)


def test_early_stop_after_patience_without_improvement() -> None:
    rows = [
        row(1, 0.08, 0.60, 3.0),
        row(2, 0.08, 0.70, 3.0),  # best
        row(3, 0.08, 0.69, 3.0),
        row(4, 0.30, 0.95, 3.0),  # better similarity but not eligible: no improvement
        row(5, 0.08, 0.71, 3.0),
    ]
    assert choose.stop_index(rows, BASE, patience=2) == 3  # stops after epoch 4
    assert choose.stop_index(rows, BASE, patience=3) is None  # epoch 5 improves in time
    stopper = choose.EarlyStop(patience=2)
    assert [stopper.update(r, BASE) for r in rows[:4]] == [False, False, False, True]
    assert stopper.best is not None and stopper.best["epoch"] == 2
    assert "epoch_2" in stopper.reason
    # Nothing ever eligible: stops after `patience` evaluations.
    bad = [row(e, 0.5, 0.9, 4.0) for e in range(1, 5)]
    assert choose.stop_index(bad, BASE, patience=2) == 1
    # patience 0: never stops.
    assert choose.stop_index(bad, BASE, patience=0) is None
