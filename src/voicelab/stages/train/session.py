"""``run_train``: the config, the memory plan, preflight, the launch and its result."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voicelab.errors import ConfigError, StageError, VoiceLabError
from voicelab.fsutil import (
    atomic_write_json,
    atomic_write_text,
    quick_fingerprint,
)
from voicelab.memory import MemoryPlan
from voicelab.upstream import train_config as tc

if TYPE_CHECKING:
    from voicelab.workspace import Workspace
from voicelab.stages.train.checks import preflight
from voicelab.stages.train.data import default_epochs, read_shards
from voicelab.stages.train.gpus import Gpu, default_batch_frames, model_params, query_gpus, visible
from voicelab.stages.train.launch import Launch, build_launch
from voicelab.stages.train.logs import read_train_log, summarize
from voicelab.stages.train.options import (
    ENGINES,
    MODELS,
    PreflightError,
    TrainOptions,
    TrainResult,
    resolve_device,
    resolve_trainer,
)
from voicelab.stages.train.rundirs import (
    CHECKPOINT_LOG,
    latest_checkpoint,
    plan_run,
    run_lock,
    run_name,
)
from voicelab.stages.train.supervise import failure, failure_hint, supervise
from voicelab.upstream.data_rules import FilterRules, batches_per_rank
from voicelab.upstream.train_flags import deepspeed_json

log = logging.getLogger(__name__)


def base_checkpoint(ws: Workspace, model: str) -> Path:
    return ws.base_model_dir / f"{model}.pt"


def _explicit_overrides(opts: TrainOptions, section: dict[str, Any]) -> dict[tc.KeyPath, Any]:
    """Config values chosen on the command line (or in voicelab.toml [train])."""

    def given(value: Any, key: str) -> Any:
        return value if value is not None else section.get(key)

    pick = {
        tc.MAX_EPOCH: given(opts.epochs, "epochs"),
        tc.MAX_FRAMES: given(opts.batch_frames, "batch_frames"),
        tc.ACCUM_GRAD: given(opts.accum_grad, "accum_grad"),
        tc.LR: given(opts.lr, "lr"),
        tc.SAVE_PER_STEP: given(opts.save_per_step, "save_per_step"),
        tc.LOG_INTERVAL: given(opts.log_interval, "log_interval"),
    }
    out: dict[tc.KeyPath, Any] = {}
    for k, v in pick.items():
        if v is None:
            continue
        out[k] = float(v) if k == tc.LR else int(v)
    return out


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


def run_train(ws: Workspace, model: str, opts: TrainOptions | None = None) -> TrainResult:
    """Train ``model`` (``llm`` or ``flow``) on the workspace's packed data."""
    from voicelab import state
    from voicelab.upstream.tinymodel import is_tiny_model

    opts = opts or TrainOptions()
    if model not in MODELS:
        raise ConfigError(f"unknown model {model!r}", "use llm or flow")
    if opts.engine not in ENGINES:
        raise ConfigError(f"unknown --engine {opts.engine!r}", "use torch_ddp or deepspeed")
    section = ws.config.section("train")
    trainer = resolve_trainer(opts, section)
    name = run_name(trainer, opts.engine)
    device = resolve_device(opts.device if opts.device != "auto" else section.get("device", "auto"))
    nproc = int(opts.gpus or section.get("gpus") or 1)
    if nproc < 1:
        raise ConfigError("--gpus must be >= 1")
    world = nproc * max(1, opts.nnodes)
    amp = opts.amp if opts.amp is not None else bool(section.get("amp", device == "cuda"))
    if device == "cpu" and amp:
        raise ConfigError("--amp needs a GPU", "leave --amp off with --device cpu")
    if device == "cpu" and opts.engine != "torch_ddp":
        raise ConfigError("--device cpu supports --engine torch_ddp only")
    workers = opts.num_workers if opts.num_workers is not None else section.get("num_workers")
    num_workers = int(workers if workers is not None else (1 if device == "cpu" else 4))
    prefetch = int(opts.prefetch or section.get("prefetch") or 2)

    vendor, vendor_problem = None, None
    try:
        from voicelab.vendor import cosyvoice_runtime

        vendor = cosyvoice_runtime()
    except VoiceLabError as e:
        vendor_problem = e.message  # preflight adds the one fix (it was printed twice)

    base_dir = ws.base_model_dir
    base_ckpt = base_checkpoint(ws, model)
    tiny = is_tiny_model(base_dir)
    gpus = query_gpus() if device == "cuda" else []
    vis = visible(gpus, opts.gpu_ids)

    # ---- config ---------------------------------------------------------------------------
    settings = tc.SftSettings(qwen_pretrain_path=str(base_dir / "CosyVoice-BlankEN"))
    base_yaml = base_dir / "cosyvoice3.yaml"
    if base_yaml.is_file():
        settings.dims = tc.model_dims(base_yaml.read_text("utf-8"))
    if tiny:
        settings.max_frames_in_batch = int(tc.TINY_DIMS[tc.MAX_FRAMES])
    else:
        # One workspace config serves llm and flow: sized for the llm, the larger of the two.
        settings.max_frames_in_batch = default_batch_frames(
            "llm",
            model_params(base_checkpoint(ws, "llm")),
            min((g.total for g in vis), default=None),
        )
    train_list = ws.data_list("train")
    if train_list.is_file():
        with contextlib.suppress(Exception):
            shards, _ = read_shards(train_list)
            settings.max_epoch = default_epochs(sum(u.seconds for s in shards for u in s.utts))
            # About ten progress lines per epoch (upstream logs every log_interval batches).
            est = batches_per_rank(
                shards, FilterRules(), settings.max_frames_in_batch, world, num_workers
            )
            settings.log_interval = max(1, min(50, min(est) // 10))
    cfg_warnings: list[str] = []
    if vendor is not None:
        upstream_text = (vendor.root / tc.UPSTREAM_YAML).read_text("utf-8")
        cfg = tc.write_workspace_config(
            ws.train_yaml, upstream_text, settings, f"vendor commit {vendor.commit[:12]}"
        )
        cfg_warnings += cfg.warnings
        ws_text = cfg.text
    elif ws.train_yaml.is_file():
        ws_text = ws.train_yaml.read_text("utf-8")
    else:
        ws_text = ""
    # A resumed run keeps its own config (epochs, batch frames ...) unless options say otherwise.
    run_cfg = ws.exp_dir(model, name) / "train_config.yaml"
    if opts.resume and run_cfg.is_file():
        ws_text = run_cfg.read_text("utf-8")
    explicit = _explicit_overrides(opts, section)
    run_text = tc.run_config_text(ws_text, explicit) if ws_text else ""
    values = tc.read_values(run_text) if run_text else {}
    max_epoch = int(tc.as_number(tc.get_value(values, tc.MAX_EPOCH)) or tc.DEFAULT_EPOCHS)
    max_frames = int(tc.as_number(tc.get_value(values, tc.MAX_FRAMES)) or tc.DEFAULT_MAX_FRAMES)
    accum = int(tc.as_number(tc.get_value(values, tc.ACCUM_GRAD)) or 1)
    lr = float(tc.as_number(tc.get_value(values, tc.LR)) or tc.DEFAULT_LR)
    # Memory mode and batch from the GPU's free memory (voicelab.memory); a split batch keeps
    # the tokens per optimizer step through accum_grad.
    mem_plan = memory_plan_for(ws, model, base_ckpt, device, vis, opts, max_frames, accum)
    if mem_plan.has("offload") and device == "cuda" and trainer != "voicelab":
        # Upstream's GradScaler would unscale torchao's host gradient copies only.
        raise ConfigError(
            f"memory mode {mem_plan.mode} (optimizer on the CPU) needs VoiceLab's own trainer",
            "use --trainer voicelab, or --memory checkpointing+8bit (or lora for the llm)",
        )
    if mem_plan.fits and (mem_plan.batch_frames, mem_plan.accum_grad) != (max_frames, accum):
        run_text = tc.apply_overrides(
            run_text,
            {tc.MAX_FRAMES: mem_plan.batch_frames, tc.ACCUM_GRAD: mem_plan.accum_grad},
            source="memory plan",
        )
        values = tc.read_values(run_text)
        max_frames, accum = mem_plan.batch_frames, mem_plan.accum_grad

    plan = plan_run(ws, model, name, base_ckpt, opts, max_epoch)
    done_epoch = plan.resumed_epoch if plan.resumed_epoch is not None else -1
    epochs_to_run = max(0, max_epoch - done_epoch - 1)

    problems, warnings, facts = preflight(
        ws,
        model,
        vendor=vendor,
        vendor_problem=vendor_problem,
        values=values,
        device=device,
        world=world,
        local_procs=nproc,
        num_workers=num_workers,
        max_frames=max_frames,
        base_ckpt=base_ckpt,
        epochs_to_run=epochs_to_run,
        engine=opts.engine,
        gpus=vis,
        memory_plan=mem_plan if device == "cuda" else None,
        trainer=trainer,
        keep=opts.keep,
    )
    warnings = cfg_warnings + warnings
    if plan.note:
        warnings.append(plan.note)
    for w in warnings:
        log.warning("%s", w)
    if problems:
        raise PreflightError(problems)
    for line in mem_plan.lines:
        log.info("%s", line)
    assert vendor is not None
    result = TrainResult(model, plan.run_dir, False, max_epoch=max_epoch, warnings=warnings)
    if epochs_to_run == 0:
        rows = read_train_log(plan.run_dir / CHECKPOINT_LOG)
        _fill(result, rows, plan.run_dir)
        log.info("%s: all %d epochs are done in %s", model, max_epoch, plan.run_dir)
        return result

    params = {
        "model": model,
        "device": device,
        "world": world,
        "engine": opts.engine,
        "trainer": trainer,
        "amp": amp,
        "max_epoch": max_epoch,
        "max_frames": max_frames,
        "accum_grad": accum,
        "lr": lr,
        "num_workers": num_workers,
        "config": tc.sha256_text(run_text)[:16],
        "memory": mem_plan.mode,
    }
    inputs = [quick_fingerprint(p) for s in facts.train_shards + facts.dev_shards for p in [s.path]]
    inputs.append(quick_fingerprint(base_ckpt))

    def write_files(where: Path) -> Launch:
        """train_config.yaml, the deepspeed JSON and launch.sh into ``where``."""
        where.mkdir(parents=True, exist_ok=True)
        config_path = where / "train_config.yaml"
        atomic_write_text(config_path, run_text)
        ds_path = None
        if opts.engine == "deepspeed":
            ds_path = where / "train_deepspeed.json"
            grad_clip = float(tc.as_number(tc.get_value(values, tc.GRAD_CLIP)) or 5)
            log_int = int(tc.as_number(tc.get_value(values, tc.LOG_INTERVAL)) or 100)
            atomic_write_json(
                ds_path, deepspeed_json(vendor.root, lr, accum, grad_clip, log_int, amp)
            )
        launch = build_launch(
            python=sys.executable,
            vendor_root=vendor.root,
            base_env=vendor.env(),
            model=model,
            device=device,
            nproc=nproc,
            opts=opts,
            config=config_path,
            train_list=ws.data_list("train"),
            cv_list=ws.data_list("dev"),
            base_dir=base_dir,
            plan=plan,
            num_workers=num_workers,
            prefetch=prefetch,
            amp=amp,
            ds_config=ds_path,
            memory_mode=mem_plan.mode,
            trainer=trainer,
        )
        launch_sh = where / "launch.sh"
        atomic_write_text(launch_sh, launch.script())
        launch_sh.chmod(0o755)
        return launch

    if opts.dry_run:
        # Nothing in the run dir is touched and no stage record is written: a preview only.
        where = ws.configs_dir / f"dry-run-{model}"
        result.argv = write_files(where).argv
        result.run_dir = where
        if plan.archive:
            log.info("a real run would first move %s to %s", *plan.archive)
        return result

    with (
        run_lock(plan.run_dir) as lock,
        state.stage_run(ws, f"train_{model}", inputs, params) as rec,
    ):
        if plan.archive:
            src, dst = plan.archive
            os.replace(src, dst)
            tb_src = plan.tb_dir
            if tb_src.exists():
                os.replace(tb_src, tb_src.with_name(dst.name))
            log.info("the previous run was moved to %s", dst)
        plan.tb_dir.mkdir(parents=True, exist_ok=True)
        launch = write_files(plan.run_dir)
        result.argv = launch.argv
        rec.outputs = [str(plan.run_dir / CHECKPOINT_LOG)]
        batches = max(facts.batches) if facts.batches else 1
        t0 = time.time()
        rc = supervise(
            launch,
            plan.run_dir,
            model,
            max_epoch,
            batches,
            accum,
            done_epoch,
            on_start=lambda pgid: lock.update(pgid=pgid),
        )
        result.launched = True
        result.seconds = time.time() - t0
        rows = read_train_log(plan.run_dir / CHECKPOINT_LOG)
        _fill(result, rows, plan.run_dir)
        if rc != 0:
            raise StageError(
                failure(plan.run_dir / "train.log", rc),
                failure_hint(plan.run_dir / "train.log", mem_plan),
            )
        rec.figures.update(
            {
                "epochs": result.epochs_done,
                "max_epoch": max_epoch,
                "best_cv_loss": result.best_cv_loss,
                "best_epoch": result.best_epoch,
                "last_checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
                "run_dir": str(plan.run_dir),
                "seconds": round(result.seconds, 1),
                "device": device,
                "world": world,
            }
        )
        if result.last_checkpoint:
            rec.outputs.append(str(result.last_checkpoint))
    return result


def _fill(result: TrainResult, rows: list[dict[str, Any]], run_dir: Path) -> None:
    s = summarize(rows)
    last = latest_checkpoint(run_dir)
    result.epochs_done = (last[0] + 1) if last else 0
    result.best_cv_loss = s["best_cv_loss"]
    result.best_epoch = s["best_epoch"]
    result.last_checkpoint = last[1] if last else None
