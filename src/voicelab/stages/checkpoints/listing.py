"""The checkpoints of a training run: upstream's ``epoch_N_whole.yaml`` records read tolerantly,
one :class:`Checkpoint` per epoch or step, listed with their CV figures."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


MODELS = ("llm", "flow")

META_KEYS = ("epoch", "step")

_EPOCH_RE = re.compile(r"^epoch_(\d+)_whole$")

_STEP_RE = re.compile(r"^epoch_(\d+)_step_(\d+)$")


# ---- yaml -----------------------------------------------------------------------------------
class _TolerantLoader(yaml.SafeLoader):
    """SafeLoader that reads unknown tags (``!!python/object/apply:torch...``) as plain data.

    Nothing is imported or called: a tagged node becomes the string, list or dict it is written as.
    """


def _construct_unknown(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_TolerantLoader.add_constructor(None, _construct_unknown)


def read_info_yaml(path: Path) -> dict[str, Any]:
    """The ``info_dict`` upstream wrote beside a checkpoint; ``{}`` when missing or unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        log.warning("cannot read %s: %s", path, e)
        return {}
    try:
        data = yaml.load(text, Loader=_TolerantLoader)
    except yaml.YAMLError as e:
        log.warning("cannot parse %s: %s", path, str(e).splitlines()[0])
        return {}
    return data if isinstance(data, dict) else {}


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# ---- discovery ------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """One checkpoint file of a run and what its yaml says about it."""

    path: Path
    kind: str  # "epoch" | "step" | "init"
    epoch: int | None
    step: int | None
    size: int
    cv_loss: float | None = None
    cv_acc: float | None = None
    info: dict[str, Any] = field(default_factory=dict, repr=False)
    locked: bool = False
    chosen: bool = False
    exported: bool = False  # in the voice dir's current llm.pt / flow.pt (its voicelab.json)
    # The latest `voicelab eval` of this epoch (voicelab.evaluation.results.attach).
    eval: dict[str, Any] | None = field(default=None, repr=False)
    eval_score: float | None = None
    eval_ok: bool = False  # within the error margin of the base model: best-eval may pick it

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def label(self) -> str:
        if self.kind == "epoch":
            return f"epoch {self.epoch}"
        if self.kind == "step":
            return f"epoch {self.epoch} step {self.step}"
        return "init"

    @property
    def order(self) -> tuple[int, int, int]:
        """Training order: init, then by epoch; a step checkpoint before its epoch's end."""
        if self.kind == "init":
            return (-1, -1, 0)
        return (self.epoch or 0, 0 if self.kind == "step" else 1, self.step or 0)

    def summary(self) -> dict[str, Any]:
        """JSON-able description (``--json``, provenance)."""
        return {
            "name": self.name,
            "file": self.path.name,
            "kind": self.kind,
            "epoch": self.epoch,
            "step": self.step,
            "cv_loss": self.cv_loss,
            "cv_acc": self.cv_acc,
            "size": self.size,
            "save_time": self.info.get("save_time"),
            "locked": self.locked,
            "chosen": self.chosen,
            "exported": self.exported,
            "eval": None
            if self.eval is None
            else {
                **{k: self.eval.get(k) for k in ("err", "sim", "sim_ref", "mos", "run")},
                "score": self.eval_score,
                "eligible": self.eval_ok,
            },
        }


def _parse(pt: Path) -> Checkpoint | None:
    stem = pt.stem
    if m := _EPOCH_RE.match(stem):
        kind, epoch, step = "epoch", int(m.group(1)), None
    elif m := _STEP_RE.match(stem):
        kind, epoch, step = "step", int(m.group(1)), int(m.group(2))
    elif stem == "init":
        kind, epoch, step = "init", None, None
    else:
        return None
    info = read_info_yaml(pt.with_suffix(".yaml"))
    losses = info.get("loss_dict") if isinstance(info.get("loss_dict"), dict) else {}
    if step is None:
        step = _int(info.get("step"))
    return Checkpoint(
        path=pt,
        kind=kind,
        epoch=epoch,
        step=step,
        size=pt.stat().st_size,
        cv_loss=_float(losses.get("loss")),
        cv_acc=_float(losses.get("acc")),
        info=info,
    )


def _int(value: Any) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def discover(run_dir: Path, locked_epoch: int | None = None) -> list[Checkpoint]:
    """Every checkpoint of a run (init, step and epoch) in training order.

    Deepspeed's checkpoint *directories* are not supported (upstream writes them only with
    ``--train_engine deepspeed``; VoiceLab trains with torch_ddp).
    """
    if not run_dir.is_dir():
        return []
    found = [c for pt in sorted(run_dir.glob("*.pt")) if (c := _parse(pt)) is not None]
    for c in found:
        c.locked = locked_epoch is not None and c.kind == "epoch" and c.epoch == locked_epoch
    return sorted(found, key=lambda c: c.order)
