"""VoiceLab's training engine against upstream's, with the tiny model on the CPU (fp32).

* the objective: for the same weights, batch and random draws, our loss, accuracy and gradients
  equal upstream's ``model(batch, device)`` (llm: unistream, bistream and mixed layouts; flow);
* the trainer: N optimizer steps from the same start and batch order give the weights
  upstream's own ``batch_forward``/``batch_backward``/``update_parameter_and_lr`` give;
* the files: a run through ``voicelab train --trainer voicelab`` writes checkpoints that load
  strictly into upstream's model and that ``--trainer upstream --checkpoint`` continues; resume
  is exact; two gloo processes share each epoch's utterances, each once.

Run with::

    pytest -m vendor tests/test_engine_vendor.py
"""

from __future__ import annotations

import copy
import random
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from speech_corpus import VENDOR_SENTENCES as SENTENCES
from speech_corpus import packed_workspace
from voicelab.stages import train as tr
from voicelab.workspace import Workspace

pytestmark = [pytest.mark.vendor, pytest.mark.slow]
torch = pytest.importorskip("torch")

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """24 espeak clips of one speaker, packed with the tiny model's stand-ins."""
    return packed_workspace(tmp_path_factory.mktemp("engine-vendor"), SENTENCES, (140, 175, 210),
                            dev_every=7, dev_at=3, gpus=2)  # fmt: skip


@pytest.fixture(scope="module")
def rt(packed: Workspace) -> SimpleNamespace:
    """The run's YAML (a dry run writes it), upstream's runtime, and both cached datasets."""
    from voicelab.upstream.engine import loop, model
    from voicelab.vendor import cosyvoice_runtime

    model.prepare_runtime(cosyvoice_runtime().root)
    res = tr.run_train(packed, "llm", tr.TrainOptions(device="cpu", dry_run=True))
    cfg = res.run_dir / "train_config.yaml"
    qwen = packed.base_model_dir / "CosyVoice-BlankEN"
    ns = SimpleNamespace(ws=packed, cfg=cfg, qwen=qwen, text=cfg.read_text("utf-8"))
    for kind in ("llm", "flow"):
        configs = model.load_configs(cfg, kind, str(qwen))
        ds = loop.load_dataset(packed.data_list("train"), configs, ns.text, qwen, kind, 0, 1)
        setattr(ns, kind, SimpleNamespace(configs=configs, ds=ds))
    return ns


def _net(rt: SimpleNamespace, kind: str) -> Any:
    from voicelab.upstream.engine import model

    configs = model.load_configs(rt.cfg, kind, str(rt.qwen))
    net, _, _ = model.build_model(configs, kind, rt.ws.base_model_dir / f"{kind}.pt")
    return net.float().train()


def _pad(seqs: list[Any], dtype: Any = None) -> tuple[Any, Any]:
    from torch.nn.utils.rnn import pad_sequence

    lens = torch.tensor([len(s) for s in seqs], dtype=torch.int32)
    return pad_sequence(list(seqs), batch_first=True, padding_value=0), lens


def upstream_batch(rt: SimpleNamespace, kind: str, idx: list[int]) -> dict[str, Any]:
    """The batch upstream's ``padding`` makes of these utterances, in this order."""
    ds = getattr(rt, kind).ds
    b: dict[str, Any] = {}
    b["speech_token"], b["speech_token_len"] = _pad([ds.speech[i] for i in idx])
    if kind == "llm":
        b["text_token"], b["text_token_len"] = _pad([ds.text[i] for i in idx])
        b["instruct_token"], b["instruct_token_len"] = _pad([ds.instruct[i] for i in idx])
    else:
        feats = [ds.feat[ds.feat_off[i] : ds.feat_off[i] + ds.feat_len[i]] for i in idx]
        b["speech_feat"], b["speech_feat_len"] = _pad(feats)
        use_spk = getattr(rt, kind).configs["padding"].keywords["use_spk_embedding"]
        b["embedding"] = (ds.spk_embedding if use_spk else ds.utt_embedding)[idx]
    return b


def ours(rt: SimpleNamespace, kind: str, net: Any, quantum: int) -> Any:
    from voicelab.upstream.engine import loop

    use_spk = getattr(rt, kind).configs["padding"].keywords["use_spk_embedding"]
    return loop.Batches(getattr(rt, kind).ds, kind, net, CPU, use_spk, quantum)


