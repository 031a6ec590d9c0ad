"""``voicelab audition``: fixed test sentences in one or more variants, on a static HTML page.

A variant is an instruct (preset or prompt text), a speed and a set of weights (the voice, an
epoch, a checkpoint). ``--compare`` is the notes' 2 x 2 grid (neutral/hype x speed 1.0/1.1);
``--compare-ckpts epoch_4,epoch_6,avg`` puts checkpoints side by side (``avg``: the exported
voice). Every sentence is spoken in every variant with the same seed, so what differs is the
variant.

The report is ``reports/audition-<time>/index.html`` plus ``audio/*.wav``: no network, no
external JS/CSS, playable from disk. ``--blind`` shuffles the takes of each sentence, labels them
A, B, C ... and keeps the key away from the pages (``.voicelab/audition-keys/<report>.key.json``
in the workspace, not under ``reports/``), so the reports can be handed to a listener. The page
stores the listener's picks in ``localStorage`` and offers them as a JSON download (and as text
to copy); ``voicelab audition --unblind choices.json`` joins them with the key.

HTML generation (:func:`render_html`) and unblinding are pure and need no torch.

The package, by job: ``sentences``, ``variants`` (the voices compared), ``page`` (the listening
page), ``blind`` (blind keys and unblinding), ``build`` (``run_audition``) and ``stage`` (the
stage contract). This module re-exports the names other packages use.
"""

from voicelab.stages.audition.blind import (
    Unblinded,
    apply_blind_key,
    blind_key,
    describe_unblind,
    find_key,
    key_path,
    keys_dir,
    run_unblind,
    unblind,
)
from voicelab.stages.audition.build import (
    AuditionOptions,
    AuditionResult,
    new_report_dir,
    reports_root,
    run_audition,
)
from voicelab.stages.audition.page import Page, PageSentence, Take, render_html, write_page
from voicelab.stages.audition.sentences import (
    DEFAULT_SENTENCES,
    GRID,
    VOICE_TOKENS,
    Sentence,
    default_sentences,
    read_sentences,
)
from voicelab.stages.audition.stage import STAGE, Options
from voicelab.stages.audition.variants import Variant, build_variants, ckpt_weights

__all__ = [
    "DEFAULT_SENTENCES", "GRID", "STAGE", "VOICE_TOKENS", "AuditionOptions", "AuditionResult",
    "Options", "Page", "PageSentence", "Sentence", "Take", "Unblinded", "Variant",
    "apply_blind_key", "blind_key", "build_variants", "ckpt_weights", "default_sentences",
    "describe_unblind", "find_key", "key_path", "keys_dir", "new_report_dir", "read_sentences",
    "render_html", "reports_root", "run_audition", "run_unblind", "unblind", "write_page",
]  # fmt: skip
