"""``voicelab prepare``: a folder of recordings -> a clean, transcribed, checked and split dataset.

Steps, each cached so a rerun (or a run after Ctrl-C) redoes only what changed:

1. **discover** audio files recursively (the source folder is only ever read);
2. **intake** each file: decode, downmix, resample to 24 kHz, VAD, cut into utterances, write
   each as ``prepare/clips/<utt>.wav`` and measure its audio metrics. Cached per source file by
   its fingerprint and the intake options (``prepare/intake.jsonl``);
3. **transcribe** the segments that passed the audio checks, through ``asr.load_transcriber``,
   or import existing transcripts. Cached per segment (hash of its samples) and ASR options in
   ``prepare/asr_cache.jsonl``, appended and flushed after every segment;
4. **normalize** text (wetext, traditional -> simplified), flag hallucinations;
5. **QC**: the rule table of :mod:`voicelab.blocks.qc`, re-applied on every run (cheap);
6. **review** edits (``review_overrides.json``) are applied: text fixes, drops, keeps;
7. **split** train/dev by source recording, write the kaldi dirs, ``segments.jsonl``,
   ``qc.tsv`` and (with ``--review``) ``review.tsv``.

Review round trip: ``voicelab prepare --review`` writes ``prepare/review.tsv`` (worst first);
edit ``text`` and ``keep`` (0 drops, 1 keeps a segment that a soft rule excluded), then
``voicelab prepare --apply-review [FILE]`` stores the edits in ``review_overrides.json`` and
rebuilds the dataset with them, with no ASR redone. Edits stay attached to a segment while its
audio is unchanged; edited text is used as written (no normalization).

The package, by job: ``options``, ``intake`` (steps 1-2), ``transcripts`` (imported
transcripts, text normalization), ``dataset`` (per-segment decisions, the split, the
manifests), ``review``, ``build`` (``run_prepare``) and ``stage`` (the stage contract). This
module re-exports the names other packages use.
"""

from voicelab.stages.prepare.build import run_prepare
from voicelab.stages.prepare.dataset import split_dev
from voicelab.stages.prepare.intake import JsonlCache, discover, intake_source, source_ids
from voicelab.stages.prepare.options import (
    ASR_BACKENDS,
    NAME,
    SAVED_OPTIONS,
    PrepareOptions,
    PrepareResult,
    options_from_workspace,
)
from voicelab.stages.prepare.review import REVIEW_COLUMNS, apply_review, read_review, write_review
from voicelab.stages.prepare.stage import STAGE, Options
from voicelab.stages.prepare.transcripts import (
    Transcript,
    finish_text,
    load_transcript_file,
    match_transcripts,
)

__all__ = [
    "ASR_BACKENDS", "NAME", "REVIEW_COLUMNS", "SAVED_OPTIONS", "STAGE", "JsonlCache", "Options",
    "PrepareOptions", "PrepareResult", "Transcript", "apply_review", "discover", "finish_text",
    "intake_source", "load_transcript_file", "match_transcripts", "options_from_workspace",
    "read_review", "run_prepare", "source_ids", "split_dev", "write_review",
]  # fmt: skip
