"""Choosing checkpoints: rules such as ``last:5``, ``best:3``, ``epochs:4-7`` or ``eval``, and
which a rule selects."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from voicelab.errors import ConfigError, ModelError, VoiceLabError

if TYPE_CHECKING:
    from voicelab.workspace import Workspace
from voicelab.stages.checkpoints.listing import MODELS, Checkpoint, discover

log = logging.getLogger(__name__)


DEFAULT_LAST = 3

DEFAULT_RULE = f"last:{DEFAULT_LAST}"


def run_checkpoints(ws: Workspace, model: str) -> list[Checkpoint]:
    """The checkpoints of ``model`` (``llm`` or ``flow``) in this workspace, with the locked
    epoch and the ones the exported voice was made from marked."""
    if model not in MODELS:
        raise ConfigError(f"unknown model {model!r}", "use llm or flow")
    locked = ws.config.locked_epoch if model == "llm" else None
    found = discover(ws.exp_dir(model), locked)
    try:
        prov = json.loads((ws.voice_dir / "voicelab.json").read_text(encoding="utf-8"))
        used = {c.get("file") for c in prov[model].get("checkpoints", [])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        used = set()
    for c in found:
        c.exported = c.path.name in used
    if model == "llm":
        from voicelab.evaluation.results import attach

        try:
            attach(ws, found)
        except (OSError, ValueError) as e:  # an unreadable table must not block export
            log.warning("evaluation results not read: %s", e)
    return found


def list_checkpoints(ws: Workspace, model: str) -> list[dict[str, Any]]:
    """Summaries of a run's checkpoints, with the ones the default rule (or the locked epoch)
    picks marked ``chosen`` (for the report and ``--json``)."""
    ckpts = run_checkpoints(ws, model)
    if any(c.kind != "init" for c in ckpts):
        locked = ws.config.locked_epoch if model == "llm" else None
        rule = default_rule(model, locked, evaluated(ckpts))
        with contextlib.suppress(VoiceLabError):
            select(ckpts, rule, str(ws.exp_dir(model)))
    return [c.summary() for c in ckpts]


# ---- selection ------------------------------------------------------------------------------
RULE_HELP = (
    "last:N (the last N epochs; default last:3), best-cv:N (the N epochs of lowest CV loss), "
    "epochs:4,5,6, step:S1,S2 (step checkpoints by global step), step:last:N, step:best-cv:N, "
    "best-eval[:N] (the N best epochs of voicelab eval; default when evaluations exist)"
)

EVAL_RULE = "best-eval"


def _count(text: str, rule: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"bad checkpoint rule {rule!r}: {text!r} is not a count >= 1", RULE_HELP)
    return int(text)


def _numbers(text: str, rule: str) -> list[int]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise ConfigError(f"bad checkpoint rule {rule!r}: expected numbers like 4,5,6", RULE_HELP)
    return list(dict.fromkeys(int(p) for p in parts))


def parse_rule(rule: str) -> tuple[str, str, str]:
    """``(pool, kind, arg)`` of a rule: pool ``epoch`` or ``step``; kind ``last``, ``best-cv``,
    ``epochs`` or ``steps``. Raises ConfigError for a malformed rule."""
    rule = rule.strip()
    kind, _, arg = rule.partition(":")
    kind = kind.strip().lower()
    pool = "epoch"
    if kind == "step":
        pool = "step"
        sub, _, sub_arg = arg.partition(":")
        if sub in ("last", "best-cv"):
            kind, arg = sub, sub_arg
        else:
            kind = "steps"
    if kind == EVAL_RULE and pool == "epoch":
        arg = arg or "1"
        _count(arg, rule)
    elif kind in ("last", "best-cv"):
        _count(arg, rule)
    elif kind == "epochs" or (kind == "steps" and pool == "step"):
        # "steps:N" alone is not a rule: step checkpoints are chosen with "step:N".
        _numbers(arg, rule)
    else:
        raise ConfigError(f"unknown checkpoint rule {rule!r}", RULE_HELP)
    return pool, kind, arg


def default_rule(model: str, locked_epoch: int | None, evaluated: bool = False) -> str:
    """What ``export`` uses without ``--select``: the locked epoch (llm only), else
    ``best-eval`` when an evaluated llm epoch is eligible (``evaluated``), else ``last:3``."""
    if model == "llm" and locked_epoch is not None:
        return f"epochs:{locked_epoch}"
    if model == "llm" and evaluated:
        return EVAL_RULE
    return DEFAULT_RULE


def evaluated(checkpoints: Iterable[Checkpoint]) -> bool:
    """Whether ``best-eval`` can pick one of these checkpoints."""
    return any(c.eval_ok for c in checkpoints)


# epochs:/steps: rules -> (Checkpoint attribute, what a missing one is called, rule to suggest)
_NUMBERED = {
    "epochs": ("epoch", "epoch_{}_whole.pt", "epochs:"),
    "steps": ("step", "step checkpoint of step {}", "step:"),
}


def select(
    checkpoints: Iterable[Checkpoint], rule: str, where: str = "the run"
) -> list[Checkpoint]:
    """Pick checkpoints by ``rule`` (see :data:`RULE_HELP`), in training order; marks them chosen.

    ``last``/``best-cv``/``epochs`` pick among epoch (``whole``) checkpoints; ``step:`` rules among
    step checkpoints only. ``init`` is never picked. Asking for more than exist takes what exists.
    """
    all_ckpts = list(checkpoints)
    rule = rule.strip()
    pool_kind, kind, arg = parse_rule(rule)
    pool = sorted((c for c in all_ckpts if c.kind == pool_kind), key=lambda c: c.order)
    noun = "epoch" if pool_kind == "epoch" else "step"
    if not pool:
        raise ModelError(
            f"no {noun} checkpoints in {where}",
            "train first (voicelab train), or choose other checkpoints (voicelab checkpoints)",
        )
    if kind == "last":
        n = _count(arg, rule)
        chosen = pool[-n:]
    elif kind == "best-cv":
        n = _count(arg, rule)
        scored = [c for c in pool if c.cv_loss is not None]
        if not scored:
            raise ModelError(
                f"no {noun} checkpoint in {where} has a CV loss in its yaml",
                "use --select last:N or epochs:... instead",
            )
        # Lowest loss first; on ties the later (more adapted) checkpoint wins.
        best = sorted(scored, key=lambda c: (c.cv_loss, tuple(-x for x in c.order)))[:n]
        chosen = sorted(best, key=lambda c: c.order)
    elif kind == EVAL_RULE:
        n = _count(arg, rule)
        chosen = _best_eval(pool, n, where)
    elif kind in _NUMBERED:
        attr, missing_name, prefix = _NUMBERED[kind]
        wanted = _numbers(arg, rule)
        by_number = {getattr(c, attr): c for c in pool}
        missing = [n for n in wanted if n not in by_number]
        if missing:
            have = ",".join(str(getattr(c, attr)) for c in pool)
            raise ModelError(
                f"no {missing_name.format(missing[0])} in {where} ({kind} there: {have})",
                f"pick existing {kind}, e.g. --select {prefix}" + have.split(",")[-1],
            )
        chosen = sorted((by_number[n] for n in wanted), key=lambda c: c.order)
    else:  # pragma: no cover - parse_rule knows only the kinds above
        raise ConfigError(f"unknown checkpoint rule {rule!r}", RULE_HELP)
    if kind in ("last", "best-cv", EVAL_RULE) and len(chosen) < _count(arg, rule):
        # A shortfall of the default rule is normal (short runs); of an explicit one, worth a look.
        log.log(
            logging.DEBUG if rule == DEFAULT_RULE else logging.WARNING,
            "%s asks for %s checkpoints; %s has only %d: using those",
            rule,
            arg,
            where,
            len(chosen),
        )
    for c in all_ckpts:
        c.chosen = False
    for c in chosen:
        c.chosen = True
    return chosen


def _best_eval(pool: list[Checkpoint], n: int, where: str) -> list[Checkpoint]:
    """The ``n`` best eligible evaluated epochs (voicelab.evaluation.choose), in training order."""
    scored = [c for c in pool if c.eval_score is not None]
    if not scored:
        raise ModelError(
            f"no epoch checkpoint in {where} has been evaluated",
            "run: voicelab eval (or use --select last:N)",
        )
    ok = [c for c in scored if c.eval_ok]
    if not ok:
        raise ModelError(
            f"no evaluated epoch in {where} keeps the base model's intelligibility "
            "(CER/WER within the margin)",
            "listen (voicelab audition --compare-ckpts ...), then pick with --select epochs:N",
        )
    # Highest score first; on ties the later (more adapted) epoch wins.
    best = sorted(ok, key=lambda c: (c.eval_score or 0.0, c.order), reverse=True)[:n]
    return sorted(best, key=lambda c: c.order)
