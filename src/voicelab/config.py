"""Typed ``voicelab.toml``: which sections and keys exist, their types, choices and ranges.

Each section is described by the stage's ``Options`` dataclass (types and defaults come from its
fields) and the tuple of field names a workspace may keep. Loading checks every key and value, so
a typo such as ``[train] epoch = 5`` or ``[qc]`` fails at once with the file, the key and the
valid choices, in one line. The same checks run on command-line values and before anything is
saved, so a refused option is never written.

Resolution, in one place (:meth:`voicelab.workspace.Workspace.option`): the command-line value,
else ``voicelab.toml``, else the ``Options`` default. Flags apply to the run they are given to;
keeping a setting is explicit: ``voicelab config set KEY VALUE`` (and ``init``/``run`` options
that their help marks as saved).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from voicelab.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Section:
    """One ``[name]`` table: the Options class its keys come from and the keys it may hold."""

    name: str
    options: str | None  # "module:Class"; None: the types are given in ``extra``
    keys: tuple[str, ...] = ()  # empty: every field not marked run_only
    extra: dict[str, type] = field(default_factory=dict)  # keys that are not Options fields
    rename: dict[str, str] = field(default_factory=dict)  # toml key -> Options field
    doc: str = ""


SECTIONS: dict[str, Section] = {
    s.name: s
    for s in (
        Section(
            "voice",
            None,
            extra={"speaker": str, "wav_dir": str, "locked_epoch": int},
            doc="speaker id and source folder (voicelab init)",
        ),
        Section(
            "prepare",
            "voicelab.stages.prepare:PrepareOptions",
            (
                "asr",
                "whisper_model",
                "device",
                "compute_type",
                "language",
                "initial_prompt",
                "beam_size",
                "text_norm",
                "min_seconds",
                "max_seconds",
                "dev_ratio",
                "transcripts",
            ),
            extra={"instruct": str},
        ),
        Section("prepare.qc", "voicelab.blocks.qc:QcOptions", doc="QC thresholds (every field)"),
        Section(
            "features",
            "voicelab.stages.features:FeaturesOptions",
            ("device", "onnx_dir", "threads", "token_batch"),
        ),
        Section(
            "pack",
            "voicelab.stages.pack:PackOptions",
            ("utts_per_shard", "num_workers", "gpus", "jobs"),
            rename={"gpus": "num_gpus"},
        ),
        # Every TrainOptions field but those marked run_only (resume, dry_run ...).
        Section("train", "voicelab.stages.train.options:TrainOptions"),
        Section("train_flow", "voicelab.stages.train.options:TrainOptions", doc="flow overrides"),
        Section(
            "export", "voicelab.stages.export:ExportOptions", ("llm_select", "flow_select", "name")
        ),
        Section(
            "audition",
            "voicelab.stages.audition:AuditionOptions",
            ("sentences", "compare", "blind", "preset", "speed", "fp16", "seed", "text_frontend"),
        ),
        Section("download", "voicelab.models.stage:DownloadOptions", ("source", "endpoint", "rl")),
        Section("model", None, extra={"base_dir": str}),
        Section(
            "run",
            None,
            extra={"train_flow": bool, "tiny": bool, "device": str},
            doc="what the last voicelab run/demo used",
        ),
    )
}

# Values with a closed set of choices, by key (any section) or by "section.key".
CHOICES: dict[str, tuple[Any, ...]] = {
    "device": DEVICES,
    "prepare.asr": ("faster-whisper", "funasr", "transcripts"),
    "prepare.compute_type": (
        "auto",
        "default",
        "int8",
        "int8_float16",
        "int8_float32",
        "int8_bfloat16",
        "int16",
        "float16",
        "bfloat16",
        "float32",
    ),
    "engine": ("torch_ddp", "deepspeed"),
    "trainer": ("voicelab", "upstream"),
    "download.source": ("modelscope", "huggingface"),
}


def _positive(v: Any) -> bool:
    return v >= 1


def _non_negative(v: Any) -> bool:
    return v >= 0


# Ranges, by key (any section) or "section.key": (test, what a valid value is).
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "prepare.dev_ratio": (lambda v: 0 <= v < 1, "a share from 0 to below 1, e.g. 0.05"),
    "prepare.min_seconds": (lambda v: v > 0, "seconds above 0, e.g. 2"),
    "prepare.max_seconds": (lambda v: 0 < v <= 30, "seconds above 0 and at most 30, e.g. 20"),
    "prepare.beam_size": (_positive, "a whole number >= 1"),
    "threads": (_positive, "a whole number >= 1"),
    "token_batch": (_positive, "a whole number >= 1"),
    "utts_per_shard": (_positive, "a whole number >= 1"),
    "gpus": (_positive, "a whole number >= 1"),
    "jobs": (_positive, "a whole number >= 1"),
    "num_workers": (_non_negative, "a whole number >= 0"),
    "pack.num_workers": (_positive, "a whole number >= 1"),
    "prefetch": (_positive, "a whole number >= 1"),
    "epochs": (_positive, "a whole number >= 1"),
    "batch_frames": (_positive, "a whole number >= 1"),
    "accum_grad": (_positive, "a whole number >= 1"),
    "save_per_step": (lambda v: v == -1 or v >= 1, "-1 (per epoch only) or a step count >= 1"),
    "log_interval": (_positive, "a whole number >= 1"),
    "lr": (lambda v: v > 0, "a learning rate above 0, e.g. 1e-5"),
    "speed": (lambda v: v > 0, "a factor above 0, e.g. 1.0"),
    "locked_epoch": (_non_negative, "an epoch number >= 0"),
}


@dataclass(frozen=True)
class Key:
    section: str
    name: str
    type: type
    default: Any

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"


def _base_type(hint: Any) -> type:
    """``int | None`` -> int, ``str | Path | None`` -> str, ``Path`` -> str."""
    args = (
        typing.get_args(hint)
        if typing.get_origin(hint) in (typing.Union, types.UnionType)
        else (hint,)
    )
    args = tuple(a for a in args if a is not type(None))
    for t in (bool, int, float):
        if args == (t,):
            return t
    if all(a in (str, Path) for a in args):
        return str
    if len(args) == 1 and typing.get_origin(args[0]) is tuple:
        return tuple
    raise TypeError(f"no voicelab.toml type for {hint!r}")  # a schema bug, not a user error


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


@cache
def section_keys(name: str) -> dict[str, Key]:
    """Every key ``[name]`` may hold, with its type and default (from the Options dataclass)."""
    sec = SECTIONS[name]
    out = {k: Key(name, k, t, None) for k, t in sec.extra.items()}
    if sec.options is None:
        return out
    module, cls_name = sec.options.split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    wanted = sec.keys or tuple(n for n, f in by_name.items() if not f.metadata.get("run_only"))
    for key in wanted:
        f = by_name[sec.rename.get(key, key)]
        out[key] = Key(name, key, _base_type(hints[f.name]), _default(f))
    return out


def lookup(dotted: str) -> Key:
    """``prepare.dev_ratio`` / ``prepare.qc.min_snr_db`` -> its Key, or a one-line error."""
    section, _, name = dotted.rpartition(".")
    if section not in SECTIONS:
        raise ConfigError(
            f"unknown setting {dotted!r}",
            "settings are SECTION.KEY with SECTION one of: " + ", ".join(SECTIONS),
        )
    keys = section_keys(section)
    if name not in keys:
        raise ConfigError(
            f"unknown setting {dotted!r}", f"[{section}] takes: " + ", ".join(sorted(keys))
        )
    return keys[name]


def _rule(table: dict[str, Any], key: Key) -> Any:
    return table.get(key.dotted, table.get(key.name))


def check_value(key: Key, value: Any, where: str) -> Any:
    """``value`` converted to the key's type, or a ConfigError naming ``where`` and the choices.
    ``None`` (not given) passes through."""
    if value is None:
        return None
    t = key.type
    ok = (
        isinstance(value, bool)
        if t is bool
        else isinstance(value, int) and not isinstance(value, bool)
        if t is int
        else isinstance(value, (int, float)) and not isinstance(value, bool)
        if t is float
        else isinstance(value, (str, Path))
        if t is str
        else isinstance(value, (list, tuple))
    )
    if not ok:
        raise ConfigError(
            f"{where}: {key.name} = {value!r} is not {_type_word(t)}",
            f"e.g. {key.name} = {_example(key)}",
        )
    if t is float:
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{where}: {key.name} = {value!r} is not a finite number")
    if t is str:
        value = str(value)
    choices = _rule(CHOICES, key)
    if choices and value not in choices:
        raise ConfigError(
            f"{where}: {key.name} = {value!r} is not a valid choice",
            "choose one of: " + ", ".join(str(c) for c in choices),
        )
    rng = _rule(RANGES, key)
    if rng and not rng[0](value):
        raise ConfigError(f"{where}: {key.name} = {value!r} is out of range", f"use {rng[1]}")
    return value


def _type_word(t: type) -> str:
    return {bool: "true or false", int: "a whole number", float: "a number", str: "text"}.get(
        t, "a list"
    )


def _example(key: Key) -> str:
    choices = _rule(CHOICES, key)
    if choices:
        return repr(choices[0]).replace("'", '"')
    if key.default is not None and not isinstance(key.default, (tuple, list)):
        d = key.default
        return str(d).lower() if isinstance(d, bool) else repr(d).replace("'", '"')
    return {bool: "true", int: "1", float: "1.0", str: '"..."'}.get(key.type, "[]")


def parse_text(key: Key, text: str) -> Any:
    """A value typed on the command line (``config set``) in the key's type."""
    t = key.type
    try:
        if t is bool:
            low = text.strip().lower()
            if low in ("true", "yes", "on", "1"):
                return True
            if low in ("false", "no", "off", "0"):
                return False
            raise ValueError(text)
        if t is int:
            return int(text)
        if t is float:
            return float(text)
    except ValueError:
        raise ConfigError(
            f"{key.dotted} = {text!r} is not {_type_word(t)}", f"e.g. {_example(key)}"
        ) from None
    return text


