"""Memory modes on upstream's own models, tiny model, CPU (issue 17's vendor tests).

Each mode trains a few batches of upstream's data pipeline with upstream's ``model(batch,
device)`` loss, saves, and resumes exactly (same weights as an uninterrupted run); gradient
checkpointing gives the same loss and gradients as none; a LoRA llm merges into a plain
``llm.pt`` that upstream's ``CosyVoice3`` loads strictly, whose logits equal the adapter model's
(fp32, max abs difference <= 1e-5), and that ``voicelab say`` speaks through ``voicelab export``.
Run with::

    pytest -m vendor tests/test_memory_vendor.py
"""

from __future__ import annotations

import copy
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# The tiny model and the espeak-ng packed workspace of the upstream-trainer tests.
from test_train_vendor import packed, tiny_model  # noqa: F401
from voicelab.workspace import Workspace

pytestmark = [pytest.mark.vendor, pytest.mark.slow]

torch = pytest.importorskip("torch")
BATCH_FRAMES = 600  # 2-4 clips per batch of the espeak set
LOGIT_ATOL = 1e-5
MODES = {
    "llm": ["full", "checkpointing", "8bit", "checkpointing+lora", "offload"],
    "flow": ["full", "checkpointing", "checkpointing+8bit", "offload"],
}


@pytest.fixture(scope="module")
def setup(packed: Workspace) -> dict[str, Any]:  # noqa: F811
    """Training YAML, upstream configs, and 4 fixed train batches per model."""
    pytest.importorskip("peft")
    pytest.importorskip("bitsandbytes")
    from voicelab.upstream import memory_train as mt
    from voicelab.vendor import cosyvoice_runtime

    rt = cosyvoice_runtime()
    sys.path[:0] = [str(p) for p in rt.import_paths if str(p) not in sys.path]
    base = packed.base_model_dir
    text = mt.sft_yaml_text(rt.root, base, BATCH_FRAMES)
    out: dict[str, Any] = {"ws": packed, "base": base, "rt": rt, "text": text}
    for kind in ("llm", "flow"):
        cfg = mt.load_configs(text, kind, base / "CosyVoice-BlankEN")
        random.seed(0)
        batches = []
        for b in mt.upstream_batches(cfg, packed.data_list("train")):
            batches.append(b)
            if len(batches) == 4:
                break
        assert len(batches) == 4
        out[kind] = {"cfg": cfg, "batches": batches}
    return out


def _trainer(setup: dict[str, Any], kind: str, mode: str, lr: float = 1e-3) -> Any:
    from voicelab.upstream import memory_train as mt

    model = copy.deepcopy(setup[kind]["cfg"][kind])
    mt.build_model({kind: model}, kind, setup["base"] / f"{kind}.pt")
    return mt.MemoryTrainer(model, kind, tuple(mode.split("+")), lr=lr, accum_grad=1)


def _trainable(tr: Any) -> dict[str, Any]:
    return {n: p.detach().clone() for n, p in tr.model.named_parameters() if p.requires_grad}


def _seed(n: int) -> None:
    random.seed(n)
    torch.manual_seed(n)


@pytest.mark.parametrize(("kind", "mode"), [(k, m) for k, modes in MODES.items() for m in modes])
def test_mode_trains_and_resumes_exactly(
    setup: dict[str, Any], kind: str, mode: str, tmp_path: Path
) -> None:
    batches = setup[kind]["batches"]
    _seed(1)
    tr = _trainer(setup, kind, mode)
    start = _trainable(tr)
    if "lora" in mode:
        names = list(start)
        assert all(
            "lora_" in n or n.split(".")[0] in ("speech_embedding", "llm_decoder") for n in names
        )
        assert tr.applied.trainable < tr.applied.total / 5
    else:
        assert tr.applied.trainable == tr.applied.total
    if "8bit" in mode:
        assert type(tr.optimizer).__module__.startswith("bitsandbytes")
    for b in batches[:2]:
        r = tr.train_batch(b)
        assert r.stepped and torch.isfinite(torch.tensor(r.loss)) and r.grad_norm > 0
    if "8bit" in mode:  # the moments really are 8-bit
        dtypes = {
            v.dtype for s in tr.optimizer.state.values() for v in s.values() if torch.is_tensor(v)
        }
        assert torch.uint8 in dtypes
    moved = max(float((p - start[n]).abs().max()) for n, p in _trainable(tr).items())
    assert moved > 0, "training changed no weight"
    ckpt = tmp_path / "train_state.pt"
    tr.save(ckpt)
    tail = [tr.train_batch(b).loss for b in batches[2:]]
    after = _trainable(tr)

    _seed(99)  # the restored RNG states must win over whatever the process has
    tr2 = _trainer(setup, kind, mode)
    tr2.load(ckpt)
    assert tr2.step == 2
    tail2 = [tr2.train_batch(b).loss for b in batches[2:]]
    assert tail2 == pytest.approx(tail, rel=1e-6, abs=1e-7)
    for n, p in _trainable(tr2).items():
        torch.testing.assert_close(p, after[n], rtol=1e-6, atol=1e-7, msg=n)
    assert tr2.step == 4
    # Whatever the mode, what is saved for upstream is a plain state dict of its class.
    from voicelab.upstream import memory_modes as mm

    fresh = copy.deepcopy(setup[kind]["cfg"][kind])
    fresh.load_state_dict(mm.plain_state_dict(tr2.model), strict=True)


