"""``voicelab run``: the stage graph, and the rules that decide what to skip and what to redo.

A stage is redone when it never finished, when one of the options that shape its outputs
changed, when an output is gone, or when a stage it depends on was redone after it (or is itself
out of date). Everything else is skipped, so killing ``voicelab run`` and running it again resumes
where it stopped; the stages themselves also keep per-item caches, so a redone stage redoes only
the items that changed.

One record per stage (``.voicelab/state/<stage>.json``, see :mod:`voicelab.state`): the runner
(:func:`run_stage`) owns it, and ``voicelab prepare``/``features``/``pack`` run their stage
through the same runner, so a stage run on its own counts for ``status`` and ``run``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voicelab.contract import RunOptions, Stage, StageResult, plain
from voicelab.errors import ConfigError, ModelError
from voicelab.fsutil import read_json
from voicelab.state import StageRecord, activate, end_with_error, load_record, save_record
from voicelab.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass
class StageRun:
    record: StageRecord
    result: Any = None
    reason: str = ""
    summary: str = ""


@dataclass
class StageState:
    name: str
    state: str  # done | stale | pending | failed | disabled
    reason: str
    record: StageRecord | None = None
    figures: dict[str, Any] = field(default_factory=dict)


def _legacy_options(ws: Workspace, stage: str) -> dict[str, Any] | None:
    """0.1 kept the runner's options in run-<stage>.json: still honoured when present."""
    data = read_json(ws.state_dir / f"run-{stage}.json") or {}
    return data.get("param_values") if data.get("status") == "done" else None


def _legacy_record(ws: Workspace, stage: str) -> StageRecord | None:
    """A stage 0.1 recorded only in run-<stage>.json (vendor, download, audition)."""
    rec = load_record(ws, f"run-{stage}")
    if rec is not None:
        rec.stage, rec.options = stage, dict(rec.param_values)
    return rec


def stage_states(ws: Workspace, stages: list[Stage], opts: RunOptions) -> list[StageState]:
    """The state of every stage, in order, with the reason when it is not done."""
    states: dict[str, StageState] = {}
    out: list[StageState] = []
    for st in stages:
        rec = load_record(ws, st.name) or _legacy_record(ws, st.name)
        if rec is not None and rec.options is None:
            rec.options = _legacy_options(ws, st.name)
        figures = dict(rec.figures) if rec else {}
        figures.pop("traceback", None)
        if not st.enabled(opts):
            s = StageState(st.name, "disabled", "not asked for", rec, figures)
        else:
            s = StageState(st.name, *_judge(ws, st, opts, rec, states), rec, figures)
        states[st.name] = s
        out.append(s)
    return out


def _judge(
    ws: Workspace,
    st: Stage,
    run: RunOptions,
    rec: StageRecord | None,
    states: dict[str, StageState],
) -> tuple[str, str]:
    opts = st.options(ws, run)
    if rec is None:
        # A stage whose outputs speak for themselves (the downloaded model), made by its own
        # command (voicelab download), counts when they are all there.
        outs = st.outputs(ws, opts) if st.found_by_outputs else []
        if outs and all(Path(p).exists() for p in outs):
            return "done", "found (made outside voicelab run)"
        return "pending", "never run"
    if rec.status == "failed":
        return "failed", f"last run failed: {rec.error or 'unknown error'}"
    if rec.status == "stopped":
        return "pending", f"{rec.error or 'stopped'}: run again to continue"
    if rec.status != "done":
        return "pending", rec.error or "not finished"
    # None: run outside the runner (a library call); its own record vouches for it.
    if rec.options is not None:
        params = plain(st.params(ws, opts))
        old = rec.options
        changed = sorted(k for k in set(params) | set(old) if params.get(k) != old.get(k))
        if changed:
            return "stale", "options changed: " + ", ".join(changed)
    for dep in st.deps:
        d = states.get(dep)
        if d is None or d.state == "disabled":
            continue
        if d.state != "done":
            return "stale", f"waits for {dep} ({d.state})"
        if d.record and d.record.finished > rec.started:
            return "stale", f"{dep} was redone"
    missing = [p for p in st.outputs(ws, opts) if not Path(p).exists()]
    if missing:
        return "stale", f"output missing: {missing[0]}"
    return "done", "up to date"


