"""Published figures say exactly what they measure (issue 15 item 30)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def test_readme_mib_and_gib_agree() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    pairs = re.findall(r"([\d,]+) MiB \((\d+(?:\.\d+)?) GiB\)", text)
    assert pairs, "the training figures give the measured MiB beside the GiB"
    for mib, gib in pairs:
        assert round(int(mib.replace(",", "")) / 1024, 1) == float(gib), (mib, gib)
    assert "16.6 GiB" not in text  # 16,635 MiB is 16.2 GiB


def _bench_train() -> Any:
    spec = importlib.util.spec_from_file_location("bench_train", REPO / "benchmarks/bench_train.py")
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_bench_train_epoch_time_is_named_for_what_it_holds() -> None:
    bench = _bench_train()
    rows = [
        {"tag": "EVENT", "event": "epoch", "epoch": 0, "time": 100.0},
        {"tag": "TRAIN", "epoch": 0, "time": 122.0},  # upstream's last logged batch
        {"tag": "CV", "epoch": 0, "time": 124.6},  # logged after the CV pass
        {"tag": "EVENT", "event": "checkpoint", "epoch": 0, "time": 126.0,
         "checkpoint": "epoch_0_whole.pt"},
    ]  # fmt: skip
    (fig,), _ = bench.epoch_figures(rows, "", tokens=1100)
    # Training, CV and saving are timed apart; tokens/s is over the training time only.
    assert (fig["train_seconds"], fig["cv_seconds"], fig["save_seconds"]) == (22.0, 2.6, 1.4)
    assert fig["speech_tokens_per_s"] == 50.0
    # VoiceLab's engine logs its own split.
    log = "voicelab engine: epoch 0 train_s 10.0 cv_s 1.0 save_s 0.5\n"
    (fig,), _ = bench.epoch_figures(rows, log, tokens=1100)
    assert (fig["train_seconds"], fig["cv_seconds"], fig["save_seconds"]) == (10.0, 1.0, 0.5)
    doc = bench.__doc__
    assert "seconds per epoch (train, CV, save" in doc


def test_gpu_utilization_counts_only_samples_wholly_inside_training() -> None:
    """A sample covers the driver's period before its stamp: one that reaches back before the
    span (the CV and save of the epoch before) is not training's figure."""
    bench = _bench_train()
    # Samples every 0.25 s from t=10.0; idle (0) before the span at 11.0, busy (80) inside it.
    samples = [(10.0 + 0.25 * i, 0 if i <= 4 else 80) for i in range(14)]
    samples[5] = (11.25, 40)  # covers 11.0-11.25: wholly inside, counted as are 11.5 ... 12.5
    mean, n, period = bench.window_mean(samples, [(11.0, 12.5)], offset=0.01)
    assert period == 0.25
    assert n == 6
    assert mean == round((40 + 5 * 80) / 6, 1)
    # The sample stamped 11.0 covers 10.75-11.0, outside; 12.75 ends after the span.
    assert bench.window_mean(samples, [(10.9, 11.2)], offset=None)[1] == 0
    # NVML's clock 1000 s behind time.time(): the stamps are moved by the lag seen at a poll.
    late = [(t - 1000.0, u) for t, u in samples]
    assert bench.window_mean(late, [(11.0, 12.5)], offset=1000.0)[:2] == (mean, 6)
    assert bench.window_mean(samples[:1], [(0.0, 99.0)], offset=None) == (None, 0, 0.0)


def test_bench_train_spread_lengths_are_like_real_recordings() -> None:
    """``--lengths spread``: 1-20 s with many short clips, where ``uniform`` keeps 3-12 s."""
    import random

    bench = _bench_train()
    rng = random.Random(0)
    spread = [bench.clip_seconds(rng, "spread") for _ in range(2000)]
    uniform = [bench.clip_seconds(rng, "uniform") for _ in range(2000)]
    assert min(spread) >= 1.0 and max(spread) <= 20.0
    assert min(uniform) >= 3.0 and max(uniform) <= 12.0
    assert sum(s < 3.0 for s in spread) > 200 and sum(s > 12.0 for s in spread) > 20
