"""Several processes and several "machines" with upstream's trainer, tiny model, CPU (gloo).

Issue 21's CPU part: rank handling and sharding proved by counting the utterances each rank
trained on (the launcher's ``VOICELAB_SEEN_UTTS`` record), and the multi-node path users take
when they outgrow one machine -- two ``voicelab train --nnodes 2`` launches on one host as node 0
and node 1 over 127.0.0.1, each with its own workspace copy, as two real machines would have.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from test_train_vendor import packed, tiny_model  # noqa: F401  (module fixtures)
from voicelab.stages import train as tr
from voicelab.upstream.launcher import SEEN_UTTS_ENV, read_seen_utts
from voicelab.workspace import Workspace

pytestmark = [pytest.mark.vendor, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _train_utts(ws: Workspace) -> set[str]:
    shards, _ = tr.read_shards(ws.data_list("train"))
    return {u.utt for s in shards for u in s.utts}


def test_two_processes_see_each_utterance_at_most_once(
    packed: Workspace,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen_dir = tmp_path / "seen"
    monkeypatch.setenv(SEEN_UTTS_ENV, str(seen_dir))
    res = tr.run_train(
        packed,
        "llm",
        tr.TrainOptions(
            device="cpu", gpus=2, new=True, epochs=2, num_workers=1, log_interval=1,
            trainer="upstream",  # VoiceLab's engine proves the same in test_engine_vendor.py
        ),
    )  # fmt: skip
    assert res.launched and res.epochs_done == 2
    seen = read_seen_utts(seen_dir)
    every = _train_utts(packed)
    for epoch in (0, 1):
        ranks = seen[("TRAIN", epoch)]
        assert set(ranks) == {0, 1}, "both ranks trained"
        r0, r1 = set(ranks[0]), set(ranks[1])
        # No utterance twice in an epoch, on one rank or across ranks.
        assert len(ranks[0]) == len(r0) and len(ranks[1]) == len(r1)
        assert not r0 & r1
        assert r0 | r1 <= every
        # Upstream's cosyvoice_join ends the epoch for every rank when the first runs out of
        # data, so a rank's last batches can go unseen; most of the epoch must be there.
        assert len(r0 | r1) >= len(every) // 2


@pytest.mark.parametrize("trainer", ["upstream", "voicelab"])
def test_two_nodes_over_loopback(packed: Workspace, tmp_path: Path, trainer: str) -> None:  # noqa: F811
    """Node 0 and node 1 as two torchrun launches on 127.0.0.1, one process each (gloo)."""
    node_ws = []
    for node in (0, 1):
        root = tmp_path / f"node{node}"
        shutil.copytree(packed.root, root, ignore=shutil.ignore_patterns("exp", "tensorboard"))
        node_ws.append(root)
    port = _free_port()
    env = dict(os.environ)
    env.pop("VOICELAB_WORKSPACE", None)
    procs = []
    for node, root in enumerate(node_ws):
        argv = [
            sys.executable, "-m", "voicelab", "-w", str(root), "train", "llm",
            "--device", "cpu", "--gpus", "1", "--epochs", "1", "--num-workers", "1",
            "--nnodes", "2", "--node-rank", str(node), "--master-addr", "127.0.0.1",
            "--master-port", str(port), "--trainer", trainer,
        ]  # fmt: skip
        log = (tmp_path / f"node{node}.log").open("w")
        procs.append((subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env), log))
    for p, log in procs:
        p.wait(timeout=900)
        log.close()
    for node, (p, _) in enumerate(procs):
        out = (tmp_path / f"node{node}.log").read_text()
        assert p.returncode == 0, out[-3000:]
    runs = [Workspace.open(r).exp_dir("llm", trainer if trainer == "voicelab" else "torch_ddp")
            for r in node_ws]  # fmt: skip
    text = [(p / "train.log").read_text() for p in runs]
    if trainer == "upstream":
        assert "rank 0, world_size 2" in text[0] and "rank 1, world_size 2" in text[1]
        # Only global rank 0 (node 0) writes checkpoints.
        assert re.search(r"\[Rank 0\] Checkpoint: save to checkpoint \S+epoch_0_whole.pt", text[0])
        assert "Checkpoint: save" not in text[1]
    # Only global rank 0 (node 0) writes checkpoints (node 0 cannot finish an epoch without
    # node 1: every step's gradients are all-reduced over both).
    assert (runs[0] / "epoch_0_whole.pt").is_file()
    assert not (runs[1] / "epoch_0_whole.pt").exists()