def _grads(net: Any) -> dict[str, Any]:
    out = {n: p.grad.detach().clone() for n, p in net.named_parameters() if p.grad is not None}
    net.zero_grad(set_to_none=True)
    return out


def _rel(a: Any, b: Any) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


# ------------------------------------------------------------------------------------------------
# The objective
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["unistream", "bistream", "mixed"])
def test_llm_loss_equals_upstream(
    rt: SimpleNamespace, layout: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from voicelab.upstream.engine import llm_loss
    from voicelab.upstream.engine.loop import LossModule

    net = _net(rt, "llm")
    idx = list(range(8))
    tok = llm_loss.Tokens.of(net)
    ds = rt.llm.ds
    eligible = [llm_loss.bistream_ok(len(ds.text[i]), len(ds.speech[i]), tok) for i in idx]
    assert any(eligible), "the fixture needs utterances upstream may lay out bistream"
    if layout != "mixed":
        monkeypatch.setattr(random, "random", lambda: 0.1 if layout == "bistream" else 0.9)

    random.seed(7)
    up = net(upstream_batch(rt, "llm", idx), CPU)
    up["loss"].backward()
    g_up = _grads(net)
    random.seed(7)
    mine = LossModule(net, "llm")(ours(rt, "llm", net, quantum=32).make(idx))
    mine["loss"].backward()
    g_mine = _grads(net)

    assert _rel(mine["loss"].detach(), up["loss"].detach()) < 1e-4
    assert abs(float(mine["acc"]) - float(up["acc"])) < 1e-6
    assert g_mine.keys() == g_up.keys()
    worst = max(_rel(g_mine[k], g_up[k]) for k in g_up)
    assert worst < 1e-4, worst


@pytest.mark.parametrize(("row", "pad"), [(64, False), (1024, False), (64, True)])
def test_packed_pass_equals_upstreams_accumulation(
    rt: SimpleNamespace, row: int, pad: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An optimizer step's batches packed into one pass (several rows, or one): the loss is
    the mean of upstream's batch losses, accuracy likewise, and the gradient is the one
    upstream accumulates (each batch's loss over accum_grad, backward after backward).
    ``pad``: the pass padded with whole rows of padding and a wider row (the one shape CUDA
    graphs replay) changes none of it."""
    from voicelab.upstream.engine import llm_loss
    from voicelab.upstream.engine.loop import LossModule

    net = _net(rt, "llm")
    groups = [[0, 1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11]]
    random.seed(5)
    ups = []
    for idx in groups:
        up = net(upstream_batch(rt, "llm", idx), CPU)
        (up["loss"] / len(groups)).backward()
        ups.append(up)
    g_up = _grads(net)
    random.seed(5)
    feed = ours(rt, "llm", net, quantum=32)
    feed.row = row
    if pad:
        feed.at_least = (9, 2 * llm_loss.ROW_QUANTUM)
    batch = feed.make_packed(groups)
    if pad:
        assert tuple(batch["ids"].shape) == feed.at_least
    elif row == 64:
        assert batch["ids"].size(0) > 1, "the short row must spread the step over several rows"
        assert batch["ids"].size(1) == max(64, llm_loss.ROW_QUANTUM)
    mine = LossModule(net, "llm")(batch)
    mine["loss"].backward()
    g_mine = _grads(net)

    expect = sum(u["loss"].detach() for u in ups) / len(ups)
    assert _rel(mine["loss"].detach(), expect) < 1e-4
    assert abs(float(mine["acc"]) - sum(float(u["acc"]) for u in ups) / len(ups)) < 1e-6
    assert g_mine.keys() == g_up.keys()
    assert max(_rel(g_mine[k], g_up[k]) for k in g_up) < 1e-4


def test_llm_layouts_are_upstreams(rt: SimpleNamespace) -> None:
    """Bistream layouts hold the chunk pattern (fill tokens) and end like unistream ones."""
    from voicelab.upstream.engine import llm_loss

    net = _net(rt, "llm")
    tok = llm_loss.Tokens.of(net)
    ds = rt.llm.ds
    i = next(
        k for k in range(len(ds)) if llm_loss.bistream_ok(len(ds.text[k]), len(ds.speech[k]), tok)
    )
    uni, bi = llm_loss.layouts(
        ds.text[i].numpy(), ds.instruct[i].numpy(), ds.speech[i].numpy(), tok
    )
    assert bi is not None and len(bi.ids) == len(uni.ids)
    full_chunks = len(ds.text[i]) // tok.mix[0]
    assert int((bi.target == tok.fill).sum()) == full_chunks
    assert uni.target[-1] == bi.target[-1] == tok.eos


def test_flow_loss_equals_upstream(rt: SimpleNamespace) -> None:
    from voicelab.upstream.engine.loop import LossModule

    net = _net(rt, "flow")
    idx = list(range(6))
    for seed in (1, 2, 3):
        random.seed(seed)
        torch.manual_seed(seed)
        up = net(upstream_batch(rt, "flow", idx), CPU)
        up["loss"].backward()
        g_up = _grads(net)
        random.seed(seed)
        torch.manual_seed(seed)
        mine = LossModule(net, "flow")(ours(rt, "flow", net, quantum=1).make(idx))
        mine["loss"].backward()
        g_mine = _grads(net)
        assert _rel(mine["loss"].detach(), up["loss"].detach()) < 1e-4
        assert g_mine.keys() == g_up.keys()
        assert max(_rel(g_mine[k], g_up[k]) for k in g_up) < 1e-4


def test_fused_flow_pass_equals_upstreams_accumulation(rt: SimpleNamespace) -> None:
    """Two flow batches as one pass (the engine's default for the flow): the mean of upstream's
    two losses and the gradient of their accumulation, with both streaming draws met. Dropout
    off (eval mode): the fused pass draws the DiT's dropout masks in another order."""
    from voicelab.upstream.engine.loop import LossModule

    net = _net(rt, "flow").eval()
    group = [list(range(0, 4)), list(range(4, 9))]
    seen: set[tuple[bool, ...]] = set()
    for seed in range(1, 7):
        random.seed(seed)
        torch.manual_seed(seed)
        ups = [net(upstream_batch(rt, "flow", idx), CPU)["loss"] for idx in group]
        (sum(ups) / 2).backward()
        g_up = _grads(net)
        random.seed(seed)
        torch.manual_seed(seed)
        batch = ours(rt, "flow", net, quantum=1).make_fused(group)
        seen.add(tuple(bool(b["streaming"]) for b in batch["parts"]))
        mine = LossModule(net, "flow")(batch)
        mine["loss"].backward()
        g_mine = _grads(net)
        assert _rel(mine["loss"].detach(), (sum(ups) / 2).detach()) < 1e-4
        assert g_mine.keys() == g_up.keys()
        assert max(_rel(g_mine[k], g_up[k]) for k in g_up) < 1e-4
    assert {(True, False), (False, True)} & seen, seen  # streaming and not, in one pass


# ------------------------------------------------------------------------------------------------
# The trainer
# ------------------------------------------------------------------------------------------------
class _OnCpu(torch.nn.Module):
    """upstream's batch_forward passes ``device=LOCAL_RANK`` (a CUDA index): run on the CPU."""

    def __init__(self, net: Any) -> None:
        super().__init__()
        self.module = net

    def forward(self, batch: dict[str, Any], device: Any = None) -> Any:
        return self.module(batch, CPU)


@pytest.mark.parametrize("kind", ["llm", "llm-packed", "flow"])
def test_steps_match_upstream_trainer(rt: SimpleNamespace, kind: str) -> None:
    """Same start, same batches in the same order, same draws: after 4 optimizer steps the
    weights agree to 2e-3 of the largest change any step made (fused vs per-tensor Adam and
    a reordered loss sum are the only differences in fp32). ``llm-packed``: our optimizer
    steps are packed passes of accum_grad batches each (the engine's default for the llm)."""
    import cosyvoice.utils.train_utils as tu

    from voicelab.upstream.engine import batching, model
    from voicelab.upstream.engine.loop import LossModule, optimizer_step, train_step

    packed = kind == "llm-packed"
    kind = "llm" if packed else kind
    configs = getattr(rt, kind).configs
    conf = dict(configs["train_conf"])
    accum, clip = int(conf["accum_grad"]), float(conf["grad_clip"])
    quantum = 32 if kind == "llm" else 1
    ds = getattr(rt, kind).ds
    batches = batching.epoch_batches(ds.frames, 300, epoch=0, accum=accum)[: 4 * accum]
    assert len(batches) == 4 * accum

    start = _net(rt, kind)
    w0 = {k: v.detach().clone() for k, v in start.state_dict().items()}

    # Upstream's trainer functions (torch_ddp path, fp32).
    up = _OnCpu(copy.deepcopy(start))
    args = SimpleNamespace(train_engine="torch_ddp")
    _, opt, sch, _, _ = tu.init_optimizer_and_scheduler(args, {"train_conf": conf}, up, False)
    info = {"dtype": "fp32", "train_engine": "torch_ddp", "accum_grad": accum, "grad_clip": clip}
    random.seed(11)
    torch.manual_seed(11)
    for i, idx in enumerate(batches):
        info["batch_idx"] = i
        info = tu.batch_forward(up, upstream_batch(rt, kind, idx), None, info)
        info = tu.batch_backward(up, None, info)
        info = tu.update_parameter_and_lr(up, opt, sch, None, info)

    # Ours.
    net = copy.deepcopy(start)
    params = [p for p in net.parameters() if p.requires_grad]
    opt2 = model.make_optimizer(params, conf, "cpu")
    sch2 = model.make_scheduler(opt2, conf)
    feed, lm = ours(rt, kind, net, quantum), LossModule(net, kind)
    random.seed(11)
    torch.manual_seed(11)
    if packed:
        assert accum > 1, "the recipe's accum_grad must make a packed pass of several batches"
        for g in range(0, len(batches), accum):
            group = batches[g : g + accum]
            train_step(lm, feed.make_packed(group), accum, False, CPU, True, batches=accum)
            optimizer_step(params, opt2, sch2, clip)
    else:
        for i, idx in enumerate(batches):
            boundary = (i + 1) % accum == 0
            train_step(lm, feed.make(idx), accum, False, CPU, boundary)
            if boundary:
                optimizer_step(params, opt2, sch2, clip)

    a, b = up.module.state_dict(), net.state_dict()
    moved = max(float((a[k] - w0[k]).abs().max()) for k in a if a[k].is_floating_point())
    assert moved > 0
    diff = max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())
    print(f"{kind}: max weight difference {diff:.3g}, largest change {moved:.3g}")
    assert diff <= 2e-3 * moved, (diff, moved)


# ------------------------------------------------------------------------------------------------
# Runs through voicelab train
# ------------------------------------------------------------------------------------------------
def _rows(run: Path) -> list[dict[str, Any]]:
    return tr.read_train_log(run / "train_log.jsonl")


def test_engine_run_checkpoints_serve_upstream(rt: SimpleNamespace) -> None:
    import yaml

    from voicelab.upstream.engine import model

    ws = rt.ws
    res = tr.run_train(ws, "llm", tr.TrainOptions(device="cpu", epochs=2, trainer="voicelab"))
    run = ws.exp_dir("llm", "voicelab")
    assert res.launched and res.epochs_done == 2 and res.run_dir == run
    assert ws.exp_dir("llm") == run  # readers follow the newest run
    for name in ("init", "epoch_0_whole", "epoch_1_whole"):
        assert (run / f"{name}.pt").is_file() and (run / f"{name}.yaml").is_file()
    assert (run / "resume" / "epoch_1.pt").is_file()
    info = yaml.safe_load((run / "epoch_1_whole.yaml").read_text())
    assert set(info["loss_dict"]) == {"loss", "acc"} and info["epoch"] == 1
    rows = _rows(run)
    train = [r for r in rows if r["tag"] == "TRAIN"]
    assert train and all("tokens_s" in r and r["loss"] > 0 for r in train)
    cv = [r for r in rows if r["tag"] == "CV"]
    assert [r["epoch"] for r in cv] == [0, 1]
    assert abs(cv[-1]["loss"] - info["loss_dict"]["loss"]) < 1e-9

    # Upstream's model loads it strictly (what CosyVoice3 does with an exported llm.pt).
    sd = torch.load(run / "epoch_1_whole.pt", map_location="cpu", weights_only=True)
    assert sd["epoch"] == 1 and sd["step"] == info["step"] > 0
    configs = model.load_configs(rt.cfg, "llm", str(rt.qwen))
    configs["llm"].load_state_dict({k: v for k, v in sd.items() if k not in ("epoch", "step")})

    # Upstream's trainer continues from it at the next epoch, with its step count.
    up = tr.run_train(
        ws,
        "llm",
        tr.TrainOptions(
            device="cpu", epochs=3, trainer="upstream", checkpoint=str(run / "epoch_1_whole.pt")
        ),
    )
    up_run = ws.exp_dir("llm", "torch_ddp")
    assert up.launched and (up_run / "epoch_2_whole.pt").is_file()
    start = [r for r in _rows(up_run) if r.get("event") == "start"][-1]
    assert start["epoch"] == 2 and start["step"] == sd["step"]
    assert ws.exp_dir("llm") == up_run


def test_resume_is_exact(rt: SimpleNamespace) -> None:
    ws = rt.ws
    opts = {"device": "cpu", "trainer": "voicelab"}
    tr.run_train(ws, "flow", tr.TrainOptions(epochs=2, new=True, **opts))
    straight = ws.exp_dir("flow", "voicelab") / "epoch_1_whole.pt"
    a = torch.load(straight, map_location="cpu", weights_only=True)
    tr.run_train(ws, "flow", tr.TrainOptions(epochs=1, new=True, **opts))
    res = tr.run_train(ws, "flow", tr.TrainOptions(epochs=2, resume=True, **opts))
    assert res.launched and "exact resume" in (res.run_dir / "train.log").read_text()
    b = torch.load(res.run_dir / "epoch_1_whole.pt", map_location="cpu", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


@pytest.mark.parametrize("kind", ["llm", "flow"])
def test_warm_up_changes_nothing(
    rt: SimpleNamespace, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The untrained warm-up step (on by default on GPUs) leaves weights, draws and buffers as
    they were: an epoch with it ends bit for bit where one without it ends."""
    ws = rt.ws
    opts = {"device": "cpu", "trainer": "voicelab", "epochs": 1, "new": True}
    got = {}
    for warm in ("off", "on"):
        monkeypatch.setenv("VOICELAB_ENGINE_WARMUP", warm)
        res = tr.run_train(ws, kind, tr.TrainOptions(**opts))
        log = (res.run_dir / "train.log").read_text()
        assert ("voicelab engine: warm-up" in log) == (warm == "on")
        got[warm] = torch.load(
            res.run_dir / "epoch_0_whole.pt", map_location="cpu", weights_only=True
        )
    a, b = got["off"], got["on"]
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k


def test_keep_limits_epoch_checkpoints(rt: SimpleNamespace) -> None:
    ws = rt.ws
    tr.run_train(
        ws, "llm", tr.TrainOptions(device="cpu", epochs=3, new=True, keep=1, trainer="voicelab")
    )
    run = ws.exp_dir("llm", "voicelab")
    assert sorted(p.name for p in run.glob("epoch_*_whole.pt")) == ["epoch_2_whole.pt"]
    assert sorted(p.name for p in (run / "resume").iterdir()) == ["epoch_2.pt"]


def test_two_processes_gloo_share_each_epoch(
    rt: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from voicelab.upstream.launcher import SEEN_UTTS_ENV, read_seen_utts

    ws = rt.ws
    seen = tmp_path / "seen"
    monkeypatch.setenv(SEEN_UTTS_ENV, str(seen))
    res = tr.run_train(
        ws,
        "llm",
        tr.TrainOptions(
            device="cpu", gpus=2, epochs=1, new=True, log_interval=1, trainer="voicelab"
        ),
    )
    assert res.launched and res.epochs_done == 1
    per_rank = read_seen_utts(seen)[("TRAIN", 0)]
    assert sorted(per_rank) == [0, 1] and per_rank[0] and per_rank[1]
    both = per_rank[0] + per_rank[1]
    assert len(both) == len(set(both))  # nobody twice
    assert set(both) == set(rt.llm.ds.utts)  # everybody once
    log = (res.run_dir / "train.log").read_text()
    assert re.search(r"TRAIN Batch 0/\d+ .* rank 1\b", log)
    saves = re.findall(r"\[Rank (\d+)\] Checkpoint: save to checkpoint (\S+)", log)
    assert {r for r, _ in saves} == {"0"}
    assert sorted(Path(p).name for _, p in saves) == ["epoch_0_whole.pt", "init.pt"]


@pytest.mark.parametrize("kind", ["llm", "flow"])
def test_compiled_blocks_give_the_eager_loss(rt: SimpleNamespace, kind: str) -> None:
    """``--compile``: the blocks compiled in place (dynamic shapes, two batch shapes) give the
    eager loss and gradients (fp32, relative 1e-4), and the state dict keys do not change."""
    from voicelab.upstream.engine.loop import LossModule
    from voicelab.upstream.engine.steps import compile_blocks, model_blocks, uncompile_blocks

    net = _net(rt, kind).eval()  # no dropout: the compiled and eager passes draw alike
    keys = list(net.state_dict())
    feed = ours(rt, kind, net, quantum=1)
    groups = [[0, 1, 2], [3, 4, 5, 6, 7]]

    def run() -> list[tuple[Any, dict[str, Any]]]:
        outs = []
        for seed, idx in enumerate(groups):
            random.seed(seed)
            torch.manual_seed(seed)
            b = feed.make_packed([idx]) if kind == "llm" else feed.make(idx)
            loss = LossModule(net, kind)(b)["loss"]
            loss.backward()
            outs.append((loss.detach(), _grads(net)))
        return outs

    from torch._dynamo.utils import counters

    eager = run()
    blocks = model_blocks(net, kind)
    compile_blocks(blocks)
    counters.clear()
    try:
        compiled = run()
        assert list(net.state_dict()) == keys
        assert counters["stats"]["unique_graphs"] >= 1  # compiled, not a silent eager run
    finally:
        uncompile_blocks(blocks)
    for (l_e, g_e), (l_c, g_c) in zip(eager, compiled, strict=True):
        assert _rel(l_c, l_e) < 1e-4
        assert max(_rel(g_c[k], g_e[k]) for k in g_e) < 1e-4


@pytest.mark.parametrize("graphs", [False, True], ids=["compiled", "cuda-graphs"])
def test_a_failed_compile_falls_back_to_eager(
    rt: SimpleNamespace, tmp_path: Path, capsys: Any, graphs: bool
) -> None:
    """``--compile auto`` (the default on GPUs): a compile that fails in the warm-up (here: no
    C++ compiler for Inductor) leaves the blocks eager with one line, and training goes on.
    With CUDA graphs by default (``auto``), their failure first compiles the blocks again
    without them (a line), and only that failing too goes eager."""
    import torch._inductor.config as ic

    from voicelab.upstream.engine import loop
    from voicelab.upstream.engine.steps import compile_blocks, model_blocks

    ws = rt.ws
    args = loop.EngineArgs(
        model="llm",
        config=rt.cfg,
        train_data=ws.data_list("train"),
        cv_data=ws.data_list("dev"),
        model_dir=tmp_path / "run",
        qwen_pretrain_path=str(rt.qwen),
        checkpoint=ws.base_model_dir / "llm.pt",
        device="cpu",
        warmup="on",
        max_steps=1,
    )
    r = loop.Run(args)
    r.setup()
    compile_blocks(model_blocks(r.net, "llm"), graphs)  # as auto does on a GPU
    r.compiled, r.graphs = True, graphs
    if graphs:
        r._plan_graphs()
    # torch's own config patch (a monkeypatch of the config module left cpp.cxx unreadable
    # for later tests); no kernels from an earlier test either.
    with ic.patch({"cpp.cxx": ("/nonexistent/c++",), "force_disable_caches": True}):
        torch._dynamo.reset()
        r.warm()
    out = capsys.readouterr().out
    assert "voicelab engine: warning: torch.compile failed" in out and "; eager" in out
    assert ("voicelab engine: warning: CUDA graphs failed in the warm-up (" in out) == graphs
    assert ("; compiled blocks without them (the whole error:" in out) == graphs
    assert not r.graphs and r.train_b.at_least == (0, 0)
    err = tmp_path / "run" / "compile-error-rank0.txt"  # the whole error, for a bug report
    assert str(err) in out and "Traceback" in err.read_text("utf-8")
    assert not r.compiled
    assert all(b._compiled_call_impl is None for b in model_blocks(r.net, "llm"))
    r.train_epoch(0)  # eager from here
    r.close()


@pytest.mark.parametrize("kind", ["llm", "flow"])
def test_cuda_graphs_asked_for_where_they_cannot_apply_say_why(
    rt: SimpleNamespace, tmp_path: Path, kind: str, capsys: Any
) -> None:
    """``--cuda-graphs`` asked for where they cannot apply (the CPU) says why in one line.
    What graphs need is checked here all the same: the llm's passes padded to its run's
    largest, which no epoch's pass exceeds (one shape); the flow's each padded to one of a few
    shapes that holds it (the graphs themselves need a GPU, see the full-size test)."""
    from voicelab.upstream.engine import loop
    from voicelab.upstream.engine.steps import model_blocks, uncompile_blocks

    ws = rt.ws
    args = loop.EngineArgs(
        model=kind,
        config=rt.cfg,
        train_data=ws.data_list("train"),
        cv_data=ws.data_list("dev"),
        model_dir=tmp_path / "run",
        qwen_pretrain_path=str(rt.qwen),
        checkpoint=ws.base_model_dir / f"{kind}.pt",
        device="cpu",
        compile="on",
        cuda_graphs="on",
        max_steps=1,
    )
    r = loop.Run(args)
    r.setup()
    try:
        out = capsys.readouterr().out
        assert not r.graphs and r.train_b.at_least == (0, 0) and not r.graph_shapes
        assert "voicelab engine: no CUDA graphs: they need a CUDA GPU" in out
        r.graphs = True
        r._plan_graphs(most=2)
        if kind == "flow":
            assert 1 <= len(r.graph_shapes) <= 2 and len(r.graph_reps) == len(r.graph_shapes)
            for e in (1, 2):
                mine = r.epoch_batches(e)
                for g in range(0, len(mine), r.fuse):
                    for p in r.passes(mine[g : g + r.fuse]):
                        rows = sum(len(b) for b in p)
                        n = max(len(r.train_b.tokens[i]) for b in p for i in b)
                        shape = r.pass_batch(p)["pad_to"]
                        assert shape in r.graph_shapes and shape[0] >= rows and shape[1] >= n
            planned = list(r.graph_shapes)
            r.start_epoch = 0  # resumed after epoch 0: the same shapes (a compile cache hit)
            r._plan_graphs(most=2)
            assert r.graph_shapes == planned
            return
        rows, width = r.train_b.at_least
        for e in (1, 2):
            mine = r.epoch_batches(e)
            for g in range(0, len(mine), r.fuse):
                batch = r.pass_batch(mine[g : g + r.fuse])
                assert tuple(batch["ids"].shape) == (rows, width)
    finally:
        uncompile_blocks(model_blocks(r.net, kind))
        r.close()


@pytest.mark.parametrize("fuse", ["auto", "off"], ids=["fused-steps", "a-pass-per-batch"])
def test_flow_passes_padded_to_graph_shapes_train_as_unpadded(
    rt: SimpleNamespace, tmp_path: Path, fuse: str
) -> None:
    """The flow's passes under CUDA graphs, on the CPU without the graphs themselves: each pass
    padded to one of two shapes (most passes padded), and with a pass per batch the gradient
    of each step's first pass moved out of the graphs' memory before the second adds to it;
    3 optimizer steps end where the unpadded run's end (dropout off: it draws its masks over
    the padded rows too)."""
    from voicelab.upstream.engine import loop

    ws = rt.ws
    weights, padded = {}, 0
    for graphs in (False, True):
        args = loop.EngineArgs(
            model="flow",
            config=rt.cfg,
            train_data=ws.data_list("train"),
            cv_data=ws.data_list("dev"),
            model_dir=tmp_path / f"run-{graphs}",
            qwen_pretrain_path=str(rt.qwen),
            checkpoint=ws.base_model_dir / "flow.pt",
            device="cpu",
            warmup="off",
            fuse=fuse,
            max_steps=3,
        )
        r = loop.Run(args)
        r.setup()
        for m in r.net.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        if graphs:
            r.graphs = True
            r._plan_graphs(most=2)
            assert len(r.graph_shapes) == 2
            mine = r.epoch_batches(0)[: 3 * r.conf.accum]
            padded = sum(r._shape([b]) != r._own_shape([b]) for b in mine)
        w0 = {k: v.detach().clone() for k, v in r.net.state_dict().items()}
        random.seed(5)
        torch.manual_seed(5)
        r.train_epoch(0)
        assert r.step == 3
        weights[graphs] = {k: v.detach().clone() for k, v in r.net.state_dict().items()}
        r.close()
    assert padded >= 2
    a, b = weights[False], weights[True]
    moved = max(float((a[k] - w0[k]).abs().max()) for k in a if a[k].is_floating_point())
    diff = max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())
    # 3 steps of lr 1e-5 move weights of ~1 by a few hundred float32 roundings: a difference
    # of two roundings is the sums' order, not the padding.
    ulp = torch.finfo(torch.float32).eps * max(float(v.abs().max()) for v in a.values())
    print(f"flow ({fuse}): max weight difference {diff:.3g}, largest change {moved:.3g}")
    assert moved > 0 and diff <= max(2e-3 * moved, 2 * ulp), (diff, moved, ulp)
