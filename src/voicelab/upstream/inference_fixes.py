"""Importing and driving upstream's ``CosyVoice3`` inside a VoiceLab process, without its traps.

Upstream's inference classes are used in-process (``voicelab say`` loads the model once and speaks
many lines), so the things upstream does at import time land in our process:

* ``cosyvoice/utils/onnx.py`` reads the ``onnx_path`` variable at import time. When it is set
  (``train.py`` sets it for online feature extraction, and users copy it from the training
  notes into their shell), upstream builds a CAM++ session and every ``CosyVoice3LM`` /
  ``CausalMaskedDiffWithDiT`` opens ``speech_tokenizer_v3.batch.onnx`` on CUDA: about 1 GB of
  GPU memory and an ORT-CUDA session that is never used for SFT inference (and crashes where
  ORT-CUDA is broken). It is removed from ``os.environ`` before the import.
* ``cosyvoice/utils/file_utils.py`` calls ``logging.basicConfig(level=DEBUG)``: the root logger
  turns to DEBUG with a stream handler, so every library's debug output (and upstream's per-
  segment info lines) floods the console, including what other libraries log while the import
  runs (transformers imports torchao). A placeholder handler on the root logger during the
  import makes that ``basicConfig`` a no-op; root level and handlers are put back after it.
* ``CosyVoice2Model.tts`` doubles ``token_hop_len`` on the model instance on every streamed chunk
  and never resets it, so a second streamed utterance starts with a larger first chunk (later
  first audio): :func:`reset_stream_state` puts it back before each streamed utterance.
* ``inference_sft`` wraps its loop in ``tqdm`` (one bar per segment call on stderr, over our own
  progress bar): the module's ``tqdm`` name is replaced by a pass-through. ``TQDM_DISABLE`` would
  not do: tqdm reads it when tqdm itself is imported, before we run.
* Loading the model prints transformers' "Loading weights" bar and deprecation warnings of
  torch/transformers APIs upstream calls (``torch.cuda.amp.autocast``, ``weight_norm``,
  ``past_key_values``): noise a user cannot act on, silenced for this process
  (``VOICELAB_VERBOSE_UPSTREAM=1`` keeps them).

SFT inference never calls ``torchaudio.load`` (only zero-shot prompts are read from files), so
no audio-IO fix is needed here.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

from voicelab.errors import EnvironmentProblem, VendorError

log = logging.getLogger(__name__)

ONNX_PATH_VAR = "onnx_path"
STREAM_TOKEN_HOP_LEN = 25  # CosyVoice2Model.__init__'s token_hop_len
# What upstream's inference path imports at module level; named in the error when missing.
_NEEDED = ("torch", "torchaudio", "hyperpyyaml", "transformers", "whisper", "onnxruntime")


@contextlib.contextmanager
def _keep_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    levels = {
        name: lg.level
        for name, lg in logging.root.manager.loggerDict.items()
        if isinstance(lg, logging.Logger)
    }
    # basicConfig configures nothing while the root logger has a handler.
    placeholder = logging.NullHandler() if not root.handlers else None
    if placeholder is not None:
        root.addHandler(placeholder)
    try:
        yield
    finally:
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)
        for name, lvl in levels.items():
            logging.getLogger(name).setLevel(lvl)


def _ensure_import_paths(paths: list[str]) -> None:
    for p in reversed([str(x) for x in paths]):
        if p not in sys.path:
            sys.path.insert(0, p)


def import_cosyvoice3() -> Any:
    """The vendor's ``CosyVoice3`` class, imported once into this process (see module doc)."""
    from voicelab.vendor import cosyvoice_runtime

    runtime = cosyvoice_runtime()  # VendorError with a hint when there is no usable checkout
    if os.environ.pop(ONNX_PATH_VAR, None) is not None:
        log.info(
            "ignoring the onnx_path variable: it is only for training (upstream would load "
            "the speech tokenizer onto the GPU)"
        )
    missing = [m for m in _NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        raise EnvironmentProblem(
            f"speaking needs upstream CosyVoice's packages; missing: {', '.join(missing)}",
            # No square brackets: the CLI prints errors through rich markup.
            "install VoiceLab's 'train' extra in the environment voicelab runs from",
        )
    _ensure_import_paths(list(runtime.import_paths))
    _quiet_third_party()
    with _keep_root_logging():
        try:
            module = importlib.import_module("cosyvoice.cli.cosyvoice")
        except ModuleNotFoundError as e:
            raise VendorError(
                f"upstream CosyVoice does not import from {runtime.root}: {e}",
                "run: voicelab vendor sync cosyvoice (it also fetches Matcha-TTS), "
                "or pip install the missing package",
            ) from e
    module.tqdm = _no_bar  # inference_sft's per-call bar
    cls = getattr(module, "CosyVoice3", None)
    if cls is None:
        raise VendorError(
            f"the upstream checkout at {runtime.root} has no CosyVoice3 class (too old)",
            "run: voicelab vendor sync cosyvoice",
        )
    return cls


def _no_bar(iterable: Any, *args: Any, **kwargs: Any) -> Any:
    return iterable


# Deprecations upstream triggers on current torch/transformers; nothing a user can change.
_NOISE = (
    r".*torch\.cuda\.amp\.autocast.*",
    r".*torch\.nn\.utils\.weight_norm.*",
    r".*past_key_values.*",
)


def quiet_pkg_resources() -> None:
    """pyworld (imported by upstream's frontend and data pipeline) imports pkg_resources, which
    setuptools >= 67 answers with a UserWarning on every say/audition/train: not the user's to
    fix (doctor checks that pkg_resources exists at all)."""
    warnings.filterwarnings("ignore", message=r".*pkg_resources is deprecated.*")


def _quiet_third_party() -> None:
    if os.environ.get("VOICELAB_VERBOSE_UPSTREAM"):
        return
    quiet_pkg_resources()
    for pattern in _NOISE:
        warnings.filterwarnings("ignore", message=pattern, category=FutureWarning)
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # checked by the caller; nothing to quiet
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def reset_stream_state(cosyvoice: Any) -> None:
    """Undo upstream's per-instance streaming hop growth before a new streamed utterance."""
    model = getattr(cosyvoice, "model", None)
    if model is not None and hasattr(model, "token_hop_len"):
        model.token_hop_len = STREAM_TOKEN_HOP_LEN
