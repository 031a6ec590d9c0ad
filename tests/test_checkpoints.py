"""Checkpoint discovery, safe yamls, selection rules and streaming averaging.

Checkpoints are written as upstream's torch_ddp ``save_model`` writes them: ``torch.save`` of the
state dict plus ``epoch``/``step`` ints, and a ``yaml.dump`` of the info dict beside it (with a real
torch tensor as ``grad_norm``, which yaml dumps as python tags).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tmpfs_mount import mounted_tmpfs
from voicelab.errors import ConfigError, ModelError
from voicelab.stages import checkpoints as ck

SHAPES = {
    "llm.model.model.embed_tokens.weight": (64, 16),
    "llm.model.model.layers.0.self_attn.q_proj.weight": (16, 16),
    "llm.model.model.layers.0.self_attn.q_proj.bias": (16,),
    "speech_embedding.weight": (32, 16),
    "llm_decoder.weight": (32, 16),
}


def state(seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A small llm-shaped state dict whose values are multiples of 1/8 (sums are exact)."""
    g = torch.Generator().manual_seed(seed)
    out = {
        k: (torch.randint(-64, 64, s, generator=g).float() / 8).to(dtype) for k, s in SHAPES.items()
    }
    out["some.num_batches_tracked"] = torch.tensor(7, dtype=torch.int64)
    return out


def write_ckpt(
    run: Path,
    name: str,
    sd: dict[str, torch.Tensor],
    epoch: int,
    step: int,
    loss: float | None = None,
    acc: float | None = None,
) -> Path:
    """Like upstream's save_model: state dict + epoch/step in the .pt, info dict in the .yaml."""
    run.mkdir(parents=True, exist_ok=True)
    torch.save({**sd, "epoch": epoch, "step": step}, run / f"{name}.pt")
    info = {
        "optim": "adam",
        "optim_conf": {"lr": 1e-5},
        "max_epoch": 8,
        "accum_grad": 2,
        "dtype": "fp32",
        "train_engine": "torch_ddp",
        "epoch": epoch,
        "step": step,
        "tag": "CV",
        "batch_idx": 10,
        "lr": 1e-5,
        "grad_norm": torch.tensor(1.25),
        "save_time": "25/11/2026 10:00:00",
    }
    if loss is not None:
        info["loss_dict"] = {"loss": loss, "acc": acc}
    (run / f"{name}.yaml").write_text(yaml.dump(info), encoding="utf-8")
    return run / f"{name}.pt"


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """init, 4 epochs, with step checkpoints (global steps 50, 150) inside epochs 0 and 1."""
    d = tmp_path / "exp" / "llm" / "torch_ddp"
    write_ckpt(d, "init", state(0), 0, 0)
    losses = [3.0, 2.5, 2.7, 2.5]
    for e, loss in enumerate(losses):
        write_ckpt(d, f"epoch_{e}_whole", state(10 + e), e, 100 * (e + 1), loss, 0.1 * e)
    write_ckpt(d, "epoch_0_step_50", state(50), 0, 50, 2.9, 0.05)
    write_ckpt(d, "epoch_1_step_150", state(150), 1, 150, 2.4, 0.15)
    return d


def test_yaml_with_python_tags_is_read_safely(run: Path) -> None:
    text = (run / "epoch_1_whole.yaml").read_text()
    assert "!!python/object/apply:torch._utils._rebuild_tensor_v2" in text
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load(text)  # why the tolerant loader exists
    info = ck.read_info_yaml(run / "epoch_1_whole.yaml")
    assert info["loss_dict"] == {"loss": 2.5, "acc": 0.1}
    assert info["epoch"] == 1 and info["step"] == 200
    assert isinstance(info["grad_norm"], list)  # the tag's arguments, as data, nothing called
    assert ck.read_info_yaml(run / "missing.yaml") == {}
    (run / "broken.yaml").write_text("a: [1, 2\n")
    assert ck.read_info_yaml(run / "broken.yaml") == {}


