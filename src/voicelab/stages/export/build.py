"""``run_export``: average the chosen checkpoints and assemble the voice dir."""

from __future__ import annotations

import datetime as _dt
import logging
import shutil
import time

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


# ---- export ---------------------------------------------------------------------------------
def run_export(ws: Workspace, opts: ExportOptions | None = None) -> ExportResult:
    """Assemble, verify and swap in the voice dir. See the module docstring."""
    opts = opts or ExportOptions()
    t0 = time.time()
    speaker = ws.speaker
    name = check_name(opts.name or ws.voice_name)
    base_dir = ws.base_model_dir
    pretrained = ws.pretrained_dir
    target = pretrained / name
    for given in (opts.llm_select, opts.flow_select):
        if given:
            parse_rule(given)  # a typo is reported as such before anything else
    check_base_dir(base_dir)
    if target.exists() and target.resolve() == base_dir.resolve():
        raise ConfigError(
            f"the voice dir {target} is the base model dir", "choose another --name for the voice"
        )
    pretrained.mkdir(parents=True, exist_ok=True)
    restore_interrupted(pretrained, name, target)
    if target.exists() and not opts.overwrite:
        raise ModelError(
            f"{target} already exists",
            "pass --overwrite to replace it, keeping its other speakers, or --name NEW",
        )

    # Choose checkpoints (fails before anything is written).
    locked = ws.config.locked_epoch
    llm_rule = opts.llm_select or default_rule("llm", locked)
    if opts.llm_select and locked is not None:
        log.info(
            "epoch %d is locked; --llm-select %s overrides it for this export", locked, llm_rule
        )
    llm_all = run_checkpoints(ws, "llm")
    for model in ("llm", "flow"):
        ds = ws.exp_dir(model, "deepspeed")
        ddp_has = any(c.kind != "init" for c in (llm_all if model == "llm" else []))
        if ds.is_dir() and any(ds.glob("epoch_*")) and (model == "flow" or not ddp_has):
            log.warning(
                "%s has deepspeed checkpoint folders: export reads torch_ddp checkpoints only"
                " (train with --engine torch_ddp)",
                ds,
            )
    if not opts.llm_select and locked is not None and not any(c.locked for c in llm_all):
        raise ModelError(
            f"epoch {locked} is locked but {ws.exp_dir('llm')} has no epoch_{locked}_whole.pt",
            "lock another epoch (voicelab checkpoints --lock N), --unlock, or --llm-select",
        )
    if not opts.llm_select and locked is None:
        llm_rule = default_rule("llm", None, evaluated(llm_all))  # best-eval once evaluated
    llm_ckpts = select(llm_all, llm_rule, str(ws.exp_dir("llm")))
    flow_all = run_checkpoints(ws, "flow")
    flow_rule: str | None = None
    flow_ckpts: list[Checkpoint] = []
    if opts.no_flow:
        if opts.flow_select:
            raise ConfigError(
                "--flow-select and --no-flow contradict each other", "pass one of them"
            )
    elif opts.flow_select or any(c.kind in ("epoch", "step") for c in flow_all):
        flow_rule = opts.flow_select or default_rule("flow", None)
        if not opts.flow_select and not any(c.kind == "epoch" for c in flow_all):
            raise ModelError(
                f"flow training in {ws.exp_dir('flow')} left only step checkpoints",
                "pass --flow-select step:last:N, or --no-flow to keep the base flow",
            )
        flow_ckpts = select(flow_all, flow_rule, str(ws.exp_dir("flow")))
    new_flow = bool(flow_ckpts)
    embedding = speaker_embedding(ws, speaker)

    # Cheap early check (memory-mapped): the checkpoints belong to this base model.
    for model, ckpts in (("llm", llm_ckpts), ("flow", flow_ckpts)):
        if ckpts:
            first = {k: v for k, v in load_state_dict(ckpts[0].path).items() if k not in META_KEYS}
            check_against(
                first,
                state_shapes(base_dir / f"{model}.pt"),
                ckpts[0].path.name,
                f"the base {model}.pt",
            )
            del first

    files = base_files(base_dir)
    replaced = {"llm.pt", SPK2INFO, PROVENANCE} | ({"flow.pt"} if new_flow else set())
    stale = [f for f in files if is_stale(f, new_flow)]
    carry = [f for f in files if f not in replaced and f not in stale]
    need = sum(
        (base_dir / f"{m}.pt").stat().st_size for m in ("llm", "flow") if m != "flow" or new_flow
    )
    if free_bytes(pretrained) < need:
        log.warning(
            "only %.1f GB free for about %.1f GB of new weights in %s",
            free_bytes(pretrained) / 1e9,
            need / 1e9,
            pretrained,
        )

    inputs = {
        "llm": [c.path.name for c in llm_ckpts],
        "flow": [c.path.name for c in flow_ckpts],
        "ckpt_sizes": [c.size for c in (*llm_ckpts, *flow_ckpts)],
        "base": str(base_dir),
    }
    params = {"llm_rule": llm_rule, "flow_rule": flow_rule, "name": name}
    from voicelab.state import stage_run

    try:
        with stage_run(ws, "export", inputs, params) as rec:
            staging = make_temp_dir(pretrained, prefix=f".{name}.staging-")
            swapped = False
            try:
                res = ExportResult(
                    voice_dir=target,
                    speaker=speaker,
                    speakers=[],
                    llm_rule=llm_rule,
                    llm=llm_ckpts,
                    flow_rule=flow_rule,
                    flow=flow_ckpts,
                )
                # New weights first: they are what can fill a disk.
                for model, ckpts in (("llm", llm_ckpts), ("flow", flow_ckpts)):
                    if not ckpts:
                        continue
                    log.info(
                        "%s.pt: %s",
                        model,
                        ckpts[0].label
                        if len(ckpts) == 1
                        else f"average of {', '.join(c.label for c in ckpts)}",
                    )
                    state = average([c.path for c in ckpts])
                    save_state_dict(
                        state, staging / f"{model}.pt", target / f"{model}.pt", EXPORT_AGAIN
                    )
                    del state
                for rel in carry:
                    try:
                        how = link_or_copy(base_dir / rel, staging / rel)
                    except OSError as e:
                        raise write_fail(e, target / rel) from e
                    if how == "link":
                        res.linked += 1
                    else:
                        res.copied += 1
                if res.copied:
                    log.info("%d base files copied (hard links impossible here)", res.copied)

                spk2info = load_spk2info(base_dir / SPK2INFO)
                spk2info.update(load_spk2info(target / SPK2INFO))
                spk2info[speaker] = {"embedding": embedding}
                save_state_dict(spk2info, staging / SPK2INFO, target / SPK2INFO, EXPORT_AGAIN)
                res.speakers = sorted(map(str, spk2info))

                res.removed = list(stale)
                if target.is_dir():
                    res.removed += [
                        f
                        for f in base_files(target)
                        if is_stale(f, new_flow) and f not in res.removed
                    ]
                provenance = {
                    "format": 1,
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "voicelab_version": __version__,
                    "speaker": speaker,
                    "speakers": res.speakers,
                    "base_model": base_identity(base_dir, files),
                    "vendor": vendor_info(),
                    "data": data_fingerprint(ws),
                    "llm": {
                        "rule": llm_rule,
                        "locked_epoch": locked,
                        "checkpoints": [provenance_of(c) for c in llm_ckpts],
                        "training": training_info(llm_ckpts),
                    },
                    "flow": (
                        {
                            "rule": flow_rule,
                            "checkpoints": [provenance_of(c) for c in flow_ckpts],
                            "training": training_info(flow_ckpts),
                        }
                        if new_flow
                        else {"base": True}
                    ),
                    "removed_stale": res.removed,
                }
                try:
                    atomic_write_json(staging / PROVENANCE, provenance)
                except OSError as e:
                    raise write_fail(e, target / PROVENANCE) from e

                if target.is_dir():
                    now = set(base_files(staging))
                    dropped = [f for f in base_files(target) if f not in now | set(res.removed)]
                    if dropped:
                        log.warning(
                            "not carried over from the previous %s: %s",
                            target.name,
                            ", ".join(dropped[:5]) + (" ..." if len(dropped) > 5 else ""),
                        )
                res.verify = verify_voice_dir(staging, base_dir, speaker).raise_if_failed()
                swap_in(staging, target)
                swapped = True
            finally:
                if not swapped:
                    shutil.rmtree(staging, ignore_errors=True)
            res.verify.model_dir = target
            res.seconds = time.time() - t0
            rec.outputs = [str(target)]
            rec.figures.update(
                voice_dir=str(target),
                llm=[c.label for c in llm_ckpts],
                llm_cv_loss=[c.cv_loss for c in llm_ckpts],
                flow=[c.label for c in flow_ckpts] or "base",
                speakers=res.speakers,
                linked=res.linked,
                copied=res.copied,
            )
    except OSError as e:  # a full disk met outside the guarded writes (temp dir, record)
        raise write_fail(e, target) from e
    return res
