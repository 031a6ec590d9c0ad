"""``voicelab export``: assembly, hard links, stale files, spk2info, provenance, verification,
locking, and bad input that must leave the previous voice as it was.

The base model dir is synthetic but laid out as Fun-CosyVoice3-0.5B is (tiny weights; ONNX and
tokenizer files are opaque bytes, which export never parses); checkpoints and their yamls are
written as upstream's torch_ddp ``save_model`` writes them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from tmpfs_mount import mounted_tmpfs
from voicelab.errors import ModelError, VoiceLabError
from voicelab.fsutil import sha256_file
from voicelab.stages import checkpoints as ck
from voicelab.stages.export import ExportOptions, check_dir, run_export, verify_voice_dir
from voicelab.state import load_record
from voicelab.workspace import Workspace

LLM = {
    "llm.model.model.embed_tokens.weight": (256, 128),
    "llm.model.model.norm.weight": (128,),
    "speech_embedding.weight": (64, 128),
    "llm_decoder.weight": (64, 128),
}
FLOW = {"decoder.estimator.proj.weight": (64, 64), "spk_embed_affine_layer.weight": (80, 192)}
HIFT = {"conv_pre.weight": (32, 80, 5)}
SMALL_FILES = {
    "cosyvoice3.yaml": b"# tiny cosyvoice3.yaml\nsample_rate: 24000\n",
    "campplus.onnx": b"onnx-campplus" * 100,
    "speech_tokenizer_v3.onnx": b"onnx-tokenizer" * 100,
    "flow.decoder.estimator.fp32.onnx": b"onnx-estimator" * 100,
    "CosyVoice-BlankEN/config.json": b'{"model_type": "qwen2"}',
    "CosyVoice-BlankEN/vocab.json": b"{}",
    "CosyVoice-BlankEN/merges.txt": b"#version: 0.2\n",
    "CosyVoice-BlankEN/tokenizer_config.json": b"{}",
    "CosyVoice-BlankEN/model.safetensors": b"\0" * 512,
    # Derived files upstream generates on first use and then silently reuses:
    "vllm/config.json": b"{}",
    "flow.decoder.estimator.fp32.mygpu.plan": b"plan",
    # A download cache (hidden): never part of a voice.
    ".cache/huggingface/download/llm.pt.metadata": b"meta",
}


def weights(shapes: dict[str, tuple], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randint(-64, 64, s, generator=g).float() / 8 for k, s in shapes.items()}


def make_base(d: Path) -> Path:
    for rel, data in SMALL_FILES.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)
    torch.save(weights(LLM, 0), d / "llm.pt")
    torch.save(weights(FLOW, 0), d / "flow.pt")
    torch.save(weights(HIFT, 0), d / "hift.pt")
    return d


def write_ckpt(run: Path, name: str, sd: dict, epoch: int, step: int, loss: float) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    torch.save({**sd, "epoch": epoch, "step": step}, run / f"{name}.pt")
    info = {
        "optim": "adam",
        "optim_conf": {"lr": 1e-5},
        "max_epoch": 4,
        "train_engine": "torch_ddp",
        "epoch": epoch,
        "step": step,
        "tag": "CV",
        "loss_dict": {"loss": loss, "acc": 0.5},
        "grad_norm": torch.tensor(0.5),
        "save_time": "25/11/2026 10:00:00",
    }
    (run / f"{name}.yaml").write_text(yaml.dump(info), encoding="utf-8")
    return run / f"{name}.pt"


def train_run(ws: Workspace, model: str, shapes: dict, epochs: int = 4) -> None:
    run = ws.exp_dir(model)
    write_ckpt(run, "init", weights(shapes, 0), 0, 0, 9.0)
    for e in range(epochs):
        write_ckpt(run, f"epoch_{e}_whole", weights(shapes, 100 + e), e, 10 * (e + 1), 3.0 - e / 10)


EMB = [float(i) / 100 for i in range(192)]


def make_ws(root: Path, base_dir: Path | None = None) -> Workspace:
    ws = Workspace.init(root, "spk1")
    if base_dir is None:
        make_base(ws.base_model_dir)
    else:
        ws.set_option("model", "base_dir", str(base_dir))
    ws.split_dir("train").mkdir(parents=True, exist_ok=True)
    # As upstream's extract_embedding.py writes it: a plain list of 192 floats per speaker.
    torch.save({"spk1": EMB}, ws.split_dir("train") / "spk2embedding.pt")
    train_run(ws, "llm", LLM)
    return ws


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return make_ws(tmp_path / "ws")


def snapshot(d: Path) -> dict[str, str]:
    return {
        p.relative_to(d).as_posix(): sha256_file(p) for p in sorted(d.rglob("*")) if p.is_file()
    }


def leftovers(ws: Workspace) -> list[str]:
    return [p.name for p in ws.pretrained_dir.iterdir() if p.name.startswith(".")]


def test_export_assembles_a_voice_dir(ws: Workspace) -> None:
    base = ws.base_model_dir
    base_before = snapshot(base)
    res = run_export(ws)
    vd = ws.voice_dir
    assert res.voice_dir == vd and vd.name == "Fun-CosyVoice3-0.5B-spk1-sft"
    assert [c.name for c in res.llm] == ["epoch_1_whole", "epoch_2_whole", "epoch_3_whole"]
    assert res.flow == [] and res.llm_rule == "last:3"
    # llm.pt: the exact average, a plain state dict.
    llm = torch.load(vd / "llm.pt", weights_only=True)
    expect = ck.average([ws.exp_dir("llm") / f"epoch_{e}_whole.pt" for e in (1, 2, 3)])
    assert set(llm) == set(LLM)
    assert all(torch.equal(llm[k], expect[k]) for k in LLM)
    # Every other base file is a hard link (same inode); flow.pt is the base's.
    for rel in (
        "flow.pt",
        "hift.pt",
        "cosyvoice3.yaml",
        "campplus.onnx",
        "speech_tokenizer_v3.onnx",
        "flow.decoder.estimator.fp32.onnx",
        "CosyVoice-BlankEN/model.safetensors",
        "CosyVoice-BlankEN/config.json",
    ):
        assert (vd / rel).stat().st_ino == (base / rel).stat().st_ino, rel
    assert (vd / "llm.pt").stat().st_ino != (base / "llm.pt").stat().st_ino
    assert res.linked == 11 and res.copied == 0
    # Stale derived files of the base llm/flow and hidden caches are left out.
    assert not (vd / "vllm").exists()
    assert not list(vd.glob("*.plan"))
    assert not (vd / ".cache").exists()
    assert sorted(res.removed) == ["flow.decoder.estimator.fp32.mygpu.plan", "vllm/config.json"]
    # spk2info.pt as inference_sft reads it.
    info = torch.load(vd / "spk2info.pt", weights_only=True)
    assert list(info) == ["spk1"] and list(info["spk1"]) == ["embedding"]
    emb = info["spk1"]["embedding"]
    assert emb.dtype == torch.float32 and tuple(emb.shape) == (1, 192)
    assert torch.equal(emb[0], torch.tensor(EMB, dtype=torch.float32))
    # Provenance.
    prov = json.loads((vd / "voicelab.json").read_text())
    assert prov["speaker"] == "spk1" and prov["speakers"] == ["spk1"]
    files = prov["base_model"]["files"]
    assert files["cosyvoice3.yaml"]["sha256"] == sha256_file(base / "cosyvoice3.yaml")
    assert files["llm.pt"]["bytes"] == (base / "llm.pt").stat().st_size
    assert ".cache/huggingface/download/llm.pt.metadata" not in files
    assert [c["name"] for c in prov["llm"]["checkpoints"]] == [c.name for c in res.llm]
    assert prov["llm"]["checkpoints"][-1]["cv_loss"] == pytest.approx(2.7)
    assert prov["llm"]["training"]["optim"] == "adam"
    assert prov["flow"] == {"base": True}
    assert prov["data"]["spk2embedding_sha256"] and prov["data"]["fingerprint"]
    assert "commit" in prov["vendor"] and prov["created"]
    # Verified, recorded, base untouched, nothing left behind.
    assert res.verify is not None and res.verify.ok and res.verify.speakers == ["spk1"]
    rec = load_record(ws, "export")
    assert rec is not None and rec.status == "done" and rec.outputs == [str(vd)]
    assert snapshot(base) == base_before
    assert leftovers(ws) == []
    assert check_dir(vd).ok


def test_trained_flow_replaces_flow_and_its_onnx(ws: Workspace) -> None:
    train_run(ws, "flow", FLOW, epochs=2)
    res = run_export(ws, ExportOptions(flow_select="best-cv:1"))
    vd = ws.voice_dir
    assert [c.name for c in res.flow] == ["epoch_1_whole"]
    flow = torch.load(vd / "flow.pt", weights_only=True)
    assert all(torch.equal(flow[k], weights(FLOW, 101)[k]) for k in FLOW)
    assert not (vd / "flow.decoder.estimator.fp32.onnx").exists()
    assert "flow.decoder.estimator.fp32.onnx" in res.removed
    prov = json.loads((vd / "voicelab.json").read_text())
    assert prov["flow"]["rule"] == "best-cv:1"
    # Only step checkpoints of flow: say what to do instead of guessing.
    for p in ws.exp_dir("flow").glob("epoch_*_whole.*"):
        p.unlink()
    write_ckpt(ws.exp_dir("flow"), "epoch_0_step_5", weights(FLOW, 7), 0, 5, 2.0)
    with pytest.raises(ModelError, match="only step checkpoints") as e:
        run_export(ws, ExportOptions(overwrite=True))
    assert "--no-flow" in e.value.one_line()
    res = run_export(ws, ExportOptions(flow_select="step:5", overwrite=True))
    assert [c.name for c in res.flow] == ["epoch_0_step_5"]
    # --no-flow keeps the base flow although flow was trained.
    res = run_export(ws, ExportOptions(no_flow=True, overwrite=True))
    assert res.flow == []
    assert (vd / "flow.pt").stat().st_ino == (ws.base_model_dir / "flow.pt").stat().st_ino
    assert (vd / "flow.decoder.estimator.fp32.onnx").is_file()


def test_locked_epoch_is_the_default_selection(ws: Workspace) -> None:
    runner = CliRunner()
    from voicelab.cli.main import cli

    out = runner.invoke(cli, ["-w", str(ws.root), "checkpoints", "--lock", "1"])
    assert out.exit_code == 0, out.output
    assert Workspace.open(ws.root).config.locked_epoch == 1
    assert "locked_epoch = 1" in ws.config_file.read_text()
    ws = Workspace.open(ws.root)
    res = run_export(ws)
    assert [c.name for c in res.llm] == ["epoch_1_whole"] and res.llm_rule == "epochs:1"
    llm = torch.load(ws.voice_dir / "llm.pt", weights_only=True)
    assert set(llm) == set(LLM)  # epoch/step stripped
    assert all(torch.equal(llm[k], weights(LLM, 101)[k]) for k in LLM)
    # An explicit rule wins over the lock.
    res = run_export(ws, ExportOptions(llm_select="epochs:3", overwrite=True))
    assert [c.name for c in res.llm] == ["epoch_3_whole"]
    # A locked epoch whose checkpoint is gone is an error, not a silent fallback.
    for p in ws.exp_dir("llm").glob("epoch_1_whole.*"):
        p.rename(p.with_name("moved-" + p.name))
    with pytest.raises(ModelError, match="epoch 1 is locked but"):
        run_export(ws, ExportOptions(overwrite=True))
    out = runner.invoke(cli, ["-w", str(ws.root), "checkpoints", "--lock", "9"])
    assert isinstance(out.exception, ModelError) and "no epoch_9_whole.pt" in str(out.exception)
    out = runner.invoke(cli, ["-w", str(ws.root), "checkpoints", "--unlock"])
    assert out.exit_code == 0 and Workspace.open(ws.root).config.locked_epoch is None


def test_checkpoints_command_table_and_json(ws: Workspace) -> None:
    from voicelab.cli.main import cli

    runner = CliRunner()
    out = runner.invoke(cli, ["-w", str(ws.root), "checkpoints", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["rule"] == "last:3"
    assert [c["name"] for c in data["checkpoints"] if c["chosen"]] == [
        "epoch_1_whole",
        "epoch_2_whole",
        "epoch_3_whole",
    ]
    assert data["checkpoints"][0]["name"] == "init" and not data["checkpoints"][0]["chosen"]
    out = runner.invoke(cli, ["-w", str(ws.root), "checkpoints", "--select", "best-cv:1"])
    assert out.exit_code == 0, out.output
    assert "epoch_3_whole.pt" in out.output and "2.7000" in out.output
    out = runner.invoke(cli, ["-w", str(ws.root), "checkpoints", "flow"])
    assert out.exit_code == 0 and "no checkpoints" in out.output


def test_existing_voice_refused_then_overwritten_with_speakers_merged(ws: Workspace) -> None:
    run_export(ws, ExportOptions(llm_select="epochs:0"))
    vd = ws.voice_dir
    before = snapshot(vd)
    with pytest.raises(ModelError, match="already exists") as e:
        run_export(ws)
    assert "--overwrite" in e.value.one_line()
    assert snapshot(vd) == before
    # The voice dir meanwhile holds another SFT speaker, a zero-shot speaker and stale files.
    other = torch.ones(1, 192)
    zero_shot = {"prompt_text": torch.tensor([[1, 2]]), "llm_embedding": torch.ones(1, 192)}
    spk2info = torch.load(vd / "spk2info.pt", weights_only=True)
    spk2info.update({"other": {"embedding": other}, "zs": zero_shot})
    torch.save(spk2info, vd / "spk2info.pt")
    (vd / "vllm").mkdir()
    (vd / "vllm" / "model.safetensors").write_bytes(b"old llm")
    (vd / "flow.decoder.estimator.fp16.mygpu.plan").write_bytes(b"old plan")
    res = run_export(ws, ExportOptions(overwrite=True))
    assert res.speakers == ["other", "spk1", "zs"]
    info = torch.load(vd / "spk2info.pt", weights_only=True)
    assert torch.equal(info["other"]["embedding"], other)
    assert torch.equal(info["zs"]["prompt_text"], zero_shot["prompt_text"])
    assert not (vd / "vllm").exists() and not list(vd.glob("*.plan"))
    assert "vllm/model.safetensors" in res.removed
    assert sha256_file(vd / "llm.pt") != before["llm.pt"]
    assert leftovers(ws) == []


def test_verification_catches_shape_missing_and_truncated(ws: Workspace) -> None:
    run_export(ws)
    vd = ws.voice_dir
    assert verify_voice_dir(vd).ok
    # A wrong shape in a new state dict.
    llm = torch.load(vd / "llm.pt", weights_only=True)
    good = (vd / "llm.pt").read_bytes()
    llm["llm_decoder.weight"] = torch.zeros(65, 128)
    torch.save(llm, vd / "llm.pt")
    rep = verify_voice_dir(vd)
    assert any("llm_decoder.weight is (65, 128), the base has (64, 128)" in p for p in rep.problems)
    with pytest.raises(ModelError, match="fails verification") as e:
        check_dir(vd)
    assert "\n" not in e.value.one_line()
    # Extra epoch/step keys: not loadable strictly.
    llm["llm_decoder.weight"] = torch.zeros(64, 128)
    torch.save({**llm, "epoch": 3}, vd / "llm.pt")
    assert any("not a plain state dict" in p for p in verify_voice_dir(vd).problems)
    # A truncated llm.pt.
    (vd / "llm.pt").write_bytes(good[: len(good) // 3])
    assert any(p.startswith("llm.pt does not load") for p in verify_voice_dir(vd).problems)
    (vd / "llm.pt").write_bytes(good)
    assert verify_voice_dir(vd).ok
    # A missing file (unlinking the link leaves the base alone).
    (vd / "hift.pt").unlink()
    assert "hift.pt missing" in verify_voice_dir(vd).problems
    assert (ws.base_model_dir / "hift.pt").is_file()
    os.link(ws.base_model_dir / "hift.pt", vd / "hift.pt")
    (vd / "CosyVoice-BlankEN" / "vocab.json").unlink()
    assert "CosyVoice-BlankEN/vocab.json missing" in verify_voice_dir(vd).problems
    os.link(ws.base_model_dir / "CosyVoice-BlankEN/vocab.json", vd / "CosyVoice-BlankEN/vocab.json")
    # A truncated copy of a base file.
    data = (vd / "campplus.onnx").read_bytes()
    (vd / "campplus.onnx").unlink()
    (vd / "campplus.onnx").write_bytes(data[:100])
    assert any(p.startswith("campplus.onnx has 100 bytes") for p in verify_voice_dir(vd).problems)
    (vd / "campplus.onnx").write_bytes(data)
    # spk2info with a wrong embedding shape, and without the speaker.
    torch.save({"spk1": {"embedding": torch.zeros(192)}}, vd / "spk2info.pt")
    assert any("not a float (1, 192)" in p for p in verify_voice_dir(vd).problems)
    torch.save({"x": {"embedding": torch.zeros(1, 192)}}, vd / "spk2info.pt")
    assert "spk2info.pt has no speaker 'spk1'" in verify_voice_dir(vd).problems
    torch.save({"spk1": {"embedding": torch.zeros(1, 192)}}, vd / "spk2info.pt")
    assert verify_voice_dir(vd).ok
    # Without the base dir, sizes recorded in voicelab.json still catch a truncated copy.
    (vd / "campplus.onnx").write_bytes(data[:50])
    os.rename(ws.base_model_dir, ws.base_model_dir.with_name("moved"))
    assert any("campplus.onnx has 50 bytes" in p for p in verify_voice_dir(vd).problems)


def test_check_command(ws: Workspace) -> None:
    run_export(ws)
    env = {**os.environ, "VOICELAB_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-m", "voicelab", "-w", str(ws.root), "export", "--check"]
    ok = subprocess.run([*cmd, str(ws.voice_dir)], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "ok:" in ok.stdout and "speakers: spk1" in ok.stdout
    (ws.voice_dir / "hift.pt").unlink()
    bad = subprocess.run([*cmd, str(ws.voice_dir)], capture_output=True, text=True, env=env)
    assert bad.returncode == 1
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0] and "hift.pt missing" in lines[0]


# ---- bad input: one line, nothing of the previous voice lost ---------------------------------
def _previous_voice(ws: Workspace) -> dict[str, str]:
    run_export(ws, ExportOptions(llm_select="epochs:0"))
    return snapshot(ws.voice_dir)


def _fails(ws: Workspace, before: dict[str, str], match: str, **opts: object) -> VoiceLabError:
    with pytest.raises(VoiceLabError, match=match) as e:
        run_export(ws, ExportOptions(overwrite=True, **opts))  # type: ignore[arg-type]
    assert "\n" not in e.value.one_line()
    assert snapshot(ws.voice_dir) == before
    assert leftovers(ws) == []
    return e.value


def test_no_checkpoints(ws: Workspace) -> None:
    before = _previous_voice(ws)
    for p in ws.exp_dir("llm").glob("epoch_*"):
        p.unlink()
    _fails(ws, before, "no epoch checkpoints in")
    _fails(ws, before, "no step checkpoints", llm_select="step:last:2")


def test_checkpoints_of_another_model(ws: Workspace) -> None:
    before = _previous_voice(ws)
    wrong = weights({**LLM, "speech_embedding.weight": (70, 128)}, 5)
    write_ckpt(ws.exp_dir("llm"), "epoch_4_whole", wrong, 4, 50, 2.0)
    err = _fails(ws, before, "does not fit the base llm.pt", llm_select="epochs:4")
    assert "speech_embedding.weight is (70, 128)" in err.message
    write_ckpt(ws.exp_dir("llm"), "epoch_4_whole", weights(FLOW, 5), 4, 50, 2.0)
    err = _fails(ws, before, "does not fit the base llm.pt: 2 unknown keys", llm_select="epochs:4")
    assert "different model" in err.one_line()
    # Mixed within the selection: caught while averaging, before anything is swapped in.
    write_ckpt(ws.exp_dir("llm"), "epoch_4_whole", wrong, 4, 50, 2.0)
    _fails(ws, before, "checkpoints of different models", llm_select="epochs:3,4")


def test_truncated_checkpoint(ws: Workspace) -> None:
    before = _previous_voice(ws)
    p = ws.exp_dir("llm") / "epoch_3_whole.pt"
    p.write_bytes(p.read_bytes()[:1000])
    _fails(ws, before, "truncated or corrupt")


def test_missing_or_incomplete_base_model(ws: Workspace) -> None:
    before = _previous_voice(ws)
    (ws.base_model_dir / "hift.pt").unlink()
    _fails(ws, before, r"incomplete: hift.pt missing")
    os.rename(ws.base_model_dir, ws.base_model_dir.with_name("elsewhere"))
    err = _fails(ws, before, "no base model at")
    assert "voicelab download" in err.one_line()


def test_missing_speaker_embedding(ws: Workspace) -> None:
    before = _previous_voice(ws)
    torch.save({"someone": EMB}, ws.split_dir("train") / "spk2embedding.pt")
    _fails(ws, before, "no embedding for speaker 'spk1'")
    (ws.split_dir("train") / "spk2embedding.pt").unlink()
    _fails(ws, before, "no speaker embedding at")


def test_interrupted_swap_is_undone(ws: Workspace) -> None:
    before = _previous_voice(ws)
    vd = ws.voice_dir
    # As if killed between the two renames of a swap: the voice moved aside, staging left.
    os.rename(vd, vd.with_name(f".{vd.name}.old-1-1"))
    (ws.pretrained_dir / f".{vd.name}.staging-x").mkdir()
    with pytest.raises(ModelError, match="already exists"):
        run_export(ws)
    assert snapshot(vd) == before and leftovers(ws) == []


@pytest.fixture
def tmpfs(tmp_path: Path):
    """A real 4 MB filesystem (root only): ENOSPC for real, and a second device (no links)."""
    with mounted_tmpfs(tmp_path / "tmpfs", "4m") as mnt:
        yield mnt


def test_disk_full_while_writing_llm(tmpfs: Path) -> None:
    ws = make_ws(tmpfs / "ws")  # base model, checkpoints and voice on the 4 MB disk
    before = _previous_voice(ws)
    free = os.statvfs(tmpfs).f_bavail * os.statvfs(tmpfs).f_frsize
    llm_size = (ws.base_model_dir / "llm.pt").stat().st_size
    assert free > llm_size  # the first export fitted; now fill the disk but 32 KB
    with open(tmpfs / "filler", "wb") as f:
        f.write(b"\0" * (free - 32 * 1024))
    err = _fails(ws, before, "disk full while writing", llm_select="epochs:3")
    assert "llm.pt" in err.message and "previous voice is kept" in err.one_line()
    assert not [p for p in ws.voice_dir.iterdir() if p.name.startswith(".")]
    (tmpfs / "filler").unlink()
    res = run_export(ws, ExportOptions(llm_select="epochs:3", overwrite=True))
    assert res.verify is not None and res.verify.ok


def test_base_on_another_disk_is_copied(tmp_path: Path, tmpfs: Path) -> None:
    base = make_base(tmpfs / "Fun-CosyVoice3-0.5B")
    ws = make_ws(tmp_path / "ws", base_dir=base)
    res = run_export(ws)
    assert res.linked == 0 and res.copied == 11
    assert (ws.voice_dir / "hift.pt").read_bytes() == (base / "hift.pt").read_bytes()
    assert verify_voice_dir(ws.voice_dir).ok


def test_report_listing_marks_locked_chosen_and_exported(ws: Workspace) -> None:
    run_export(ws, ExportOptions(llm_select="epochs:0,1"))
    ws.config.locked_epoch = 2
    ws.save()
    rows = {r["name"]: r for r in ck.list_checkpoints(Workspace.open(ws.root), "llm")}
    assert rows["epoch_2_whole"]["locked"] and rows["epoch_2_whole"]["chosen"]
    assert [n for n, r in rows.items() if r["chosen"]] == ["epoch_2_whole"]
    assert [n for n, r in rows.items() if r["exported"]] == ["epoch_0_whole", "epoch_1_whole"]
    assert rows["epoch_0_whole"]["size"] == (ws.exp_dir("llm") / "epoch_0_whole.pt").stat().st_size


def test_base_identity_uses_download_verified_digests(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from voicelab.fsutil import quick_fingerprint
    from voicelab.stages.export import base as export_base

    base = ws.base_model_dir
    monkeypatch.setattr(export_base, "HASH_LIMIT", 4096)  # make llm.pt/flow.pt count as large files
    manifest = {
        "repo": "FunAudioLLM/Fun-CosyVoice3-0.5B-2512",
        "source": "hf",
        "revision": "abc123",
        "verified": {quick_fingerprint(base / "llm.pt"): "sha256:" + sha256_file(base / "llm.pt")},
    }
    (base / ".voicelab-manifest.json").write_text(json.dumps(manifest))
    run_export(ws)
    prov = json.loads((ws.voice_dir / "voicelab.json").read_text())["base_model"]
    assert prov["download"]["revision"] == "abc123"
    llm = prov["files"]["llm.pt"]
    assert llm["verified"] == "sha256:" + sha256_file(base / "llm.pt") and "mtime_ns" in llm
    assert "sha256" not in prov["files"]["flow.pt"] and "verified" not in prov["files"]["flow.pt"]
    assert prov["files"]["cosyvoice3.yaml"]["sha256"]
    assert ".voicelab-manifest.json" not in prov["files"]
    assert not (ws.voice_dir / ".voicelab-manifest.json").exists()


# ---- issue 15 item 14: without a base, the dir's own YAML says which keys and shapes fit -------


def _nonsense_voice(d: Path) -> Path:
    for rel, data in SMALL_FILES.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)
    for f in ("llm.pt", "flow.pt", "hift.pt"):
        torch.save({"w": torch.zeros(4, 4)}, d / f)
    torch.save({"spk1": {"embedding": torch.zeros(1, 192)}}, d / "spk2info.pt")
    return d


def test_check_without_base_or_vendor_is_not_ok(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOICELAB_COSYVOICE_DIR", str(tmp_path / "no-vendor"))
    vd = _nonsense_voice(tmp_path / "voice")
    rep = verify_voice_dir(vd)
    assert not rep.ok
    assert any("keys and shapes" in p and "not checked" in p for p in rep.problems), rep.problems


@pytest.mark.vendor
def test_check_without_base_uses_the_models_yaml(tmp_path: Path) -> None:
    from voicelab.fsutil import link_or_copy
    from voicelab.upstream.tinymodel import build_tiny_model

    cache = Path(os.environ.get("VOICELAB_TEST_CACHE", Path(__file__).parents[1] / ".cache"))
    tiny = build_tiny_model(cache / "tiny-cosyvoice3-check")
    vd = tmp_path / "voice"
    for src in tiny.rglob("*"):
        if src.is_file():
            link_or_copy(src, vd / src.relative_to(tiny))
    torch.save({"spk1": {"embedding": torch.zeros(1, 192)}}, vd / "spk2info.pt")
    assert check_dir(vd).ok  # the tiny model's own weights fit its yaml
    (vd / "llm.pt").unlink()
    torch.save({"w": torch.zeros(4, 4)}, vd / "llm.pt")
    with pytest.raises(ModelError, match=r"llm.pt does not fit cosyvoice3.yaml"):
        check_dir(vd)


def test_exported_voice_respects_the_umask(ws: Workspace) -> None:
    # Issue 15 item 24: mkdtemp/mkstemp made the voice dir 0700 and its new files 0600, so a
    # user's group could not read the voice whatever their umask.
    old = os.umask(0o002)
    try:
        run_export(ws)
    finally:
        os.umask(old)
    vd = ws.voice_dir
    assert vd.stat().st_mode & 0o777 == 0o775
    for name in ("llm.pt", "spk2info.pt", "voicelab.json"):
        assert (vd / name).stat().st_mode & 0o777 == 0o664, name
