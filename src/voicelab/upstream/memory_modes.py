"""Memory modes applied to upstream's model instances (see :mod:`voicelab.memory` for the plan).

Everything here works on already-built upstream objects (``CosyVoice3LM``,
``CausalMaskedDiffWithDiT``) without changing their code or their state-dict keys, except LoRA,
whose adapters :func:`merged_llm_state_dict` folds back into plain upstream keys:

* :func:`enable_checkpointing`: the Qwen2 body through Hugging Face's own
  ``gradient_checkpointing_enable`` (non-reentrant), the DiT blocks by wrapping each block's
  ``forward`` in ``torch.utils.checkpoint`` (an instance attribute: keys and weights unchanged);
* :func:`add_lora`: peft adapters injected into the Qwen2 body in place
  (``inject_adapter_in_model``, so ``llm.llm.model.model.embed_tokens`` and upstream's forward
  keep working), speech embedding and ``llm_decoder`` trained in full, everything else frozen;
* :func:`make_optimizer`: upstream's Adam/AdamW, or bitsandbytes' 8-bit one, or torchao's
  CPU-offloaded one;
* :func:`cap_vram` (``--max-vram``) and :class:`OomGuard` (an out-of-memory step is retried in
  smaller pieces, or training stops with a one-line hint naming the next mode).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from voicelab.errors import ConfigError, StageError
from voicelab.memory import GIB, oom_hint, parse_mode

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: The Qwen2 projections that get adapters (attention and MLP of every layer).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: llm modules trained in full under LoRA: the speech vocabulary lives only here.
LORA_FULL = ("speech_embedding", "llm_decoder")
LORA_RANK = 16
LORA_ALPHA = 32


@dataclass
class Applied:
    features: tuple[str, ...]
    trainable: int
    total: int


def apply_modes(model: torch.nn.Module, kind: str, mode: str | Iterable[str]) -> Applied:
    """Apply ``mode`` (``checkpointing+lora`` or a features tuple) to ``model`` in place."""
    features = parse_mode(mode, kind) if isinstance(mode, str) else tuple(mode)
    features = features or ("full",)
    if "lora" in features:
        add_lora(model)
    if "checkpointing" in features:
        enable_checkpointing(model, kind)
    params = list(model.parameters())
    return Applied(
        features,
        sum(p.numel() for p in params if p.requires_grad),
        sum(p.numel() for p in params),
    )


# ------------------------------------------------------------------------------------------------
# Gradient checkpointing
# ------------------------------------------------------------------------------------------------
def enable_checkpointing(model: torch.nn.Module, kind: str) -> int:
    """Checkpoint the Qwen2 layers (llm) or DiT blocks (flow); returns how many."""
    if kind == "llm":
        qwen = model.llm.model  # transformers' Qwen2ForCausalLM inside upstream's Qwen2Encoder
        # Non-reentrant: works with frozen inputs (LoRA) and keeps the RNG of dropout.
        kwargs = {"use_reentrant": False}
        if hasattr(qwen, "activation_checkpointing_enable"):  # transformers >= 5 (new name)
            qwen.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            qwen.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        qwen.config.use_cache = False  # a KV cache is useless in training and warned about
        return len(qwen.model.layers)
    if kind == "flow":
        blocks = model.decoder.estimator.transformer_blocks
        for block in blocks:
            if not getattr(block, "_voicelab_ckpt", False):
                block.forward = functools.partial(_checkpointed, block.forward)
                block._voicelab_ckpt = True
        return len(blocks)
    raise ConfigError(f"unknown model {kind!r}", "use llm or flow")


def _checkpointed(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    import torch
    from torch.utils.checkpoint import checkpoint

    if not torch.is_grad_enabled():  # inference and CV: nothing to save
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


# ------------------------------------------------------------------------------------------------
# LoRA
# ------------------------------------------------------------------------------------------------
def add_lora(
    llm: torch.nn.Module, rank: int = LORA_RANK, alpha: int = LORA_ALPHA, dropout: float = 0.0
) -> int:
    """Inject LoRA adapters into the Qwen2 body of upstream's llm; freeze all but the adapters,
    the speech embedding and ``llm_decoder``. Returns the number of trainable parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    if not hasattr(llm, "speech_embedding"):
        raise ConfigError("LoRA is for the llm", "use checkpointing or 8bit for the flow")
    body = llm.llm.model.model  # Qwen2Model: its lm head is never used by upstream
    if not has_lora(llm):
        cfg = LoraConfig(
            r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(LORA_TARGETS)
        )
        inject_adapter_in_model(cfg, body)
    n = 0
    for name, p in llm.named_parameters():
        p.requires_grad = "lora_" in name or name.split(".")[0] in LORA_FULL
        n += p.numel() if p.requires_grad else 0
    return n


def has_lora(model: torch.nn.Module) -> bool:
    return any("lora_" in name for name, _ in model.named_parameters())