def select(stages: list[Stage], opts: RunOptions) -> list[Stage]:
    """The stages between --from and --until (by name), in order."""
    names = [s.name for s in stages]
    for given in (opts.from_stage, opts.until_stage):
        if given and given not in names:
            raise ConfigError(f"unknown stage {given!r}", "choose one of: " + ", ".join(names))
    start = names.index(opts.from_stage) if opts.from_stage else 0
    end = names.index(opts.until_stage) if opts.until_stage else len(names) - 1
    if start > end:
        raise ConfigError(
            f"--from {opts.from_stage} comes after --until {opts.until_stage}",
            "order: " + " -> ".join(names),
        )
    return stages[start : end + 1]


def run_pipeline(
    ws: Workspace,
    stages: list[Stage],
    opts: RunOptions,
    on_stage: Callable[[str, str, str], None] | None = None,
) -> list[StageState]:
    """Run the selected stages in order, skipping those that are up to date.

    ``on_stage(name, what, detail)`` is told ``skip``/``run``/``done`` for each stage (the CLI
    prints it and rebuilds the report). A failing stage stops the run with its error.
    """
    selected = {s.name for s in select(stages, opts)}
    for st in stages:
        if st.name not in selected or not st.enabled(opts):
            continue
        current = {s.name: s for s in stage_states(ws, stages, opts)}[st.name]
        if current.state == "done" and not opts.force:
            if on_stage:
                on_stage(st.name, "skip", current.reason)
            continue
        if on_stage:
            on_stage(st.name, "run", current.reason)
        t0 = time.time()
        done = run_stage(ws, st, opts)
        for line in _summary(done):
            log.info("%s", line)
        if on_stage:
            on_stage(st.name, "done", f"{time.time() - t0:.1f} s")
    return stage_states(ws, stages, opts)


def _summary(done: StageRun) -> list[str]:
    """The library result's own lines when it has them (prepare's), else the stage's line."""
    result = done.result
    if hasattr(result, "summary_lines"):
        return list(result.summary_lines())
    if hasattr(result, "summary"):
        return [result.summary()]
    return [done.summary] if done.summary else []


def run_stage(ws: Workspace, st: Stage | str, run: RunOptions) -> StageRun:
    """Run one stage (a Stage, or the name of one of :func:`default_stages`) and record it:
    the one writer of the stage's status, times and options. ``voicelab prepare``,
    ``features`` and ``pack`` run their stage alone through here, recorded as ``voicelab run``
    records it.

    The stage may find its own work up to date (its inputs and parameters unchanged) and skip
    it; then the record keeps its figures and its times, so later stages are not made stale.
    """
    if isinstance(st, str):
        st = stage_by_name(st)
    before = load_record(ws, st.name) or _legacy_record(ws, st.name)
    rec = dataclasses.replace(before) if before else StageRecord(st.name)
    rec.previous = before.status if before else ""
    rec.status, rec.error, rec.worked = "running", None, False
    rec.started, rec.finished = time.time(), 0.0
    save_record(ws, rec)  # before the options: train reads ``previous`` (resume or new)
    try:
        opts = st.options(ws, run)
        rec.options = plain(st.params(ws, opts))
        save_record(ws, rec)
        with activate(rec):
            out = st.run(ws, opts)
    except BaseException as e:
        end_with_error(ws, rec, e)
        raise
    out = out if isinstance(out, StageResult) else StageResult(figures=out or {})
    if not rec.worked and before is not None and before.status == "done" and st.records_itself:
        rec.started, rec.finished = before.started, before.finished
    else:
        rec.finished = time.time()
    rec.status = "done"
    if rec.worked or not st.records_itself:  # a skip's figures would replace the real ones
        rec.figures.update(out.figures)
    made = [*out.outputs, *st.outputs(ws, opts)]
    rec.outputs = sorted({*rec.outputs, *(str(p) for p in made)})
    save_record(ws, rec)
    why = "up to date" if not rec.worked else "done"
    return StageRun(rec, out.result, why, out.summary)


# ---- the graph of ``voicelab run`` ---------------------------------------------------------

