"""Issue 17's memory modes in VoiceLab's engine: :class:`~voicelab.upstream.engine.loop.Hooks`
built from a mode (see :mod:`voicelab.upstream.memory_modes` for the modes themselves).

* after the build: :func:`~voicelab.upstream.memory_modes.apply_modes` (gradient checkpointing,
  LoRA adapters), one log line with the trainable share;
* the optimizer: the YAML's Adam/AdamW in the mode's flavour (bitsandbytes 8-bit, torchao's
  CPU offload); without 8bit/offload the engine's own (fused);
* checkpoints: with LoRA every ``epoch_N_whole.pt``/``init.pt`` holds the merged plain weights,
  so export, ``--trainer upstream`` and upstream's ``CosyVoice3`` load them strictly;
* exact resume of a LoRA run: the merged weights cannot be split back into base and adapters
  exactly in fp32, so ``resume/epoch_N.pt`` holds the adapters, and ``resume/lora_base.pt``
  (written once per adapter start) the frozen weights under them. The engine's resume loads the
  merged epoch, adds adapters, then puts both back: the model is the one that was saved.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from voicelab.upstream import memory_modes as mm
from voicelab.upstream.engine import checkpoint, loop, model

LORA_BASE = "lora_base.pt"


class EngineMemory:
    """The hooks of one run in ``features`` (e.g. ``("checkpointing", "8bit", "lora")``)."""

    def __init__(self, features: tuple[str, ...], run_dir: Path) -> None:
        self.features = features or ("full",)
        self.run_dir = run_dir
        self.lora = "lora" in self.features
        self.base_id: str | None = None  # which lora_base.pt the adapters sit on
        self.base_written = False

    def hooks(self) -> loop.Hooks:
        return loop.Hooks(
            after_build=self.after_build,
            make_optimizer=self.make_optimizer,
            state_dict=self.state_dict if self.lora else checkpoint.cpu_state,
            resume_state=self.resume_state if self.lora else None,
            load_resume_state=self.load_resume_state if self.lora else None,
        )

    @property
    def base_file(self) -> Path:
        return self.run_dir / checkpoint.RESUME_DIR / LORA_BASE

    def after_build(self, net: Any, kind: str) -> None:
        applied = mm.apply_modes(net, kind, self.features)
        if self.lora:
            self.base_id = uuid.uuid4().hex  # fresh adapters (a resume may put saved ones back)
        print(
            f"voicelab engine: memory mode {'+'.join(applied.features)}, trainable"
            f" {applied.trainable / 1e6:.1f} M of {applied.total / 1e6:.1f} M parameters",
            flush=True,
        )

    def make_optimizer(self, params: Any, train_conf: dict[str, Any], device: str) -> Any:
        if not {"8bit", "offload"} & set(self.features):
            return model.make_optimizer(params, train_conf, device)
        conf = dict(train_conf.get("optim_conf") or {})
        conf["lr"] = float(conf.get("lr", 1e-5))
        optim = str(train_conf.get("optim", "adam"))
        return mm.make_optimizer(params, self.features, optim=optim, device=device, **conf)

    def state_dict(self, net: Any) -> dict[str, Any]:
        """Upstream's keys, adapters merged (fresh tensors, on the CPU)."""
        return {k: v.detach().to("cpu") for k, v in mm.plain_state_dict(net).items()}

    # ---- exact resume of a LoRA run ------------------------------------------------------------
    def resume_state(self, net: Any) -> dict[str, Any]:
        """The adapters (small), and once per adapter start the frozen weights under them."""
        if not self.base_written:
            base = _cpu_state(net, ".base_layer.")
            checkpoint.atomic_torch_save({"id": self.base_id, "weights": base}, self.base_file)
            self.base_written = True
        return {"lora_base": self.base_id, "lora": _cpu_state(net, "lora_")}

    def load_resume_state(self, net: Any, extra: dict[str, Any]) -> str | None:
        import torch

        if not extra.get("lora"):
            return "no LoRA adapters were saved (fresh adapters on the merged weights)"
        if not self.base_file.is_file():
            return f"{self.base_file} is missing (fresh adapters on the merged weights)"
        base = torch.load(self.base_file, map_location="cpu", weights_only=True)
        if base.get("id") != extra.get("lora_base"):
            return f"{self.base_file} belongs to other adapters (fresh ones on the merged weights)"
        state = {**base["weights"], **extra["lora"]}
        missing = set(state) - set(net.state_dict())
        if missing:
            return f"the saved adapters do not fit this model ({sorted(missing)[0]} ...)"
        with torch.no_grad():
            own = net.state_dict()
            for k, v in state.items():
                own[k].copy_(v)
        self.base_id, self.base_written = base["id"], True
        return None


def _cpu_state(net: Any, part: str) -> dict[str, Any]:
    """CPU copies of the entries of ``net``'s state dict whose key contains ``part``."""
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items() if part in k}


def hooks_for(mode: str, kind: str, run_dir: Path) -> loop.Hooks:
    """The engine's hooks for ``--memory MODE`` (``full``: the plain engine's)."""
    from voicelab.memory import parse_mode

    features = parse_mode(mode or "full", kind) or ("full",)
    if features == ("full",):
        return loop.Hooks()
    return EngineMemory(features, run_dir).hooks()
