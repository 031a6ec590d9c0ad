"""Checkpoints of a training run: discovery, CV metrics, selection rules and averaging.

Upstream's ``train.py`` (torch_ddp) writes, into ``exp/<spk>_sft/<model>/torch_ddp``:

* ``init.pt`` / ``init.yaml`` before the first step (listed, never selectable);
* ``epoch_{E}_step_{S}.pt`` / ``.yaml`` every ``save_per_step`` steps, ``S`` the global step;
* ``epoch_{E}_whole.pt`` / ``.yaml`` at the end of each epoch.

Each ``.pt`` is ``{**state_dict, 'epoch': E, 'step': S}``; each ``.yaml`` is the ``info_dict``
with the CV means under ``loss_dict`` and, sometimes, a torch tensor under ``grad_norm`` (python
tags), so yamls are read with a loader that turns unknown tags into plain data, never running them.

VoiceLab replaces upstream's ``average_model.py``: selection rules of its own (``last:N``,
``best-cv:N``, ``epochs:...``, ``step:...``; step checkpoints are themselves, not their epoch's
``whole`` file), and averaging that streams one file at a time: a float32 (or wider) running sum
plus the checkpoint being added, never more. The result is a plain state dict with the source
dtypes, which upstream loads strictly as ``llm.pt`` / ``flow.pt``.

The package, by job: ``listing`` (a run's checkpoints and their records), ``rules`` (which
ones a rule selects) and ``weights`` (load, average, check, save). This module re-exports the
names other packages use.
"""

from voicelab.stages.checkpoints.listing import (
    META_KEYS,
    MODELS,
    Checkpoint,
    discover,
    read_info_yaml,
)
from voicelab.stages.checkpoints.rules import (
    DEFAULT_RULE,
    EVAL_RULE,
    RULE_HELP,
    default_rule,
    evaluated,
    list_checkpoints,
    parse_rule,
    run_checkpoints,
    select,
)
from voicelab.stages.checkpoints.weights import (
    average,
    check_against,
    load_state_dict,
    save_state_dict,
    strip_meta,
)

__all__ = [
    "DEFAULT_RULE", "EVAL_RULE", "META_KEYS", "MODELS", "RULE_HELP", "Checkpoint", "average",
    "check_against", "default_rule", "discover", "evaluated", "list_checkpoints",
    "load_state_dict", "parse_rule", "read_info_yaml", "run_checkpoints", "save_state_dict",
    "select", "strip_meta",
]  # fmt: skip
