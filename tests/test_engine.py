"""VoiceLab's training engine without the vendor: batching, cache keys, keep-N, step math, and
the ``--trainer`` plumbing of ``voicelab train``."""

from __future__ import annotations

import importlib.util
import itertools
import random
import threading
from pathlib import Path
from typing import Any

import pytest

from voicelab.errors import ConfigError
from voicelab.stages import train as tr
from voicelab.upstream.engine import batching, checkpoint, data
from voicelab.workspace import Workspace


# ---- batching -----------------------------------------------------------------------------------
def test_dynamic_batches_follow_upstreams_budget() -> None:
    frames = [100, 120, 130, 300, 310, 600]
    out = batching.dynamic_batches(range(6), frames, 400)
    # longest * count never passes the budget; a clip longer than it stands alone.
    assert out == [[0, 1, 2], [3], [4], [5]]
    for b in out:
        assert len(b) == 1 or max(frames[i] for i in b) * len(b) <= 400
    # The same count as train.py's estimate of upstream's batches.
    assert len(out) == tr.dynamic_batches(frames, 400)


@pytest.mark.parametrize(("world", "accum"), [(1, 1), (1, 2), (2, 2), (3, 1), (4, 3)])
def test_epoch_batches_use_each_utterance_once(world: int, accum: int) -> None:
    rng = random.Random(0)
    frames = [rng.randint(50, 400) for _ in range(137)]
    batches = batching.epoch_batches(frames, 1200, epoch=3, world=world, accum=accum)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(137))
    assert len(batches) % (world * accum) == 0
    for b in batches:
        assert max(frames[i] for i in b) * len(b) <= 1200
    shards = [batching.shard(batches, r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # no rank waits for another
    assert sorted(i for s in shards for b in s for i in b) == list(range(137))


def test_epoch_batches_are_seeded_by_epoch_and_leave_global_random_alone() -> None:
    frames = list(range(50, 450, 3))
    random.seed(5)
    before = random.getstate()
    a = batching.epoch_batches(frames, 1000, epoch=1)
    assert random.getstate() == before
    assert a == batching.epoch_batches(frames, 1000, epoch=1)
    assert a != batching.epoch_batches(frames, 1000, epoch=2)
    assert batching.epoch_batches(frames, 1000, epoch=0, shuffle=False) == batching.epoch_batches(
        frames, 1000, epoch=9, shuffle=False
    )


def test_split_to_multiple_and_its_limit() -> None:
    assert batching.split_to_multiple([[1, 2, 3, 4], [5]], 3) == [[1, 2], [3, 4], [5]]
    # Nothing left to split: the remainder is dropped rather than a rank left waiting.
    assert batching.split_to_multiple([[1], [2], [3]], 2) == [[1], [2]]


def test_padding_quantum_and_steps() -> None:
    assert batching.padded(1, 32) == 32
    assert batching.padded(33, 32) == 64
    assert batching.padded(7, 1) == 7
    assert batching.optimizer_steps(10, 2) == 5
    assert batching.optimizer_steps(9, 2) == 4
    assert batching.optimizer_steps(3, 0) == 3


def test_flow_fuses_a_step_only_where_padding_together_costs_little() -> None:
    # Two batches of like lengths: one pass (6 x 224 against 3 x 192 + 3 x 224, 1.08x).
    assert batching.fuse_pays([[180, 185, 190], [200, 205, 210]], 32)
    # Many short utterances beside a few long ones: 12 x 512 against 10 x 64 + 2 x 512
    # (3.7x the DiT's work), a pass per batch.
    assert not batching.fuse_pays([[40] * 10, [480, 500]], 32)
    # The limit is the slack: exactly at it fuses, above it does not.
    assert batching.fuse_pays([[32], [64]], 32, slack=4 / 3)
    assert not batching.fuse_pays([[32], [64]], 32, slack=1.3)
    # On lengths spread like real recordings, fusing only where it pays does far less padding
    # than fusing every step.
    rng = random.Random(1)
    tokens = [max(25, min(500, int(rng.lognormvariate(4.8, 0.6)))) for _ in range(700)]
    batches = batching.epoch_batches([2 * t for t in tokens], 2500, epoch=1, accum=2)

    def work(passes: list[list[list[int]]]) -> int:
        return sum(
            sum(len(b) for b in p) * batching.padded(max(tokens[i] for b in p for i in b), 32)
            for p in passes
        )

    steps = [batches[k : k + 2] for k in range(0, len(batches), 2)]
    every = work(steps)

    def split(g: list[list[int]]) -> list[list[list[int]]]:
        fuse = batching.fuse_pays([[tokens[i] for i in b] for b in g], 32)
        return [g] if fuse else [[b] for b in g]

    chosen = work([p for g in steps for p in split(g)])
    alone = work([[b] for b in batches])
    assert chosen <= batching.FUSE_SLACK * alone and chosen < 0.75 * every


def _flow_pass_shapes(
    lengths: str, utterances: int, epochs: int, max_frames: int = 2000
) -> list[tuple[int, int]]:
    """(rows, padded speech tokens) of every flow pass of a run, as the engine batches and
    fuses them (accum_grad 2): lengths ``uniform`` like the benchmark's (3-12 s) or
    ``spread`` like real recordings (lognormal, 1-20 s)."""
    rng = random.Random(2)
    if lengths == "spread":
        tokens = [max(25, min(500, int(rng.lognormvariate(4.8, 0.6)))) for _ in range(utterances)]
    else:
        tokens = [int(rng.uniform(75, 300)) for _ in range(utterances)]
    frames = [2 * t for t in tokens]
    shapes = []
    for e in range(epochs):
        batches = batching.epoch_batches(frames, max_frames, epoch=e, accum=2)
        for k in range(0, len(batches), 2):
            lens = [[tokens[i] for i in b] for b in batches[k : k + 2]]
            passes = [[n for b in lens for n in b]] if batching.fuse_pays(lens, 32) else lens
            shapes += [(len(p), batching.padded(max(p), 32)) for p in passes]
    return shapes


def test_graph_plan_takes_the_shapes_that_pay_in_the_run() -> None:
    """``auto``'s choice of the flow's graph shapes: the fewest predicted seconds (compiling
    the shapes, then the run's passes padded to them) against the run without graphs."""
    assert batching.graph_plan([]) == ([], 0.0, 0.0)
    costs = batching.GraphCosts()
    plans = {}
    for lengths, epochs in (("uniform", 3), ("uniform", 30), ("spread", 3), ("spread", 30)):
        shapes = _flow_pass_shapes(lengths, utterances=316, epochs=epochs)
        chosen, with_graphs, without = batching.graph_plan(shapes)
        plans[lengths, epochs] = chosen
        assert without == pytest.approx(len(shapes) * costs.pass_s)
        assert (with_graphs < without) == bool(chosen)
        largest = max(batching.dit_work(*s) for s in shapes)
        assert all(batching.dit_work(*s) <= costs.memory * largest for s in chosen)
        for s in shapes:  # every pass fits a chosen shape
            assert not chosen or batching.graph_shape(s, chosen) in chosen
    # Like the benchmark's lengths (40 min, 3 epochs): one shape (its compile replaces the
    # dynamic one); a longer run repays more shapes and less padding.
    assert len(plans["uniform", 3]) == 1 and len(plans["uniform", 30]) >= 2
    # Lengths spread like real recordings: one or two shapes pad too much (memory, work), and
    # a short run does not repay three compiles; a long one does.
    assert plans["spread", 3] == [] and len(plans["spread", 30]) >= 3
    # A card that is busy computing (passes cost their work, not their launches): never.
    shapes = _flow_pass_shapes("uniform", utterances=316, epochs=30)
    mean_work = sum(batching.dit_work(*s) for s in shapes) / len(shapes)
    slow = batching.GraphCosts(pass_s=10 * costs.work_s * mean_work, work_s=10 * costs.work_s)
    assert batching.graph_plan(shapes, costs=slow)[0] == []
    # Compiling dear: one shape at most.
    dear = batching.GraphCosts(shape_s=1e6)
    assert len(batching.graph_plan(shapes, costs=dear)[0]) == 1


def test_flow_graph_shapes_hold_every_pass_with_little_padding() -> None:
    """CUDA graphs replay a few shapes: every pass fits one of at most ``most`` shapes, and
    on lengths spread like real recordings (the batching's own passes, 30 epochs) padding to
    them costs far less than padding every pass to the run's largest."""
    # As many distinct shapes as allowed: each is its own, nothing padded.
    assert batching.graph_shapes([(4, 64), (2, 128), (4, 64), (1, 256)]) == [
        (4, 64), (2, 128), (1, 256)]  # fmt: skip
    assert batching.graph_shapes([]) == []
    shapes = _flow_pass_shapes("spread", utterances=700, epochs=30, max_frames=2500)
    for most in (1, 4, 8):
        chosen = batching.graph_shapes(shapes, most)
        assert 1 <= len(chosen) <= most
        for s in shapes:
            r, t = batching.graph_shape(s, chosen)
            assert (r, t) in chosen and r >= s[0] and t >= s[1]
    own = sum(batching.dit_work(*s) for s in shapes)

    def padded(chosen: list[tuple[int, int]]) -> float:
        return batching.padded_work(shapes, chosen)

    largest = [(max(r for r, _ in shapes), max(t for _, t in shapes))]
    eight = batching.graph_shapes(shapes, 8)
    assert padded(eight) < 1.8 < 4 < padded(largest)
    direct = sum(batching.dit_work(*batching.graph_shape(s, eight)) for s in shapes) / own
    assert abs(padded(eight) - direct) < 1e-9  # the log line's figure, pass by pass
    # Not one shape bigger than 1.6x the most work any pass holds (the memory a pass needs).
    assert max(batching.dit_work(*s) for s in eight) <= 1.6 * max(
        batching.dit_work(*s) for s in shapes)  # fmt: skip


# ---- cache keys ------------------------------------------------------------------------------
def test_cache_key_changes_with_every_input(tmp_path: Path) -> None:
    base = data.cache_key("aa", {"filter": {"max_length": 6000}}, "tok", "llm")
    assert base == data.cache_key("aa", {"filter": {"max_length": 6000}}, "tok", "llm")
    others = {
        data.cache_key("ab", {"filter": {"max_length": 6000}}, "tok", "llm"),
        data.cache_key("aa", {"filter": {"max_length": 3000}}, "tok", "llm"),
        data.cache_key("aa", {"filter": {"max_length": 6000}}, "tok2", "llm"),
        data.cache_key("aa", {"filter": {"max_length": 6000}}, "tok", "flow"),
    }
    assert base not in others and len(others) == 4
    pq = tmp_path / "part-00.parquet"
    assert data.cache_path(pq, "flow", base).parent == tmp_path
    assert data.cache_path(pq, "flow", base).name.startswith("part-00.flow-")


def test_cache_key_follows_file_content_not_its_name(tmp_path: Path) -> None:
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    a.write_bytes(b"same bytes")
    b.write_bytes(b"same bytes")
    assert data.file_sha256(a) == data.file_sha256(b)
    b.write_bytes(b"other bytes")
    assert data.file_sha256(a) != data.file_sha256(b)
    tok = tmp_path / "qwen"
    tok.mkdir()
    (tok / "vocab.json").write_text("{}")
    (tok / "model.safetensors").write_bytes(b"weights")
    d1 = data.tokenizer_digest(tok)
    (tok / "model.safetensors").write_bytes(b"other weights")  # weights do not count
    assert data.tokenizer_digest(tok) == d1
    (tok / "vocab.json").write_text('{"a": 1}')
    assert data.tokenizer_digest(tok) != d1


def test_data_values_pick_the_data_keys() -> None:
    text = "sample_rate: 24000\nfilter: !name:x.filter\n    max_length: 6000\nllm: !new:x.Y\n"
    vals = data.data_values(text)
    assert vals["sample_rate"] == 24000 and vals["filter"] == {"max_length": 6000}
    assert "llm" not in vals


# ---- checkpoints -------------------------------------------------------------------------------
def test_keep_n_prunes_oldest_epochs(tmp_path: Path) -> None:
    assert checkpoint.to_prune([0, 1, 2, 3], 2) == [0, 1]
    assert checkpoint.to_prune([0, 1], 2) == []
    assert checkpoint.to_prune([0, 1, 2], None) == []
    for e in range(4):
        (tmp_path / f"epoch_{e}_whole.pt").write_bytes(b"x")
        (tmp_path / f"epoch_{e}_whole.yaml").write_text("epoch: 0\n")
        checkpoint.resume_path(tmp_path, e).parent.mkdir(exist_ok=True)
        checkpoint.resume_path(tmp_path, e).write_bytes(b"x")
    (tmp_path / "init.pt").write_bytes(b"x")
    (tmp_path / "epoch_3_step_40.pt").write_bytes(b"x")
    assert checkpoint.prune(tmp_path, 1) == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == [
        "epoch_3_step_40.pt",
        "epoch_3_whole.pt",
        "init.pt",
    ]
    assert sorted(p.name for p in (tmp_path / "resume").iterdir()) == ["epoch_3.pt"]
    assert checkpoint.epochs_on_disk(tmp_path) == [3]


def test_async_saver_writes_upstream_files(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    import yaml

    saved: list[Path] = []
    saver = checkpoint.AsyncSaver(tmp_path, keep=1, on_saved=saved.append)
    for e in range(3):
        w = {"w": torch.full((3,), float(e)), "epoch": e, "step": 10 * e}
        res = (checkpoint.resume_path(tmp_path, e), {"step": 10 * e})
        saver.save(checkpoint.whole_name(e), w, {"loss_dict": {"loss": 1.0 / (e + 1)}}, res)
    saver.wait()
    assert [p.name for p in saved] == [f"epoch_{e}_whole.pt" for e in range(3)]
    assert checkpoint.epochs_on_disk(tmp_path) == [2]
    sd = torch.load(tmp_path / "epoch_2_whole.pt", weights_only=True)
    assert sd["epoch"] == 2 and sd["step"] == 20 and torch.equal(sd["w"], torch.full((3,), 2.0))
    info = yaml.safe_load((tmp_path / "epoch_2_whole.yaml").read_text())
    assert info["loss_dict"]["loss"] == pytest.approx(1 / 3) and "save_time" in info


@pytest.mark.parametrize(
    ("held", "max_age"),
    [("weights", 600.0), ("resume", 600.0), ("weights", 0.0)],
    ids=["before-its-write", "part-way", "too-old-to-drop"],
)
def test_a_superseded_resume_state_is_dropped_while_the_writer_is_behind(
    tmp_path: Path, held: str, max_age: float
) -> None:
    """Epochs that end faster than the writer writes: epoch 0's resume state (the optimizer,
    twice the weights) is not written once epoch 1's snapshot supersedes it, whether its writer
    had not begun it or was part-way through it, unless the newest written is older than
    ``resume_max_age``; every epoch's weights are written, and the last resume state."""
    torch = pytest.importorskip("torch")
    gate = threading.Event()

    class Gate:  # pickled with epoch 0's state: holds its writer there until the test lets go
        def __reduce__(self) -> tuple[Any, ...]:
            assert gate.wait(30)
            return (int, (0,))

    resumes_at_save: dict[str, list[str]] = {}

    def on_saved(pt: Path) -> None:
        resumes_at_save[pt.name] = sorted(p.name for p in (tmp_path / "resume").glob("*.pt"))

    saver = checkpoint.AsyncSaver(tmp_path, keep=None, on_saved=on_saved, use_fork=False)
    saver.resume_max_age = max_age

    def epoch(e: int) -> tuple[Any, ...]:
        gated = {"gate": Gate()} if e == 0 else {}
        w = {"w": torch.full((3,), float(e)), "epoch": e, **(gated if held == "weights" else {})}
        m = {"m": torch.full((6,), float(e)), **(gated if held == "resume" else {})}
        return checkpoint.whole_name(e), w, {"epoch": e}, (checkpoint.resume_path(tmp_path, e), m)

    saver.save(*epoch(0))  # its writer now waits inside the weights or the resume state
    saver.make_room(0)  # what the loop does before epoch 1's snapshot: epoch 0's is superseded
    gate.set()
    saver.save(*epoch(1))
    saver.wait()
    assert checkpoint.epochs_on_disk(tmp_path) == [0, 1]
    dropped = max_age > 0
    assert resumes_at_save["epoch_0_whole.pt"] == ([] if dropped else ["epoch_0.pt"])
    assert saver.skipped_resume == int(dropped)
    assert [p.name for p in (tmp_path / "resume").iterdir()] == ["epoch_1.pt"]  # no temp left
    last = torch.load(checkpoint.resume_path(tmp_path, 1), weights_only=True)
    assert torch.equal(last["m"], torch.full((6,), 1.0))


def test_a_stopped_torch_save_leaves_nothing(tmp_path: Path) -> None:
    """A resume state's write stopped between its records (torch's writer then fails closing
    the archive): :class:`checkpoint.Superseded`, no file, no temp folder; unstopped, the file
    loads."""
    torch = pytest.importorskip("torch")
    state = {i: {"exp_avg": torch.randn(4096), "exp_avg_sq": torch.randn(4096)} for i in range(8)}
    dest = tmp_path / "resume" / "epoch_3.pt"

    def stop_after(writes: int) -> Any:
        calls = itertools.count(1)
        return lambda: next(calls) > writes

    for writes in range(40):  # stopped after every number of writes the archive takes
        with pytest.raises(checkpoint.Superseded):
            checkpoint.atomic_torch_save(state, dest, stop=stop_after(writes))
        assert list((tmp_path / "resume").iterdir()) == []
    checkpoint.atomic_torch_save(state, dest, stop=lambda: False)
    back = torch.load(dest, weights_only=True)
    assert torch.equal(back[7]["exp_avg_sq"], state[7]["exp_avg_sq"])


def test_a_gpu_snapshot_needs_room_beside_the_training_peak() -> None:
    gib = 1 << 30
    # 6 GiB of state, 8 GiB of activations at the peak: 15.4 GiB with the spare tenth.
    assert checkpoint.snapshot_fits(16 * gib, 6 * gib, 8 * gib)
    assert not checkpoint.snapshot_fits(12 * gib, 6 * gib, 8 * gib)  # the old rule said yes
    assert checkpoint.snapshot_fits(7 * gib, 6 * gib, -gib)  # nothing beyond the state


def test_only_the_newest_epoch_keeps_its_resume_state(tmp_path: Path) -> None:
    """Without --keep every epoch's weights stay, but one resume state (2x the weights)."""
    for e in (2, 10, 9):
        checkpoint.resume_path(tmp_path, e).parent.mkdir(exist_ok=True)
        checkpoint.resume_path(tmp_path, e).write_bytes(b"x")
        (tmp_path / f"epoch_{e}_whole.pt").write_bytes(b"x")
    (tmp_path / "resume" / "lora_base.pt").write_bytes(b"x")  # not an epoch's: stays
    assert checkpoint.prune(tmp_path, None) == []
    assert checkpoint.epochs_on_disk(tmp_path) == [2, 9, 10]
    assert sorted(p.name for p in (tmp_path / "resume").iterdir()) == [
        "epoch_10.pt",
        "lora_base.pt",
    ]


@pytest.mark.skipif(
    not (importlib.util.find_spec("torch") and __import__("torch").cuda.is_available()),
    reason="needs a CUDA GPU (the device machine)",
)
def test_save_from_gpu_writes_the_snapshot_not_later_changes(tmp_path: Path) -> None:
    """The GPU-side snapshot: what the files hold is the state at save time, though the
    originals change on the GPU while the copy thread works."""
    import torch

    w = torch.arange(1 << 22, dtype=torch.float32, device="cuda")
    saver = checkpoint.AsyncSaver(tmp_path, keep=None, on_saved=lambda p: None)
    snap = checkpoint.device_clone({"w": w, "n": torch.tensor(3)})
    res = (checkpoint.resume_path(tmp_path, 0), {"m": checkpoint.device_clone(w * 2)})
    saver.save_from_gpu("epoch_0_whole", {**snap, "epoch": 0}, {"epoch": 0}, res)
    for _ in range(20):
        w.add_(1.0)  # training goes on
    saver.wait()
    sd = torch.load(tmp_path / "epoch_0_whole.pt", weights_only=True)
    assert torch.equal(sd["w"], torch.arange(1 << 22, dtype=torch.float32))
    assert int(sd["n"]) == 3 and sd["epoch"] == 0
    m = torch.load(checkpoint.resume_path(tmp_path, 0), weights_only=True)["m"]
    assert m.device.type == "cpu" and float(m[5]) == 10.0


def test_async_saver_runs_two_writers_when_ram_allows(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not checkpoint.fork_available():
        pytest.skip("no os.fork here")
    saved: list[Path] = []
    saver = checkpoint.AsyncSaver(tmp_path, keep=2, on_saved=saved.append)
    w = {"w": torch.zeros(1 << 20)}  # 4 MB each
    for e in range(4):
        saver.make_room(checkpoint.tree_bytes(w))
        assert len(saver._writers) <= 1  # room for this one: at most max_writers in flight
        saver.save(checkpoint.whole_name(e), {**w, "epoch": e}, {"epoch": e})
        assert len(saver._writers) <= 2
    # A snapshot larger than the RAM there is: every writer finishes first.
    ram = checkpoint.available_ram()
    if ram is not None:
        saver.make_room(ram * 2)
        assert saver._writers == []
    saver.wait()
    assert [p.name for p in saved] == [f"epoch_{e}_whole.pt" for e in range(4)]
    assert checkpoint.epochs_on_disk(tmp_path) == [2, 3]


def test_async_saver_reraises_write_errors(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    target = tmp_path / "file-not-dir"
    target.write_text("x")
    saver = checkpoint.AsyncSaver(target, keep=None, on_saved=lambda p: None)
    saver.save("epoch_0_whole", {"epoch": 0}, {})
    with pytest.raises(OSError):
        saver.wait()


# ---- voicelab train plumbing ---------------------------------------------------------------------
def test_trainer_choice_and_run_dirs(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "w", "xuan")
    assert tr.resolve_trainer(tr.TrainOptions(), {}) == "voicelab"
    assert tr.resolve_trainer(tr.TrainOptions(), {"trainer": "upstream"}) == "upstream"
    assert tr.resolve_trainer(tr.TrainOptions(trainer="upstream"), {}) == "upstream"
    with pytest.raises(ConfigError, match="belongs to upstream"):
        tr.resolve_trainer(tr.TrainOptions(engine="deepspeed"), {})
    with pytest.raises(ConfigError, match="--keep, --compile and --cuda-graphs"):
        tr.resolve_trainer(tr.TrainOptions(trainer="upstream", keep=2), {})
    with pytest.raises(ConfigError, match="options of VoiceLab's trainer"):
        tr.resolve_trainer(tr.TrainOptions(trainer="upstream", cuda_graphs=True), {})
    with pytest.raises(ConfigError, match="replays the compiled blocks"):
        tr.resolve_trainer(tr.TrainOptions(cuda_graphs=True, compile=False), {})
    with pytest.raises(ConfigError, match="unknown --trainer"):
        tr.resolve_trainer(tr.TrainOptions(trainer="x"), {})
    assert tr.run_name("voicelab", "torch_ddp") == "voicelab"
    assert tr.run_name("upstream", "deepspeed") == "deepspeed"
    # With no run yet, readers look where the configured trainer will write.
    assert ws.exp_dir("llm").name == "voicelab"
    ws.set_option("train", "trainer", "upstream")
    assert ws.exp_dir("llm").name == "torch_ddp"


def test_the_run_summary_names_the_best_checkpoint_file(tmp_path: Path) -> None:
    # The progress line counts epochs from 1, checkpoint files from 0: the summary names the file.
    res = tr.TrainResult("llm", tmp_path, True, 3, 3, 8.89301, 2, tmp_path / "epoch_2_whole.pt")
    head, best = res.summary_lines()
    assert head == f"llm: 3/3 epochs in {tmp_path}"
    assert best.startswith("best CV loss: 8.8930 (epoch_2_whole.pt); last checkpoint: ")
    assert tr.TrainResult("flow", tmp_path, False).summary_lines()[1].startswith("best CV loss: -;")
    # `voicelab run` logs a stage result's own lines, one by one.
    from voicelab.runner.pipeline import StageRun, _summary

    assert _summary(StageRun(None, res)) == [head, best]  # type: ignore[arg-type]


def test_build_launch_for_the_engine(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "w", "xuan")
    plan = tr.RunPlan(
        ws.exp_dir("llm", "voicelab"),
        ws.tensorboard_dir("llm", "voicelab"),
        tmp_path / "llm.pt",
        None,
        None,
    )

    launch_args: dict[str, Any] = dict(
        vendor_root=tmp_path / "vendor", model="llm",
        config=tmp_path / "c.yaml", train_list=tmp_path / "t.list",
        cv_list=tmp_path / "d.list", base_dir=tmp_path, plan=plan, num_workers=1,
        prefetch=2, trainer="voicelab", amp=False,
    )  # fmt: skip

    def engine_launch(**kw: Any) -> tr.Launch:
        spec = tr.LaunchSpec(**{**launch_args, **kw})
        return tr.build_launch(spec, python="python3", base_env={})

    launch = engine_launch(device="cpu", nproc=2, opts=tr.TrainOptions(keep=3), amp=False)
    argv = launch.argv
    # The compiled blocks' cache outlives the temp dir; the launch script says where it is.
    cache = launch.env["TORCHINDUCTOR_CACHE_DIR"]
    assert cache == str(Path.home() / ".cache" / "voicelab" / "torch-compile")
    assert f"export TORCHINDUCTOR_CACHE_DIR={cache}" in launch.script()
    xdg = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    assert tr.compile_cache_dir(xdg) == tmp_path / "xdg" / "voicelab" / "torch-compile"
    mine = tr.build_launch(
        tr.LaunchSpec(**{**launch_args, "device": "cpu", "nproc": 1, "opts": tr.TrainOptions()}),
        python="python3",
        base_env={"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "own")},
    )
    assert mine.env["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "own")  # the user's stays
    assert argv[argv.index("-m", 3) + 1] == "voicelab.upstream.engine"
    assert argv[argv.index("--nproc_per_node") + 1] == "2"
    assert argv[argv.index("--keep") + 1] == "3"
    assert argv[argv.index("--model_dir") + 1] == str(plan.run_dir)
    assert "--train_engine" not in argv and "--use_amp" not in argv
    assert launch.env["CUDA_VISIBLE_DEVICES"] == ""
    assert "--memory" not in argv and "--max-vram" not in argv  # full: the plain engine
    assert "--cuda-graphs" not in argv

    from voicelab.upstream.engine.__main__ import parse

    def graphs(opts: tr.TrainOptions) -> str:
        launch = engine_launch(device="cuda", nproc=1, opts=opts, amp=True)
        return parse(launch.argv[launch.argv.index("voicelab.upstream.engine") + 1 :]).cuda_graphs

    # CUDA graphs: the engine's "auto" unless asked for or turned off.
    assert graphs(tr.TrainOptions()) == "auto"
    assert graphs(tr.TrainOptions(cuda_graphs=True)) == "on"
    assert graphs(tr.TrainOptions(cuda_graphs=False)) == "off"

    # A memory mode and a cap travel to the engine, whose parser takes them.
    launch = engine_launch(
        device="cuda",
        nproc=1,
        opts=tr.TrainOptions(max_vram=6),
        amp=True,
        memory_mode="checkpointing+8bit+lora",
    )
    args = parse(launch.argv[launch.argv.index("voicelab.upstream.engine") + 1 :])
    assert (args.memory, args.max_vram, args.use_amp) == ("checkpointing+8bit+lora", 6.0, True)


def test_resume_mismatch_only_where_the_optimizer_state_differs() -> None:
    pytest.importorskip("torch")
    from voicelab.upstream.engine.loop import resume_mismatch, split_idx

    assert resume_mismatch("full", "checkpointing") is None  # same parameters, same Adam
    assert resume_mismatch("checkpointing+8bit", "8bit") is None
    assert "saved in memory mode full, this run is lora" in resume_mismatch("full", "lora")
    assert resume_mismatch("8bit+lora", "lora") is not None
    assert split_idx([5, 6, 7, 8, 9], 2) == [[5, 6], [7, 8, 9]]
    assert split_idx([5, 6], 4) == [[5], [6]]


@pytest.mark.parametrize("use_fork", [True, False])
def test_async_saver_fork_and_thread_write_the_same(tmp_path: Path, use_fork: bool) -> None:
    torch = pytest.importorskip("torch")
    if use_fork and not checkpoint.fork_available():
        pytest.skip("no os.fork here")
    saved: list[Path] = []
    saver = checkpoint.AsyncSaver(tmp_path, keep=None, on_saved=saved.append, use_fork=use_fork)
    saver.save("epoch_0_whole", {"w": torch.arange(4.0), "epoch": 0, "step": 3}, {"step": 3})
    saver.wait()
    assert saved == [tmp_path / "epoch_0_whole.pt"]
    sd = torch.load(tmp_path / "epoch_0_whole.pt", weights_only=True)
    assert torch.equal(sd["w"], torch.arange(4.0)) and sd["step"] == 3


# ---- packed passes ------------------------------------------------------------------------------
def test_packed_rows_hold_every_sequence_once() -> None:
    from voicelab.upstream.engine import llm_loss

    lengths = [700, 300, 1000, 20, 650, 1300, 5]
    rows = llm_loss.pack_rows(lengths, 1300)
    assert sorted(k for r in rows for k in r) == list(range(len(lengths)))
    assert all(sum(lengths[k] for k in r) <= 1300 for r in rows)
    assert len(rows) == 4  # 1300 | 1000+300 | 700+20+5 (+ 650 does not fit) | 650
    # The longest (1300) widens the row to 1536: 1300 | 1000+300+20+5 | 700+650.
    assert llm_loss.packed_shape(lengths, 1024) == (3, 1536)


def test_packed_batch_keeps_sequences_apart() -> None:
    import numpy as np

    torch = pytest.importorskip("torch")
    from voicelab.upstream.engine import llm_loss

    def seq(n: int, first: int) -> llm_loss.Layout:
        ids = np.arange(first, first + n, dtype=np.int64)
        return llm_loss.Layout(ids, np.zeros(n, bool), ids.copy())

    groups = [[seq(5, 100), seq(3, 200)], [seq(6, 300)]]
    b = llm_loss.make_packed(groups, row=8)
    assert b["ids"].shape == (1, 256)  # one row (ROW_QUANTUM wide) holds all three
    assert b["utts"].tolist() == [2, 1]
    # Every sequence's tokens, targets and batch number, positions restarting at 0.
    for first, n, mb in ((100, 5, 0), (200, 3, 0), (300, 6, 1)):
        r, c = np.nonzero((b["ids"] >= first) & (b["ids"] < first + n) & (b["seq"] < 3))
        assert len(r) == n and len(set(r)) == 1
        assert b["pos"][r, c].tolist() == list(range(n))
        assert set(b["mb"][r, c].tolist()) == {mb}
        assert b["target"][r, c].tolist() == list(range(first, first + n))
    assert (b["target"][b["seq"] == 3] == llm_loss.IGNORE_ID).all()  # the rows' padding
    mask = llm_loss.packed_mask(torch.from_numpy(b["seq"]))
    assert mask.shape == (1, 1, 256, 256)
    same = b["seq"][:, :, None] == b["seq"][:, None, :]
    causal = np.tril(np.ones((256, 256), bool))
    assert (mask[:, 0].numpy() == (same & causal)).all()
    assert mask[:, 0].diagonal(dim1=-2, dim2=-1).all()  # no position without a key


# ---- the objectives' pure parts -----------------------------------------------------------------
def test_llm_layouts_by_hand() -> None:
    import numpy as np

    from voicelab.upstream.engine import llm_loss

    t = llm_loss.Tokens(sos=100, task_id=102, eos=101, fill=103, mix=(2, 6))
    text, ins, sp = np.array([1, 2, 3]), np.array([9]), np.arange(10, 22)
    uni, bi = llm_loss.layouts(text, ins, sp, t)
    assert uni.ids.tolist() == [100, 9, 1, 2, 3, 102, *range(10, 22)]
    assert uni.target.tolist() == [-1] * 5 + list(range(10, 22)) + [101]
    assert uni.speech.tolist() == [True, False, False, False, False, True] + [True] * 12
    # bistream: sos, instruct, [t1 t2 | s0..s5], then the rest: t3, task_id, s6..s11.
    assert bi is not None
    assert bi.ids.tolist() == [100, 9, 1, 2, *range(10, 16), 3, 102, *range(16, 22)]
    assert bi.target.tolist() == [-1, -1, -1, *range(10, 16), 103, -1, *range(16, 22), 101]
    assert len(bi.ids) == len(uni.ids) == len(bi.target) == len(bi.speech)
    # speech/text not above mix[1]/mix[0]: unistream only.
    assert llm_loss.layouts(text, ins, np.arange(9), t)[1] is None


def test_label_smoothing_closed_form_equals_the_kl_definition() -> None:
    torch = pytest.importorskip("torch")
    from voicelab.upstream.engine import llm_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    target = torch.tensor([[1, 2, -1, 4, 0], [6, -1, -1, 3, 5]])
    for smoothing in (0.0, 0.1):
        for norm in (True, False):
            x, y = logits.view(-1, 7), target.view(-1)
            true = torch.full_like(x, smoothing / 6)
            ign = y == -1
            true.scatter_(1, y.clamp(min=0).unsqueeze(1), 1 - smoothing)
            kl = torch.nn.KLDivLoss(reduction="none")(torch.log_softmax(x, 1), true)
            denom = (~ign).sum() if norm else 2
            want = kl.masked_fill(ign.unsqueeze(1), 0).sum() / denom
            got = llm_loss.label_smoothing_loss(logits, target, smoothing, norm)
            assert torch.allclose(got, want, rtol=1e-5), (smoothing, norm)
    acc = llm_loss.accuracy(logits, target)
    keep = target != -1
    assert acc == (logits.argmax(-1)[keep] == target[keep]).float().mean()


def test_flow_draws_follow_upstreams_order() -> None:
    from voicelab.upstream.engine import flow_loss

    random.seed(3)
    streaming, prefix = flow_loss.draw([100, 37, 10])
    random.seed(3)
    want_stream = random.random() < 0.5
    want = []
    for j in (100, 37, 10):
        if random.random() < 0.5:
            want.append(0)
            continue
        want.append(random.randint(0, int(0.3 * j)))
    assert (streaming, prefix) == (want_stream, want)


def test_stale_caches_of_a_shard_are_dropped(tmp_path: Path) -> None:
    pq = tmp_path / "parquet_000.tar"
    old = data.cache_path(pq, "llm", "a" * 64)
    new = data.cache_path(pq, "llm", "b" * 64)
    flow = data.cache_path(pq, "flow", "a" * 64)
    other = data.cache_path(tmp_path / "parquet_001.tar", "llm", "a" * 64)
    for p in (old, new, flow, other):
        p.write_bytes(b"x")
    assert data.drop_stale(pq, "llm", keep=new) == [old]
    assert new.exists() and flow.exists() and other.exists() and not old.exists()


def test_a_patched_optimizer_step_still_takes_a_scheduler() -> None:
    """The offload optimizer's step is patched (gradients copied first); torch's schedulers,
    upstream's included, wrap ``optimizer.step.__func__``, which a bare function lacks."""
    torch = pytest.importorskip("torch")
    from voicelab.upstream.memory_modes import before_step

    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.Adam([p], lr=1.0)
    calls: list[int] = []
    before_step(opt, lambda o: calls.append(len(o.param_groups)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5**s)
    p.grad = torch.ones(3)
    opt.step()
    sched.step()
    assert calls == [1] and float(p[0]) < 0 and opt.param_groups[0]["lr"] == 0.5


def test_writers_are_threads_unless_fork_is_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One writer thread by default (measured faster with the compiled engine); forked writers
    with VOICELAB_SAVE_FORK=1 where the OS forks."""
    monkeypatch.delenv("VOICELAB_SAVE_FORK", raising=False)
    assert not checkpoint.AsyncSaver(tmp_path, keep=None, on_saved=print).use_fork
    monkeypatch.setenv("VOICELAB_SAVE_FORK", "1")
    forks = checkpoint.AsyncSaver(tmp_path, keep=None, on_saved=print).use_fork
    assert forks == checkpoint.fork_available()


def test_cuda_graphs_warn_before_a_run_they_cannot_serve() -> None:
    """``--cuda-graphs`` where the engine cannot use them: one warning before training starts
    saying why (the engine's own line stays in the run's log)."""
    opts = tr.TrainOptions(cuda_graphs=True)
    assert tr.cuda_graphs_unused(opts, "cuda", 1, "full") is None  # the llm's and the flow's
    assert tr.cuda_graphs_unused(tr.TrainOptions(), "cpu", 2, "lora") is None
    for args, why in [
        (("cpu", 1, "full"), "it needs a CUDA GPU"),
        (("cuda", 2, "full"), "one GPU"),
        (("cuda", 1, "checkpointing+lora"), "full memory mode (this run: checkpointing"),
    ]:
        line = tr.cuda_graphs_unused(opts, *args)
        assert line and why in line and line.endswith("this run trains without CUDA graphs")


def test_profile_tables_name_the_steps_phases(tmp_path: Path) -> None:
    """``VOICELAB_ENGINE_PROFILE``: the tables list a step's forward and backward by name."""
    import torch

    from voicelab.upstream.engine.loop import Profile
    from voicelab.upstream.engine.steps import train_step

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Linear(4, 1)

        def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
            return {"loss": self.w(batch["x"]).square().mean()}

    cpu = torch.device("cpu")
    prof, net = Profile(str(tmp_path / "p" / "llm.txt"), cpu), Tiny()
    for _ in range(Profile.FIRST + 3):
        prof.tick()
        train_step(net, {"x": torch.randn(8, 4)}, 1, False, cpu, True)
    prof.stop()
    text = (tmp_path / "p" / "llm.txt").read_text("utf-8")
    assert text.startswith(f"{Profile.PASSES} passes: wall ")
    assert "voicelab.forward" in text and "voicelab.backward" in text
