"""Memory planner: which training memory mode and batch budget fit a GPU (``--memory``).

Inputs are plain figures (no torch here, so preflight and CI can use it anywhere): the model
(``llm`` or ``flow``) and its parameter count, the card's total and free memory, an optional
``--max-vram`` cap, the requested batch (``max_frames_in_batch``) and the longest utterance.
Output is a :class:`MemoryPlan`: the features to apply (see
:mod:`voicelab.upstream.memory_modes`), the batch budget in mel frames (50 per second of audio,
2 per speech token, as upstream's ``max_frames_in_batch`` counts) and the gradient accumulation
that keeps the tokens per optimizer step of the requested batch, each explained in one line.

Features (a mode is one or several, joined with ``+``, e.g. ``checkpointing+8bit``):

* ``full``: upstream's SFT, everything trained, fp32 weights + AdamW state (16 bytes/param);
* ``checkpointing``: activations of each Qwen2 layer / DiT block recomputed in the backward pass;
* ``8bit``: AdamW moments in 8 bits (~10 bytes/param in all);
* ``offload``: AdamW state and step on the CPU (the GPU keeps weights and gradients);
* ``lora``: llm only: LoRA adapters on the Qwen2 body, speech embedding and ``llm_decoder``
  trained in full, the rest frozen (``voicelab export`` merges the adapters).

``auto`` walks a ladder from the cheapest in speed and quality to the most frugal and takes the
first rung where the requested batch fits, as is or split into at most :data:`MAX_ACCUM`
smaller batches with the same tokens per optimizer step (and at least the longest utterance).

The byte figures are an estimate: full SFT is calibrated on an H100 (``train.py``:
``BYTES_PER_PARAM``, ``ACT_BYTES_PER_FRAME``); the factors of the other features come from their
design (8-bit moments, recompute of one layer) and are checked by ``benchmarks/bench_memory.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from voicelab.errors import ConfigError

GIB = 1 << 30
FEATURES = ("full", "checkpointing", "8bit", "offload", "lora")
#: Ladder of ``--memory auto``, per model (first that fits wins).
LADDER: dict[str, tuple[tuple[str, ...], ...]] = {
    "llm": (
        ("full",),
        ("checkpointing",),
        ("checkpointing", "8bit"),
        # offload is not on the llm's ladder: LoRA needs less GPU memory and is faster.
        ("checkpointing", "lora"),
    ),
    "flow": (
        ("full",),
        ("checkpointing",),
        ("checkpointing", "8bit"),
        ("checkpointing", "offload"),
    ),
}
#: Bytes per trainable parameter: fp32 weight + grad + optimizer state.
BYTES_TRAINABLE = {"adamw": 16.0, "8bit": 10.2, "offload": 8.5}
BYTES_FROZEN = 4.0  # fp32 weights of a frozen parameter (lora)
#: Activation bytes per batch frame, full SFT with bf16 autocast. Measured on an H200 with the
#: full-size models (benchmarks/bench_memory.py, 2000-frame batches; bench_train.py): llm
#: 0.7-0.8 MB (upstream's forward and the engine's packed pass alike), flow 0.8 MB, the rest of
#: the peak being weights, gradients and Adam. Upstream's own trainer held more (16 GiB at 2500
#: frames: ~2.4 MB a frame beside the static part; allocator slack over many batch shapes), so
#: the llm's figure keeps room for it; the flow's keeps ~2x.
ACT_BYTES_PER_FRAME = {"llm": 2_000_000, "flow": 1_500_000}
#: Share of activations kept with checkpointing: one saved hidden state per layer plus the one
#: layer being recomputed plus the heads (llm_decoder logits, DiT in/out), an estimate.
CKPT_ACT_FACTOR = 0.25
#: The CUDA context, cuBLAS workspaces and allocator slack.
CUDA_OVERHEAD = 1 * GIB
#: Share of the cap planned for; the rest absorbs fragmentation and the optimizer step's peaks.
USABLE = 0.9
#: llm parameters that LoRA trains: speech embedding + llm_decoder (2 x 6761 x 896) plus the
#: adapters (rank 16 on the Qwen2-0.5B projections: ~8.8 M), as a share of the 506 M llm.
LORA_TRAINABLE_SHARE = 0.042
MAX_ACCUM = 2  # more makes batches so small that checkpointing or 8-bit is faster
MIN_FRAMES = 200  # 4 s of audio: below this a batch is mostly padding and launch overhead
FRAME_STEP = 100

#: One line per feature: what it does and what it costs in speed.
EXPLAIN = {
    "full": "full SFT as upstream trains it (all weights, fp32 AdamW); fastest per token",
    "checkpointing": (
        "gradient checkpointing: each Qwen2 layer / DiT block recomputes its activations in the "
        "backward pass instead of keeping them (~75% less activation memory, ~30% slower)"
    ),
    "8bit": (
        "8-bit AdamW: optimizer moments stored in 8 bits (~6 bytes/param less, "
        "a few % slower, same training otherwise)"
    ),
    "offload": (
        "optimizer on the CPU: AdamW state and step in host RAM, the GPU keeps weights and grads "
        "(much less GPU memory; every step waits for the CPU, often 2-5x slower)"
    ),
    "lora": (
        "LoRA: rank-16 adapters on the Qwen2 body, speech embedding and llm_decoder trained in "
        "full, the rest frozen (little optimizer memory, faster steps; export merges the adapters)"
    ),
}


@dataclass
class MemoryPlan:
    model: str
    features: tuple[str, ...]
    batch_frames: int  # max_frames_in_batch for the run
    accum_grad: int  # batches per optimizer step for the run
    cap_bytes: int | None  # what training may use (None: CPU, no GPU limit)
    need_bytes: int  # estimated peak at batch_frames
    requested_frames: int
    requested_accum: int
    auto: bool
    fits: bool = True
    params: int = 0
    lines: list[str] = field(default_factory=list)

    @property
    def mode(self) -> str:
        return "+".join(self.features)

    @property
    def batch_tokens(self) -> int:
        """Speech tokens per batch (2 mel frames each)."""
        return self.batch_frames // 2

    def has(self, feature: str) -> bool:
        return feature in self.features


def parse_mode(text: str, model: str) -> tuple[str, ...] | None:
    """``auto`` -> None; ``checkpointing+8bit`` -> ("checkpointing", "8bit") (checked)."""
    text = (text or "auto").strip().lower()
    if text == "auto":
        return None
    parts = tuple(p.strip() for p in text.replace(",", "+").split("+") if p.strip())
    unknown = [p for p in parts if p not in FEATURES]
    if not parts or unknown:
        raise ConfigError(
            f"unknown --memory {text!r}",
            "use auto, or one or more of " + ", ".join(FEATURES) + " joined with +",
        )
    if "full" in parts and len(parts) > 1:
        raise ConfigError(
            f"--memory {text}: full means none of the other modes", "drop full or the others"
        )
    if "8bit" in parts and "offload" in parts:
        raise ConfigError(
            "--memory 8bit+offload is not a combination we run",
            "use 8bit (optimizer on the GPU) or offload (optimizer on the CPU)",
        )
    if "lora" in parts and model != "llm":
        raise ConfigError("--memory lora is for the llm", "for the flow use checkpointing+8bit")
    order = {f: i for i, f in enumerate(FEATURES)}
    return tuple(sorted(dict.fromkeys(parts), key=order.__getitem__))


def estimate_bytes(model: str, params: int, features: tuple[str, ...], frames: int) -> int:
    """Estimated peak GPU bytes of a training step at ``frames`` per batch."""
    return static_bytes(model, params, features) + int(act_per_frame(model, features) * frames)


def static_bytes(model: str, params: int, features: tuple[str, ...]) -> int:
    """Weights, gradients, optimizer state and CUDA overhead (no activations)."""
    optim = "8bit" if "8bit" in features else "offload" if "offload" in features else "adamw"
    if "lora" in features:
        trainable = int(params * LORA_TRAINABLE_SHARE)
        body = (params - trainable) * BYTES_FROZEN + trainable * BYTES_TRAINABLE[optim]
    else:
        body = params * BYTES_TRAINABLE[optim]
    return int(body) + CUDA_OVERHEAD


def act_per_frame(model: str, features: tuple[str, ...]) -> float:
    return ACT_BYTES_PER_FRAME[model] * (CKPT_ACT_FACTOR if "checkpointing" in features else 1.0)


def frames_that_fit(model: str, params: int, features: tuple[str, ...], cap: int) -> int:
    """Largest batch (frames, a multiple of 100) whose estimate stays within USABLE x cap."""
    room = USABLE * cap - static_bytes(model, params, features)
    if room <= 0:
        return 0
    return int(room / act_per_frame(model, features)) // FRAME_STEP * FRAME_STEP


def gpu_cap(total: int, free: int | None, max_vram_gib: float | None) -> int:
    """Bytes training may use: the card's free memory, lowered by ``--max-vram``."""
    cap = total if free is None else min(total, free)
    if max_vram_gib is not None:
        if max_vram_gib <= 0:
            raise ConfigError(f"--max-vram {max_vram_gib} must be > 0", "give GiB, e.g. 8")
        cap = min(cap, int(max_vram_gib * GIB))
    return cap


