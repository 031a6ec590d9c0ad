"""A minimal training loop for the memory modes: upstream's models, data pipeline and loss.

This is what the memory-mode vendor tests and ``benchmarks/bench_memory.py`` run until VoiceLab's
own training engine (issue 16) takes the modes over; it is deliberately small:

* :func:`load_configs`: the training YAML through hyperpyyaml, the other models set to None as
  upstream's ``train.py`` does;
* :func:`build_model`: the YAML's model with its weights loaded strictly (``epoch``/``step``
  keys dropped);
* :func:`upstream_batches`: batches from upstream's own ``Dataset`` + ``data_pipeline``;
* :class:`MemoryTrainer`: a plan's modes applied, upstream's ``model(batch, device)`` forward for
  the loss, bf16 autocast on CUDA, ``accum_grad``, grad clipping with upstream's skip of
  non-finite norms, the :class:`~voicelab.upstream.memory_modes.OomGuard`; ``save``/``load`` for
  an exact resume (weights, optimizer, counters, RNG states) and :meth:`save_upstream_checkpoint`
  for an ``epoch_N_whole.pt`` + ``.yaml`` that ``voicelab export`` and upstream read (LoRA
  merged).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from voicelab.fsutil import atomic_write_text
from voicelab.upstream import memory_modes as mm

MODEL_KEYS = ("llm", "flow", "hift", "hifigan")
META_KEYS = ("epoch", "step")


def prepare_process() -> None:
    """The launcher's in-process fixes our loop needs: offline features (``onnx_path`` unset
    before upstream's modules read it), ONNX providers, ``torchaudio.load`` via soundfile."""
    from voicelab.upstream import launcher

    launcher.fix_offline_features()
    launcher.fix_ort_providers()
    launcher.fix_torchaudio_load()


def sft_yaml_text(vendor_root: Path, base_dir: Path, max_frames: int, **settings: Any) -> str:
    """The speaker-SFT training YAML ``voicelab train`` generates, for ``base_dir``'s dims."""
    from voicelab.upstream import train_config as tc

    sft = tc.SftSettings(
        qwen_pretrain_path=str(base_dir / "CosyVoice-BlankEN"),
        max_frames_in_batch=max_frames,
        **settings,
    )
    sft.dims = tc.model_dims((base_dir / "cosyvoice3.yaml").read_text("utf-8"))
    return tc.render((vendor_root / tc.UPSTREAM_YAML).read_text("utf-8"), sft)


def load_configs(yaml_text: str, kind: str, qwen_path: str | Path) -> dict[str, Any]:
    from hyperpyyaml import load_hyperpyyaml

    prepare_process()

    overrides: dict[str, Any] = {k: None for k in MODEL_KEYS if k != kind}
    overrides["qwen_pretrain_path"] = str(qwen_path)
    return load_hyperpyyaml(yaml_text, overrides=overrides)


def build_model(configs: dict[str, Any], kind: str, weights: Path | None) -> torch.nn.Module:
    model = configs[kind]
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict({k: v for k, v in state.items() if k not in META_KEYS}, strict=True)
    return model


def upstream_batches(
    configs: dict[str, Any], data_list: Path, train: bool = True
) -> Iterator[dict[str, Any]]:
    """Upstream's batches of ``data_list`` (one pass), in this process (no DataLoader)."""
    yield from _dataset(configs, data_list, train)


def _dataset(configs: dict[str, Any], data_list: Path, train: bool) -> Any:
    """Upstream's own Dataset over ``data_list`` with the YAML's data pipeline."""
    from cosyvoice.dataset.dataset import Dataset

    return Dataset(
        str(data_list),
        data_pipeline=configs["data_pipeline"],
        mode="train" if train else "dev",
        gan=False,
        dpo=False,
        shuffle=train,
        partition=train,
    )


def collect_batches(
    configs: dict[str, Any], data_list: Path, train: bool = True, workers: int = 0
) -> list[dict[str, Any]]:
    """One pass of upstream's batches, decoded once (``workers`` DataLoader processes, as
    upstream's trainer uses them) and kept in host memory."""
    from torch.utils.data import DataLoader

    if workers <= 0:
        return list(upstream_batches(configs, data_list, train))
    return list(
        DataLoader(_dataset(configs, data_list, train), batch_size=None, num_workers=workers)
    )


@dataclass
class StepResult:
    loss: float
    acc: float | None
    frames: int
    stepped: bool  # an optimizer step was taken after this batch
    grad_norm: float | None = None


