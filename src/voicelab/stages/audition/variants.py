"""The voices an audition compares: the exported voice, checkpoints by epoch, the base model."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from voicelab.errors import ConfigError, ModelError
from voicelab.paths import safe_name, to_local_path

if TYPE_CHECKING:
    from voicelab.stages.synth import Weights
    from voicelab.workspace import Workspace
from voicelab.stages.audition.sentences import GRID, VOICE_TOKENS


@dataclass
class Variant:
    name: str
    instruct: str
    speed: float
    weights: Weights
    description: str = ""


def ckpt_weights(ws: Workspace | None, token: str, flow: Path | None = None) -> Weights:
    """``avg``/``voice`` (the exported voice), ``epoch_N``/``N``, a file, or a name in the run."""
    from voicelab.stages.synth import Weights, epoch_checkpoint, epochs_on_disk

    tok = token.strip()
    if tok.lower() in VOICE_TOKENS:
        return Weights(llm=None, flow=flow, label=f"{tok} (exported voice)")
    m = re.fullmatch(r"(?:epoch_?|e)?(\d+)", tok, flags=re.IGNORECASE)
    path = to_local_path(tok)
    if m and ws is not None:
        cand = epoch_checkpoint(ws, int(m.group(1)))
    elif path.suffix == ".pt" or "/" in tok:
        cand = path
    elif ws is not None:
        cand = ws.exp_dir("llm") / f"{tok}.pt"
    else:
        cand = path
    if not cand.is_file():
        have = epochs_on_disk(ws) if ws is not None else []
        raise ModelError(
            f"--compare-ckpts {tok}: {cand} does not exist",
            f"use avg, a file, or one of: {', '.join(f'epoch_{e}' for e in have)}"
            if have
            else "use avg or a checkpoint file",
        )
    return Weights(llm=cand, flow=flow, label=cand.name if cand == path else tok)


def _ckpt_name(token: str) -> str:
    """A short variant name: ``epoch_4``, ``avg``, or a file's stem (not its whole path)."""
    tok = token.strip()
    if "/" in tok or "\\" in tok or tok.endswith(".pt"):
        tok = to_local_path(tok).stem
    return safe_name(tok, 40)


def build_variants(
    ws: Workspace | None,
    training_instruct: str,
    base: Weights,
    preset: str | None = None,
    prompt_text: str | None = None,
    speed: float = 1.0,
    compare: bool = False,
    compare_ckpts: str | None = None,
) -> list[Variant]:
    """The variants to speak: one by default; the 2 x 2 grid; checkpoints; or both crossed."""
    from voicelab.blocks.tts_text import resolve_instruct
    from voicelab.stages.synth import Weights

    if compare and (preset is not None or prompt_text is not None):
        raise ConfigError("--compare sets the presets itself", "drop --preset/--prompt-text")
    styles: list[tuple[str, str, float]] = []
    if compare:
        for name, spd in GRID:
            styles.append((f"{name}-{spd:.1f}", resolve_instruct(training_instruct, name), spd))
    else:
        style = "custom" if prompt_text is not None else (preset or "neutral").lower()
        styles.append(
            (
                f"{style}-{speed:.1f}",
                resolve_instruct(training_instruct, preset, prompt_text),
                speed,
            )
        )
    if compare_ckpts:
        tokens = [t for t in compare_ckpts.split(",") if t.strip()]
        if not tokens:
            raise ConfigError(
                "--compare-ckpts is empty", "e.g. --compare-ckpts epoch_4,epoch_6,avg"
            )
        weights = [(_ckpt_name(t), ckpt_weights(ws, t, base.flow)) for t in tokens]
    else:
        weights = [("", base)]
    out: list[Variant] = []
    for wname, w in weights:
        for sname, instruct, spd in styles:
            if wname and len(styles) == 1 and not compare:
                name = wname  # plain checkpoint comparison: name by checkpoint only
            else:
                name = f"{wname}_{sname}" if wname else sname
            desc = f"{w.label}; instruct {instruct!r}; speed {spd:g}"
            out.append(Variant(name, instruct, spd, Weights(w.llm, w.flow, w.label), desc))
    names = [v.name for v in out]
    if len(set(names)) != len(names):
        raise ConfigError("--compare-ckpts names a checkpoint twice", "list each once")
    return out
