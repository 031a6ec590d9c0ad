"""``run_train``: the config, the memory plan, preflight, the launch and its result."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voicelab.errors import ConfigError, StageError, VoiceLabError
from voicelab.fsutil import atomic_write_json, atomic_write_text, quick_fingerprint
from voicelab.memory import MemoryPlan
from voicelab.stages.train.checks import Facts, preflight
from voicelab.stages.train.data import read_shards
from voicelab.stages.train.gpus import Gpu, model_params, query_gpus, visible
from voicelab.stages.train.launch import Launch, build_launch
from voicelab.stages.train.logs import read_train_log, summarize
from voicelab.stages.train.options import (
    ENGINES,
    MODELS,
    PreflightError,
    TrainOptions,
    TrainResult,
    cuda_graphs_unused,
)
from voicelab.stages.train.runconfig import (
    RunConfig,
    Setup,
    base_checkpoint,
    resolve_setup,
    run_config,
)
from voicelab.stages.train.rundirs import (
    CHECKPOINT_LOG,
    RunPlan,
    epochs_saved,
    latest_checkpoint,
    plan_run,
    run_lock,
)
from voicelab.stages.train.spec import LaunchSpec
from voicelab.stages.train.supervise import failure, failure_hint, supervise
from voicelab.upstream import train_config as tc
from voicelab.upstream.data_rules import FilterRules
from voicelab.upstream.train_flags import deepspeed_json

if TYPE_CHECKING:
    from voicelab.locks import Lock
    from voicelab.vendor import VendorRuntime
    from voicelab.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Run:
    """A run resolved up to its launch: what preflight checks and the launch writes and starts."""

    ws: Workspace
    model: str
    opts: TrainOptions
    setup: Setup
    base_ckpt: Path
    cfg: RunConfig
    mem_plan: MemoryPlan
    plan: RunPlan

    @property
    def done_epoch(self) -> int:
        """The last epoch a resumed run finished (-1: none)."""
        return self.plan.resumed_epoch if self.plan.resumed_epoch is not None else -1

    @property
    def epochs_to_run(self) -> int:
        return max(0, self.cfg.max_epoch - self.done_epoch - 1)


def run_train(ws: Workspace, model: str, opts: TrainOptions | None = None) -> TrainResult:
    """Train ``model`` (``llm`` or ``flow``) on the workspace's packed data."""
    opts = opts or TrainOptions()
    _check_choices(model, opts)
    section = ws.config.section("train")
    setup = resolve_setup(opts, section)
    vendor, vendor_problem = _load_vendor()
    base_ckpt = base_checkpoint(ws, model)
    gpus = visible(query_gpus() if setup.device == "cuda" else [], opts.gpu_ids)
    cfg = run_config(ws, model, opts, section, setup, vendor, gpus)
    mem_plan, cfg = _fit_memory(ws, model, base_ckpt, opts, setup, gpus, cfg)
    plan = plan_run(ws, model, setup.name, base_ckpt, opts, cfg.max_epoch)
    run = _Run(ws, model, opts, setup, base_ckpt, cfg, mem_plan, plan)
    facts, warnings = _preflight_or_raise(run, vendor, vendor_problem, gpus)
    assert vendor is not None  # a missing vendor is a preflight problem
    result = TrainResult(model, plan.run_dir, False, max_epoch=cfg.max_epoch, warnings=warnings)
    if run.epochs_to_run == 0:
        return _already_done(run, result)
    if opts.dry_run:
        return _dry_run(run, vendor, result)
    return _launch(run, vendor, facts, result)


def _check_choices(model: str, opts: TrainOptions) -> None:
    if model not in MODELS:
        raise ConfigError(f"unknown model {model!r}", "use llm or flow")
    if opts.engine not in ENGINES:
        raise ConfigError(f"unknown --engine {opts.engine!r}", "use torch_ddp or deepspeed")


def _load_vendor() -> tuple[VendorRuntime | None, str | None]:
    """The vendor runtime, or why there is none (preflight reports it once, with its fix)."""
    try:
        from voicelab.vendor import cosyvoice_runtime

        return cosyvoice_runtime(), None
    except VoiceLabError as e:
        return None, e.message


def _fit_memory(
    ws: Workspace,
    model: str,
    base_ckpt: Path,
    opts: TrainOptions,
    setup: Setup,
    gpus: list[Gpu],
    cfg: RunConfig,
) -> tuple[MemoryPlan, RunConfig]:
    """Memory mode and batch from the GPU's free memory (voicelab.memory); a split batch keeps
    the tokens per optimizer step through accum_grad."""
    device = setup.device
    mem_plan = memory_plan_for(ws, model, base_ckpt, device, gpus, opts, cfg.max_frames, cfg.accum)
    if mem_plan.has("offload") and device == "cuda" and setup.trainer != "voicelab":
        # Upstream's GradScaler would unscale torchao's host gradient copies only.
        raise ConfigError(
            f"memory mode {mem_plan.mode} (optimizer on the CPU) needs VoiceLab's own trainer",
            "use --trainer voicelab, or --memory checkpointing+8bit (or lora for the llm)",
        )
    batch = (mem_plan.batch_frames, mem_plan.accum_grad)
    if mem_plan.fits and batch != (cfg.max_frames, cfg.accum):
        text = tc.apply_overrides(
            cfg.text, {tc.MAX_FRAMES: batch[0], tc.ACCUM_GRAD: batch[1]}, source="memory plan"
        )
        values = tc.read_values(text)
        cfg = replace(cfg, text=text, values=values, max_frames=batch[0], accum=batch[1])
    return mem_plan, cfg