class MemoryTrainer:
    """Train one upstream model in a memory mode (see the module doc)."""

    def __init__(
        self,
        model: torch.nn.Module,
        kind: str,
        features: tuple[str, ...],
        *,
        device: str = "cpu",
        lr: float = 1e-5,
        optim: str = "adam",
        accum_grad: int = 1,
        grad_clip: float = 5.0,
        amp: bool | None = None,
    ) -> None:
        self.kind, self.device = kind, device
        self.total_params = sum(p.numel() for p in model.parameters())
        self.applied = mm.apply_modes(model, kind, features)
        self.features = self.applied.features
        self.model = model.to(device)
        self.model.train()
        self.optimizer = mm.make_optimizer(
            self.model.parameters(), self.features, optim=optim, lr=lr, device=device
        )
        self.accum_grad, self.grad_clip = max(1, accum_grad), grad_clip
        self.amp = device.startswith("cuda") if amp is None else amp
        self.batch_index = 0  # batches done
        self.step = 0  # optimizer steps done
        self.guard = mm.OomGuard(kind, self.total_params, self.features, self._zero_grad)

    def _zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def _forward_backward(self, batch: dict[str, Any], weight: float) -> dict[str, Any]:
        dtype = torch.bfloat16
        dev_type = "cuda" if self.device.startswith("cuda") else "cpu"
        with torch.autocast(dev_type, dtype=dtype, enabled=self.amp):
            out = self.model(batch, torch.device(self.device))
        (out["loss"] * weight / self.accum_grad).backward()
        return {k: float(v.detach()) * weight for k, v in out.items() if v is not None}

    def train_batch(self, batch: dict[str, Any]) -> StepResult:
        """Forward/backward of one batch; an optimizer step every ``accum_grad`` batches."""
        parts = self.guard.step(batch, self._forward_backward)
        loss = sum(p["loss"] for p in parts)
        acc = sum(p["acc"] for p in parts) if "acc" in parts[0] else None
        self.batch_index += 1
        res = StepResult(loss, acc, mm.batch_frames(batch), False)
        if self.batch_index % self.accum_grad == 0:
            params = [p for p in self.model.parameters() if p.requires_grad]
            norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
            res.grad_norm = float(norm)
            if math.isfinite(res.grad_norm):  # upstream skips the step on inf/nan
                self.optimizer.step()
            self._zero_grad()
            self.step += 1
            res.stepped = True
        return res

    @torch.inference_mode()
    def evaluate(self, batches: list[dict[str, Any]]) -> dict[str, float]:
        """Utterance-weighted mean of the loss dict, as upstream's ``cv`` computes it."""
        self.model.eval()
        sums: dict[str, float] = {}
        n = 0
        dev_type = "cuda" if self.device.startswith("cuda") else "cpu"
        try:
            for b in batches:
                k = len(b["utts"])
                with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=self.amp):
                    out = self.model(b, torch.device(self.device))
                for key, v in out.items():
                    if v is not None:
                        sums[key] = sums.get(key, 0.0) + float(v) * k
                n += k
        finally:
            self.model.train()
        return {k: v / max(1, n) for k, v in sums.items()}

    # ---- checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "batch_index": self.batch_index,
            "step": self.step,
            "features": list(self.features),
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "rng_python": random.getstate(),
        }

    def save(self, path: Path) -> None:
        """Everything an exact resume needs (a training checkpoint, not an upstream one)."""
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.state(), tmp)
        tmp.replace(path)

    def load(self, path: Path) -> None:
        st = torch.load(path, map_location="cpu", weights_only=True)
        if tuple(st["features"]) != self.features:
            raise mm.ConfigError(
                f"{path.name} was trained in mode {'+'.join(st['features'])}",
                f"resume it with --memory {'+'.join(st['features'])}",
            )
        self.model.load_state_dict(st["model"], strict=True)
        self.optimizer.load_state_dict(st["optimizer"])
        self.batch_index, self.step = int(st["batch_index"]), int(st["step"])
        torch.set_rng_state(st["rng_torch"])
        if st["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(st["rng_cuda"])
        py = st["rng_python"]
        random.setstate((py[0], tuple(py[1]), py[2]))

    def save_upstream_checkpoint(
        self, run_dir: Path, epoch: int, cv: dict[str, float] | None = None
    ) -> Path:
        """``epoch_N_whole.pt`` (plain upstream keys, LoRA merged, + epoch/step) and its yaml."""
        import yaml

        run_dir.mkdir(parents=True, exist_ok=True)
        pt = run_dir / f"epoch_{epoch}_whole.pt"
        state = {k: v.cpu() for k, v in mm.plain_state_dict(self.model).items()}
        tmp = pt.with_name(pt.name + ".tmp")
        torch.save({**state, "epoch": epoch, "step": self.step}, tmp)
        tmp.replace(pt)
        info = {
            "epoch": epoch,
            "step": self.step,
            "tag": "CV",
            "loss_dict": dict(cv or {}),
            "memory_mode": "+".join(self.features),
        }
        atomic_write_text(pt.with_suffix(".yaml"), yaml.safe_dump(info))
        return pt
