"""The training YAML: upstream's CosyVoice 3 example config with VoiceLab's SFT settings.

Upstream's ``examples/libritts/cosyvoice3/conf/cosyvoice3.yaml`` is read from the synced vendor
checkout at run time (never copied into this repository) and edited as *text*: it is a
hyperpyyaml file (``!new:``, ``!ref``, ``!name:`` tags, comments, flow lists) that a plain
``yaml.safe_load``/``dump`` round trip would destroy. Each edit replaces the value of one key path
in place (keeping the line's comment), and the result is verified by parsing both texts with a
tag-tolerant loader: every edited path must hold the new value and every other path must be
unchanged.

The generated file is written to the workspace (``configs/cosyvoice3_<spk>_sft.yaml``) with a
stamp (the SHA-256 of what we wrote). A file whose hash no longer matches the stamp was edited by
the user: VoiceLab then uses it as it is and warns about unsafe values, instead of regenerating.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from voicelab.errors import ConfigError, VendorError
from voicelab.fsutil import atomic_write_json, atomic_write_text, read_json

log = logging.getLogger(__name__)

#: Where upstream keeps the CosyVoice 3 training config, relative to the vendor root.
UPSTREAM_YAML = Path("examples/libritts/cosyvoice3/conf/cosyvoice3.yaml")

KeyPath = tuple[str, ...]

# Key paths of the settings VoiceLab controls (hyperpyyaml key nesting of upstream's file).
USE_SPK_EMBEDDING: KeyPath = ("padding", "use_spk_embedding")
LR: KeyPath = ("train_conf", "optim_conf", "lr")
SCHEDULER: KeyPath = ("train_conf", "scheduler")
SCHEDULER_CONF: KeyPath = ("train_conf", "scheduler_conf")
MAX_EPOCH: KeyPath = ("train_conf", "max_epoch")
ACCUM_GRAD: KeyPath = ("train_conf", "accum_grad")
SAVE_PER_STEP: KeyPath = ("train_conf", "save_per_step")
LOG_INTERVAL: KeyPath = ("train_conf", "log_interval")
GRAD_CLIP: KeyPath = ("train_conf", "grad_clip")
OPTIM: KeyPath = ("train_conf", "optim")
MAX_FRAMES: KeyPath = ("batch", "max_frames_in_batch")
QWEN_PATH: KeyPath = ("qwen_pretrain_path",)
FILTER: KeyPath = ("filter",)

#: Architecture keys: a base model's own ``cosyvoice3.yaml`` decides them (the tiny model's differ).
DIM_PATHS: tuple[KeyPath, ...] = (
    ("llm_input_size",),
    ("llm_output_size",),
    ("flow", "pre_lookahead_layer", "channels"),
    ("flow", "decoder", "estimator", "dim"),
    ("flow", "decoder", "estimator", "depth"),
    ("flow", "decoder", "estimator", "heads"),
    ("flow", "decoder", "estimator", "dim_head"),
    ("hift", "base_channels"),
    ("hift", "f0_predictor", "cond_channels"),
)

#: The tiny CosyVoice 3 (environment.md, "A tiny CosyVoice 3 model"): 10.7 M / 0.76 M / 0.39 M.
TINY_DIMS: dict[KeyPath, Any] = {
    ("llm_input_size",): 64,
    ("llm_output_size",): 64,
    ("flow", "pre_lookahead_layer", "channels"): 64,
    ("flow", "decoder", "estimator", "dim"): 64,
    ("flow", "decoder", "estimator", "depth"): 2,
    ("flow", "decoder", "estimator", "heads"): 2,
    ("flow", "decoder", "estimator", "dim_head"): 32,
    ("hift", "base_channels"): 64,
    ("hift", "f0_predictor", "cond_channels"): 64,
    # Tiny fixture sets must still form >= accum_grad batches per epoch.
    MAX_FRAMES: 500,
}

DEFAULT_LR = 1e-5
DEFAULT_EPOCHS = 10
DEFAULT_ACCUM_GRAD = 2
DEFAULT_MAX_FRAMES = 2000


# ------------------------------------------------------------------------------------------------
# Reading: a loader that accepts any tag and builds plain Python values
# ------------------------------------------------------------------------------------------------
class _TolerantLoader(yaml.SafeLoader):
    """SafeLoader that reads hyperpyyaml tags as plain values (``!ref <x>`` -> ``"<x>"``)."""


def _construct_any(loader: _TolerantLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


_TolerantLoader.add_multi_constructor("!", _construct_any)


def read_values(text: str) -> dict[str, Any]:
    """Parse a hyperpyyaml text into plain dicts/lists/scalars, tags ignored."""
    try:
        data = yaml.load(text, Loader=_TolerantLoader)  # a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"the training YAML does not parse: {e}".splitlines()[0]) from e
    if not isinstance(data, dict):
        raise ConfigError("the training YAML is not a mapping of keys")
    return data


def get_value(data: Mapping[str, Any], path: KeyPath, default: Any = None) -> Any:
    cur: Any = data
    for key in path:
        if not isinstance(cur, Mapping) or key not in cur:
            return default
        cur = cur[key]
    return cur


def as_number(value: Any) -> float | None:
    """YAML 1.1 reads ``1e-5`` as a string (no dot); hyperpyyaml's ruamel reads a float."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value))
    except (TypeError, ValueError):
        return None