def _sized(fit: int, requested: int, accum: int, minimum: int) -> tuple[int, int] | None:
    """(frames, accum) keeping frames x accum ~ requested x accum, or None if it cannot (also
    when the longest utterance, which upstream batches alone if it must, would not fit)."""
    if fit < minimum:
        return None
    if fit >= requested:
        return requested, accum
    k = math.ceil(requested / fit)
    if k > MAX_ACCUM:
        return None
    frames = max(minimum, requested // k // FRAME_STEP * FRAME_STEP)
    return frames, accum * k


def plan_memory(
    model: str,
    params: int,
    *,
    total: int | None,
    free: int | None = None,
    max_vram_gib: float | None = None,
    requested_frames: int = 2000,
    requested_accum: int = 1,
    longest_frames: int = 0,
    mode: str = "auto",
) -> MemoryPlan:
    """The plan for one model on one GPU (``total`` None: CPU training, nothing to fit)."""
    if model not in ACT_BYTES_PER_FRAME:
        raise ConfigError(f"unknown model {model!r}", "use llm or flow")
    named = parse_mode(mode, model)
    minimum = max(MIN_FRAMES, longest_frames)
    if total is None:
        features = named or ("full",)
        plan = MemoryPlan(
            model,
            features,
            requested_frames,
            requested_accum,
            None,
            0,
            requested_frames,
            requested_accum,
            named is None,
        )
        plan.lines = [f"memory: {plan.mode} (CPU training: no GPU memory to fit)"]
        return plan
    cap = gpu_cap(total, free, max_vram_gib)
    rungs = [named] if named else list(LADDER[model])
    fits = {r: frames_that_fit(model, params, r, cap) for r in rungs}
    chosen, sized = None, None
    # First rung where the requested batch fits, as is or with at most MAX_ACCUM x accumulation:
    # a full-parameter mode at half the batch beats LoRA at the whole one.
    for r in rungs:
        sized = _sized(fits[r], requested_frames, requested_accum, minimum)
        if sized:
            chosen = r
            break
    ok = chosen is not None
    if chosen is None:  # nothing fits: report the most frugal rung with what it would need
        chosen = rungs[-1]
        sized = (minimum, requested_accum)
    frames, accum = sized
    need = estimate_bytes(model, params, chosen, frames)
    plan = MemoryPlan(
        model,
        chosen,
        frames,
        accum,
        cap,
        need,
        requested_frames,
        requested_accum,
        named is None,
        fits=ok,
    )
    plan.params = params
    plan.lines = _explain(plan, params, rungs, fits, total)
    return plan


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def _explain(
    plan: MemoryPlan,
    params: int,
    rungs: list[tuple[str, ...]],
    fits: dict[tuple[str, ...], int],
    total: int,
) -> list[str]:
    """One line for the choice (what and why), one per feature (what it costs)."""
    m, cap = plan.model, plan.cap_bytes or 0
    where = f"{_gib(cap)} for training on a {_gib(total)} GPU"
    if not plan.fits:
        return [
            f"memory: {m} does not fit {where} even with --memory {plan.mode} "
            f"(needs ~{_gib(plan.need_bytes)} for a {plan.batch_frames}-frame batch)"
        ]
    if plan.auto:
        skipped = rungs[: rungs.index(plan.features)]
        if skipped:
            prev = skipped[-1]
            why = (
                f"{'+'.join(prev)} would need ~"
                f"{_gib(estimate_bytes(m, params, prev, plan.requested_frames))}"
                f" for the {plan.requested_frames}-frame batch"
            )
        else:
            why = "it fits" if plan.batch_frames == plan.requested_frames else "it fits, split"
        head = f"memory: {m} trains in mode {plan.mode} (auto: {where}; {why})"
    else:
        head = f"memory: {m} trains in mode {plan.mode} (--memory; {where})"
    lines = [head]
    lines += [f"  - {EXPLAIN[f]}" for f in plan.features]
    batch = (
        f"  batch: {plan.batch_frames} frames ({plan.batch_frames / 50:.0f} s of audio), "
        f"est. peak ~{_gib(plan.need_bytes)}"
    )
    if plan.accum_grad != plan.requested_accum:
        batch += (
            f"; accum_grad {plan.requested_accum} -> {plan.accum_grad} keeps the "
            f"{plan.requested_frames * plan.requested_accum} frames per optimizer step "
            "(smaller batches: slower)"
        )
    lines.append(batch)
    return lines


def next_mode(
    model: str, params: int, features: tuple[str, ...], frames: int
) -> tuple[str, ...] | None:
    """The first rung of the auto ladder that needs less memory than ``features`` at ``frames``
    (what to try after an out-of-memory), or None when there is none."""
    now = estimate_bytes(model, params, features, frames)
    less = [r for r in LADDER[model] if estimate_bytes(model, params, r, frames) < now]
    keep = set(features) - {"full"}
    # Rather add to what the user chose than swap it for something else.
    return next((r for r in less if keep <= set(r)), less[0] if less else None)


def oom_hint(model: str, params: int, features: tuple[str, ...], frames: int) -> str:
    """One line for a step that ran out of memory even at the smallest batch."""
    mode = "+".join(features)
    nxt = next_mode(model, params, features, frames)
    if nxt:
        return (
            f"the GPU ran out of memory in mode {mode} at {frames} frames per batch: "
            f"continue with --resume --memory {'+'.join(nxt)}"
        )
    return (
        f"the GPU ran out of memory in mode {mode} at {frames} frames per batch, the most "
        "frugal mode: free GPU memory (close other programs) or use a larger GPU"
    )
