"""Checkpoints of a training run: discovery, CV metrics, selection rules and averaging.

Upstream's ``train.py`` (torch_ddp) writes, into ``exp/<spk>_sft/<model>/torch_ddp``:

* ``init.pt`` / ``init.yaml`` before the first step (listed, never selectable);
* ``epoch_{E}_step_{S}.pt`` / ``.yaml`` every ``save_per_step`` steps, ``S`` the global step;
* ``epoch_{E}_whole.pt`` / ``.yaml`` at the end of each epoch.

Each ``.pt`` is ``{**state_dict, 'epoch': E, 'step': S}``; each ``.yaml`` is the ``info_dict``
with the CV means under ``loss_dict`` and, sometimes, a torch tensor under ``grad_norm`` (python
tags), so yamls are read with a loader that turns unknown tags into plain data, never running them.

VoiceLab replaces upstream's ``average_model.py``: selection rules of its own (``last:N``,
``best-cv:N``, ``epochs:...``, ``step:...``; step checkpoints are themselves, not their epoch's
``whole`` file), and averaging that streams one file at a time: a float32 (or wider) running sum
plus the checkpoint being added, never more. The result is a plain state dict with the source
dtypes, which upstream loads strictly as ``llm.pt`` / ``flow.pt``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from voicelab.errors import ConfigError, ModelError, VoiceLabError
from voicelab.fsutil import atomic_path, free_bytes

if TYPE_CHECKING:
    import torch

    from voicelab.workspace import Workspace

log = logging.getLogger(__name__)

MODELS = ("llm", "flow")
DEFAULT_LAST = 3
DEFAULT_RULE = f"last:{DEFAULT_LAST}"
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


def run_checkpoints(ws: Workspace, model: str) -> list[Checkpoint]:
    """The checkpoints of ``model`` (``llm`` or ``flow``) in this workspace, with the locked
    epoch and the ones the exported voice was made from marked."""
    if model not in MODELS:
        raise ConfigError(f"unknown model {model!r}", "use llm or flow")
    locked = ws.config.locked_epoch if model == "llm" else None
    found = discover(ws.exp_dir(model), locked)
    try:
        prov = json.loads((ws.voice_dir / "voicelab.json").read_text(encoding="utf-8"))
        used = {c.get("file") for c in prov[model].get("checkpoints", [])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        used = set()
    for c in found:
        c.exported = c.path.name in used
    if model == "llm":
        from voicelab.evaluation.results import attach

        try:
            attach(ws, found)
        except (OSError, ValueError) as e:  # an unreadable table must not block export
            log.warning("evaluation results not read: %s", e)
    return found


def list_checkpoints(ws: Workspace, model: str) -> list[dict[str, Any]]:
    """Summaries of a run's checkpoints, with the ones the default rule (or the locked epoch)
    picks marked ``chosen`` (for the report and ``--json``)."""
    ckpts = run_checkpoints(ws, model)
    if any(c.kind != "init" for c in ckpts):
        locked = ws.config.locked_epoch if model == "llm" else None
        rule = default_rule(model, locked, evaluated(ckpts))
        with contextlib.suppress(VoiceLabError):
            select(ckpts, rule, str(ws.exp_dir(model)))
    return [c.summary() for c in ckpts]


# ---- selection ------------------------------------------------------------------------------
RULE_HELP = (
    "last:N (the last N epochs; default last:3), best-cv:N (the N epochs of lowest CV loss), "
    "epochs:4,5,6, step:S1,S2 (step checkpoints by global step), step:last:N, step:best-cv:N, "
    "best-eval[:N] (the N best epochs of voicelab eval; default when evaluations exist)"
)
EVAL_RULE = "best-eval"


def _count(text: str, rule: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"bad checkpoint rule {rule!r}: {text!r} is not a count >= 1", RULE_HELP)
    return int(text)


def _numbers(text: str, rule: str) -> list[int]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise ConfigError(f"bad checkpoint rule {rule!r}: expected numbers like 4,5,6", RULE_HELP)
    return list(dict.fromkeys(int(p) for p in parts))


def parse_rule(rule: str) -> tuple[str, str, str]:
    """``(pool, kind, arg)`` of a rule: pool ``epoch`` or ``step``; kind ``last``, ``best-cv``,
    ``epochs`` or ``steps``. Raises ConfigError for a malformed rule."""
    rule = rule.strip()
    kind, _, arg = rule.partition(":")
    kind = kind.strip().lower()
    pool = "epoch"
    if kind == "step":
        pool = "step"
        sub, _, sub_arg = arg.partition(":")
        if sub in ("last", "best-cv"):
            kind, arg = sub, sub_arg
        else:
            kind = "steps"
    if kind == EVAL_RULE and pool == "epoch":
        arg = arg or "1"
        _count(arg, rule)
    elif kind in ("last", "best-cv"):
        _count(arg, rule)
    elif kind == "epochs" or (kind == "steps" and pool == "step"):
        # "steps:N" alone is not a rule: step checkpoints are chosen with "step:N".
        _numbers(arg, rule)
    else:
        raise ConfigError(f"unknown checkpoint rule {rule!r}", RULE_HELP)
    return pool, kind, arg


def default_rule(model: str, locked_epoch: int | None, evaluated: bool = False) -> str:
    """What ``export`` uses without ``--select``: the locked epoch (llm only), else
    ``best-eval`` when an evaluated llm epoch is eligible (``evaluated``), else ``last:3``."""
    if model == "llm" and locked_epoch is not None:
        return f"epochs:{locked_epoch}"
    if model == "llm" and evaluated:
        return EVAL_RULE
    return DEFAULT_RULE


def evaluated(checkpoints: Iterable[Checkpoint]) -> bool:
    """Whether ``best-eval`` can pick one of these checkpoints."""
    return any(c.eval_ok for c in checkpoints)


# epochs:/steps: rules -> (Checkpoint attribute, what a missing one is called, rule to suggest)
_NUMBERED = {
    "epochs": ("epoch", "epoch_{}_whole.pt", "epochs:"),
    "steps": ("step", "step checkpoint of step {}", "step:"),
}


def select(
    checkpoints: Iterable[Checkpoint], rule: str, where: str = "the run"
) -> list[Checkpoint]:
    """Pick checkpoints by ``rule`` (see :data:`RULE_HELP`), in training order; marks them chosen.

    ``last``/``best-cv``/``epochs`` pick among epoch (``whole``) checkpoints; ``step:`` rules among
    step checkpoints only. ``init`` is never picked. Asking for more than exist takes what exists.
    """
    all_ckpts = list(checkpoints)
    rule = rule.strip()
    pool_kind, kind, arg = parse_rule(rule)
    pool = sorted((c for c in all_ckpts if c.kind == pool_kind), key=lambda c: c.order)
    noun = "epoch" if pool_kind == "epoch" else "step"
    if not pool:
        raise ModelError(
            f"no {noun} checkpoints in {where}",
            "train first (voicelab train), or choose other checkpoints (voicelab checkpoints)",
        )
    if kind == "last":
        n = _count(arg, rule)
        chosen = pool[-n:]
    elif kind == "best-cv":
        n = _count(arg, rule)
        scored = [c for c in pool if c.cv_loss is not None]
        if not scored:
            raise ModelError(
                f"no {noun} checkpoint in {where} has a CV loss in its yaml",
                "use --select last:N or epochs:... instead",
            )
        # Lowest loss first; on ties the later (more adapted) checkpoint wins.
        best = sorted(scored, key=lambda c: (c.cv_loss, tuple(-x for x in c.order)))[:n]
        chosen = sorted(best, key=lambda c: c.order)
    elif kind == EVAL_RULE:
        n = _count(arg, rule)
        chosen = _best_eval(pool, n, where)
    elif kind in _NUMBERED:
        attr, missing_name, prefix = _NUMBERED[kind]
        wanted = _numbers(arg, rule)
        by_number = {getattr(c, attr): c for c in pool}
        missing = [n for n in wanted if n not in by_number]
        if missing:
            have = ",".join(str(getattr(c, attr)) for c in pool)
            raise ModelError(
                f"no {missing_name.format(missing[0])} in {where} ({kind} there: {have})",
                f"pick existing {kind}, e.g. --select {prefix}" + have.split(",")[-1],
            )
        chosen = sorted((by_number[n] for n in wanted), key=lambda c: c.order)
    else:  # pragma: no cover - parse_rule knows only the kinds above
        raise ConfigError(f"unknown checkpoint rule {rule!r}", RULE_HELP)
    if kind in ("last", "best-cv", EVAL_RULE) and len(chosen) < _count(arg, rule):
        # A shortfall of the default rule is normal (short runs); of an explicit one, worth a look.
        log.log(
            logging.DEBUG if rule == DEFAULT_RULE else logging.WARNING,
            "%s asks for %s checkpoints; %s has only %d: using those",
            rule,
            arg,
            where,
            len(chosen),
        )
    for c in all_ckpts:
        c.chosen = False
    for c in chosen:
        c.chosen = True
    return chosen


def _best_eval(pool: list[Checkpoint], n: int, where: str) -> list[Checkpoint]:
    """The ``n`` best eligible evaluated epochs (voicelab.evaluation.choose), in training order."""
    scored = [c for c in pool if c.eval_score is not None]
    if not scored:
        raise ModelError(
            f"no epoch checkpoint in {where} has been evaluated",
            "run: voicelab eval (or use --select last:N)",
        )
    ok = [c for c in scored if c.eval_ok]
    if not ok:
        raise ModelError(
            f"no evaluated epoch in {where} keeps the base model's intelligibility "
            "(CER/WER within the margin)",
            "listen (voicelab audition --compare-ckpts ...), then pick with --select epochs:N",
        )
    # Highest score first; on ties the later (more adapted) epoch wins.
    best = sorted(ok, key=lambda c: (c.eval_score or 0.0, c.order), reverse=True)[:n]
    return sorted(best, key=lambda c: c.order)


# ---- loading, averaging, saving -------------------------------------------------------------
def load_state_dict(path: Path) -> dict[str, Any]:
    """``torch.load`` a checkpoint or model file: CPU, ``weights_only``, memory-mapped when the
    file is a zip archive (every file torch >= 1.6 writes), so its pages are not copied."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path} does not exist", "check the path, or train/download again")
    mmap = zipfile.is_zipfile(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"{path} is not a readable torch file (truncated or corrupt?): {first}",
            "delete it and write it again (train, download or export again)",
        ) from e
    if not isinstance(obj, dict):
        raise ModelError(f"{path} holds a {type(obj).__name__}, not a state dict", None)
    return obj


