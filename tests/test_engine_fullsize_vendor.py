"""The engine's objective against upstream's at full size (issue 16: the tiny model's
equivalence repeated with the full-size randomly initialized CosyVoice 3 models of
``benchmarks/bench_train.py``), fp32 with TF32 off.

On a CUDA GPU it runs by default (the device machine); ``VOICELAB_FULLSIZE_CPU=1`` runs it on
the CPU (about 12 GB of RAM and a few minutes). The same comparisons as
``test_engine_vendor.py``: for the same weights, batch and draws, our loss and accuracy equal
upstream's forward (relative 1e-4), both llm layouts, the llm's packed pass against upstream's
accumulation, the flow, and the flow's fused pass (dropout off); gradients within 1e-3
relative (larger sums than the tiny model's reorder more in fp32).
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from test_engine_vendor import _grads, _rel, upstream_batch
from voicelab.workspace import Workspace

pytestmark = [pytest.mark.vendor, pytest.mark.slow]
torch = pytest.importorskip("torch")
BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
GRAD_REL = 1e-3


@pytest.fixture(scope="module")
def device() -> Any:
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        return torch.device("cuda")
    if os.environ.get("VOICELAB_FULLSIZE_CPU") == "1":
        return torch.device("cpu")
    pytest.skip("needs a CUDA GPU (or VOICELAB_FULLSIZE_CPU=1 and ~12 GB of RAM)")


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory, device: Any) -> SimpleNamespace:
    """bench_train's full-size random base, a minute of its synthetic data, the YAML
    ``voicelab train`` generates for it (without the run's preflight: a full-size model on the
    CPU is refused there) and both cached datasets."""
    from voicelab.upstream.engine import loop, model
    from voicelab.upstream.memory_train import sft_yaml_text
    from voicelab.vendor import cosyvoice_runtime

    sys.path.insert(0, str(BENCH))
    from bench_train import build_base, build_data

    vendor = cosyvoice_runtime()
    model.prepare_runtime(vendor.root)
    root = tmp_path_factory.mktemp("fullsize")
    base = build_base(root / "base", vendor.root)
    ws = Workspace.init(root / "ws", "bench")
    ws.set_option("model", "base_dir", str(base))
    build_data(ws, 1.0, shards=1)
    cfg = root / "train_config.yaml"
    cfg.write_text(sft_yaml_text(vendor.root, base, 2500, accum_grad=2), "utf-8")
    qwen = base / "CosyVoice-BlankEN"
    ns = SimpleNamespace(ws=ws, base=base, cfg=cfg, qwen=qwen, text=cfg.read_text("utf-8"))
    for kind in ("llm", "flow"):
        configs = model.load_configs(cfg, kind, str(qwen))
        ds = loop.load_dataset(ws.data_list("train"), configs, ns.text, qwen, kind, 0, 1)
        setattr(ns, kind, SimpleNamespace(configs=configs, ds=ds))
    return ns


def _net(full: SimpleNamespace, kind: str, device: Any) -> Any:
    from voicelab.upstream.engine import model

    configs = getattr(full, kind).configs
    net, _, _ = model.build_model(configs, kind, full.base / f"{kind}.pt")
    return net.float().to(device).train()


def _feed(full: SimpleNamespace, kind: str, net: Any, device: Any, quantum: int) -> Any:
    from voicelab.upstream.engine import loop

    use_spk = getattr(full, kind).configs["padding"].keywords["use_spk_embedding"]
    return loop.Batches(getattr(full, kind).ds, kind, net, device, use_spk, quantum)


def _compare(mine: Any, expect: Any, g_mine: dict[str, Any], g_up: dict[str, Any]) -> float:
    assert _rel(mine.detach(), expect.detach()) < 1e-4
    assert g_mine.keys() == g_up.keys()
    worst = max(_rel(g_mine[k], g_up[k]) for k in g_up)
    print(f"loss {float(mine.detach()):.6f} vs {float(expect):.6f}, worst gradient {worst:.2e}")
    assert worst < GRAD_REL, worst
    return worst


@pytest.mark.parametrize("layout", ["unistream", "bistream"])
def test_full_size_llm_loss_equals_upstream(
    full: SimpleNamespace, device: Any, layout: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from voicelab.upstream.engine.loop import LossModule

    net = _net(full, "llm", device)
    idx = list(range(min(4, len(full.llm.ds))))
    monkeypatch.setattr(random, "random", lambda: 0.1 if layout == "bistream" else 0.9)
    up = net(upstream_batch(full, "llm", idx), device)
    up["loss"].backward()
    g_up = _grads(net)
    mine = LossModule(net, "llm")(_feed(full, "llm", net, device, 32).make(idx))
    mine["loss"].backward()
    _compare(mine["loss"], up["loss"], _grads(net), g_up)
    assert abs(float(mine["acc"]) - float(up["acc"])) < 1e-6


def test_full_size_packed_pass_equals_upstreams_accumulation(
    full: SimpleNamespace, device: Any
) -> None:
    from voicelab.upstream.engine.loop import LossModule

    net = _net(full, "llm", device)
    n = len(full.llm.ds)
    groups = [list(range(0, n // 2)), list(range(n // 2, n))]
    random.seed(5)
    losses = []
    for idx in groups:
        up = net(upstream_batch(full, "llm", idx), device)
        (up["loss"] / len(groups)).backward()
        losses.append(up["loss"].detach())
    g_up = _grads(net)
    random.seed(5)
    mine = LossModule(net, "llm")(_feed(full, "llm", net, device, 32).make_packed(groups))
    mine["loss"].backward()
    _compare(mine["loss"], sum(losses) / len(losses), _grads(net), g_up)


def test_full_size_flow_loss_equals_upstream(full: SimpleNamespace, device: Any) -> None:
    from voicelab.upstream.engine.loop import LossModule

    net = _net(full, "flow", device)
    idx = list(range(min(4, len(full.flow.ds))))
    random.seed(3)
    torch.manual_seed(3)
    up = net(upstream_batch(full, "flow", idx), device)
    up["loss"].backward()
    g_up = _grads(net)
    random.seed(3)
    torch.manual_seed(3)
    mine = LossModule(net, "flow")(_feed(full, "flow", net, device, 1).make(idx))
    mine["loss"].backward()
    _compare(mine["loss"], up["loss"], _grads(net), g_up)


def test_full_size_fused_flow_pass_equals_upstreams_accumulation(
    full: SimpleNamespace, device: Any
) -> None:
    from voicelab.upstream.engine.loop import LossModule

    net = _net(full, "flow", device).eval()  # dropout off: see the tiny model's test
    n = len(full.flow.ds)
    groups = [list(range(0, n // 2)), list(range(n // 2, n))]
    random.seed(4)
    torch.manual_seed(4)
    ups = [net(upstream_batch(full, "flow", idx), device)["loss"] for idx in groups]
    (sum(ups) / 2).backward()
    g_up = _grads(net)
    random.seed(4)
    torch.manual_seed(4)
    mine = LossModule(net, "flow")(_feed(full, "flow", net, device, 1).make_fused(groups))
    mine["loss"].backward()
    _compare(mine["loss"], sum(ups) / 2, _grads(net), g_up)


def _against_eager(
    blocks: list[Any],
    cases: list[Any],
    run: Any,
    *,
    graphs: bool,
    amp: bool,
    shapes: int = 1,
    pad: Any = None,
    label: str = "",
) -> None:
    """``run(case, graphs, bf16) -> (loss, grads)`` for each case: the eager fp32 reference
    first (and under bf16 what bf16 costs the compiled blocks without graphs), then ``pad()``
    and the compiled blocks (with ``graphs``, their CUDA graphs: recorded on the second
    round, replayed from the third) for three rounds: fp32 equal, bf16 within 1.5x that
    cost."""
    from voicelab.upstream.engine.steps import compile_blocks, uncompile_blocks

    def worst(a: dict[str, Any], b: dict[str, Any]) -> float:
        return max(_rel(a[k], b[k]) for k in b)

    reference = [run(c, False, False) for c in cases]
    bf16_cost = [0.0] * len(cases)
    if amp:
        compile_blocks(blocks)
        bf16_cost = [worst(run(c, False, True)[1], reference[i][1]) for i, c in enumerate(cases)]
        uncompile_blocks(blocks)
    if pad is not None:
        pad()
    compile_blocks(blocks, graphs, shapes)
    try:
        for _ in range(3):
            for i, c in enumerate(cases):
                (loss, grads), (mine, g_mine) = reference[i], run(c, graphs, amp)
                if not amp:
                    _compare(mine, loss, g_mine, grads)
                    continue
                err = worst(g_mine, grads)
                print(f"{label}bf16: graphs {err:.2e}, compiled without graphs {bf16_cost[i]:.2e}")
                assert _rel(mine, loss) < 1e-2
                assert err <= 1.5 * bf16_cost[i] + 1e-3, (err, bf16_cost[i])
    finally:
        uncompile_blocks(blocks)


@pytest.mark.parametrize(
    ("graphs", "amp"),
    [(False, False), (True, False), (True, True)],
    ids=["compiled", "cuda-graphs", "cuda-graphs-bf16"],
)
def test_full_size_compiled_blocks_give_the_eager_loss(
    full: SimpleNamespace, device: Any, graphs: bool, amp: bool
) -> None:
    """The compiled blocks on the GPU, and with ``--cuda-graphs`` their CUDA graphs
    (every pass padded to one shape, as the engine does; recorded on the second pass, replayed
    from the third), give the eager fp32 loss and gradients pass after pass, through the
    engine's own ``train_step`` in training mode. Under bf16 autocast the graphs may differ
    from fp32 by what bf16 itself costs (the compiled blocks without graphs, measured first),
    not more."""
    if device.type != "cuda":
        pytest.skip("torch.compile's CUDA graphs need a CUDA GPU")
    from voicelab.upstream.engine import llm_loss
    from voicelab.upstream.engine.loop import LossModule
    from voicelab.upstream.engine.steps import mark_step, model_blocks, train_step

    net = _net(full, "llm", device)  # training mode, as the engine (the llm has no dropout)
    feed = _feed(full, "llm", net, device, 32)
    n = len(full.llm.ds)
    groups = [[list(range(0, n // 2))], [list(range(n // 2, n))]]  # two passes
    blocks = model_blocks(net, "llm")

    def one(group: list[list[int]], with_graphs: bool, bf16: bool) -> tuple[Any, dict[str, Any]]:
        mark_step(with_graphs)
        random.seed(7)
        out = train_step(LossModule(net, "llm"), feed.make_packed(group), 1, bf16, device, True)
        return out["loss"].clone(), _grads(net)

    def pad() -> None:  # every pass one shape, as the engine pads them for graphs
        if graphs:
            shapes = [llm_loss.packed_shape([len(feed.pairs[i][0].ids) for i in g[0]])
                      for g in groups]  # fmt: skip
            feed.at_least = (max(r for r, _ in shapes) + 1, max(w for _, w in shapes))

    try:
        _against_eager(blocks, groups, one, graphs=graphs, amp=amp, pad=pad)
    finally:
        feed.at_least = (0, 0)


@pytest.mark.parametrize("amp", [False, True], ids=["cuda-graphs", "cuda-graphs-bf16"])
def test_full_size_flow_cuda_graphs_give_the_eager_loss(
    full: SimpleNamespace, device: Any, amp: bool
) -> None:
    """The flow's compiled blocks replaying CUDA graphs as the engine runs them: passes padded
    to one of a few shapes (two here: a fused pass of two batches, and one batch), recorded on
    their second run, replayed from the third; a step of two one-batch passes accumulates
    through ``own_grads``. Loss and gradients as the eager unpadded passes, step after step
    (fp32); under bf16 within what bf16 costs the compiled blocks without graphs. Dropout off
    (eval mode): the padded rows would draw more dropout masks."""
    if device.type != "cuda":
        pytest.skip("torch.compile's CUDA graphs need a CUDA GPU")
    from voicelab.upstream.engine.batching import padded
    from voicelab.upstream.engine.loop import LossModule
    from voicelab.upstream.engine.steps import mark_step, model_blocks, own_grads, train_step

    net = _net(full, "flow", device).eval()
    feed = _feed(full, "flow", net, device, 32)
    params = [p for p in net.parameters() if p.requires_grad]
    n = len(full.flow.ds)
    a, b = list(range(0, n // 2)), list(range(n // 2, n))
    fused, split = [[a, b]], [[a], [b]]  # an optimizer step's passes each

    def shape(g: list[list[int]]) -> tuple[int, int]:  # room to pad, rows and length
        rows, most = sum(map(len, g)), max(len(feed.tokens[i]) for x in g for i in x)
        return rows + 1, padded(most, 32) + 32

    def step(passes: list[list[list[int]]], graphs: bool, bf16: bool) -> tuple[Any, Any]:
        net.zero_grad(set_to_none=True)
        losses = []
        for k, g in enumerate(passes):
            mark_step(graphs)
            random.seed(9 + k)
            torch.manual_seed(9 + k)
            batch = feed.make_fused(g, shape(g) if graphs else None)
            out = train_step(LossModule(net, "flow"), batch, 2, bf16, device, True, batches=len(g))
            losses.append(out["loss"].clone())
            if graphs and k < len(passes) - 1:
                own_grads(params)
        return torch.stack(losses).sum(), _grads(net)

    _against_eager(model_blocks(net, "flow"), [fused, split], step, graphs=True, amp=amp,
                   shapes=2, label="flow ")  # fmt: skip
