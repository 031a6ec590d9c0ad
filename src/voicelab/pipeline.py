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

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voicelab.errors import ConfigError
from voicelab.fsutil import read_json
from voicelab.state import StageRecord, activate, end_with_error, load_record, save_record
from voicelab.workspace import Workspace

log = logging.getLogger(__name__)

Params = dict[str, Any]


@dataclass(frozen=True)
class Stage:
    """One node of the graph. ``params`` returns the options that shape the stage's outputs;
    ``run`` does the work and returns figures; ``outputs`` lists files that must exist after it."""

    name: str
    deps: tuple[str, ...]
    params: Callable[[Workspace, RunOptions], Params]
    run: Callable[[Workspace, RunOptions], dict[str, Any]]
    outputs: Callable[[Workspace, RunOptions], list[Path]] = lambda ws, o: []
    enabled: Callable[[RunOptions], bool] = lambda o: True
    summary: str = ""
    records_itself: bool = False  # its function keeps inputs/figures through state.stage_run
    found_by_outputs: bool = False  # never run by the runner but its outputs exist: done


@dataclass
class Outcome:
    """What a stage's ``run`` returns: figures for the record, and the library's own result
    (for the command that ran it to print)."""

    figures: dict[str, Any] = field(default_factory=dict)
    result: Any = None


@dataclass
class StageRun:
    record: StageRecord
    result: Any = None
    reason: str = ""


@dataclass
class RunOptions:
    """Options of one ``voicelab run``: flags override ``voicelab.toml`` sections."""

    train_flow: bool = False
    from_stage: str | None = None
    until_stage: str | None = None
    force: bool = False
    skip_doctor: bool = False
    tiny: bool = False
    device: str = "auto"
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def get(self, ws: Workspace, section: str, key: str, default: Any = None) -> Any:
        """An option: this run's override, else voicelab.toml, else the default."""
        value = self.overrides.get(section, {}).get(key)
        return ws.option(section, key, cli_value=value, default=default)


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
    opts: RunOptions,
    rec: StageRecord | None,
    states: dict[str, StageState],
) -> tuple[str, str]:
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
        result = run_stage(ws, st, opts).result
        for line in _summary(result):
            log.info("%s", line)
        if on_stage:
            on_stage(st.name, "done", f"{time.time() - t0:.1f} s")
    return stage_states(ws, stages, opts)


def _summary(result: Any) -> list[str]:
    if hasattr(result, "summary_lines"):
        return list(result.summary_lines())
    if hasattr(result, "summary"):
        return [result.summary()]
    return []


def plain(value: Any) -> Any:
    """Options as JSON values (paths as text), as they are stored and compared."""
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def run_stage(ws: Workspace, st: Stage, opts: RunOptions) -> StageRun:
    """Run one stage and record it: the one writer of the stage's status, times and options.

    The stage may find its own work up to date (its inputs and parameters unchanged) and skip
    it; then the record keeps its figures and its times, so later stages are not made stale.
    """
    before = load_record(ws, st.name) or _legacy_record(ws, st.name)
    rec = dataclasses.replace(before) if before else StageRecord(st.name)
    rec.previous = before.status if before else ""
    rec.status, rec.error, rec.worked = "running", None, False
    rec.options = plain(st.params(ws, opts))
    rec.started, rec.finished = time.time(), 0.0
    save_record(ws, rec)
    try:
        with activate(rec):
            out = st.run(ws, opts)
    except BaseException as e:
        end_with_error(ws, rec, e)
        raise
    out = out if isinstance(out, Outcome) else Outcome(out or {})
    if not rec.worked and before is not None and before.status == "done" and st.records_itself:
        rec.started, rec.finished = before.started, before.finished
    else:
        rec.finished = time.time()
    rec.status = "done"
    if rec.worked or not st.records_itself:  # a skip's figures would replace the real ones
        rec.figures.update(out.figures)
    rec.outputs = sorted({*rec.outputs, *(str(p) for p in st.outputs(ws, opts))})
    save_record(ws, rec)
    return StageRun(rec, out.result, "up to date" if not rec.worked else "done")
