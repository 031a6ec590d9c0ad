"""``voicelab export``: a CosyVoice 3 model dir that speaks this voice, and its verification.

The voice dir (``pretrained_models/Fun-CosyVoice3-0.5B-<speaker>-sft`` by default) is the base model
dir with:

* every base file hard-linked (copied where links are impossible, e.g. across disks or on
  ``/mnt/c``), so a voice costs only its new weights on disk;
* a new ``llm.pt`` (the chosen checkpoints averaged, or one checkpoint stripped) and, when flow was
  trained, a new ``flow.pt`` (the base flow otherwise);
* no stale derived files: upstream reuses ``vllm/`` and TensorRT ``*.plan`` files when they exist,
  so they are left out after a new llm or flow, and ``flow.decoder.estimator.fp32.onnx`` (exported
  from the flow) after a new flow;
* ``spk2info.pt`` = ``{speaker: {'embedding': float32 (1, 192)}}`` from ``spk2embedding.pt``,
  merged with the speakers already there (base dir, previous voice dir), as ``inference_sft``
  reads it;
* ``voicelab.json``: where it came from (see :func:`base_identity` for how the base is identified).

It is assembled in a hidden staging dir beside the target, verified there, and only then swapped in
(two renames, undone on failure), so a failure at any point, a full disk included, leaves the
previous voice as it was and never leaves a half-written ``llm.pt``.

The package, by job: ``options``, ``base`` (the base model's files and identity),
``provenance`` (``voicelab.json``), ``swap`` (replacing a voice dir safely), ``build``
(``run_export``), ``verify`` (``--check``, the epoch lock) and ``stage`` (the stage contract).
This module re-exports the names other packages use.
"""

from voicelab.stages.export.base import base_files, check_base_dir
from voicelab.stages.export.build import run_export
from voicelab.stages.export.options import ExportOptions, ExportResult, VerifyReport
from voicelab.stages.export.stage import STAGE, Options
from voicelab.stages.export.verify import check_dir, set_lock, verify_voice_dir

__all__ = [
    "STAGE", "ExportOptions", "ExportResult", "Options", "VerifyReport", "base_files",
    "check_base_dir", "check_dir", "run_export", "set_lock", "verify_voice_dir",
]  # fmt: skip