@pytest.mark.parametrize("kind", ["llm", "flow"])
def test_checkpointing_changes_nothing_but_memory(setup: dict[str, Any], kind: str) -> None:
    batch = setup[kind]["batches"][0]
    grads = {}
    for mode in ("full", "checkpointing"):
        tr = _trainer(setup, kind, mode)
        if mode == "checkpointing":
            if kind == "llm":
                assert tr.model.llm.model.model.gradient_checkpointing
            else:
                blocks = tr.model.decoder.estimator.transformer_blocks
                assert all(getattr(b, "_voicelab_ckpt", False) for b in blocks)
        _seed(5)
        out = tr.model(batch, torch.device("cpu"))
        out["loss"].backward()
        grads[mode] = (
            out["loss"].item(),
            {n: p.grad.clone() for n, p in tr.model.named_parameters() if p.grad is not None},
        )
    assert grads["checkpointing"][0] == pytest.approx(grads["full"][0], rel=1e-6)
    for n, g in grads["full"][1].items():
        torch.testing.assert_close(grads["checkpointing"][1][n], g, rtol=1e-4, atol=1e-6, msg=n)


def _logits(llm: Any, batch: dict[str, Any]) -> Any:
    """llm_decoder(Qwen2(text embeddings + speech embeddings)) for the batch's first utterance."""
    t = batch["text_token"][:1, : int(batch["text_token_len"][0])]
    s = batch["speech_token"][:1, : int(batch["speech_token_len"][0])]
    xs = torch.cat([llm.llm.model.model.embed_tokens(t), llm.speech_embedding(s)], dim=1)
    hidden, _ = llm.llm(xs, torch.tensor([xs.shape[1]]))
    return llm.llm_decoder(hidden)


CHILD = r"""
import json, sys
import torch
from cosyvoice.cli.cosyvoice import CosyVoice3

m = CosyVoice3(sys.argv[1])
ours = torch.load(sys.argv[1] + "/llm.pt", weights_only=True)
loaded = m.model.llm.state_dict()
print("RESULT " + json.dumps({
    "missing": sorted(set(loaded) - set(ours)), "unexpected": sorted(set(ours) - set(loaded)),
    "differ": [k for k, v in ours.items() if k in loaded and not torch.equal(loaded[k].cpu(), v)],
}))
"""


