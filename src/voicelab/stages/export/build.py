"""``run_export``: average the chosen checkpoints and assemble the voice dir."""

from __future__ import annotations

import datetime as _dt
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicelab import __version__
from voicelab.errors import ConfigError, ModelError
from voicelab.fsutil import (
    atomic_write_json,
    free_bytes,
    link_or_copy,
    make_temp_dir,
)
from voicelab.stages.checkpoints import (
    META_KEYS,
    Checkpoint,
    average,
    check_against,
    default_rule,
    evaluated,
    load_state_dict,
    parse_rule,
    run_checkpoints,
    save_state_dict,
    select,
)
from voicelab.stages.export.base import base_files, base_identity, check_base_dir
from voicelab.stages.export.options import PROVENANCE, ExportOptions, ExportResult
from voicelab.stages.export.provenance import (
    data_fingerprint,
    load_spk2info,
    provenance_of,
    speaker_embedding,
    state_shapes,
    training_info,
    vendor_info,
)
from voicelab.stages.export.swap import (
    EXPORT_AGAIN,
    check_name,
    restore_interrupted,
    swap_in,
    write_fail,
)
from voicelab.stages.export.verify import verify_voice_dir
from voicelab.upstream.artifacts import is_stale
from voicelab.upstream.model_files import SPK2INFO
from voicelab.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass
class _Plan:
    """All an export decides before it writes anything."""

    speaker: str
    base_dir: Path
    target: Path  # the voice dir
    locked: int | None  # the locked llm epoch
    llm_rule: str
    llm: list[Checkpoint]
    flow_rule: str | None
    flow: list[Checkpoint]  # empty: the base flow.pt is kept
    embedding: Any  # the speaker's (1, 192) embedding
    files: list[str]  # the base model dir's files

    @property
    def new_flow(self) -> bool:
        return bool(self.flow)

    @property
    def stale(self) -> list[str]:
        """Base files the new weights make wrong (left out of the voice dir)."""
        return [f for f in self.files if is_stale(f, self.new_flow)]

    @property
    def carry(self) -> list[str]:
        """Base files the voice dir takes as they are."""
        replaced = {"llm.pt", SPK2INFO, PROVENANCE} | ({"flow.pt"} if self.new_flow else set())
        stale = self.stale
        return [f for f in self.files if f not in replaced and f not in stale]


# ---- export ---------------------------------------------------------------------------------
def run_export(ws: Workspace, opts: ExportOptions | None = None) -> ExportResult:
    """Assemble, verify and swap in the voice dir. See the module docstring."""
    opts = opts or ExportOptions()
    t0 = time.time()
    speaker = ws.speaker
    target = ws.pretrained_dir / check_name(opts.name or ws.voice_name)
    _check_target(opts, ws.base_model_dir, target)
    plan = _plan(ws, opts, speaker, target)
    _warn_disk(plan)
    from voicelab.state import stage_run

    try:
        with stage_run(ws, "export", _inputs(plan), _params(plan)) as rec:
            res = _assemble_and_swap(ws, plan)
            res.seconds = time.time() - t0
            rec.outputs = [str(target)]
            rec.figures.update(_figures(res))
    except OSError as e:  # a full disk met outside the guarded writes (temp dir, record)
        raise write_fail(e, target) from e
    return res