def _sections_of(data: dict[str, Any], path: Path | str) -> dict[str, dict[str, Any]]:
    """Flatten ``[prepare.qc]`` (a table inside [prepare]) and refuse unknown sections."""
    out: dict[str, dict[str, Any]] = {}
    for name, table in data.items():
        if name == "locked_epoch" and not isinstance(table, dict):  # 0.1 wrote it at the top
            out.setdefault("voice", {}).setdefault("locked_epoch", table)
            continue
        if name not in SECTIONS or not isinstance(table, dict):
            what = f"section [{name}]" if isinstance(table, dict) else f"top-level key {name!r}"
            raise ConfigError(
                f"{path}: unknown {what}",
                "valid sections: " + ", ".join(f"[{s}]" for s in SECTIONS),
            )
        flat = dict(table)
        for sub, inner in table.items():
            if isinstance(inner, dict) and f"{name}.{sub}" in SECTIONS:
                out[f"{name}.{sub}"] = dict(flat.pop(sub))
        out.setdefault(name, {}).update(flat)
    return out


def validate(data: dict[str, Any], path: Path | str) -> dict[str, dict[str, Any]]:
    """Check a parsed ``voicelab.toml``; return its sections (``[prepare.qc]`` flattened) with
    every value converted to its key's type."""
    out: dict[str, dict[str, Any]] = {}
    for name, table in _sections_of(data, path).items():
        keys = section_keys(name)
        checked: dict[str, Any] = {}
        for k, v in table.items():
            if k not in keys:
                raise ConfigError(
                    f"{path}: unknown key {k!r} in [{name}]",
                    "valid keys: " + ", ".join(sorted(keys)),
                )
            checked[k] = check_value(keys[k], v, f"{path} [{name}]")
        _cross_checks(name, checked, f"{path} [{name}]")
        out[name] = checked
    return out