def memory_plan_for(
    ws: Workspace,
    model: str,
    base_ckpt: Path,
    device: str,
    gpus: list[Gpu],
    opts: TrainOptions,
    max_frames: int,
    accum: int,
) -> MemoryPlan:
    """The memory plan of a run: on a GPU from the smallest free memory of the GPUs used and the
    longest training utterance; on the CPU the named mode as it is (nothing to fit)."""
    from voicelab.memory import plan_memory

    mode = opts.memory or str(ws.config.section("train").get("memory") or "auto")
    longest = 0
    with contextlib.suppress(Exception):
        shards, _ = read_shards(ws.data_list("train"))
        rules = FilterRules()
        longest = max((u.frames for s in shards for u in s.utts if rules.keeps(u)), default=0)
    on_gpu = device == "cuda" and bool(gpus)
    plan = plan_memory(
        model,
        model_params(base_ckpt),
        total=min(g.total for g in gpus) if on_gpu else None,
        free=min(g.free for g in gpus) if on_gpu else None,
        max_vram_gib=opts.max_vram,
        requested_frames=max_frames,
        requested_accum=accum,
        longest_frames=longest,
        mode=mode,
    )
    return plan


def _preflight_or_raise(
    run: _Run, vendor: VendorRuntime | None, vendor_problem: str | None, gpus: list[Gpu]
) -> tuple[Facts, list[str]]:
    """(facts, warnings) of preflight, the warnings logged; its problems raised as one error."""
    device = run.setup.device
    problems, warnings, facts = preflight(
        run.ws,
        run.model,
        vendor=vendor,
        vendor_problem=vendor_problem,
        values=run.cfg.values,
        device=device,
        world=run.setup.world,
        local_procs=run.setup.nproc,
        num_workers=run.setup.num_workers,
        max_frames=run.cfg.max_frames,
        base_ckpt=run.base_ckpt,
        epochs_to_run=run.epochs_to_run,
        engine=run.opts.engine,
        gpus=gpus,
        memory_plan=run.mem_plan if device == "cuda" else None,
        trainer=run.setup.trainer,
        keep=run.opts.keep,
    )
    warnings = run.cfg.warnings + warnings
    graphs = cuda_graphs_unused(run.opts, device, run.setup.world, run.mem_plan.mode)
    if graphs:
        warnings.append(graphs)
    if run.plan.note:
        warnings.append(run.plan.note)
    for w in warnings:
        log.warning("%s", w)
    if problems:
        raise PreflightError(problems)
    for line in run.mem_plan.lines:
        log.info("%s", line)
    return facts, warnings


def _already_done(run: _Run, result: TrainResult) -> TrainResult:
    run_dir = run.plan.run_dir
    _fill(result, read_train_log(run_dir / CHECKPOINT_LOG), run_dir)
    log.info("%s: all %d epochs are done in %s", run.model, run.cfg.max_epoch, run_dir)
    return result


def _dry_run(run: _Run, vendor: VendorRuntime, result: TrainResult) -> TrainResult:
    """A preview: the files go to configs/dry-run-<model>; the run dir and the stage record are
    not touched."""
    where = run.ws.configs_dir / f"dry-run-{run.model}"
    result.argv = _write_files(run, vendor, where).argv
    result.run_dir = where
    if run.plan.archive:
        log.info("a real run would first move %s to %s", *run.plan.archive)
    return result


def _launch(run: _Run, vendor: VendorRuntime, facts: Facts, result: TrainResult) -> TrainResult:
    """Move a replaced run aside, write the run's files, supervise the trainer, record it all."""
    from voicelab import state

    run_dir = run.plan.run_dir
    inputs, params = _record_inputs(run, facts), _record_params(run)
    with (
        run_lock(run_dir) as lock,
        state.stage_run(run.ws, f"train_{run.model}", inputs, params) as rec,
    ):
        _archive_previous(run.plan)
        run.plan.tb_dir.mkdir(parents=True, exist_ok=True)
        launch = _write_files(run, vendor, run_dir)
        result.argv = launch.argv
        rec.outputs = [str(run_dir / CHECKPOINT_LOG)]
        rc = _supervise(run, launch, facts, lock, result)
        _fill(result, read_train_log(run_dir / CHECKPOINT_LOG), run_dir)
        if rc != 0:
            train_log = run_dir / "train.log"
            raise StageError(failure(train_log, rc), failure_hint(train_log, run.mem_plan))
        rec.figures.update(_figures(run, result))
        if result.last_checkpoint:
            rec.outputs.append(str(result.last_checkpoint))
    return result