def test_lora_merges_into_a_plain_llm_that_upstream_loads_and_say_speaks(
    setup: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from voicelab.cli.main import cli
    from voicelab.stages.export import ExportOptions, run_export
    from voicelab.upstream import memory_modes as mm
    from voicelab.upstream import memory_train as mt

    ws, base = setup["ws"], setup["base"]
    _seed(3)
    # A small lr: the tiny model's stop-token rows of llm_decoder start at zero (so a random
    # LLM speaks to its length limit) and must stay near it for `say` to produce audio.
    tr = _trainer(setup, "llm", "checkpointing+lora", lr=1e-4)
    for b in setup["llm"]["batches"][:3]:
        tr.train_batch(b)
    merged = mm.merged_llm_state_dict(tr.model)
    base_sd = torch.load(base / "llm.pt", weights_only=True)
    assert set(merged) == set(base_sd)
    assert all(merged[k].shape == base_sd[k].shape for k in base_sd)
    q = "llm.model.model.layers.0.self_attn.q_proj.weight"
    assert float((merged[q] - base_sd[q]).abs().max()) > 1e-6, "the adapters were not merged in"

    # A plain upstream llm with the merged weights (strict) gives the adapter model's logits.
    plain = mt.build_model({"llm": copy.deepcopy(setup["llm"]["cfg"]["llm"])}, "llm", None)
    plain.load_state_dict(merged, strict=True)
    tr.model.eval()
    plain.eval()
    batch = setup["llm"]["batches"][3]
    with torch.no_grad():
        ours, theirs = _logits(tr.model, batch), _logits(plain, batch)
        unmerged = _logits(
            mt.build_model(
                {"llm": copy.deepcopy(setup["llm"]["cfg"]["llm"])}, "llm", base / "llm.pt"
            ).eval(),
            batch,
        )
    diff = float((ours - theirs).abs().max())
    assert diff <= LOGIT_ATOL, diff
    assert float((ours - unmerged).abs().max()) > 10 * LOGIT_ATOL  # training changed the output
    tr.model.train()

    # The run dir as upstream's trainer leaves it -> voicelab export -> upstream loads it.
    run = ws.exp_dir("llm")
    if run.exists():
        import shutil

        shutil.rmtree(run)
    pt = tr.save_upstream_checkpoint(run, 0, {"loss": 5.0, "acc": 0.1})
    assert pt.name == "epoch_0_whole.pt"
    res = run_export(ws, ExportOptions(name="lora-voice", overwrite=True))
    assert res.verify is not None and res.verify.ok
    vd = res.voice_dir
    env = setup["rt"].env()
    env.pop("onnx_path", None)
    env["COSYVOICE_ORT_FORCE_CPU"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(vd)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[7:])
    assert got == {"missing": [], "unexpected": [], "differ": []}

    monkeypatch.setenv("VOICELAB_WORKSPACE", str(tmp_path / "no-workspace"))
    out = tmp_path / "say"
    args = ["say", "Hello there.", "--model-dir", str(vd), "--out", str(out), "--seed", "1"]
    args += ["--speaker", ws.speaker, "--prompt-text", ""]
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    import soundfile as sf

    wavs = sorted(out.glob("*.wav"))
    assert wavs
    audio, sr = sf.read(wavs[0], dtype="float32")
    assert sr == 24000 and len(audio) > 0.3 * sr and abs(audio).max() > 0


def test_oom_guard_retries_smaller_then_stops_with_the_next_mode(setup: dict[str, Any]) -> None:
    """CPU has no memory cap, so the step below raises torch's OOM error itself for batches over
    a frame limit, as a capped GPU would; the guard must split and carry on, then stop."""
    from voicelab.upstream import memory_modes as mm

    tr = _trainer(setup, "llm", "checkpointing+8bit")
    batch = setup["llm"]["batches"][2]
    n = len(batch["utts"])
    assert n >= 2
    per_utt = max(mm.batch_frames(p) for p in mm.split_batch(batch, n))
    limit = [mm.batch_frames(batch) - 1]
    seen: list[int] = []

    def capped(b: dict[str, Any], w: float) -> dict[str, Any]:
        seen.append(len(b["utts"]))
        if mm.batch_frames(b) > limit[0]:
            raise torch.OutOfMemoryError("CUDA out of memory (test cap)")
        return tr._forward_backward(b, w)

    tr.guard.step(batch, capped)
    assert tr.guard.parts >= 2 and sum(seen[1:]) == n  # the whole batch, in pieces
    assert any(p.grad is not None for p in tr.model.parameters())
    limit[0] = per_utt - 1  # not even one utterance fits
    with pytest.raises(mm.OutOfMemoryStop) as e:
        tr.guard.step(batch, capped)
    assert "--resume --memory checkpointing+lora" in e.value.hint
    assert all(p.grad is None for p in tr.model.parameters())  # the partial window was dropped


def test_split_batch_keeps_every_row_once(setup: dict[str, Any]) -> None:
    from voicelab.upstream import memory_modes as mm

    batch = setup["flow"]["batches"][0]
    n = len(batch["utts"])
    parts = mm.split_batch(batch, 2)
    assert sum(len(p["utts"]) for p in parts) == n
    assert [u for p in parts for u in p["utts"]] == batch["utts"]
    for p in parts:
        assert p["speech_feat"].shape[1] == int(p["speech_feat_len"].max())
        assert p["speech_token"].shape[0] == len(p["utts"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_max_vram_caps_allocations() -> None:
    from voicelab.upstream import memory_modes as mm

    frac = mm.cap_vram(1.5, "cuda")  # 1 GiB for tensors, 0.5 for the context
    assert frac is not None and 0 < frac < 1
    x = torch.empty(int(0.8 * (1 << 30)), dtype=torch.uint8, device="cuda")
    with pytest.raises(torch.OutOfMemoryError):
        torch.empty(int(0.4 * (1 << 30)), dtype=torch.uint8, device="cuda")
    del x
    torch.cuda.set_per_process_memory_fraction(1.0)


def test_upstream_trainer_runs_the_modes_and_saves_plain_checkpoints(
    setup: dict[str, Any],
) -> None:
    """``voicelab train --memory ...`` with upstream's trainer: the launcher applies the modes
    (checkpointing, LoRA, bitsandbytes' optimizer) and every checkpoint is a plain llm.pt."""
    from voicelab.stages import train as tr

    ws, base = setup["ws"], setup["base"]
    opts = tr.TrainOptions(
        device="cpu", epochs=1, new=True, memory="lora+checkpointing+8bit", trainer="upstream"
    )
    res = tr.run_train(ws, "llm", opts)
    assert res.launched and res.epochs_done == 1
    assert res.argv[res.argv.index("--memory") + 1] == "checkpointing+8bit+lora"
    log = (res.run_dir / "train.log").read_text("utf-8")
    assert "voicelab launcher: memory mode checkpointing+8bit+lora, trainable" in log
    base_sd = torch.load(base / "llm.pt", weights_only=True)
    for name in ("init.pt", "epoch_0_whole.pt"):
        sd = torch.load(res.run_dir / name, weights_only=True)
        assert set(sd) - {"epoch", "step"} == set(base_sd), name
    sd = torch.load(res.run_dir / "epoch_0_whole.pt", weights_only=True)
    q = "llm.model.model.layers.1.mlp.down_proj.weight"
    assert not torch.equal(sd[q], base_sd[q]), "the merged adapters changed no weight"
    emb = "llm.model.model.embed_tokens.weight"
    assert torch.equal(sd[emb], base_sd[emb]), "LoRA must leave the frozen text embedding alone"
