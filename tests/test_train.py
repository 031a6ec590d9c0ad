"""``voicelab train`` without the vendor: launch argv/env, preflight, run dirs, log parsing."""

# ruff: noqa: E501 (upstream log lines are quoted whole)

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from voicelab.blocks.records import PackedUtt
from voicelab.errors import ConfigError
from voicelab.stages import train as tr
from voicelab.stages.train import supervise
from voicelab.upstream import train_config as tc
from voicelab.workspace import Workspace

FIXTURE = Path(__file__).parent / "data" / "cosyvoice3_like.yaml"
INSTRUCT = "You are a helpful assistant.<|endofprompt|>"


# ---- helpers -----------------------------------------------------------------------------------
def write_shard(
    path: Path, utts: list[tuple[float, str]], instruct: bool = True, drop: tuple[str, ...] = ()
) -> Path:
    """A parquet shard with upstream's columns; lengths come from the speech tokens (25/s)."""
    rows = []
    for i, (sec, text) in enumerate(utts):
        row = {
            "utt": f"{path.stem}_{i}",
            "audio_data": b"RIFF",
            "wav": f"/clips/{i}.wav",
            "text": text,
            "spk": "spk1",
            "utt_embedding": [0.1] * 192,
            "spk_embedding": [0.2] * 192,
            "speech_token": [1] * round(sec * tr.TOKEN_RATE),
        }
        if instruct:
            row["instruct"] = INSTRUCT
        for c in drop:
            row.pop(c)
        rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def make_split(ws: Workspace, split: str, shards: list[list[tuple[float, str]]], **kw) -> None:
    paths = [
        write_shard(ws.parquet_dir(split) / f"parquet_{i:09d}.tar", u, **kw)
        for i, u in enumerate(shards)
    ]
    ws.data_list(split).write_text("".join(f"{p}\n" for p in paths))


def make_base(ws: Workspace, llm_bytes: int = 4_000_000) -> Path:
    base = ws.base_model_dir
    (base / "CosyVoice-BlankEN").mkdir(parents=True, exist_ok=True)
    (base / "CosyVoice-BlankEN" / "config.json").write_text("{}")
    (base / "campplus.onnx").write_bytes(b"onnx")
    for m in ("llm", "flow"):
        with open(base / f"{m}.pt", "wb") as f:
            f.truncate(llm_bytes)  # sparse: only the size matters to preflight
    return base


def sentences(n: int, sec: float = 3.0) -> list[tuple[float, str]]:
    return [(sec, f"sentence number {i} is spoken here") for i in range(n)]


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    w = Workspace.init(tmp_path / "ws", "spk1")
    make_base(w)
    make_split(w, "train", [sentences(6) for _ in range(4)])
    make_split(w, "dev", [sentences(3) for _ in range(2)])
    return w


def values(**settings) -> dict:
    text = tc.render(FIXTURE.read_text(), tc.SftSettings(**settings))
    return tc.read_values(text)


def run_preflight(ws: Workspace, model: str = "llm", **kw):
    args = dict(
        vendor=None,
        vendor_problem=None,
        values=values(max_frames_in_batch=1000),
        device="cpu",
        world=1,
        num_workers=2,
        max_frames=1000,
        base_ckpt=ws.base_model_dir / f"{model}.pt",
        epochs_to_run=2,
        engine="torch_ddp",
        modules=(),
    )
    args.update(kw)
    return tr.preflight(ws, model, **args)


def whats(problems: list[tr.Problem]) -> str:
    return "\n".join(p.line() for p in problems)