# ---- before anything is written -------------------------------------------------------------
def _check_target(opts: ExportOptions, base_dir: Path, target: Path) -> None:
    """Fail early on a typo in a rule, a bad base dir or a target in the way; finish what an
    interrupted export left."""
    for given in (opts.llm_select, opts.flow_select):
        if given:
            parse_rule(given)  # a typo is reported as such before anything else
    check_base_dir(base_dir)
    if target.exists() and target.resolve() == base_dir.resolve():
        raise ConfigError(
            f"the voice dir {target} is the base model dir", "choose another --name for the voice"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    restore_interrupted(target.parent, target.name, target)
    if target.exists() and not opts.overwrite:
        raise ModelError(
            f"{target} already exists",
            "pass --overwrite to replace it, keeping its other speakers, or --name NEW",
        )


def _plan(ws: Workspace, opts: ExportOptions, speaker: str, target: Path) -> _Plan:
    """Choose the checkpoints and check them against the base (fails before anything is
    written)."""
    base_dir = ws.base_model_dir
    locked = ws.config.locked_epoch
    llm_rule, llm = _select_llm(ws, opts, locked)
    flow_rule, flow = _select_flow(ws, opts)
    embedding = speaker_embedding(ws, speaker)
    _check_belongs(base_dir, llm, flow)
    return _Plan(
        speaker=speaker,
        base_dir=base_dir,
        target=target,
        locked=locked,
        llm_rule=llm_rule,
        llm=llm,
        flow_rule=flow_rule,
        flow=flow,
        embedding=embedding,
        files=base_files(base_dir),
    )


def _select_llm(
    ws: Workspace, opts: ExportOptions, locked: int | None
) -> tuple[str, list[Checkpoint]]:
    """--llm-select, else the locked epoch, else the default (best-eval once evaluated)."""
    rule = opts.llm_select or default_rule("llm", locked)
    if opts.llm_select and locked is not None:
        log.info("epoch %d is locked; --llm-select %s overrides it for this export", locked, rule)
    every = run_checkpoints(ws, "llm")
    _warn_deepspeed(ws, every)
    if not opts.llm_select and locked is not None and not any(c.locked for c in every):
        raise ModelError(
            f"epoch {locked} is locked but {ws.exp_dir('llm')} has no epoch_{locked}_whole.pt",
            "lock another epoch (voicelab checkpoints --lock N), --unlock, or --llm-select",
        )
    if not opts.llm_select and locked is None:
        rule = default_rule("llm", None, evaluated(every))
    return rule, select(every, rule, str(ws.exp_dir("llm")))


def _warn_deepspeed(ws: Workspace, llm_all: list[Checkpoint]) -> None:
    """Export reads torch_ddp checkpoints only: say so when deepspeed left the only ones."""
    ddp_llm = any(c.kind != "init" for c in llm_all)
    for model in ("llm", "flow"):
        ds = ws.exp_dir(model, "deepspeed")
        if ds.is_dir() and any(ds.glob("epoch_*")) and (model == "flow" or not ddp_llm):
            log.warning(
                "%s has deepspeed checkpoint folders: export reads torch_ddp checkpoints only"
                " (train with --engine torch_ddp)",
                ds,
            )


def _select_flow(ws: Workspace, opts: ExportOptions) -> tuple[str | None, list[Checkpoint]]:
    """--flow-select, else the default once flow was trained; none keeps the base flow."""
    every = run_checkpoints(ws, "flow")
    if opts.no_flow:
        if opts.flow_select:
            raise ConfigError(
                "--flow-select and --no-flow contradict each other", "pass one of them"
            )
        return None, []
    if not opts.flow_select and not any(c.kind in ("epoch", "step") for c in every):
        return None, []
    rule = opts.flow_select or default_rule("flow", None)
    if not opts.flow_select and not any(c.kind == "epoch" for c in every):
        raise ModelError(
            f"flow training in {ws.exp_dir('flow')} left only step checkpoints",
            "pass --flow-select step:last:N, or --no-flow to keep the base flow",
        )
    return rule, select(every, rule, str(ws.exp_dir("flow")))


def _check_belongs(base_dir: Path, llm: list[Checkpoint], flow: list[Checkpoint]) -> None:
    """Cheap early check (memory-mapped): the checkpoints belong to this base model."""
    for model, ckpts in (("llm", llm), ("flow", flow)):
        if ckpts:
            first = {k: v for k, v in load_state_dict(ckpts[0].path).items() if k not in META_KEYS}
            check_against(
                first,
                state_shapes(base_dir / f"{model}.pt"),
                ckpts[0].path.name,
                f"the base {model}.pt",
            )
            del first


def _warn_disk(plan: _Plan) -> None:
    pretrained = plan.target.parent
    need = sum(
        (plan.base_dir / f"{m}.pt").stat().st_size
        for m in ("llm", "flow")
        if m != "flow" or plan.new_flow
    )
    if free_bytes(pretrained) < need:
        log.warning(
            "only %.1f GB free for about %.1f GB of new weights in %s",
            free_bytes(pretrained) / 1e9,
            need / 1e9,
            pretrained,
        )


def _inputs(plan: _Plan) -> dict[str, Any]:
    return {
        "llm": [c.path.name for c in plan.llm],
        "flow": [c.path.name for c in plan.flow],
        "ckpt_sizes": [c.size for c in (*plan.llm, *plan.flow)],
        "base": str(plan.base_dir),
    }


def _params(plan: _Plan) -> dict[str, Any]:
    return {"llm_rule": plan.llm_rule, "flow_rule": plan.flow_rule, "name": plan.target.name}


# ---- the voice dir --------------------------------------------------------------------------
def _assemble_and_swap(ws: Workspace, plan: _Plan) -> ExportResult:
    """Build the voice dir in a staging dir beside the target, verify it and swap it in; the
    staging dir goes if anything fails, so a failed export leaves the old voice as it was."""
    target = plan.target
    staging = make_temp_dir(target.parent, prefix=f".{target.name}.staging-")
    swapped = False
    try:
        res = ExportResult(
            voice_dir=target,
            speaker=plan.speaker,
            speakers=[],
            llm_rule=plan.llm_rule,
            llm=plan.llm,
            flow_rule=plan.flow_rule,
            flow=plan.flow,
        )
        _write_weights(plan, staging)  # new weights first: they are what can fill a disk
        _carry_base_files(plan, staging, res)
        res.speakers = _write_spk2info(plan, staging)
        res.removed = _removed_stale(plan)
        _write_provenance(ws, plan, res, staging)
        _warn_dropped(plan, staging, res.removed)
        res.verify = verify_voice_dir(staging, plan.base_dir, plan.speaker).raise_if_failed()
        swap_in(staging, target)
        swapped = True
    finally:
        if not swapped:
            shutil.rmtree(staging, ignore_errors=True)
    res.verify.model_dir = target
    return res


def _write_weights(plan: _Plan, staging: Path) -> None:
    """llm.pt (and flow.pt when flow was trained): the average of the chosen checkpoints."""
    for model, ckpts in (("llm", plan.llm), ("flow", plan.flow)):
        if not ckpts:
            continue
        what = (
            ckpts[0].label if len(ckpts) == 1 else f"average of {', '.join(c.label for c in ckpts)}"
        )
        log.info("%s.pt: %s", model, what)
        state = average([c.path for c in ckpts])
        save_state_dict(state, staging / f"{model}.pt", plan.target / f"{model}.pt", EXPORT_AGAIN)
        del state


def _carry_base_files(plan: _Plan, staging: Path, res: ExportResult) -> None:
    """Hard-link (else copy) the base files the voice dir shares with the base model."""
    for rel in plan.carry:
        try:
            how = link_or_copy(plan.base_dir / rel, staging / rel)
        except OSError as e:
            raise write_fail(e, plan.target / rel) from e
        if how == "link":
            res.linked += 1
        else:
            res.copied += 1
    if res.copied:
        log.info("%d base files copied (hard links impossible here)", res.copied)


def _write_spk2info(plan: _Plan, staging: Path) -> list[str]:
    """The base speakers, those of the voice dir being replaced, and ours; returns their names."""
    spk2info = load_spk2info(plan.base_dir / SPK2INFO)
    spk2info.update(load_spk2info(plan.target / SPK2INFO))
    spk2info[plan.speaker] = {"embedding": plan.embedding}
    save_state_dict(spk2info, staging / SPK2INFO, plan.target / SPK2INFO, EXPORT_AGAIN)
    return sorted(map(str, spk2info))


def _removed_stale(plan: _Plan) -> list[str]:
    """Stale files of the base, and those of the voice dir being replaced."""
    removed = list(plan.stale)
    if plan.target.is_dir():
        removed += [
            f for f in base_files(plan.target) if is_stale(f, plan.new_flow) and f not in removed
        ]
    return removed


def _write_provenance(ws: Workspace, plan: _Plan, res: ExportResult, staging: Path) -> None:
    """voicelab.json: where every part of the voice came from."""
    try:
        atomic_write_json(staging / PROVENANCE, _provenance(ws, plan, res))
    except OSError as e:
        raise write_fail(e, plan.target / PROVENANCE) from e


def _provenance(ws: Workspace, plan: _Plan, res: ExportResult) -> dict[str, Any]:
    return {
        "format": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "voicelab_version": __version__,
        "speaker": plan.speaker,
        "speakers": res.speakers,
        "base_model": base_identity(plan.base_dir, plan.files),
        "vendor": vendor_info(),
        "data": data_fingerprint(ws),
        "llm": {
            "rule": plan.llm_rule,
            "locked_epoch": plan.locked,
            "checkpoints": [provenance_of(c) for c in plan.llm],
            "training": training_info(plan.llm),
        },
        "flow": (
            {
                "rule": plan.flow_rule,
                "checkpoints": [provenance_of(c) for c in plan.flow],
                "training": training_info(plan.flow),
            }
            if plan.new_flow
            else {"base": True}
        ),
        "removed_stale": res.removed,
    }


def _warn_dropped(plan: _Plan, staging: Path, removed: list[str]) -> None:
    """Files of the voice dir being replaced that the new one lacks (added by hand, say)."""
    if not plan.target.is_dir():
        return
    now = set(base_files(staging))
    dropped = [f for f in base_files(plan.target) if f not in now | set(removed)]
    if dropped:
        log.warning(
            "not carried over from the previous %s: %s",
            plan.target.name,
            ", ".join(dropped[:5]) + (" ..." if len(dropped) > 5 else ""),
        )


def _figures(res: ExportResult) -> dict[str, Any]:
    return {
        "voice_dir": str(res.voice_dir),
        "llm": [c.label for c in res.llm],
        "llm_cv_loss": [c.cv_loss for c in res.llm],
        "flow": [c.label for c in res.flow] or "base",
        "speakers": res.speakers,
        "linked": res.linked,
        "copied": res.copied,
    }
