"""The memory planner (``voicelab.memory``): GPU figures in, mode and batch budget out."""

from __future__ import annotations

import pytest

from voicelab import memory as mem
from voicelab.errors import ConfigError

GIB = mem.GIB
LLM = 506_000_000  # Fun-CosyVoice3-0.5B llm.pt
FLOW = 332_000_000  # its flow.pt

# (model, card GiB) -> (mode auto picks, batch frames, accum_grad) for upstream's 2000-frame
# batch and accum_grad 2. The figures follow from the byte model in voicelab.memory; a change
# there shows up here on purpose.
EXPECTED = {
    ("llm", 6): ("checkpointing+lora", 2000, 2),
    ("llm", 8): ("checkpointing+8bit", 2000, 2),
    ("llm", 12): ("full", 1000, 4),
    ("llm", 24): ("full", 2000, 2),
    ("llm", 80): ("full", 2000, 2),
    ("flow", 6): ("checkpointing+8bit", 2000, 2),
    ("flow", 8): ("checkpointing", 2000, 2),
    ("flow", 12): ("full", 2000, 2),
    ("flow", 24): ("full", 2000, 2),
    ("flow", 80): ("full", 2000, 2),
}


def _plan(model: str, gib: float, **kw: object) -> mem.MemoryPlan:
    params = LLM if model == "llm" else FLOW
    kw = {"requested_frames": 2000, "requested_accum": 2, "longest_frames": 600, **kw}
    return mem.plan_memory(model, params, total=int(gib * GIB), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("model", "gib"), sorted(EXPECTED))
def test_auto_mode_per_card(model: str, gib: int) -> None:
    plan = _plan(model, gib)
    assert (plan.mode, plan.batch_frames, plan.accum_grad) == EXPECTED[(model, gib)]
    assert plan.fits and plan.auto
    # Whatever is chosen stays within the planned share of the card ...
    assert plan.need_bytes <= mem.USABLE * gib * GIB
    # ... and keeps the tokens per optimizer step of the requested batch.
    assert plan.batch_frames * plan.accum_grad == 2000 * 2
    # Every rung before the chosen one would not fit the requested batch (or its split).
    ladder = list(mem.LADDER[model])
    for earlier in ladder[: ladder.index(plan.features)]:
        fit = mem.frames_that_fit(model, LLM if model == "llm" else FLOW, earlier, gib * GIB)
        assert fit < 2000 / mem.MAX_ACCUM


def test_budget_comes_from_memory_left_not_a_fixed_number() -> None:
    # The same mode on a bigger card fits a bigger batch; frames are multiples of 100.
    small = mem.frames_that_fit("llm", LLM, ("checkpointing", "8bit"), 8 * GIB)
    large = mem.frames_that_fit("llm", LLM, ("checkpointing", "8bit"), 12 * GIB)
    assert 0 < small < large and small % 100 == 0 and large % 100 == 0
    # A named mode on a small card: the batch shrinks (with more accumulation), not an OOM.
    plan = _plan("flow", 6, mode="checkpointing+8bit", requested_frames=6000, requested_accum=1)
    assert plan.fits and plan.batch_frames < 6000 and plan.accum_grad == 2
    assert plan.need_bytes <= mem.USABLE * 6 * GIB


def test_free_memory_and_max_vram_lower_the_cap() -> None:
    roomy = _plan("llm", 24)
    busy = mem.plan_memory(
        "llm", LLM, total=24 * GIB, free=10 * GIB, requested_frames=2000, requested_accum=2
    )
    capped = _plan("llm", 80, max_vram_gib=8)
    assert roomy.mode == "full"
    assert busy.cap_bytes == 10 * GIB and busy.mode != "full"
    assert capped.cap_bytes == 8 * GIB and capped.mode == EXPECTED[("llm", 8)][0]
    with pytest.raises(ConfigError, match="max-vram"):
        _plan("llm", 24, max_vram_gib=0)


