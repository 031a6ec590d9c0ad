"""Published figures say exactly what they measure (issue 15 item 30)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_mib_and_gib_agree() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    pairs = re.findall(r"([\d,]+) MiB \((\d+(?:\.\d+)?) GiB\)", text)
    assert pairs, "the training figures give the measured MiB beside the GiB"
    for mib, gib in pairs:
        assert round(int(mib.replace(",", "")) / 1024, 1) == float(gib), (mib, gib)
    assert "16.6 GiB" not in text  # 16,635 MiB is 16.2 GiB


def test_bench_train_epoch_time_is_named_for_what_it_holds() -> None:
    spec = importlib.util.spec_from_file_location("bench_train", REPO / "benchmarks/bench_train.py")
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
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