TINY_MODEL_NAME = "CosyVoice3-tiny-random"


def default_stages() -> list[Stage]:
    """vendor, download, prepare, features, pack, train_llm, train_flow (with --train-flow),
    export, audition: each stage module's ``STAGE`` (see :mod:`voicelab.contract`)."""
    from voicelab.models import stage as download
    from voicelab.stages import audition, export, features, pack, prepare, train
    from voicelab.vendor import stage as vendor

    return [vendor.STAGE, download.STAGE, prepare.STAGE, features.STAGE, pack.STAGE,
            *train.STAGES, export.STAGE, audition.STAGE]  # fmt: skip


def stage_by_name(name: str) -> Stage:
    by_name = {s.name: s for s in default_stages()}
    if name not in by_name:
        raise ConfigError(f"unknown stage {name!r}", "choose one of: " + ", ".join(by_name))
    return by_name[name]


STAGE_NAMES = ["vendor", "download", "prepare", "features", "pack", "train_llm", "train_flow",
               "export", "audition"]  # fmt: skip


def run_options(ws: Workspace, **given: Any) -> RunOptions:
    """RunOptions for this workspace: ``given`` flags (None = not given), else what the last
    ``voicelab run``/``demo`` saved under ``[run]`` (so ``status`` judges with the same)."""
    saved = ws.config.section("run")
    flags = {}
    for key in ("train_flow", "tiny", "device"):
        value = given.pop(key, None)
        flags[key] = value if value is not None else saved.get(key)
    opts = RunOptions(
        train_flow=bool(flags["train_flow"]),
        tiny=bool(flags["tiny"]),
        device=flags["device"] or "auto",
        **{k: v for k, v in given.items() if v is not None},
    )
    return opts


def save_run_options(ws: Workspace, opts: RunOptions) -> None:
    ws.config.sections["run"] = {
        "train_flow": opts.train_flow,
        "tiny": opts.tiny,
        "device": opts.device,
    }
    ws.save()


def next_step(ws: Workspace) -> str:
    """The command that moves this workspace on, from its stage states (for hints such as
    ``say`` with nothing exported yet)."""
    for s in stage_states(ws, default_stages(), run_options(ws)):
        if s.state in ("done", "disabled"):
            continue
        if s.name == "export":
            return "run: voicelab export (training is done)"
        return f"{s.name} is {s.state} ({s.reason}): run: voicelab run"
    return "run: voicelab run"


@contextlib.contextmanager
def voice_hint(ws: Workspace | None, model_dir: object = None) -> Iterator[None]:
    """Front ends around ``say``/``audition``: with no exported voice in the workspace, the
    error says what comes next from the stage states (one line, the same on the CLI and the
    web page) instead of a missing model dir."""
    try:
        yield
    except ModelError as e:
        if ws is None or model_dir is not None or ws.voice_dir.is_dir():
            raise
        raise ModelError(f"no exported voice yet at {ws.voice_dir}", next_step(ws)) from e


def figure_line(s: StageState) -> str:
    """Key figures of a stage for ``voicelab status``."""
    f = s.figures
    name = s.name
    if name == "prepare" and "kept" in f:
        return (
            f"{f.get('kept_minutes', 0)} min kept, {f.get('kept')} utts "
            f"(train {f.get('train')}, dev {f.get('dev')}), {f.get('excluded')} excluded"
        )
    if name == "features" and "kept" in f:
        return f"{f.get('kept')} utts, {f.get('excluded', 0)} excluded, {f.get('provider', '')}"
    if name == "pack" and "train_shards" in f:
        return f"{f.get('train_shards')} train / {f.get('dev_shards')} dev shards"
    if name.startswith("train_") and "epochs" in f:
        best = f.get("best_cv_loss")
        best_s = f", best CV loss {best:.4f}" if isinstance(best, (int, float)) else ""
        return f"{f.get('epochs')} epoch(s){best_s}"
    if name == "export" and "voice_dir" in f:
        return str(f["voice_dir"])
    if name == "audition" and "index" in f:
        return str(f["index"])
    if name == "vendor" and "commit" in f:
        return str(f["commit"])[:12]
    return ""
