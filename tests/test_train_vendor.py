"""``voicelab train`` with the real upstream trainer, the tiny model, on the CPU.

Builds the tiny CosyVoice 3 model, makes a small packed dataset (espeak-ng speech, kaldi lists,
``voicelab features`` with the tiny ONNX stand-ins, ``voicelab pack``), then trains llm and flow
for 2 epochs each, resumes, and runs 2 processes with gloo (issue 11's CPU part). Run with::

    pytest -m vendor tests/test_train_vendor.py
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from speech_corpus import VENDOR_SENTENCES as SENTENCES
from speech_corpus import packed_workspace, tiny_model_dir
from voicelab.errors import ConfigError
from voicelab.stages import train as tr
from voicelab.workspace import Workspace

pytestmark = [pytest.mark.vendor, pytest.mark.slow]


@pytest.fixture(scope="module")
def tiny_model() -> Path:
    from voicelab.upstream.tinymodel import build_tiny_model

    return build_tiny_model(tiny_model_dir())


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Workspace:
    """A workspace with packed train/dev data: 24 train and 4 dev clips of one speaker."""
    # 2 shards per worker per process for the 2-process run below.
    return packed_workspace(tmp_path_factory.mktemp("train-vendor"), SENTENCES, (140, 175, 210),
                            dev_every=7, dev_at=3, gpus=2)  # fmt: skip


def _rows(ws: Workspace, model: str) -> list[dict]:
    return tr.read_train_log(ws.exp_dir(model) / "train_log.jsonl")


def _check_run(ws: Workspace, model: str, epochs: int) -> None:
    run = ws.exp_dir(model)
    for e in range(epochs):
        assert (run / f"epoch_{e}_whole.pt").is_file()
        assert (run / f"epoch_{e}_whole.yaml").is_file()
    assert (run / "init.pt").is_file() and (run / "launch.sh").is_file()
    cv = [r for r in _rows(ws, model) if r["tag"] == "CV"]
    assert len(cv) >= epochs
    assert all(math.isfinite(r["loss"]) for r in cv)
    assert (ws.tensorboard_dir(model)).is_dir()


def test_tiny_model_layout(tiny_model: Path) -> None:
    for name in (
        "cosyvoice3.yaml",
        "llm.pt",
        "flow.pt",
        "hift.pt",
        "campplus.onnx",
        "speech_tokenizer_v3.onnx",
        "speech_tokenizer_v3.batch.onnx",
        "CosyVoice-BlankEN/vocab.json",
        "CosyVoice-BlankEN/model.safetensors",
    ):
        assert (tiny_model / name).is_file(), name
    # Cached: a second call returns at once with the same files.
    from voicelab.upstream.tinymodel import build_tiny_model

    before = (tiny_model / "llm.pt").stat().st_mtime_ns
    assert build_tiny_model(tiny_model) == tiny_model
    assert (tiny_model / "llm.pt").stat().st_mtime_ns == before


def test_train_llm_then_flow_on_cpu(packed: Workspace) -> None:
    ws = packed
    res = tr.run_train(ws, "llm", tr.TrainOptions(trainer="upstream", device="cpu", epochs=2))
    assert res.launched and res.epochs_done == 2
    assert res.best_cv_loss is not None and math.isfinite(res.best_cv_loss)
    _check_run(ws, "llm", 2)
    train = [r for r in _rows(ws, "llm") if r["tag"] == "TRAIN"]
    assert train and all(math.isfinite(r["loss"]) and "acc" in r for r in train)
    yaml_text = (ws.exp_dir("llm") / "train_config.yaml").read_text()
    assert "use_spk_embedding: True" in yaml_text and "max_epoch: 2" in yaml_text

    res = tr.run_train(ws, "flow", tr.TrainOptions(trainer="upstream", device="cpu", epochs=2))
    assert res.launched and res.epochs_done == 2
    _check_run(ws, "flow", 2)

    from voicelab.state import load_record

    rec = load_record(ws, "train_llm")
    assert rec is not None and rec.status == "done" and rec.figures["epochs"] == 2


def test_resume_continues_at_next_epoch(packed: Workspace) -> None:
    ws = packed
    run = ws.exp_dir("llm")
    if not (run / "epoch_1_whole.pt").exists():
        pytest.skip("needs the llm run of the test above")
    first = (run / "epoch_0_whole.pt").stat().st_mtime_ns
    init = (run / "init.pt").stat().st_mtime_ns
    with pytest.raises(ConfigError, match="already holds a run"):
        tr.run_train(ws, "llm", tr.TrainOptions(trainer="upstream", device="cpu", epochs=3))
    res = tr.run_train(
        ws, "llm", tr.TrainOptions(trainer="upstream", device="cpu", epochs=3, resume=True)
    )
    assert res.epochs_done == 3 and (run / "epoch_2_whole.pt").is_file()
    assert (run / "epoch_0_whole.pt").stat().st_mtime_ns == first  # not retrained
    assert (run / "init.pt").stat().st_mtime_ns == init  # the run's starting weights kept
    starts = [r for r in _rows(ws, "llm") if r.get("event") == "start"]
    assert starts[-1]["epoch"] == 2 and starts[-1]["step"] > 0
    assert "--checkpoint" in res.argv
    assert res.argv[res.argv.index("--checkpoint") + 1] == str(run / "epoch_1_whole.pt")
    # All epochs done: nothing is launched.
    again = tr.run_train(ws, "llm", tr.TrainOptions(trainer="upstream", device="cpu", resume=True))
    assert not again.launched and again.epochs_done == 3


def test_dry_run_touches_nothing(packed: Workspace) -> None:
    ws = packed
    run = ws.exp_dir("llm")
    before = sorted(p.name for p in run.iterdir())
    res = tr.run_train(
        ws, "llm", tr.TrainOptions(trainer="upstream", device="cpu", new=True, dry_run=True)
    )
    assert not res.launched and (res.run_dir / "launch.sh").is_file()
    assert sorted(p.name for p in run.iterdir()) == before
    assert not run.with_name("torch_ddp.1").exists()


def test_two_processes_gloo(packed: Workspace) -> None:
    """Rank handling, sharding, and checkpoints written by rank 0 only (issue 11, CPU part)."""
    ws = packed
    res = tr.run_train(
        ws,
        "llm",
        tr.TrainOptions(
            trainer="upstream",
            device="cpu",
            gpus=2,
            new=True,
            epochs=1,
            num_workers=1,
            log_interval=1,
        ),
    )
    assert res.launched and res.epochs_done == 1
    log = (ws.exp_dir("llm") / "train.log").read_text()
    assert "rank 0, world_size 2" in log and "rank 1, world_size 2" in log
    saves = re.findall(r"\[Rank (\d+)\] Checkpoint: save to checkpoint (\S+)", log)
    assert {r for r, _ in saves} == {"0"}
    assert sorted(Path(p).name for _, p in saves) == ["epoch_0_whole.pt", "init.pt"]
    # Each rank read its own half of the shards: fewer batches than the whole epoch has.
    batches = {
        rank: {int(b) for b in re.findall(rf"TRAIN Batch 0/(\d+) .* rank {rank}\b", log)}
        for rank in (0, 1)
    }
    shards, _ = tr.read_shards(ws.data_list("train"))
    whole = tr.batches_per_rank(shards, tr.FilterRules(), 500, world=1, workers=1)[0]
    assert batches[0] and batches[1]
    assert max(batches[0]) < whole and max(batches[1]) < whole
    assert len(shards) >= 4
    # The earlier run was kept, renamed.
    assert (ws.exp_dir("llm").with_name("torch_ddp.1") / "epoch_0_whole.pt").is_file()
    launch = json.loads(
        next(
            line
            for line in (ws.exp_dir("llm") / "train_log.jsonl").read_text().splitlines()
            if '"launch"' in line
        )
    )
    assert launch["argv"][launch["argv"].index("--nproc_per_node") + 1] == "2"