def _cross_checks(section: str, values: dict[str, Any], where: str) -> None:
    lo, hi = values.get("min_seconds"), values.get("max_seconds")
    if section == "prepare" and lo is not None and hi is not None and lo >= hi:
        raise ConfigError(
            f"{where}: min_seconds = {lo} is not below max_seconds = {hi}",
            "make min_seconds smaller than max_seconds, e.g. 2 and 20",
        )


def check_flags(section: str, values: dict[str, Any], flag_names: bool = True) -> dict[str, Any]:
    """Command-line values of ``section`` checked like voicelab.toml's (None = not given)."""
    keys = section_keys(section)
    out = {}
    for k, v in values.items():
        where = f"--{k.replace('_', '-')}" if flag_names else f"[{section}]"
        out[k] = check_value(keys[k], v, where) if k in keys else v
    _cross_checks(section, {k: v for k, v in out.items() if v is not None}, "options")
    return out


def to_toml(sections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Flat sections back to TOML tables (``prepare.qc`` -> ``[prepare.qc]``)."""
    out: dict[str, Any] = {}
    for name, table in sections.items():
        if not table:
            continue
        head, _, sub = name.partition(".")
        if sub:
            out.setdefault(head, {})[sub] = dict(table)
        else:
            out.setdefault(head, {}).update(table)
    return out