def test_long_utterances_need_a_bigger_minimum_batch() -> None:
    # ckpt+8bit on 8 GiB fits ~2900 frames: fine for 12 s clips, not for a 70 s one (a batch of
    # its own, larger than the requested 2000 frames), which moves the llm on to LoRA.
    assert _plan("llm", 8, longest_frames=600).mode == "checkpointing+8bit"
    long = _plan("llm", 8, longest_frames=3500)
    assert long.mode == "checkpointing+lora" and long.batch_frames == 2000


def test_nothing_fits() -> None:
    plan = _plan("llm", 2)
    assert not plan.fits
    assert plan.mode == "checkpointing+lora"  # the last rung, reported with its need
    assert len(plan.lines) == 1 and "does not fit" in plan.lines[0]


def test_cpu_training_has_nothing_to_fit() -> None:
    plan = mem.plan_memory("llm", 10_000_000, total=None, requested_frames=500)
    assert plan.mode == "full" and plan.batch_frames == 500 and plan.fits
    assert "CPU" in plan.lines[0]
    assert mem.plan_memory("llm", 1, total=None, mode="lora").mode == "lora"


def test_parse_mode() -> None:
    assert mem.parse_mode("auto", "llm") is None
    assert mem.parse_mode("8bit+checkpointing", "flow") == ("checkpointing", "8bit")
    assert mem.parse_mode("LoRA, checkpointing", "llm") == ("checkpointing", "lora")
    for bad, match in (
        ("fast", "unknown --memory"),
        ("full+lora", "full means none"),
        ("8bit+offload", "not a combination"),
    ):
        with pytest.raises(ConfigError, match=match):
            mem.parse_mode(bad, "llm")
    with pytest.raises(ConfigError, match="for the llm"):
        mem.parse_mode("lora", "flow")


def test_preflight_lines_explain_what_why_and_cost() -> None:
    plan = _plan("llm", 8)
    head, *rest = plan.lines
    assert head.startswith("memory: llm trains in mode checkpointing+8bit (auto: 8.0 GiB")
    # why: the rung before it would need more than the card has.
    assert "checkpointing would need ~" in head and "2000-frame batch" in head
    assert rest[0] == "  - " + mem.EXPLAIN["checkpointing"] and "slower" in rest[0]
    assert rest[1] == "  - " + mem.EXPLAIN["8bit"]
    assert rest[2].startswith("  batch: 2000 frames (40 s of audio), est. peak ~")
    assert "accum_grad" not in rest[2]  # the requested batch fits as it is
    # A batch that does not fit is split, and the line says what keeps the step's tokens.
    split = _plan("llm", 8, requested_frames=4000).lines[-1]
    assert split.startswith("  batch: 2000 frames (40 s of audio), est. peak ~")
    assert "accum_grad 2 -> 4 keeps the 8000 frames per optimizer step" in split
    full = _plan("llm", 80).lines
    assert full[0].endswith("it fits)") and "fastest" in full[1] and "accum_grad" not in full[2]
    named = _plan("llm", 80, mode="lora").lines[0]
    assert "mode lora (--memory; 80.0 GiB for training" in named
    for f in mem.FEATURES:  # every feature says what it costs in speed
        assert any(w in mem.EXPLAIN[f] for w in ("slower", "fastest", "faster")), f


def test_oom_hint_names_the_next_mode() -> None:
    assert mem.next_mode("llm", LLM, ("full",), 2000) == ("checkpointing",)
    assert mem.next_mode("llm", LLM, ("checkpointing", "8bit"), 1000) == ("checkpointing", "lora")
    assert mem.next_mode("flow", FLOW, ("8bit",), 1000) == ("checkpointing", "8bit")
    hint = mem.oom_hint("flow", FLOW, ("checkpointing",), 800)
    assert hint.endswith("continue with --resume --memory checkpointing+8bit")
    last = mem.oom_hint("llm", LLM, ("checkpointing", "lora"), 400)
    assert "most frugal" in last and "larger GPU" in last