# ---- launch ------------------------------------------------------------------------------------
def launch(ws: Workspace, tmp_path: Path, device: str = "cuda", nproc: int = 1, **opt):
    opts = tr.TrainOptions(**opt)
    plan = tr.RunPlan(
        ws.exp_dir("llm"), ws.tensorboard_dir("llm"), ws.base_model_dir / "llm.pt", None, None
    )
    base_env = {
        "PYTHONPATH": "/vendor:/vendor/third_party/Matcha-TTS",
        "NCCL_NVLS_ENABLE": "0",
        "onnx_path": "/somewhere",
        "HOME": "/home/u",
    }
    spec = tr.LaunchSpec(
        vendor_root=Path("/vendor"),
        model="llm",
        device=device,
        nproc=nproc,
        opts=opts,
        config=tmp_path / "train_config.yaml",
        train_list=ws.data_list("train"),
        cv_list=ws.data_list("dev"),
        base_dir=ws.base_model_dir,
        plan=plan,
        num_workers=4,
        prefetch=2,
        amp=device == "cuda",
        ds_config=tmp_path / "ds.json" if opts.engine == "deepspeed" else None,
    )
    return tr.build_launch(spec, python="/venv/bin/python", base_env=base_env)


def arg(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_launch_one_gpu(ws: Workspace, tmp_path: Path) -> None:
    ln = launch(ws, tmp_path, gpu_ids="1", cpus="0-11")
    a = ln.argv
    assert a[:4] == ["/venv/bin/python", "-m", "torch.distributed.run", "--standalone"]
    assert arg(a, "--nproc_per_node") == "1"
    assert a[a.index("-m", 3) + 1] == "voicelab.upstream.launcher"
    assert arg(a, "--vendor-root") == "/vendor" and arg(a, "--device") == "cuda"
    train_args = a[a.index("--") + 1 :]
    assert arg(train_args, "--model") == "llm"
    assert arg(train_args, "--ddp.dist_backend") == "nccl"
    assert arg(train_args, "--checkpoint") == str(ws.base_model_dir / "llm.pt")
    assert arg(train_args, "--model_dir") == str(ws.exp_dir("llm"))
    assert arg(train_args, "--tensorboard_dir") == str(ws.tensorboard_dir("llm"))
    assert arg(train_args, "--qwen_pretrain_path") == str(ws.base_model_dir / "CosyVoice-BlankEN")
    assert arg(train_args, "--onnx_path") == str(ws.base_model_dir)
    assert arg(train_args, "--num_workers") == "4" and arg(train_args, "--prefetch") == "2"
    assert "--use_amp" in train_args and "--pin_memory" in train_args
    env = ln.env
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    assert env["PYTHONIOENCODING"] == "UTF-8"
    assert env["PYTHONPATH"].startswith("/vendor")
    assert env["NCCL_NVLS_ENABLE"] == "0"  # kept as the user set it
    assert "onnx_path" not in env  # features stay offline
    assert ln.cpus == set(range(12))
    sh = ln.script()
    assert "taskset -c 0-11 " in sh and "export CUDA_VISIBLE_DEVICES=1" in sh
    assert shlex.split(sh.splitlines()[-1].split("taskset -c 0-11 ", 1)[1]) == a


def test_launch_n_gpus_and_nodes(ws: Workspace, tmp_path: Path) -> None:
    a = launch(ws, tmp_path, nproc=4).argv
    assert "--standalone" in a and arg(a, "--nproc_per_node") == "4"
    a = launch(ws, tmp_path, nproc=8, nnodes=2, node_rank=1, master_addr="10.0.0.1").argv
    assert "--standalone" not in a
    assert (arg(a, "--nnodes"), arg(a, "--node_rank"), arg(a, "--master_addr")) == (
        "2",
        "1",
        "10.0.0.1",
    )
    assert arg(a, "--master_port") == "29500" and arg(a, "--nproc_per_node") == "8"
    with pytest.raises(ConfigError, match="master-addr"):
        launch(ws, tmp_path, nnodes=2)


def test_launch_cpu(ws: Workspace, tmp_path: Path) -> None:
    ln = launch(ws, tmp_path, device="cpu", nproc=2)
    train_args = ln.argv[ln.argv.index("--") + 1 :]
    assert arg(ln.argv, "--device") == "cpu"
    assert arg(train_args, "--ddp.dist_backend") == "gloo"
    assert "--use_amp" not in train_args and "--pin_memory" not in train_args
    assert ln.env["CUDA_VISIBLE_DEVICES"] == ""
    assert ln.cpus is None and "taskset" not in ln.script()


def test_launch_deepspeed(ws: Workspace, tmp_path: Path) -> None:
    a = launch(ws, tmp_path, engine="deepspeed").argv
    assert arg(a, "--train_engine") == "deepspeed"
    assert arg(a, "--deepspeed_config") == str(tmp_path / "ds.json")
    cfg = tr.deepspeed_json(
        tmp_path / "no-vendor", lr=1e-5, accum_grad=2, grad_clip=5, log_interval=10, bf16=True
    )
    assert cfg["optimizer"]["params"]["lr"] == 1e-5  # not the shipped 1e-3
    assert cfg["train_micro_batch_size_per_gpu"] == 1 and cfg["bf16"]["enabled"] is True
    assert cfg["gradient_accumulation_steps"] == 2


def test_parse_cpus() -> None:
    assert tr.parse_cpus("0-3,8,10-11") == {0, 1, 2, 3, 8, 10, 11}
    assert tr.format_cpus({0, 1, 2, 3, 8, 10, 11}) == "0-3,8,10-11"
    for bad in ("3-1", "a", ""):
        with pytest.raises(ConfigError):
            tr.parse_cpus(bad)


# ---- preflight ---------------------------------------------------------------------------------
def test_preflight_passes_on_good_data(ws: Workspace) -> None:
    problems, _, facts = run_preflight(ws)
    assert problems == [], whats(problems)
    assert facts.train_kept == 24 and facts.dev_kept == 6
    assert min(facts.batches) >= 2


def test_preflight_collects_every_problem(tmp_path: Path) -> None:
    w = Workspace.init(tmp_path / "ws", "spk1")
    problems, _, _ = run_preflight(
        w, vendor_problem="upstream cosyvoice is missing", modules=("voicelab_no_such_module",)
    )
    text = whats(problems)
    assert "upstream cosyvoice is missing (run: voicelab vendor sync cosyvoice)" in text
    assert "train extra is not installed" in text
    assert "base model file missing" in text and "voicelab download" in text
    assert "train data list is missing or empty" in text
    assert "dev data list is missing or empty" in text
    assert all("\n" not in p.line() for p in problems)


def test_preflight_missing_columns(ws: Workspace) -> None:
    make_split(ws, "dev", [sentences(3)], drop=("speech_token",))
    assert "lacks column(s) speech_token" in whats(run_preflight(ws)[0])


def test_preflight_llm_needs_instruct(ws: Workspace) -> None:
    make_split(ws, "train", [sentences(6) for _ in range(4)], instruct=False)
    assert "no instruct column" in whats(run_preflight(ws)[0])
    assert "instruct" not in whats(run_preflight(ws, "flow")[0])


def test_preflight_dev_filtered_empty(ws: Workspace) -> None:
    make_split(ws, "dev", [[(0.5, "too short"), (70.0, "too long"), (3.0, "")]])
    text = whats(run_preflight(ws, max_frames=4000)[0])
    assert "filter would drop all 3 dev utterances" in text


def test_filter_rules_mirror_upstream() -> None:
    r = tr.FilterRules.from_config(values())
    assert r.keeps(PackedUtt("a", 2.0, 5, 50))
    assert not r.keeps(PackedUtt("a", 0.9, 5, 23))  # < 1 s
    assert not r.keeps(PackedUtt("a", 61, 5, 1525))  # > 60 s
    assert not r.keeps(PackedUtt("a", 2.0, 0, 50))  # no text tokens
    assert not r.keeps(PackedUtt("a", 2.0, 201, 50))  # > 200 text tokens
    assert not r.keeps(PackedUtt("a", 2.0, 5, 0))  # no speech tokens
    assert not r.keeps(PackedUtt("a", 1.5, 160, 38))  # > 1 text token per 10 ms
    assert tr.estimate_text_tokens("你好，世界") == 5
    assert tr.estimate_text_tokens("hello world") == 3


def test_preflight_shards_vs_workers(ws: Workspace) -> None:
    problems = run_preflight(ws, num_workers=2, world=4)[0]
    assert "4 train shard(s) for 2 worker(s) x 4 process(es)" in whats(problems)
    ok = run_preflight(
        ws, num_workers=0, world=4, max_frames=300, values=values(max_frames_in_batch=300)
    )[0]
    assert ok == [], whats(ok)


def test_preflight_accum_grad_vs_batches(ws: Workspace) -> None:
    v = values(max_frames_in_batch=4000, accum_grad=8)
    text = whats(run_preflight(ws, values=v, max_frames=4000)[0])
    assert "accum_grad is 8" in text and "no optimizer step" in text


def test_preflight_clip_longer_than_batch(ws: Workspace) -> None:
    make_split(ws, "dev", [[(30.0, "a long clip with many words in it")], sentences(2)])
    text = whats(run_preflight(ws, max_frames=1000)[0])
    assert "1500 frames" in text and "--batch-frames 1500" in text


def test_preflight_cpu_refuses_real_model(ws: Workspace) -> None:
    make_base(ws, llm_bytes=2_024_669_519)
    text = whats(run_preflight(ws, device="cpu")[0])
    assert "506 M parameters" in text and "--device cuda" in text


def test_preflight_gpus_and_memory(ws: Workspace) -> None:
    make_base(ws, llm_bytes=2_024_669_519)
    text = whats(run_preflight(ws, device="cuda", gpus=[])[0])
    assert "no CUDA GPU found" in text
    one = [tr.Gpu(0, 80 << 30, 80 << 30)]
    assert "2 GPU process(es) asked for" in whats(
        run_preflight(ws, device="cuda", gpus=one, world=2, num_workers=1)[0]
    )
    # Two machines with one GPU each: this machine's one process fits its one GPU.
    assert "GPU process(es)" not in whats(
        run_preflight(ws, device="cuda", gpus=one, world=2, local_procs=1, num_workers=1)[0]
    )
    busy = [tr.Gpu(0, 24 << 30, 6 << 30)]
    assert "GPU 0 has 6.0 GiB free" in whats(run_preflight(ws, device="cuda", gpus=busy)[0])
    assert run_preflight(ws, device="cuda", gpus=one)[0] == []


def test_preflight_disk(ws: Workspace) -> None:
    make_base(ws, llm_bytes=1 << 43)  # 8 TiB sparse
    text = whats(run_preflight(ws, device="cuda", gpus=[tr.Gpu(0, 1 << 50, 1 << 50)])[0])
    assert "GiB free under" in text and "lower --epochs" in text


def test_preflight_config_errors_and_warnings(ws: Workspace) -> None:
    v = values()
    v["train_conf"]["optim_conf"]["lr"] = 1e-3
    v["train_conf"]["scheduler"] = "cosine"
    problems, warnings, _ = run_preflight(ws, values=v)
    assert "unknown scheduler" in whats(problems)
    assert any("lr 0.001 is high" in w for w in warnings)


def test_run_train_reports_all_and_launches_nothing(ws: Workspace, monkeypatch) -> None:
    monkeypatch.setenv("VOICELAB_COSYVOICE_DIR", str(ws.root / "no-vendor"))
    make_split(ws, "dev", [[(0.5, "short")]])
    with pytest.raises(tr.PreflightError) as e:
        tr.run_train(ws, "llm", tr.TrainOptions(device="cpu"))
    msg = e.value.one_line()
    assert "upstream cosyvoice is missing" in msg.lower() or "cosyvoice" in msg
    assert "filter would drop all 1 dev" in msg
    assert "nothing was launched" in msg
    assert not ws.exp_dir("llm").exists()


# ---- run dirs ----------------------------------------------------------------------------------
def fake_run(run_dir: Path, epochs: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "init.pt").write_bytes(b"x")
    for e in range(epochs):
        (run_dir / f"epoch_{e}_whole.pt").write_bytes(b"x")
    (run_dir / "epoch_0_step_100.pt").write_bytes(b"x")


def test_fresh_run_uses_canonical_dir(ws: Workspace) -> None:
    base = ws.base_model_dir / "llm.pt"
    plan = tr.plan_run(ws, "llm", "torch_ddp", base, tr.TrainOptions(), 10)
    assert plan.run_dir == ws.exp_dir("llm", "torch_ddp") and plan.checkpoint == base
    assert plan.archive is None and plan.resumed_epoch is None


def test_existing_run_is_never_overwritten(ws: Workspace) -> None:
    fake_run(ws.exp_dir("llm", "torch_ddp"), 3)
    base = ws.base_model_dir / "llm.pt"
    with pytest.raises(ConfigError, match="already holds a run") as e:
        tr.plan_run(ws, "llm", "torch_ddp", base, tr.TrainOptions(), 10)
    assert "--resume" in e.value.one_line() and "--new" in e.value.one_line()
    with pytest.raises(ConfigError, match="contradict"):
        tr.plan_run(ws, "llm", "torch_ddp", base, tr.TrainOptions(resume=True, new=True), 10)


def test_resume_continues_from_latest_epoch(ws: Workspace) -> None:
    fake_run(ws.exp_dir("llm", "torch_ddp"), 3)
    base = ws.base_model_dir / "llm.pt"
    plan = tr.plan_run(ws, "llm", "torch_ddp", base, tr.TrainOptions(resume=True), 10)
    assert plan.checkpoint == ws.exp_dir("llm", "torch_ddp") / "epoch_2_whole.pt"
    assert plan.resumed_epoch == 2 and plan.archive is None
    done = tr.plan_run(ws, "llm", "torch_ddp", base, tr.TrainOptions(resume=True), 3)
    assert "all 3 epochs are done" in done.note
    with pytest.raises(ConfigError, match="deepspeed"):
        fake_run(ws.exp_dir("llm", "deepspeed"), 1)
        tr.plan_run(ws, "llm", "deepspeed", base, tr.TrainOptions(resume=True), 10)


def test_resume_without_finished_epoch_starts_over(ws: Workspace) -> None:
    d = ws.exp_dir("llm", "torch_ddp")
    d.mkdir(parents=True)
    (d / "init.pt").write_bytes(b"x")
    base = ws.base_model_dir / "llm.pt"
    plan = tr.plan_run(ws, "llm", "torch_ddp", base, tr.TrainOptions(resume=True), 10)
    assert plan.checkpoint == base and "starting over" in plan.note


def test_new_moves_the_old_run_aside(ws: Workspace) -> None:
    fake_run(ws.exp_dir("llm", "torch_ddp"), 2)
    base = ws.base_model_dir / "llm.pt"
    plan = tr.plan_run(ws, "llm", "torch_ddp", base, tr.TrainOptions(new=True), 10)
    assert plan.archive == (
        ws.exp_dir("llm", "torch_ddp"),
        ws.exp_dir("llm", "torch_ddp").with_name("torch_ddp.1"),
    )
    assert plan.run_dir == ws.exp_dir("llm", "torch_ddp") and plan.checkpoint == base
    ws.exp_dir("llm", "torch_ddp").with_name("torch_ddp.1").mkdir()
    plan = tr.plan_run(ws, "llm", "torch_ddp", base, tr.TrainOptions(new=True), 10)
    assert plan.archive[1].name == "torch_ddp.2"
    # A tensorboard dir left from an archived run the user deleted takes its name too.
    ws.tensorboard_dir("llm", "torch_ddp").with_name("torch_ddp.2").mkdir(parents=True)
    plan = tr.plan_run(ws, "llm", "torch_ddp", base, tr.TrainOptions(new=True), 10)
    assert plan.archive[1].name == "torch_ddp.3"


# ---- batches -----------------------------------------------------------------------------------
def test_dynamic_batches_like_upstream() -> None:
    # 10 clips of 150 frames, limit 500: 3 per batch (4 * 150 > 500) -> 4 batches.
    assert tr.dynamic_batches([150] * 10, 500) == 4
    assert tr.dynamic_batches([], 500) == 0
    assert tr.dynamic_batches([600], 500) == 1  # an over-budget clip forms its own batch


def test_batches_per_rank_follow_sharding() -> None:
    shard = tr.Shard(Path("s"), [PackedUtt(str(i), 3.0, 8, 75) for i in range(6)])
    rules = tr.FilterRules()
    # 6 clips x 150 frames per shard; 2 shards, 2 ranks -> each rank reads one shard.
    assert tr.batches_per_rank([shard, shard], rules, 450, world=2, workers=1) == [2, 2]
    # 1 shard, 2 ranks: upstream repeats the list so both ranks read it.
    assert tr.batches_per_rank([shard], rules, 450, world=2, workers=1) == [2, 2]


# ---- log parsing -------------------------------------------------------------------------------
SAMPLE_LOG = """\
2026-11-25 10:18:56,460 INFO training on multiple gpus, this gpu 0, rank 0, world_size 2
2026-11-25 10:19:10,000 INFO [Rank 0] Checkpoint: save to checkpoint /ws/exp/llm/torch_ddp/init.pt
start step 0 start epoch -1
2026-11-25 10:19:10,100 INFO Epoch 0 TRAIN info lr 1e-05 rank 0
2026-11-25 10:19:10,100 INFO Epoch 0 TRAIN info lr 1e-05 rank 1
2026-11-25 10:19:20,000 DEBUG TRAIN Batch 0/10 loss 4.500000 acc 0.100000 lr 0.00001000 grad_norm 1.250000 rank 0
2026-11-25 10:19:20,000 DEBUG TRAIN Batch 0/10 loss 4.400000 acc 0.100000 lr 0.00001000 grad_norm 1.250000 rank 1
2026-11-25 10:19:30,000 DEBUG TRAIN Batch 0/20 loss 4.000000 acc 0.200000 lr 0.00001000 grad_norm 0.900000 rank 0
2026-11-25 10:19:31,000 DEBUG CV Batch 0/10 loss 7.9 acc 0.1 rank 0
2026-11-25 10:19:32,000 INFO Epoch 0 Step 13 CV info lr 1e-05 0 rank loss 7.812 acc 0.215
2026-11-25 10:19:32,000 INFO Epoch 0 Step 13 CV info lr 1e-05 1 rank loss 7.9 acc 0.2
2026-11-25 10:19:33,000 INFO [Rank 0] Checkpoint: save to checkpoint /ws/exp/llm/torch_ddp/epoch_0_whole.pt
2026-11-25 10:19:34,000 INFO Epoch 1 TRAIN info lr 1e-05 rank 0
2026-11-25 10:19:44,000 DEBUG TRAIN Batch 1/10 loss 3.500000 acc 0.300000 lr 0.00001000 grad_norm 0.800000 rank 0
2026-11-25 10:19:50,000 INFO Epoch 1 Step 25 CV info lr 1e-05 0 rank loss 7.5 acc 0.25
"""


def parse(text: str, accum: int = 2) -> list[dict]:
    t = iter(range(1000))
    p = tr.LogParser(accum, clock=lambda: float(next(t)))
    return [row for line in text.splitlines() for row in p.feed(line)]


def test_log_lines_to_rows() -> None:
    rows = parse(SAMPLE_LOG)
    train = [r for r in rows if r["tag"] == "TRAIN"]
    cv = [r for r in rows if r["tag"] == "CV"]
    assert [(r["epoch"], r["batch"], r["step"]) for r in train] == [
        (0, 10, 5),
        (0, 20, 10),
        (1, 10, 17),
    ]
    assert train[0]["loss"] == pytest.approx(9.0)  # logged loss was divided by accum_grad
    assert train[0]["acc"] == 0.1 and train[0]["lr"] == 1e-5 and train[0]["grad_norm"] == 1.25
    assert [(r["epoch"], r["step"], r["loss"], r["acc"]) for r in cv] == [
        (0, 12, 7.812, 0.215),
        (1, 24, 7.5, 0.25),
    ]
    events = [(r["event"], r.get("checkpoint")) for r in rows if r["tag"] == "EVENT"]
    assert ("checkpoint", "init.pt") in events and ("checkpoint", "epoch_0_whole.pt") in events
    assert ("start", None) in events
    assert all(r.get("rank", 0) == 0 for r in rows)


def test_summary_and_jsonl_roundtrip(tmp_path: Path) -> None:
    rows = parse(SAMPLE_LOG)
    path = tmp_path / "train_log.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    back = tr.read_train_log(path)
    assert back == rows
    s = tr.summarize(back)
    assert s["best_cv_loss"] == 7.5 and s["best_epoch"] == 1
    assert s["epochs_done"] == 2 and s["last_checkpoint"] == "epoch_0_whole.pt"


def test_progress_line() -> None:
    p = tr.Progress("llm", max_epoch=2, batches_per_epoch=20, accum=2)
    p.update(
        {
            "tag": "TRAIN",
            "epoch": 0,
            "batch": 10,
            "step": 5,
            "loss": 2.0,
            "acc": 0.5,
            "lr": 1e-5,
            "time": 100.0,
        }
    )
    text = p.update(
        {
            "tag": "TRAIN",
            "epoch": 0,
            "batch": 20,
            "step": 10,
            "loss": 1.5,
            "acc": 0.6,
            "lr": 1e-5,
            "time": 110.0,
        }
    )
    assert text.startswith("llm epoch 1/2 step 10 loss 1.5000 acc 0.600 lr 1.00e-05")
    assert "0.50 steps/s" in text and "ETA 0:20" in text


def test_default_batch_frames_by_gpu() -> None:
    params = 506_000_000
    assert tr.default_batch_frames("llm", params, None) == tc.DEFAULT_MAX_FRAMES
    small = tr.default_batch_frames("llm", params, 12 << 30)
    big = tr.default_batch_frames("llm", params, 80 << 30)
    assert small == 500 and 500 < big <= 2500 and big % 100 == 0


def test_env_passes_through_os_environ(ws: Workspace, tmp_path: Path) -> None:
    assert "HOME" in launch(ws, tmp_path).env


# ---- launcher pieces and Ctrl-C ----------------------------------------------------------------
def test_launcher_splits_its_options_from_train_args() -> None:
    from voicelab.upstream import launcher

    ours, theirs = launcher._split(["--vendor-root", "/v", "--device=cpu", "--", "--model", "llm"])
    assert ours == {"vendor-root": "/v", "device": "cpu"} and theirs == ["--model", "llm"]
    assert launcher._arg_value(["--timeout", "30"], "--timeout") == "30"
    args = launcher.with_tensorboard_dir(["--model_dir", "/exp/llm"])
    assert args[-2:] == ["--tensorboard_dir", "/exp/llm/tensorboard"]
    assert launcher.with_tensorboard_dir(["--tensorboard_dir", "/tb"]) == [
        "--tensorboard_dir",
        "/tb",
    ]


def test_launcher_deepspeed_grad_norm_is_logged_as_a_number() -> None:
    from voicelab.upstream import launcher

    def update(info: dict) -> dict:  # deepspeed between accumulation boundaries
        info["grad_norm"] = None
        return info

    assert launcher.grad_norm_never_none(update)({"lr": 1e-5})["grad_norm"] == 0.0
    done = launcher.grad_norm_never_none(lambda info: {**info, "grad_norm": 1.5})({})
    assert done["grad_norm"] == 1.5
    assert "{:.6f}".format(launcher.grad_norm_never_none(update)({})["grad_norm"]) == "0.000000"


def test_launcher_records_the_utterances_of_each_batch(tmp_path: Path, monkeypatch) -> None:
    import types

    from voicelab.upstream import launcher

    monkeypatch.setenv("RANK", "1")
    mod = types.SimpleNamespace(batch_forward=lambda model, batch, scaler, info: info)
    launcher.record_seen_utts(mod, tmp_path)
    mod.batch_forward(None, {"utts": ["a", "b"]}, None, {"tag": "TRAIN", "epoch": 0})
    mod.batch_forward(None, {"utts": ["c"]}, None, {"tag": "CV", "epoch": 0})
    seen = launcher.read_seen_utts(tmp_path)
    assert seen == {("TRAIN", 0): {1: ["a", "b"]}, ("CV", 0): {1: ["c"]}}


def test_launcher_dataloader_fix_allows_zero_workers() -> None:
    pytest.importorskip("torch", reason="needs the features/train extra (torch)")
    import types

    import torch

    from voicelab.upstream import launcher

    mod = types.SimpleNamespace()
    launcher.fix_dataloader(mod)
    data = torch.utils.data.TensorDataset(torch.arange(4))
    loader = mod.DataLoader(data, batch_size=None, num_workers=0, prefetch_factor=100)
    assert len(list(loader)) == 4
    loader = mod.DataLoader(data, batch_size=None, num_workers=1, prefetch_factor=2)
    assert loader.worker_init_fn is launcher.worker_init


def test_launcher_restores_process_group_options() -> None:
    pytest.importorskip("torch", reason="needs the features/train extra (torch)")
    import datetime

    import torch.distributed as dist

    from voicelab.upstream import launcher

    launcher._state["timeout"] = 42
    launcher.fix_process_group_options()
    opts = dist.ProcessGroup.options
    got = opts.fget(None) if isinstance(opts, property) else None
    if got is not None:  # torch without the attribute: ours
        assert got._timeout == datetime.timedelta(seconds=42)


def test_soundfile_reader_matches_torchaudio_shape(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="needs the features/train extra (torch)")
    import io

    import numpy as np
    import soundfile as sf

    from voicelab.upstream import launcher

    buf = io.BytesIO()
    sf.write(buf, np.zeros((2400, 2), dtype="float32"), 24000, format="WAV")
    wav, sr = launcher._soundfile_load(io.BytesIO(buf.getvalue()))
    assert sr == 24000 and tuple(wav.shape) == (2, 2400)


def test_stop_ends_the_whole_process_group(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    pidfile = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time;"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']);"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(120)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, text=True)
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text():
            break
        time.sleep(0.05)
    child = int(pidfile.read_text())
    supervise._stop(proc)
    assert proc.poll() is not None
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the grandchild survived")


def test_vendor_import_probe_reports_the_error(tmp_path: Path) -> None:
    from voicelab.vendor import VendorRuntime

    fake = VendorRuntime(name="cosyvoice", root=tmp_path, commit="x", import_paths=[tmp_path])
    problems = tr.check_vendor_import(fake)
    assert len(problems) == 1
    assert "do not import: ModuleNotFoundError" in problems[0].what


def test_engine_stop_line_is_the_cli_error_and_hint(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text(
        "TRAIN Batch 0/10 loss 1.0\n"
        "voicelab engine: stopped: out of GPU memory in mode 8bit with one utterance per batch\n"
        "voicelab engine: hint: the GPU ran out of memory in mode 8bit at 900 frames per batch:"
        " continue with --resume --memory checkpointing+8bit\n",
        "utf-8",
    )
    assert supervise.failure(log, 3).endswith(
        "out of GPU memory in mode 8bit with one utterance per batch"
    )
    assert supervise.failure_hint(log).endswith(
        "continue with --resume --memory checkpointing+8bit"
    )


def test_epochs_saved_counts_deepspeed_checkpoint_folders(tmp_path: Path) -> None:
    """torch_ddp and the engine write epoch_N_whole.pt; upstream's deepspeed engine writes
    epoch_N_whole/ folders: a 2-epoch run of either reports 2 epochs done, not 0."""
    from voicelab.stages.train.rundirs import epochs_saved

    ddp, ds = tmp_path / "torch_ddp", tmp_path / "deepspeed"
    for e in (0, 1):
        ddp.mkdir(exist_ok=True)
        (ddp / f"epoch_{e}_whole.pt").write_bytes(b"x")
        (ds / f"epoch_{e}_whole").mkdir(parents=True)
        (ds / f"epoch_{e}_whole.yaml").write_text("epoch: 0\n", "utf-8")
    (ds / "epoch_7_whole.txt").mkdir()  # not a checkpoint folder
    assert epochs_saved(ddp) == 2
    assert epochs_saved(ds) == 2
    assert epochs_saved(tmp_path / "empty") == 0