def test_discover_names_kinds_order_and_metrics(run: Path) -> None:
    (run / "train.yaml").write_text("x: 1\n")  # not a checkpoint
    (run / "notes.pt").write_bytes(b"x")  # not a checkpoint name
    found = ck.discover(run, locked_epoch=2)
    assert [c.name for c in found] == [
        "init",
        "epoch_0_step_50",
        "epoch_0_whole",
        "epoch_1_step_150",
        "epoch_1_whole",
        "epoch_2_whole",
        "epoch_3_whole",
    ]
    by = {c.name: c for c in found}
    assert by["init"].kind == "init"
    assert (by["epoch_1_step_150"].kind, by["epoch_1_step_150"].epoch) == ("step", 1)
    assert by["epoch_1_step_150"].step == 150
    assert (by["epoch_3_whole"].kind, by["epoch_3_whole"].step) == ("epoch", 400)
    assert by["epoch_3_whole"].cv_loss == 2.5 and by["epoch_3_whole"].cv_acc == pytest.approx(0.3)
    assert by["init"].cv_loss is None
    assert [c.name for c in found if c.locked] == ["epoch_2_whole"]
    assert by["epoch_2_whole"].size == (run / "epoch_2_whole.pt").stat().st_size
    assert by["epoch_1_step_150"].label == "epoch 1 step 150"
    json.dumps([c.summary() for c in found])  # JSON-able for --json and voicelab.json
    assert ck.discover(run.parent / "nothing") == []


def names(chosen: list[ck.Checkpoint]) -> list[str]:
    return [c.name for c in chosen]


def test_selection_rules(run: Path, caplog: pytest.LogCaptureFixture) -> None:
    found = ck.discover(run)
    assert names(ck.select(found, "last:2")) == ["epoch_2_whole", "epoch_3_whole"]
    assert [c.name for c in found if c.chosen] == ["epoch_2_whole", "epoch_3_whole"]
    assert ck.DEFAULT_RULE == "last:3"
    # Lowest CV loss; the tie (2.5) goes to the later epoch; result in training order.
    assert names(ck.select(found, "best-cv:1")) == ["epoch_3_whole"]
    assert names(ck.select(found, "best-cv:2")) == ["epoch_1_whole", "epoch_3_whole"]
    assert names(ck.select(found, "epochs:3,1")) == ["epoch_1_whole", "epoch_3_whole"]
    # Step checkpoints are themselves, never their epoch's whole file.
    assert names(ck.select(found, "step:150")) == ["epoch_1_step_150"]
    assert names(ck.select(found, "step:50,150")) == ["epoch_0_step_50", "epoch_1_step_150"]
    assert names(ck.select(found, "step:last:1")) == ["epoch_1_step_150"]
    assert names(ck.select(found, "step:best-cv:1")) == ["epoch_1_step_150"]
    with caplog.at_level(logging.WARNING, logger="voicelab"):
        assert len(ck.select(found, "last:10")) == 4  # init never counts
    assert "only 4" in caplog.text
    # The locked epoch is the default for the llm; flow keeps last:3.
    assert ck.default_rule("llm", 2) == "epochs:2"
    assert ck.default_rule("flow", 2) == ck.default_rule("llm", None) == "last:3"


@pytest.mark.parametrize(
    ("rule", "error", "text"),
    [
        ("epochs:9", ModelError, "no epoch_9_whole.pt"),
        ("step:77", ModelError, "no step checkpoint of step 77"),
        ("last:0", ConfigError, "not a count"),
        ("best:3", ConfigError, "unknown checkpoint rule"),
        ("epochs:a", ConfigError, "expected numbers"),
    ],
)
def test_bad_rules(run: Path, rule: str, error: type, text: str) -> None:
    with pytest.raises(error, match=text) as e:
        ck.select(ck.discover(run), rule)
    assert "\n" not in e.value.one_line()