# ---- voicelab train: preflight and launch ---------------------------------------------------
def test_train_plans_from_the_gpus_and_preflight_reports_a_misfit(tmp_path) -> None:
    from test_train import make_base, make_split, run_preflight, sentences, whats
    from voicelab.stages import train as tr
    from voicelab.workspace import Workspace

    ws = Workspace.init(tmp_path / "ws", "spk1")
    make_base(ws, llm_bytes=2_024_669_519)  # the real llm.pt's size: 506 M parameters
    make_split(ws, "train", [sentences(6) for _ in range(4)])
    make_split(ws, "dev", [sentences(3) for _ in range(2)])
    base = ws.base_model_dir / "llm.pt"

    def plan(gpus: list[tr.Gpu], **opt: object) -> mem.MemoryPlan:
        return tr.memory_plan_for(ws, "llm", base, "cuda", gpus, tr.TrainOptions(**opt), 2000, 2)

    card8 = [tr.Gpu(0, 8 * GIB, 8 * GIB)]
    p8 = plan(card8)
    assert (p8.mode, p8.batch_frames, p8.accum_grad) == ("checkpointing+8bit", 2000, 2)
    # Two GPUs: the one with less free memory decides.
    two = plan([tr.Gpu(0, 80 * GIB, 80 * GIB), tr.Gpu(1, 24 * GIB, 12 * GIB)])
    assert (two.mode, two.batch_frames, two.accum_grad) == ("full", 1000, 4)
    assert plan([tr.Gpu(0, 80 * GIB, 80 * GIB)], max_vram=6).mode == "checkpointing+lora"
    ws.set_option("train", "memory", "checkpointing+lora")  # voicelab.toml [train] memory
    assert plan([tr.Gpu(0, 80 * GIB, 80 * GIB)]).mode == "checkpointing+lora"
    assert plan([tr.Gpu(0, 80 * GIB, 80 * GIB)], memory="full").mode == "full"
    cpu = tr.memory_plan_for(ws, "llm", base, "cpu", [], tr.TrainOptions(memory="lora"), 500, 1)
    assert cpu.mode == "lora" and cpu.batch_frames == 500

    # Preflight: a fitting plan replaces the full-SFT memory check, a misfit is a problem.
    problems = run_preflight(ws, device="cuda", gpus=card8, memory_plan=p8, max_frames=1000)[0]
    assert "GiB free" not in whats(problems) and "does not fit" not in whats(problems)
    tiny = [tr.Gpu(0, 2 * GIB, 2 * GIB)]
    text = whats(run_preflight(ws, device="cuda", gpus=tiny, memory_plan=plan(tiny))[0])
    assert "llm does not fit 2.0 GiB for training on a 2.0 GiB GPU" in text
    assert "free GPU memory" in text


def test_launch_passes_the_mode_to_the_launcher(tmp_path) -> None:
    from test_train import launch, make_base, make_split, sentences
    from voicelab.workspace import Workspace

    ws = Workspace.init(tmp_path / "ws", "spk1")
    make_base(ws)
    make_split(ws, "train", [sentences(6)])
    make_split(ws, "dev", [sentences(3)])
    argv = launch(ws, tmp_path, max_vram=7.5).argv
    assert "--memory" not in argv and argv[argv.index("--max-vram") + 1] == "7.5"
    assert argv.index("--max-vram") < argv.index("--")  # the launcher's option, not train.py's
    from voicelab.stages import train as tr

    opts = tr.TrainOptions()
    plan = tr.RunPlan(ws.exp_dir("llm"), ws.tensorboard_dir("llm"), ws.base_model_dir, None, None)
    spec = tr.LaunchSpec(
        vendor_root=tmp_path,
        model="llm",
        device="cuda",
        nproc=1,
        opts=opts,
        config=tmp_path / "c.yaml",
        train_list=ws.data_list("train"),
        cv_list=ws.data_list("dev"),
        base_dir=ws.base_model_dir,
        plan=plan,
        num_workers=1,
        prefetch=2,
        amp=True,
        memory_mode="checkpointing+lora",
    )
    la = tr.build_launch(spec, python="py", base_env={})
    i = la.argv.index("--memory")
    assert la.argv[i + 1] == "checkpointing+lora" and i < la.argv.index("--")
