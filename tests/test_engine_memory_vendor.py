"""Issue 17's memory modes in VoiceLab's engine (``--trainer voicelab``), tiny model, CPU.

Each mode trains two epochs through ``voicelab train --trainer voicelab --memory MODE``; its
checkpoints (``init.pt``, ``epoch_N_whole.pt``: LoRA merged) load strictly into upstream's model;
``--resume`` after one epoch gives bit for bit the weights of the uninterrupted run (LoRA: the
adapters and the frozen weights under them come back from ``resume/``); an out-of-memory step is
retried in smaller pieces of the engine's index batches, or stops with a hint naming the next
mode. Run with::

    pytest -m vendor tests/test_engine_memory_vendor.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# The espeak workspace and the runtime of the engine's vendor tests.
from test_engine_vendor import packed, rt  # noqa: F401
from test_memory_vendor import CHILD as LOAD_STRICT  # upstream's CosyVoice3 loads llm.pt strictly
from voicelab.workspace import Workspace

pytestmark = [pytest.mark.vendor, pytest.mark.slow]
torch = pytest.importorskip("torch")

#: Full is test_engine_vendor's. On the CPU, offload is upstream's Adam (the state is on the CPU
#: already); the GPU run uses torchao's CPUOffloadOptimizer.
MODES = [
    ("llm", "checkpointing+8bit+lora"),
    ("llm", "checkpointing"),
    ("llm", "8bit"),
    ("llm", "lora"),
    ("llm", "offload"),
    ("flow", "checkpointing+8bit"),
    ("flow", "offload"),
]


def _train_cli(ws: Workspace, kind: str, mode: str, *extra: str) -> Any:
    from click.testing import CliRunner

    from voicelab.cli.main import cli

    args = ["--workspace", str(ws.root), "train", kind, "--trainer", "voicelab"]
    args += ["--device", "cpu", "--memory", mode, *extra]
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def _dtypes(tree: Any) -> set[Any]:
    """Tensor dtypes anywhere in ``tree`` (bitsandbytes nests its quantized state)."""
    if torch.is_tensor(tree):
        return {tree.dtype}
    items = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, list) else []
    return set().union(*(_dtypes(v) for v in items))


def _weights(pt: Path) -> dict[str, Any]:
    sd = torch.load(pt, map_location="cpu", weights_only=True)
    return {k: v for k, v in sd.items() if k not in ("epoch", "step")}


@pytest.mark.parametrize(("kind", "mode"), MODES)
def test_mode_trains_resumes_exactly_and_saves_plain_checkpoints(
    rt: Any,  # noqa: F811
    kind: str,
    mode: str,
) -> None:
    pytest.importorskip("peft")
    pytest.importorskip("bitsandbytes")
    from voicelab.upstream.engine import model

    ws = rt.ws
    r = _train_cli(ws, kind, mode, "--epochs", "2", "--new")
    assert r.exit_code == 0, r.output
    run = ws.exp_dir(kind, "voicelab")
    log = (run / "train.log").read_text("utf-8")
    assert f"voicelab engine: memory mode {mode}, trainable" in log
    assert f"--memory {mode}" in (run / "launch.sh").read_text("utf-8")
    straight = _weights(run / "epoch_1_whole.pt")
    init = _weights(run / "init.pt")
    base = _weights(ws.base_model_dir / f"{kind}.pt")

    # Plain upstream checkpoints: the keys of the base model, strictly loadable.
    for sd in (init, straight):
        assert set(sd) == set(base)
        configs = model.load_configs(rt.cfg, kind, str(rt.qwen))
        configs[kind].load_state_dict(sd, strict=True)
    moved = [k for k in base if not torch.equal(straight[k], base[k])]
    assert moved, "training changed no weight"
    if "lora" in mode:
        assert all(torch.equal(init[k], base[k]) for k in base)  # fresh adapters merge to zero
        q = "llm.model.model.layers.0.self_attn.q_proj.weight"
        assert q in moved, "the adapters were not merged into the saved weights"
        emb = "llm.model.model.embed_tokens.weight"
        assert torch.equal(straight[emb], base[emb]), "LoRA left the frozen text embedding alone"
        assert (run / "resume" / "lora_base.pt").is_file()
    st = torch.load(run / "resume" / "epoch_1.pt", map_location="cpu", weights_only=True)
    assert st["memory"] == mode
    if "8bit" in mode:  # the saved moments really are 8-bit (bitsandbytes' state)
        assert torch.uint8 in _dtypes(st["optimizer"]["state"])
    if "lora" in mode:
        assert st["model_extra"]["lora"] and all("lora_" in k for k in st["model_extra"]["lora"])

    # One epoch, then --resume for the second: the same weights as the straight run.
    r = _train_cli(ws, kind, mode, "--epochs", "1", "--new")
    assert r.exit_code == 0, r.output
    r = _train_cli(ws, kind, mode, "--epochs", "2", "--resume")
    assert r.exit_code == 0, r.output
    assert "voicelab engine: exact resume from" in (run / "train.log").read_text("utf-8")
    resumed = _weights(run / "epoch_1_whole.pt")
    for k in straight:
        assert torch.equal(resumed[k], straight[k]), k
    if "lora" in mode:  # the merged llm.pt of a voice that upstream's CosyVoice3 loads
        from voicelab.stages.export import ExportOptions, run_export
        from voicelab.vendor import cosyvoice_runtime

        res = run_export(ws, ExportOptions(name="engine-lora", no_flow=True, overwrite=True))
        assert res.verify is not None and res.verify.ok, res.verify
        env = cosyvoice_runtime().env()
        env.pop("onnx_path", None)
        env["COSYVOICE_ORT_FORCE_CPU"] = "1"
        proc = subprocess.run(
            [sys.executable, "-c", LOAD_STRICT, str(res.voice_dir)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[7:])
        assert got == {"missing": [], "unexpected": [], "differ": []}


def test_resume_in_another_mode_keeps_weights_and_starts_a_new_optimizer(
    rt: Any,  # noqa: F811
) -> None:
    """A full run resumed with LoRA: the merged weights go on, the Adam state does not fit."""
    pytest.importorskip("peft")
    ws = rt.ws
    assert _train_cli(ws, "llm", "full", "--epochs", "1", "--new").exit_code == 0
    r = _train_cli(ws, "llm", "lora", "--epochs", "2", "--resume")
    assert r.exit_code == 0, r.output
    run = ws.exp_dir("llm", "voicelab")
    log = (run / "train.log").read_text("utf-8")
    assert "optimizer state new: it was saved in memory mode full, this run is lora" in log
    sd = _weights(run / "epoch_1_whole.pt")
    configs_llm = _weights(run / "epoch_0_whole.pt")
    assert set(sd) == set(configs_llm)


def test_oom_guard_splits_engine_batches_then_stops_with_the_next_mode(
    rt: Any,  # noqa: F811
) -> None:
    """The CPU has no memory cap: the step raises torch's OOM error itself above a frame limit,
    as a capped GPU would. The guard retries the engine's index batch in pieces (gradients of
    the whole batch, loss weighted by utterances), then stops with the next mode."""
    from voicelab.upstream import memory_modes as mm
    from voicelab.upstream.engine import batching, loop, model

    kind = "llm"
    configs = model.load_configs(rt.cfg, kind, str(rt.qwen))
    net, _, _ = model.build_model(configs, kind, rt.ws.base_model_dir / "llm.pt")
    net = net.float().train()
    ds = rt.llm.ds
    feed = loop.Batches(ds, kind, net, torch.device("cpu"), False, 32)
    lm = loop.LossModule(net, kind)
    frames = ds.frames
    idx = max(batching.epoch_batches(frames, 600, epoch=0), key=len)
    assert len(idx) >= 4
    params = sum(p.numel() for p in net.parameters())

    def zero() -> None:
        net.zero_grad(set_to_none=True)

    guard = mm.OomGuard(
        kind,
        params,
        ("checkpointing", "8bit"),
        zero,
        split=loop.split_idx,
        rows=len,
        frames=lambda b: sum(frames[i] for i in b),
    )
    limit = [sum(frames[i] for i in idx) - 1]
    seen: list[list[int]] = []

    def capped(batch: dict[str, Any], w: float) -> dict[str, Any]:
        n = int(batch["ids"].shape[0])
        got = seen[-1]
        assert n == len(got)
        if sum(frames[i] for i in got) > limit[0]:
            raise torch.OutOfMemoryError("CUDA out of memory (test cap)")
        return loop.train_step(lm, batch, 1, False, torch.device("cpu"), True, w)

    def make(piece: list[int]) -> dict[str, Any]:
        seen.append(piece)
        return feed.make(piece)

    out = loop.guarded_step(guard, idx, make, capped, world=1)
    assert guard.parts >= 2 and sorted(i for p in seen[1:] for i in p) == sorted(idx)
    assert set(out) == {"loss", "acc"} and torch.isfinite(out["loss"])
    assert any(p.grad is not None for p in net.parameters())
    limit[0] = min(frames[i] for i in idx) - 1  # not even one utterance fits
    with pytest.raises(mm.OutOfMemoryStop) as e:
        loop.guarded_step(guard, idx, make, capped, world=1)
    assert "continue with --resume --memory checkpointing+lora" in e.value.hint
    assert all(p.grad is None for p in net.parameters())  # the partial window was dropped
    # Several processes do not retry (a rank's piece count would desynchronize DDP): they stop.
    limit[0] = sum(frames[i] for i in idx) - 1
    with pytest.raises(mm.OutOfMemoryStop):
        loop.guarded_step(guard, idx, make, capped, world=2)
