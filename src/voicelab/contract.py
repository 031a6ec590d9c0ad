"""The stage contract: what every stage module gives the runner, and what it gets back.

A stage module (``prepare``, ``features``, ``pack``, ``train``, ``export``, ``audition``, the
vendor checkout and the base model download) exports:

- its ``Options`` dataclass (the sections of ``voicelab.toml`` are these, see
  :mod:`voicelab.config`);
- ``run(ws, opts) -> StageResult``: does the work, returns its outputs, figures and one line;
- ``STAGE``: a :class:`Stage` naming the stages whose outputs it reads (``inputs``), how its
  options resolve (:func:`resolve`), which of them shape its outputs (``params``) and which files
  must exist after it (``outputs``).

The runner (:mod:`voicelab.runner.pipeline`) alone records state and decides skip/redo; a stage
knows nothing of it. Options resolve by one rule: defaults < ``voicelab.toml`` < this run's flags.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from voicelab.workspace import Workspace

Params = dict[str, Any]


@dataclass
class RunOptions:
    """Options of one run (``voicelab run``, or one stage's own command): the run-wide flags,
    and per-section flag values (``overrides``) that beat ``voicelab.toml``."""

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
class StageResult:
    """What a stage's ``run`` returns."""

    outputs: list[Path] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)  # for status, the report, the web page
    summary: str = ""  # one line for the console and the log
    result: Any = None  # the library's own result (the stage's command prints its details)


def _passthrough(ws: Workspace, run: RunOptions) -> Any:
    return run


@dataclass(frozen=True)
class Stage:
    """One node of the runner's graph.

    ``options(ws, run)`` resolves the stage's ``Options`` (default: the RunOptions as they are);
    ``params(ws, opts)`` returns the options that shape its outputs (a change makes it and the
    stages after it stale); ``run(ws, opts)`` does the work; ``outputs(ws, opts)`` lists files
    that must exist after it."""

    name: str
    inputs: tuple[str, ...]
    params: Callable[[Workspace, Any], Params]
    run: Callable[[Workspace, Any], StageResult | dict[str, Any]]
    outputs: Callable[[Workspace, Any], list[Path]] = lambda ws, o: []
    enabled: Callable[[RunOptions], bool] = lambda o: True
    summary: str = ""
    records_itself: bool = False  # its function keeps inputs/figures through state.stage_run
    found_by_outputs: bool = False  # never run by the runner but its outputs exist: done
    options: Callable[[Workspace, RunOptions], Any] = _passthrough

    @property
    def deps(self) -> tuple[str, ...]:
        return self.inputs


def resolve(
    ws: Workspace,
    cls: type,
    section: str,
    run: RunOptions,
    also: tuple[str, ...] = (),
    **given: Any,
) -> Any:
    """``cls`` (an Options dataclass) with every field resolved by the one rule: ``given`` (a
    value a caller computed), else this run's flag, else ``[section]`` of voicelab.toml (then the
    ``also`` sections, e.g. ``[train]`` under ``[train_flow]``), else the field's default. Only
    the keys a workspace may keep (:data:`voicelab.config.SECTIONS`) are read from the file."""
    from voicelab import config

    flags = run.overrides.get(section, {})
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key = _toml_name(config, section, f.name)  # e.g. [pack] gpus for PackOptions.num_gpus
        value = given.get(f.name)
        if value is None:
            value = flags.get(f.name, flags.get(key))
        for i, sec in enumerate((section, *also)):
            if value is not None:
                break
            if i:  # a fallback section: its flag, then its table
                value = run.overrides.get(sec, {}).get(key)
            if value is None and key in _keepable(config, sec):
                value = ws.config.sections.get(sec, {}).get(key)
        if value is not None:
            values[f.name] = value
    return cls(**values)


def _toml_name(config: Any, section: str, field_name: str) -> str:
    sec = config.SECTIONS.get(section)
    back = {v: k for k, v in sec.rename.items()} if sec else {}
    return back.get(field_name, field_name)


def _keepable(config: Any, section: str) -> set[str]:
    return set(config.section_keys(section)) if section in config.SECTIONS else set()


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
