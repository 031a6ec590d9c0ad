"""Run directories (``exp/<tag>/<model>/<trainer>``): their checkpoints, a fresh run or a resumed
one, and the lock that allows one trainer per run dir."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from voicelab.errors import ConfigError
from voicelab.locks import Lock

if TYPE_CHECKING:
    from voicelab.workspace import Workspace
from voicelab.stages.train.options import TrainOptions

CHECKPOINT_LOG = "train_log.jsonl"

_WHOLE = re.compile(r"^epoch_(\d+)_whole\.pt$")

_WHOLE_DIR = re.compile(r"^epoch_(\d+)_whole$")

_STEPCK = re.compile(r"^epoch_(\d+)_step_(\d+)\.pt$")


def run_has_content(run_dir: Path) -> bool:
    return (
        run_dir.is_dir()
        and any((run_dir / n).exists() for n in ("init.pt", CHECKPOINT_LOG, "train.log"))
    ) or any(run_dir.glob("epoch_*.pt"))


def epoch_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    out = []
    for p in run_dir.glob("epoch_*_whole.pt"):
        m = _WHOLE.match(p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def epochs_saved(run_dir: Path) -> int:
    """How many epochs the run saved: the newest ``epoch_N_whole.pt`` + 1, or, for upstream's
    deepspeed engine (which writes ``epoch_N_whole/`` folders, not .pt files), the newest
    such folder + 1."""
    last = latest_checkpoint(run_dir)
    if last:
        return last[0] + 1
    folders = [
        int(m.group(1))
        for p in run_dir.glob("epoch_*_whole")
        if p.is_dir() and (m := _WHOLE_DIR.match(p.name))
    ]
    return max(folders) + 1 if folders else 0


def latest_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    """The newest end-of-epoch checkpoint: (epoch, path)."""
    ck = epoch_checkpoints(run_dir)
    return ck[-1] if ck else None


def archive_name(run_dir: Path, *also: Path) -> Path:
    """``<run>.N`` for the smallest N free beside ``run_dir`` and beside each of ``also`` (the
    run's tensorboard dir moves to the same name: one left from a deleted run must not block)."""
    n = 1
    while any(d.with_name(f"{d.name}.{n}").exists() for d in (run_dir, *also)):
        n += 1
    return run_dir.with_name(f"{run_dir.name}.{n}")


def run_name(trainer: str, engine: str) -> str:
    """The run dir name under ``exp/<tag>/<model>/``: ``voicelab`` or upstream's engine."""
    return "voicelab" if trainer == "voicelab" else engine


@dataclass
class RunPlan:
    run_dir: Path
    tb_dir: Path
    checkpoint: Path | None
    resumed_epoch: int | None  # the epoch the checkpoint ends (training continues after it)
    archive: tuple[Path, Path] | None  # (run dir -> archived name) done before launching
    note: str = ""


def plan_run(
    ws: Workspace, model: str, engine: str, base_ckpt: Path, opts: TrainOptions, max_epoch: int
) -> RunPlan:
    """Where this run goes and what it starts from (see the module doc for the rules)."""
    run_dir = ws.exp_dir(model, engine)
    tb_dir = ws.tensorboard_dir(model, engine)
    start = Path(opts.checkpoint) if opts.checkpoint else base_ckpt
    if opts.resume and opts.new:
        raise ConfigError("--resume and --new contradict each other", "choose one")
    if not run_has_content(run_dir):
        return RunPlan(run_dir, tb_dir, start, None, None)
    if opts.new:
        return RunPlan(run_dir, tb_dir, start, None, (run_dir, archive_name(run_dir, tb_dir)))
    last = latest_checkpoint(run_dir)
    if not opts.resume:
        at = f"epoch {last[0]} done" if last else "no finished epoch"
        raise ConfigError(
            f"{run_dir} already holds a run ({at})",
            "continue it with --resume, or start a fresh run with --new (the old one is kept)",
        )
    if engine == "deepspeed":
        raise ConfigError(
            "--resume is not supported with --engine deepspeed (it writes checkpoint folders)",
            "use --engine torch_ddp, or --new",
        )
    if last is None:
        return RunPlan(
            run_dir, tb_dir, start, None, None, note="no finished epoch to resume: starting over"
        )
    epoch, path = last
    if epoch + 1 >= max_epoch:
        return RunPlan(run_dir, tb_dir, path, epoch, None, note=f"all {max_epoch} epochs are done")
    return RunPlan(run_dir, tb_dir, path, epoch, None)


def run_lock(run_dir: Path) -> Lock:
    """One trainer per run dir. The lock file sits beside the dir (archiving a finished run
    moves the dir itself) and records the owner's PID and torchrun's process group, so an
    orphaned trainer (its parent killed with SIGKILL) is found and refused, not joined."""
    return Lock(run_dir.with_name(f".{run_dir.name}.lock"), f"training run {run_dir}")
