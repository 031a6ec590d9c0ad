"""``voicelab run``: the stage graph, and the rules that decide what to skip and what to redo.

A stage is redone when it never finished, when one of the options that shape its outputs
changed, when an output is gone, or when a stage it depends on was redone after it (or is itself
out of date). Everything else is skipped, so killing ``voicelab run`` and running it again resumes
where it stopped; the stages themselves also keep per-item caches, so a redone stage redoes only
the items that changed.

The pipeline keeps its own record per stage (``.voicelab/state/run-<stage>.json``) with the
options it ran with; the stage functions keep theirs (figures for status and the report).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voicelab.errors import ConfigError
from voicelab.state import StageRecord, load_record, stage_run
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


def run_key(stage: str) -> str:
    return f"run-{stage}"


def stage_states(ws: Workspace, stages: list[Stage], opts: RunOptions) -> list[StageState]:
    """The state of every stage, in order, with the reason when it is not done."""
    states: dict[str, StageState] = {}
    out: list[StageState] = []
    for st in stages:
        rec = load_record(ws, run_key(st.name))
        own = load_record(ws, st.name)
        figures = dict(own.figures) if own else {}
        if rec:
            figures = {**rec.figures, **figures}
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
        return "pending", "never run"
    if rec.status == "failed":
        return "failed", f"last run failed: {rec.error or 'unknown error'}"
    if rec.status != "done":
        return "pending", rec.error or "not finished"
    params = st.params(ws, opts)
    changed = sorted(
        k for k in set(params) | set(rec.param_values) if params.get(k) != rec.param_values.get(k)
    )
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
        params = st.params(ws, opts)
        t0 = time.time()
        with stage_run(ws, run_key(st.name), params, params) as rec:
            figures = st.run(ws, opts) or {}
            rec.figures.update(figures)
            rec.outputs.extend(str(p) for p in st.outputs(ws, opts))
        if on_stage:
            on_stage(st.name, "done", f"{time.time() - t0:.1f} s")
    return stage_states(ws, stages, opts)