def strip_meta(state: dict[str, Any]) -> dict[str, Any]:
    """Drop upstream's ``epoch``/``step`` entries; everything left must be a tensor."""
    import torch

    out = {k: v for k, v in state.items() if k not in META_KEYS}
    bad = [k for k, v in out.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelError(
            f"checkpoint entry {bad[0]!r} is a {type(out[bad[0]]).__name__}, not a tensor",
            "this is not an upstream torch_ddp checkpoint",
        )
    return out


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    import torch

    # float32 running sums for float32 weights keep the bound of two checkpoints in memory (a
    # float64 sum of a 2 GB llm would be 4 GB); half types sum in float32, float64 in float64.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _mismatch(ref: dict[str, tuple], state: dict[str, Any], path: Path, first: Path) -> str | None:
    keys, ref_keys = set(state), set(ref)
    if keys != ref_keys:
        extra, missing = sorted(keys - ref_keys), sorted(ref_keys - keys)
        what = f"has {extra[0]!r} that" if extra else f"lacks {missing[0]!r} that"
        return f"{path.name} {what} {first.name} has ({len(extra)} extra, {len(missing)} missing)"
    for k, (shape, dtype) in ref.items():
        t = state[k]
        if tuple(t.shape) != shape or t.dtype != dtype:
            return (
                f"{path.name}: {k} is {tuple(t.shape)} {t.dtype}, {first.name} has {shape} {dtype}"
            )
    return None


def average(paths: list[Path]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the state dicts in ``paths``, one file in memory at a time.

    Float tensors are summed in float32 (float64 for float64) and cast back to their dtype;
    integer/bool tensors (buffers such as counters) must be equal in every file and are kept.
    ``epoch``/``step`` are stripped. One path returns that checkpoint stripped, unchanged.
    """
    import torch

    if not paths:
        raise ModelError("no checkpoints to average", "train first, or check --select")
    paths = [Path(p) for p in paths]
    acc: dict[str, torch.Tensor] = {}
    ref: dict[str, tuple] = {}
    for i, path in enumerate(paths):
        state = strip_meta(load_state_dict(path))
        if i == 0:
            ref = {k: (tuple(v.shape), v.dtype) for k, v in state.items()}
            if len(paths) == 1:
                return state  # exported as is: memory-mapped tensors, saved without a copy
            for k, v in state.items():
                acc[k] = (
                    v.to(_acc_dtype(v.dtype), copy=True) if v.is_floating_point() else v.clone()
                )
        else:
            problem = _mismatch(ref, state, path, paths[0])
            if problem:
                raise ModelError(
                    f"checkpoints of different models: {problem}",
                    "average only checkpoints of one run (pick them with --select)",
                )
            for k, v in state.items():
                if v.is_floating_point():
                    acc[k].add_(v)
                elif not torch.equal(acc[k], v):
                    raise ModelError(
                        f"integer tensor {k} differs between {paths[0].name} and {path.name}",
                        "these checkpoints cannot be averaged; export one of them alone",
                    )
        del state
    n = len(paths)
    for k in list(acc):
        dtype = ref[k][1]
        if acc[k].is_floating_point():
            acc[k].div_(n)
            if acc[k].dtype != dtype:
                acc[k] = acc[k].to(dtype)  # one tensor at a time: the sum is freed as we go
    return acc


_OTHER_MODEL = "these checkpoints are from a different model; export those of this voice's run"


def check_against(state: dict[str, Any], base: dict[str, Any], what: str, base_name: str) -> None:
    """Raise unless ``state`` has exactly the keys and tensor shapes of ``base``."""
    keys, base_keys = set(state), set(base)
    if keys != base_keys:
        extra, missing = sorted(keys - base_keys), sorted(base_keys - keys)
        detail = f"{len(extra)} unknown keys (e.g. {extra[0]!r})" if extra else ""
        if missing:
            detail += (", " if detail else "") + f"{len(missing)} missing (e.g. {missing[0]!r})"
        raise ModelError(
            f"{what} does not fit {base_name}: {detail}",
            _OTHER_MODEL,
        )
    for k, t in state.items():
        b = base[k]
        if tuple(t.shape) != tuple(b.shape):
            raise ModelError(
                f"{what} does not fit {base_name}: {k} is {tuple(t.shape)}, "
                f"the base has {tuple(b.shape)}",
                _OTHER_MODEL,
            )


def _enospc(e: BaseException) -> bool:
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def save_state_dict(
    state: dict[str, Any],
    dest: Path,
    shown: Path | None = None,
    then: str = "run the command again",
) -> Path:
    """``torch.save`` through a temp file, fsync'ed, then renamed onto ``dest``: a full disk or a
    crash never leaves a half-written file under ``dest``; errors are one line, naming ``shown``
    (default ``dest``) and ending their hint with ``then``."""
    import torch

    dest = Path(dest)
    shown = Path(shown) if shown is not None else dest
    try:
        # A Python file object (not a path) so the OSError behind torch's RuntimeError survives.
        with atomic_path(dest) as tmp, open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as e:
        free = free_bytes(dest.parent)
        if _enospc(e):
            raise ModelError(
                f"disk full while writing {shown} ({free / 1e6:.1f} MB free)",
                f"free space on the disk of {shown.parent} and {then}",
            ) from e
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"could not write {shown}: {first}", f"check the disk and its permissions, then {then}"
        ) from e
    return dest