def test_rule_syntax_is_checked_before_checkpoints() -> None:
    with pytest.raises(ConfigError, match="unknown checkpoint rule"):
        ck.select([], "latest:3")
    assert ck.parse_rule("step:last:2") == ("step", "last", "2")
    assert ck.parse_rule("step:4,8") == ("step", "steps", "4,8")
    assert ck.parse_rule("best-cv:2") == ("epoch", "best-cv", "2")


def test_no_checkpoints_and_no_cv(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no epoch checkpoints"):
        ck.select([], "last:3")
    d = tmp_path / "run"
    write_ckpt(d, "init", state(0), 0, 0)
    with pytest.raises(ModelError, match="no epoch checkpoints"):
        ck.select(ck.discover(d), "last:3")
    write_ckpt(d, "epoch_0_whole", state(1), 0, 10)  # no loss_dict in its yaml
    with pytest.raises(ModelError, match=r"no epoch checkpoint .* has a CV loss"):
        ck.select(ck.discover(d), "best-cv:1")
    with pytest.raises(ModelError, match="no step checkpoints"):
        ck.select(ck.discover(d), "step:last:1")


def test_average_is_exact_and_strips_meta(run: Path) -> None:
    paths = [run / f"epoch_{e}_whole.pt" for e in (1, 2, 3)]
    avg = ck.average(paths)
    assert "epoch" not in avg and "step" not in avg
    parts = [state(11), state(12), state(13)]
    for k in SHAPES:
        # Multiples of 1/8: float32 sums and the division by 3 are exact to the last bit.
        expect = ((parts[0][k].double() + parts[1][k].double() + parts[2][k].double()) / 3).float()
        assert torch.equal(avg[k], expect), k
        assert avg[k].dtype == torch.float32
    assert torch.equal(avg["some.num_batches_tracked"], torch.tensor(7))
    # One checkpoint is exported as is, stripped.
    one = ck.average([run / "epoch_2_whole.pt"])
    assert set(one) == set(state(12))
    assert all(torch.equal(one[k], v) for k, v in state(12).items())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_average_keeps_dtypes(tmp_path: Path, dtype: torch.dtype) -> None:
    paths = [write_ckpt(tmp_path, f"epoch_{i}_whole", state(i, dtype), i, i) for i in range(3)]
    avg = ck.average(paths)
    for k in SHAPES:
        assert avg[k].dtype == dtype
        expect = (sum(state(i, dtype)[k].double() for i in range(3)) / 3).to(dtype)
        assert torch.equal(avg[k], expect), k


def test_average_refuses_mixed_models_and_int_drift(tmp_path: Path) -> None:
    a = write_ckpt(tmp_path, "epoch_0_whole", state(1), 0, 1)
    other = state(2)
    other["speech_embedding.weight"] = torch.zeros(33, 16)
    b = write_ckpt(tmp_path, "epoch_1_whole", other, 1, 2)
    with pytest.raises(
        ModelError, match=r"different models: .*speech_embedding.weight is \(33, 16\)"
    ):
        ck.average([a, b])
    extra = {**state(3), "flow.extra": torch.zeros(2)}
    c = write_ckpt(tmp_path, "epoch_2_whole", extra, 2, 3)
    with pytest.raises(ModelError, match=r"has 'flow\.extra' that"):
        ck.average([a, c])
    drift = state(4)
    drift["some.num_batches_tracked"] = torch.tensor(8)
    d = write_ckpt(tmp_path, "epoch_3_whole", drift, 3, 4)
    with pytest.raises(ModelError, match=r"integer tensor some\.num_batches_tracked differs"):
        ck.average([a, d])
    with pytest.raises(ModelError, match="no checkpoints"):
        ck.average([])


def test_truncated_checkpoint_is_one_line(run: Path) -> None:
    p = run / "epoch_3_whole.pt"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated or corrupt") as e:
        ck.average([run / "epoch_2_whole.pt", p])
    assert "\n" not in e.value.one_line()
    (run / "epoch_2_whole.pt").write_bytes(b"")
    with pytest.raises(ModelError, match="not a readable torch file"):
        ck.load_state_dict(run / "epoch_2_whole.pt")


def test_check_against_base(run: Path) -> None:
    base = state(1)
    ck.check_against(state(2), base, "x", "base")
    wrong = {**state(2), "llm_decoder.weight": torch.zeros(31, 16)}
    with pytest.raises(
        ModelError, match=r"llm_decoder.weight is \(31, 16\), the base has \(32, 16\)"
    ):
        ck.check_against(wrong, base, "x", "base")
    with pytest.raises(ModelError, match="1 missing"):
        ck.check_against(
            {k: v for k, v in state(2).items() if k != "llm_decoder.weight"}, base, "x", "b"
        )


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):
    """A real 1 MB filesystem (root only): writes beyond it fail with ENOSPC."""
    with mounted_tmpfs(tmp_path / "tmpfs", "1m") as mnt:
        yield mnt