def _record_inputs(run: _Run, facts: Facts) -> list[str]:
    """Fingerprints of the files the run reads: its shards and the base checkpoint."""
    shards = facts.train_shards + facts.dev_shards
    return [quick_fingerprint(s.path) for s in shards] + [quick_fingerprint(run.base_ckpt)]


def _record_params(run: _Run) -> dict[str, Any]:
    """The settings that shape the run's outputs (a change makes the stage stale)."""
    setup, cfg = run.setup, run.cfg
    return {
        "model": run.model,
        "device": setup.device,
        "world": setup.world,
        "engine": run.opts.engine,
        "trainer": setup.trainer,
        "amp": setup.amp,
        "max_epoch": cfg.max_epoch,
        "max_frames": cfg.max_frames,
        "accum_grad": cfg.accum,
        "lr": cfg.lr,
        "num_workers": setup.num_workers,
        "config": tc.sha256_text(cfg.text)[:16],
        "memory": run.mem_plan.mode,
    }


def _archive_previous(plan: RunPlan) -> None:
    """``--new``: the previous run (and its tensorboard dir) moves aside to its archive name."""
    if not plan.archive:
        return
    src, dst = plan.archive
    os.replace(src, dst)
    if plan.tb_dir.exists():
        os.replace(plan.tb_dir, plan.tb_dir.with_name(dst.name))
    log.info("the previous run was moved to %s", dst)


def _write_files(run: _Run, vendor: VendorRuntime, where: Path) -> Launch:
    """train_config.yaml, the deepspeed JSON and launch.sh into ``where``."""
    where.mkdir(parents=True, exist_ok=True)
    config_path = where / "train_config.yaml"
    atomic_write_text(config_path, run.cfg.text)
    ds_path = _write_deepspeed_json(run, vendor, where) if run.opts.engine == "deepspeed" else None
    setup = run.setup
    spec = LaunchSpec(
        vendor_root=vendor.root,
        model=run.model,
        device=setup.device,
        nproc=setup.nproc,
        opts=run.opts,
        config=config_path,
        train_list=run.ws.data_list("train"),
        cv_list=run.ws.data_list("dev"),
        base_dir=run.ws.base_model_dir,
        plan=run.plan,
        num_workers=setup.num_workers,
        prefetch=setup.prefetch,
        amp=setup.amp,
        ds_config=ds_path,
        memory_mode=run.mem_plan.mode,
        trainer=setup.trainer,
    )
    launch = build_launch(spec, python=sys.executable, base_env=vendor.env())
    launch_sh = where / "launch.sh"
    atomic_write_text(launch_sh, launch.script())
    launch_sh.chmod(0o755)
    return launch


def _write_deepspeed_json(run: _Run, vendor: VendorRuntime, where: Path) -> Path:
    cfg = run.cfg
    grad_clip = float(tc.as_number(tc.get_value(cfg.values, tc.GRAD_CLIP)) or 5)
    log_int = int(tc.as_number(tc.get_value(cfg.values, tc.LOG_INTERVAL)) or 100)
    ds_path = where / "train_deepspeed.json"
    ds_json = deepspeed_json(vendor.root, cfg.lr, cfg.accum, grad_clip, log_int, run.setup.amp)
    atomic_write_json(ds_path, ds_json)
    return ds_path


def _supervise(run: _Run, launch: Launch, facts: Facts, lock: Lock, result: TrainResult) -> int:
    """The trainer's exit code; the lock records its process group (voicelab train stop)."""
    batches = max(facts.batches) if facts.batches else 1
    t0 = time.time()
    rc = supervise(
        launch,
        run.plan.run_dir,
        run.model,
        run.cfg.max_epoch,
        batches,
        run.cfg.accum,
        run.done_epoch,
        on_start=lambda pgid: lock.update(pgid=pgid),
    )
    result.launched = True
    result.seconds = time.time() - t0
    return rc


def _figures(run: _Run, result: TrainResult) -> dict[str, Any]:
    """What status, the report and the web page show of the run."""
    return {
        "epochs": result.epochs_done,
        "max_epoch": run.cfg.max_epoch,
        "best_cv_loss": result.best_cv_loss,
        "best_epoch": result.best_epoch,
        "last_checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
        "run_dir": str(run.plan.run_dir),
        "seconds": round(result.seconds, 1),
        "device": run.setup.device,
        "world": run.setup.world,
    }


def _fill(result: TrainResult, rows: list[dict[str, Any]], run_dir: Path) -> None:
    """The result's figures from the run's log rows and its newest checkpoint."""
    s = summarize(rows)
    last = latest_checkpoint(run_dir)
    result.epochs_done = epochs_saved(run_dir)
    result.best_cv_loss = s["best_cv_loss"]
    result.best_epoch = s["best_epoch"]
    result.last_checkpoint = last[1] if last else None