def merged_llm_state_dict(llm: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A plain upstream ``llm.pt`` state dict of a LoRA llm: each adapted weight is
    ``W + scale * B @ A`` (peft's own ``get_delta_weight``), adapter keys dropped, the
    ``base_layer`` names restored. The model itself is left as it is (still training)."""
    import torch
    from peft.tuners.lora import LoraLayer

    deltas: dict[str, torch.Tensor] = {}
    for name, mod in llm.named_modules():
        if isinstance(mod, LoraLayer):
            with torch.no_grad():
                d = sum(mod.get_delta_weight(a) for a in mod.active_adapters)
            deltas[f"{name}.base_layer.weight"] = d
    out: dict[str, torch.Tensor] = {}
    for key, value in llm.state_dict().items():
        if "lora_" in key:
            continue
        v = value.detach()
        v = v + deltas[key].to(v.dtype) if key in deltas else v.clone()
        out[key.replace(".base_layer.", ".")] = v
    return out


def plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What upstream's ``llm.pt`` / ``flow.pt`` holds for ``model`` (LoRA merged)."""
    if has_lora(model):
        return merged_llm_state_dict(model)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------------
# Optimizer
# ------------------------------------------------------------------------------------------------
def make_optimizer(
    params: Iterable[torch.nn.Parameter],
    features: tuple[str, ...],
    *,
    optim: str = "adam",
    lr: float = 1e-5,
    device: str = "cpu",
    **conf: Any,
) -> torch.optim.Optimizer:
    """Upstream's optimizer (``train_conf.optim``: adam or adamw), in the mode's flavour.

    8-bit: bitsandbytes' ``Adam8bit``/``AdamW8bit`` (block-wise quantized moments, the
    reference implementation F5-TTS and GPT-SoVITS users know; its current wheels (0.50) carry CUDA
    kernels and CPU ones, so the tiny-model tests run the same optimizer on the CPU). torchao's
    AdamW8bit was the alternative: it compiles each parameter shape with torch.compile, minutes
    on a CPU and a compiler at run time.
    Offload: torchao's ``CPUOffloadOptimizer`` (CUDA only; it streams each gradient to pinned
    host memory and runs fused CPU Adam); on a CPU run the state is on the CPU already.
    """
    import torch

    if optim not in ("adam", "adamw"):
        raise ConfigError(f"train_conf.optim {optim!r} is not supported here", "use adam or adamw")
    params = [p for p in params if p.requires_grad]
    kw = {"lr": lr, **conf}
    if "8bit" in features:
        import bitsandbytes as bnb

        cls = bnb.optim.Adam8bit if optim == "adam" else bnb.optim.AdamW8bit
        return cls(params, **kw)
    base = torch.optim.Adam if optim == "adam" else torch.optim.AdamW
    if "offload" in features and device.startswith("cuda"):
        from torchao.optim import CPUOffloadOptimizer

        # Gradients stay on the GPU between micro-batches: offload_gradients breaks accumulation.
        opt = CPUOffloadOptimizer(params, optimizer_class=base, offload_gradients=False, **kw)
        return _step_with_final_grads(opt)
    if device.startswith("cuda"):
        kw.setdefault("fused", True)  # no multi-tensor temporaries: a lower step peak
    return base(params, **kw)


def _step_with_final_grads(opt: Any) -> Any:
    """torchao copies each gradient to the host as soon as backward has produced it, i.e. before
    the trainer clips it; its step would then use unclipped gradients. The step first copies the
    GPU gradients as they are now (clipped) to the host copies. (Upstream's trainer also runs a
    GradScaler, which unscales the host copies only: so VoiceLab runs offload with its own loop,
    never under upstream's train.py.)"""

    def final_grads_first(opt: Any) -> None:
        opt.stream.synchronize()  # the backward-time copies are done before we overwrite them
        for p_device, p_host in opt.param_d2h_map.items():
            if p_device.grad is not None:
                p_host.grad.copy_(p_device.grad)

    return before_step(opt, final_grads_first)


def before_step(opt: Any, first: Callable[[Any], None]) -> Any:
    """``opt.step`` runs ``first(opt)`` before itself. A bound method, not a bare function: a
    learning-rate scheduler built on ``opt`` wraps ``opt.step.__func__``."""
    import types

    step = opt.step

    def step_after(self: Any, closure: Any = None) -> Any:
        first(self)
        return step(closure)

    opt.step = types.MethodType(step_after, opt)
    return opt


# ------------------------------------------------------------------------------------------------
# --max-vram and out-of-memory handling
# ------------------------------------------------------------------------------------------------
#: The CUDA context and kernels (outside the caching allocator, so outside its fraction), which
#: a card of the capped size must also hold.
CUDA_CONTEXT_GIB = 0.5


def cap_vram(max_vram_gib: float | None, device: str = "cuda") -> float | None:
    """Cap this process's GPU memory at ``max_vram_gib``: the caching allocator may hold that
    less the CUDA context (allocations beyond it raise ``torch.OutOfMemoryError``). Returns the
    fraction set, None on the CPU or without a cap."""
    import torch

    if max_vram_gib is None or not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    dev = torch.device(device)
    if dev.index is None:  # torch wants an index here ("cuda" alone is refused)
        dev = torch.device("cuda", torch.cuda.current_device())
    total = torch.cuda.get_device_properties(dev).total_memory
    # No floor beyond "more than nothing": a 0.05 floor let a 1.5 GiB cap hold 7 GiB on an H200.
    frac = min(1.0, max(1e-3, (max_vram_gib - CUDA_CONTEXT_GIB) * GIB / total))
    torch.cuda.set_per_process_memory_fraction(frac, dev)
    return frac


class OutOfMemoryStop(StageError):
    """Training stopped: a step ran out of GPU memory even at the smallest batch."""


def _rows(batch: dict[str, Any]) -> int:
    for key in ("speech_token_len", "speech_feat_len", "text_token_len"):
        if key in batch:
            return int(batch[key].shape[0])
    raise ValueError("not an upstream training batch (no *_len tensor)")


def split_batch(batch: dict[str, Any], parts: int) -> list[dict[str, Any]]:
    """Split an upstream batch (as ``processor.padding`` builds it) into ``parts`` batches of
    consecutive rows, each padded only to its own longest item."""
    import torch

    n = _rows(batch)
    parts = max(1, min(parts, n))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    out = []
    for a, b in itertools.pairwise(bounds):
        sub: dict[str, Any] = {}
        for k, v in batch.items():
            per_row = isinstance(v, list) and len(v) == n
            per_row |= isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == n
            sub[k] = v[a:b] if per_row else v
        for k in list(sub):
            lens = sub.get(f"{k}_len")
            if isinstance(lens, torch.Tensor) and sub[k].dim() >= 2 and len(lens):
                sub[k] = sub[k][:, : int(lens.max())]
        out.append(sub)
    return out


def batch_frames(batch: dict[str, Any]) -> int:
    """Padded mel frames of a batch (what ``max_frames_in_batch`` counts)."""
    if "speech_feat" in batch:
        return int(batch["speech_feat"].shape[0] * batch["speech_feat"].shape[1])
    return int(batch["speech_token"].shape[0] * batch["speech_token"].shape[1] * 2)


class OomGuard:
    """Runs one batch's forward/backward; on ``torch.OutOfMemoryError`` frees memory, drops the
    gradients of the current accumulation window and retries the batch in twice as many pieces
    (kept for the following batches). When a piece is a single utterance and still does not fit,
    raises :class:`OutOfMemoryStop` whose hint names the next mode (the caller has its last
    checkpoint; nothing else is lost).

    ``run(sub_batch, weight)`` must do forward and backward with ``loss * weight`` and return the
    loss dict; ``weight`` is the piece's share of the batch's utterances. A batch is an upstream
    batch dict by default; another layout (e.g. the engine's utterance index lists) passes its
    own ``split(batch, parts)``, ``rows(batch)`` and ``frames(batch)``.
    """

    def __init__(
        self,
        kind: str,
        params: int,
        features: tuple[str, ...],
        zero_grad: Callable[[], None],
        split: Callable[[Any, int], list[Any]] | None = None,
        rows: Callable[[Any], int] | None = None,
        frames: Callable[[Any], int] | None = None,
    ) -> None:
        self.kind, self.params, self.features = kind, params, features
        self.zero_grad = zero_grad
        self.split = split or split_batch
        self.rows = rows or _rows
        self.frames = frames or batch_frames
        self.parts = 1
        self.retries = 0

    def step(self, batch: Any, run: Callable[[Any, float], dict[str, Any]]) -> list[dict[str, Any]]:
        import torch

        n = self.rows(batch)
        while True:
            pieces = self.split(batch, self.parts) if self.parts > 1 else [batch]
            try:
                return [run(p, self.rows(p) / n) for p in pieces]
            except torch.OutOfMemoryError:
                smallest = max(self.frames(p) // max(1, self.rows(p)) for p in pieces)
                self.zero_grad()
                _free_cuda()
                if all(self.rows(p) == 1 for p in pieces):
                    raise OutOfMemoryStop(
                        f"out of GPU memory in mode {'+'.join(self.features)} with one utterance "
                        "per batch",
                        oom_hint(self.kind, self.params, self.features, smallest),
                    ) from None
                self.parts = min(n, self.parts * 2)
                self.retries += 1
                log.warning(
                    "out of GPU memory: batch of %d utterances retried in %d pieces", n, self.parts
                )


def _free_cuda() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):
            torch.cuda.empty_cache()