def test_save_state_dict_disk_full_leaves_nothing(tiny_tmpfs: Path) -> None:
    dest = tiny_tmpfs / "llm.pt"
    dest.write_bytes(b"previous")
    big = {"w": torch.zeros(1_000_000)}  # 4 MB on a 1 MB disk
    with pytest.raises(ModelError, match="disk full while writing") as e:
        ck.save_state_dict(big, dest)
    assert "\n" not in e.value.one_line()
    assert dest.read_bytes() == b"previous"
    assert sorted(os.listdir(tiny_tmpfs)) == ["llm.pt"]  # no temp file left
    small = {"w": torch.arange(10.0)}
    dest.unlink()
    ck.save_state_dict(small, dest)
    assert torch.equal(ck.load_state_dict(dest)["w"], small["w"])


MEASURE = r"""
import sys
from pathlib import Path
import torch
from voicelab.stages.checkpoints import average, save_state_dict

def vm(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise RuntimeError(key)

torch.ones(8).add_(1)
base = vm("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM (peak RSS) to the current RSS
paths = [Path(p) for p in sys.argv[1:-1]]
state = average(paths)
save_state_dict(state, Path(sys.argv[-1]))
del state
print(vm("VmHWM:") - base)
"""


def test_averaging_streams_one_checkpoint_at_a_time(tmp_path: Path) -> None:
    """Peak RSS of averaging 3 x 48 MB checkpoints stays near two checkpoints (sum + current)."""
    n = 12 * 1024 * 1024  # float32 elements: 48 MB per checkpoint
    paths = []
    for i in range(3):
        sd = {"a": torch.full((n // 2,), float(i)), "b": torch.full((n // 2,), 2.0 * i)}
        paths.append(write_ckpt(tmp_path, f"epoch_{i}_whole", sd, i, i))
        del sd
    one = paths[0].stat().st_size
    out = tmp_path / "avg.pt"
    res = subprocess.run(
        [sys.executable, "-c", MEASURE, *map(str, paths), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    peak = int(res.stdout.split()[-1])
    print(f"peak RSS above baseline: {peak / 1e6:.1f} MB for 3 x {one / 1e6:.1f} MB checkpoints")
    assert peak < 2.5 * one, f"peak {peak / 1e6:.1f} MB > 2.5 x {one / 1e6:.1f} MB"
    avg = ck.load_state_dict(out)
    assert torch.equal(avg["a"][:4], torch.full((4,), 1.0))
    assert torch.equal(avg["b"][-4:], torch.full((4,), 2.0))


def test_bare_steps_rule_is_refused() -> None:
    from voicelab.stages.checkpoints import parse_rule

    with pytest.raises(ConfigError):
        parse_rule("steps:100")
    assert parse_rule("step:100") == ("step", "steps", "100")