def _flatten(data: Any, prefix: KeyPath = ()) -> dict[KeyPath, Any]:
    out: dict[KeyPath, Any] = {}
    if isinstance(data, Mapping) and data:
        for k, v in data.items():
            out.update(_flatten(v, (*prefix, str(k))))
    else:
        out[prefix] = data
    return out


# ------------------------------------------------------------------------------------------------
# Writing: in-place text edits of one key path each
# ------------------------------------------------------------------------------------------------
_KEY_RE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w.-]*)[ \t]*:(?P<rest>.*)$")


_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n"}


def yaml_scalar(value: Any) -> str:
    """A value as YAML text that PyYAML and hyperpyyaml (ruamel) both read back the same."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        s = repr(value)
        if "e" in s:
            mant, exp = s.split("e")
            if "." not in mant:
                mant += ".0"  # PyYAML needs the dot to read a float
            s = f"{mant}e{exp}"
        return s
    if isinstance(value, Mapping) and not value:
        return "{}"
    if isinstance(value, str):
        if re.fullmatch(r"[A-Za-z_]\w*", value) and value.lower() not in _YAML_WORDS:
            return value
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"cannot write {value!r} into the YAML")


def _find_key(lines: list[str], path: KeyPath) -> tuple[int, int] | None:
    """(line index of ``path``'s key, end of its block) or None."""
    stack: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        m = _KEY_RE.match(line)
        if not m or line.lstrip().startswith("#"):
            continue
        indent = len(m["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m["key"]))
        if tuple(k for _, k in stack) == path:
            end = i + 1
            last = i + 1
            while end < len(lines):
                s = lines[end]
                if s.strip() and not s.lstrip().startswith("#"):
                    if len(s) - len(s.lstrip(" ")) <= indent:
                        break
                    last = end + 1
                end += 1
            return i, last
    return None


def _inline_comment(rest: str) -> str:
    """The ``# ...`` tail of a simple scalar value, if any."""
    m = re.search(r"\s#.*$", rest)
    if m and not any(c in rest[: m.start()] for c in "\"'"):
        return " " + m.group(0).strip()
    return ""


def set_value(text: str, path: KeyPath, value: Any) -> str:
    """Replace the value of ``path`` (and any nested block under it) in ``text``."""
    lines = text.split("\n")
    found = _find_key(lines, path)
    if found is None:
        raise KeyError(".".join(path))
    i, end = found
    m = _KEY_RE.match(lines[i])
    assert m is not None
    comment = _inline_comment(m["rest"]) if end == i + 1 else ""
    lines[i:end] = [f"{m['indent']}{m['key']}: {yaml_scalar(value)}{comment}"]
    return "\n".join(lines)


def _same(a: Any, b: Any) -> bool:
    if a == b:
        return True
    na, nb = as_number(a), as_number(b)
    return na is not None and nb is not None and math.isclose(na, nb, rel_tol=1e-12)


def apply_overrides(text: str, overrides: Mapping[KeyPath, Any], source: str = "upstream") -> str:
    """Apply every override as a text edit, then verify the result (see module doc)."""
    before = _flatten(read_values(text))
    out = text
    for path, value in overrides.items():
        try:
            out = set_value(out, path, value)
        except KeyError:
            if source == "upstream":
                raise VendorError(
                    f"upstream's training YAML has no key {'.'.join(path)}",
                    "the vendor checkout is not at the pin VoiceLab knows: voicelab vendor sync",
                ) from None
            raise ConfigError(
                f"the training YAML has no key {'.'.join(path)}",
                "restore the key, or delete the file to let VoiceLab regenerate it",
            ) from None
    after = _flatten(read_values(out))
    for path, value in overrides.items():
        got = get_value(read_values(out), path)
        if isinstance(value, Mapping):
            ok = got == value or (not value and got in ({}, None))
        else:
            ok = _same(got, value)
        if not ok:
            raise ConfigError(f"editing {'.'.join(path)} gave {got!r}, not {value!r}")

    def untouched(p: KeyPath) -> bool:
        return not any(p[: len(o)] == o for o in overrides)

    changed = sorted(
        ".".join(p)
        for p in set(before) | set(after)
        if untouched(p) and not _same(before.get(p, "<missing>"), after.get(p, "<missing>"))
    )
    if changed:
        raise ConfigError(f"editing the training YAML changed other keys: {', '.join(changed[:5])}")
    return out


# ------------------------------------------------------------------------------------------------
# VoiceLab's settings
# ------------------------------------------------------------------------------------------------
@dataclass
class SftSettings:
    """What VoiceLab writes into the training YAML (the rest stays upstream's)."""

    max_epoch: int = DEFAULT_EPOCHS
    lr: float = DEFAULT_LR
    accum_grad: int = DEFAULT_ACCUM_GRAD
    save_per_step: int = -1
    max_frames_in_batch: int = DEFAULT_MAX_FRAMES
    log_interval: int = 10
    qwen_pretrain_path: str = ""
    dims: dict[KeyPath, Any] = field(default_factory=dict)

    def overrides(self) -> dict[KeyPath, Any]:
        o: dict[KeyPath, Any] = {
            # Flow SFT conditions on the speaker-mean embedding (the LLM ignores it).
            USE_SPK_EMBEDDING: True,
            LR: float(self.lr),
            SCHEDULER: "constantlr",
            # constantlr takes no arguments; under deepspeed upstream passes scheduler_conf to it
            # anyway (TypeError), so it is emptied.
            SCHEDULER_CONF: {},
            MAX_EPOCH: int(self.max_epoch),
            ACCUM_GRAD: int(self.accum_grad),
            SAVE_PER_STEP: int(self.save_per_step),
            LOG_INTERVAL: int(self.log_interval),
            MAX_FRAMES: int(self.max_frames_in_batch),
        }
        if self.qwen_pretrain_path:
            o[QWEN_PATH] = str(self.qwen_pretrain_path)
        o.update(self.dims)
        return o


def model_dims(text: str) -> dict[KeyPath, Any]:
    """The architecture values of a model's ``cosyvoice3.yaml`` (those that exist in it)."""
    data = read_values(text)
    out: dict[KeyPath, Any] = {}
    for p in DIM_PATHS:
        v = get_value(data, p)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[p] = v
    return out


def header(source: str) -> str:
    return (
        "# Generated by VoiceLab from upstream CosyVoice's\n"
        f"# {UPSTREAM_YAML.as_posix()} ({source}) with speaker-SFT settings:\n"
        "# padding.use_spk_embedding, train_conf (lr, constantlr, max_epoch, accum_grad,\n"
        "# save_per_step, log_interval), batch.max_frames_in_batch, qwen_pretrain_path.\n"
        "# You may edit this file: VoiceLab then uses it as it is and warns about unsafe values.\n"
        "# Delete it to have VoiceLab regenerate it.\n"
        "# Command-line options (--epochs ...) still win.\n"
    )


def render(upstream_text: str, settings: SftSettings, source: str = "") -> str:
    """Upstream's text with ``settings`` applied, verified, behind a short header."""
    return header(source) + apply_overrides(upstream_text, settings.overrides())


def tiny_model_yaml(upstream_text: str) -> str:
    """The tiny model's ``cosyvoice3.yaml``: upstream's example with :data:`TINY_DIMS`."""
    return apply_overrides(upstream_text, TINY_DIMS)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------------------------
# Safety checks of a (possibly user-edited) config
# ------------------------------------------------------------------------------------------------
def check_values(
    data: Mapping[str, Any], engine: str = "torch_ddp", batches_per_epoch: int | None = None
) -> tuple[list[str], list[str]]:
    """(warnings, errors) for the values of a training config. Errors are certain failures."""
    warnings: list[str] = []
    errors: list[str] = []
    lr = as_number(get_value(data, LR))
    if lr is None:
        errors.append("train_conf.optim_conf.lr is missing or not a number")
    elif lr > 1e-4:
        warnings.append(
            f"lr {lr:g} is high for speaker SFT (upstream advises 1e-5): the voice may collapse"
        )
    elif lr <= 0:
        errors.append(f"lr {lr:g} trains nothing: use 1e-5")
    epochs = as_number(get_value(data, MAX_EPOCH))
    if epochs is None or epochs < 1:
        errors.append("train_conf.max_epoch must be a positive integer")
    elif epochs > 100:
        warnings.append(
            f"max_epoch {int(epochs)} is very large for SFT (each epoch writes a checkpoint of"
            " about 2 GB for the llm): 5-20 epochs is usual"
        )
    accum = as_number(get_value(data, ACCUM_GRAD))
    if accum is None or accum < 1:
        errors.append("train_conf.accum_grad must be an integer >= 1")
    elif batches_per_epoch is not None and batches_per_epoch < accum:
        errors.append(
            f"an epoch has about {batches_per_epoch} batch(es) but accum_grad is {int(accum)}:"
            " no optimizer step would ever happen (lower accum_grad or batch frames)"
        )
    sched = get_value(data, SCHEDULER)
    if sched not in ("constantlr", "warmuplr", "NoamHoldAnnealing"):
        errors.append(f"unknown scheduler {sched!r}: use constantlr")
    elif sched != "constantlr":
        warnings.append(f"scheduler {sched} is not upstream's SFT advice (constantlr)")
    sconf = get_value(data, SCHEDULER_CONF)
    if engine == "deepspeed" and sched == "constantlr" and sconf:
        errors.append(
            "deepspeed with constantlr and a non-empty scheduler_conf raises TypeError in"
            " upstream: set train_conf.scheduler_conf to {}"
        )
    if get_value(data, USE_SPK_EMBEDDING) is not True:
        warnings.append(
            "padding.use_spk_embedding is not True: flow SFT will condition on per-utterance"
            " embeddings, not the speaker mean"
        )
    frames = as_number(get_value(data, MAX_FRAMES))
    if frames is None or frames < 100:
        errors.append("batch.max_frames_in_batch must be a number >= 100")
    save = as_number(get_value(data, SAVE_PER_STEP))
    if save is not None and 0 < save < 50:
        warnings.append(
            f"save_per_step {int(save)} runs a full CV pass and writes a checkpoint every"
            f" {int(save)} steps: training will be much slower and use much disk"
        )
    clip = as_number(get_value(data, GRAD_CLIP))
    if clip is not None and clip <= 0:
        warnings.append("grad_clip <= 0 disables clipping")
    return warnings, errors


# ------------------------------------------------------------------------------------------------
# The workspace file
# ------------------------------------------------------------------------------------------------
@dataclass
class ConfigResult:
    path: Path
    text: str
    values: dict[str, Any]
    user_edited: bool
    regenerated: bool
    warnings: list[str] = field(default_factory=list)


def stamp_path(yaml_path: Path) -> Path:
    return yaml_path.with_name(f".{yaml_path.name}.voicelab.json")


def write_workspace_config(
    yaml_path: Path, upstream_text: str, settings: SftSettings, source: str = ""
) -> ConfigResult:
    """Generate (or reuse a user's edit of) the workspace training YAML."""
    generated = render(upstream_text, settings, source)
    stamp = read_json(stamp_path(yaml_path), default={}) or {}
    if yaml_path.is_file():
        current = yaml_path.read_text(encoding="utf-8")
        if stamp.get("sha256") != sha256_text(current):
            values = read_values(current)
            return ConfigResult(
                yaml_path,
                current,
                values,
                user_edited=True,
                regenerated=False,
                warnings=[f"using your edited {yaml_path.name} as it is (delete it to regenerate)"],
            )
        if current == generated:
            return ConfigResult(yaml_path, current, read_values(current), False, False)
    atomic_write_text(yaml_path, generated)
    atomic_write_json(
        stamp_path(yaml_path),
        {"sha256": sha256_text(generated), "source": source},
    )
    return ConfigResult(yaml_path, generated, read_values(generated), False, True)


def run_config_text(text: str, explicit: Mapping[KeyPath, Any]) -> str:
    """The config a run uses: the workspace file with the options given on the command line."""
    if not explicit:
        return text
    return apply_overrides(text, explicit, source="workspace")


def describe(paths: Iterable[KeyPath]) -> list[str]:
    return [".".join(p) for p in paths]
