"""Transcription backends for ``voicelab prepare``: faster-whisper (default) and FunASR.

One call transcribes one segment that prepare's VAD has already cut (float32 mono 16 kHz, at most
about 30 s). Results keep Whisper's confidence figures so QC can flag doubtful segments.

faster-whisper specifics, from the user's notes and upstream experience:

* ``condition_on_previous_text=False``: large-v3 loops and hallucinates when fed its own output;
* ``vad_filter=False``: segments are already cut at pauses;
* an initial prompt written in simplified Chinese with punctuation makes Whisper punctuate
  Mandarin and prefer simplified characters. It is used only for zh (given, or detected on the
  segment first); English is punctuated well without one, and a prompt can be echoed back;
* models named by size are fetched through ``huggingface_hub`` which honours ``HF_ENDPOINT``,
  ``HF_HOME``, ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE``. A cached model that fails to load (the
  notes' "Cannot load the target vocabulary" after an interrupted download) has its cache folder
  deleted and is downloaded once more. A local model folder is never deleted;
* ``device="auto"`` picks CUDA when CTranslate2 sees a GPU and cuDNN 9 can be loaded, and falls
  back to CPU with one warning when the GPU load fails.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from voicelab.errors import ConfigError, EnvironmentProblem, ModelError

log = logging.getLogger(__name__)

BACKENDS = ("faster-whisper", "funasr")
SAMPLE_RATE = 16000
DEFAULT_PROMPTS: dict[str, str] = {
    "zh": "以下是普通话的句子，使用简体中文和标点符号。",
}
# Bump when the way results are produced changes, so prepare's per-segment cache is redone.
_RESULT_VERSION = 1


@dataclass
class AsrOptions:
    """What to transcribe with. ``cache_key()`` lists the fields that change results."""

    backend: str = "faster-whisper"
    """``faster-whisper`` or ``funasr``."""
    model: str = "large-v3"
    """Whisper size/name, a HF repo id, or a local CTranslate2 model folder; for funasr
    ``paraformer-zh``, ``sensevoice`` or a local folder (a Whisper size means paraformer-zh)."""
    device: str = "auto"
    """``auto``, ``cpu`` or ``cuda``."""
    compute_type: str = "auto"
    """``auto`` = int8_float16 on CUDA (float16 where int8 is unsupported), int8 on CPU."""
    language: str | None = None
    """ISO code such as ``zh`` or ``en``; None detects it per segment."""
    initial_prompt: str | None = None
    """None = the default for the language (zh only); ``""`` = no prompt."""
    beam_size: int = 5
    download_root: str | None = None
    """Cache folder for downloaded models; None = the Hugging Face cache (``HF_HUB_CACHE``)."""

    def cache_key(self) -> dict[str, Any]:
        """The options that change transcripts: device and download folder do not."""
        return {
            "v": _RESULT_VERSION,
            "backend": self.backend,
            "model": self.model,
            "compute_type": self.compute_type,
            "language": self.language,
            # None stands for the built-in defaults: key on their text so editing them redoes ASR.
            "initial_prompt": self.initial_prompt
            if self.initial_prompt is not None
            else {"default": DEFAULT_PROMPTS},
            "beam_size": self.beam_size,
        }


@dataclass
class AsrResult:
    text: str
    language: str
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    compression_ratio: float | None = None
    language_probability: float | None = None


class Transcriber(Protocol):
    device: str

    def transcribe(self, audio: np.ndarray) -> AsrResult:
        """Transcribe one segment: float32 mono 16 kHz."""
        ...


def load_transcriber(opts: AsrOptions) -> Transcriber:
    """Load the backend and model named by ``opts``; raises a VoiceLabError on user problems."""
    if opts.backend == "faster-whisper":
        return WhisperTranscriber(opts)
    if opts.backend == "funasr":
        return FunAsrTranscriber(opts)
    raise ConfigError(
        f"unknown ASR backend {opts.backend!r}",
        f"use one of {', '.join(BACKENDS)} (or import transcripts)",
    )


def _as_mono16k(audio: np.ndarray) -> np.ndarray:
    a = np.asarray(audio, dtype=np.float32)
    if a.ndim != 1:
        raise ValueError(f"ASR expects mono audio as a 1-D array, got shape {a.shape}")
    return np.ascontiguousarray(a)


def default_prompt(language: str | None) -> str | None:
    return DEFAULT_PROMPTS.get(language or "")


# ---------------------------------------------------------------------------------------------
# faster-whisper

_ASR_HINT = "pip install 'voicelab[asr]'"
_CUDNN_HINT = (
    "install cuDNN 9 for CUDA 12 (e.g. pip install 'nvidia-cudnn-cu12==9.*' and put its lib "
    "folder on LD_LIBRARY_PATH), or use --device cpu"
)
_CUBLAS_HINT = (
    "CTranslate2's wheels are built for CUDA 12: pip install 'nvidia-cublas-cu12' and put its "
    "lib folder on LD_LIBRARY_PATH (a CUDA 13 torch does not bring it), or use --device cpu"
)


def cuda_failure_hint(error: str) -> str:
    """What to do when the Whisper model does not run on CUDA: the missing library decides
    (CUDA 12's cuBLAS is missing where only a CUDA 13 torch is installed, measured on such a
    machine; cuDNN 9 otherwise)."""
    return _CUBLAS_HINT if "libcublas" in error else _CUDNN_HINT


def _import_faster_whisper() -> Any:
    try:
        import faster_whisper
    except ImportError as e:
        raise EnvironmentProblem(f"faster-whisper is not installed ({e})", _ASR_HINT) from e
    return faster_whisper


def _cudnn_loadable() -> bool:
    """Whether the cuDNN 9 libraries CTranslate2 opens at its first convolution can be loaded.

    CTranslate2 loads them lazily and aborts the whole process when they are missing, so this
    is checked before a model goes to the GPU. The wheels' copies (``nvidia-cudnn-cu12``) are
    preloaded by full path, which makes them visible to CTranslate2's later lookup by name.
    """
    if not sys.platform.startswith("linux"):
        return True  # Windows/macOS builds find cuDNN their own way; trust the load test.
    names = ("libcudnn_ops.so.9", "libcudnn_cnn.so.9")
    try:
        for name in names:
            ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
        return True
    except OSError:
        pass
    spec = importlib.util.find_spec("nvidia.cudnn") if importlib.util.find_spec("nvidia") else None
    if spec is None or not spec.submodule_search_locations:
        return False
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    try:
        for name in ("libcudnn.so.9", "libcudnn_graph.so.9", *names):
            if (lib / name).exists():
                ctypes.CDLL(str(lib / name), mode=ctypes.RTLD_GLOBAL)
        for name in names:
            ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
        return True
    except OSError:
        return False


def _cuda_device_count() -> int:
    import ctranslate2

    try:
        return int(ctranslate2.get_cuda_device_count())
    except RuntimeError:  # a broken driver reports as an error, which means no usable GPU
        return 0


def _resolve_device(requested: str) -> str:
    if requested not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"unknown device {requested!r}", "use auto, cpu or cuda")
    if requested == "cpu":
        return "cpu"
    if _cuda_device_count() == 0:
        if requested == "cuda":
            raise EnvironmentProblem(
                "--device cuda was asked for but CTranslate2 sees no CUDA GPU",
                "check nvidia-smi and that ctranslate2 is a CUDA build, or use --device cpu",
            )
        return "cpu"
    if not _cudnn_loadable():
        if requested == "cuda":
            raise EnvironmentProblem("cuDNN 9 cannot be loaded for CTranslate2", _CUDNN_HINT)
        log.warning("CUDA GPU found but cuDNN 9 cannot be loaded: transcribing on CPU (slow)")
        return "cpu"
    return "cuda"


def _resolve_compute_type(requested: str, device: str) -> str:
    if requested != "auto":
        return requested
    if device == "cpu":
        return "int8"
    import ctranslate2

    try:
        supported = set(ctranslate2.get_supported_compute_types("cuda"))
    except (RuntimeError, ValueError):
        supported = set()
    for ct in ("int8_float16", "float16", "int8_float32", "float32"):
        if ct in supported:
            return ct
    return "default"


def _cpu_compute_type(ct: str) -> str:
    return "int8" if ct == "auto" or ct.startswith("int8") else "default"


_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _is_local(model: str) -> bool:
    p = Path(model).expanduser()
    if p.is_dir():
        return True
    if _REPO_ID.match(model) and not model.startswith("."):
        return False
    return os.sep in model or model.startswith((".", "~")) or (os.altsep or "\0") in model


def _hf_cache_folder(snapshot: Path) -> Path | None:
    """The ``models--org--name`` folder that holds a snapshot, or None if it is not one."""
    snapshot = snapshot.resolve()
    repo = snapshot.parent.parent
    if snapshot.parent.name == "snapshots" and repo.name.startswith("models--"):
        return repo
    return None


class _Unloadable(Exception):
    """The model files could not be loaded on any device."""


class WhisperTranscriber:
    """faster-whisper on one model; see the module docstring for the choices made."""

    def __init__(self, opts: AsrOptions) -> None:
        fw = _import_faster_whisper()
        self.opts = opts
        self._fw = fw
        if opts.beam_size < 1:
            raise ConfigError(f"beam size must be at least 1, got {opts.beam_size}")
        self.device = _resolve_device(opts.device)
        self.compute_type = _resolve_compute_type(opts.compute_type, self.device)
        if _is_local(opts.model):
            self.model_path = Path(opts.model).expanduser()
            if not self.model_path.is_dir():
                raise ModelError(
                    f"Whisper model folder not found: {self.model_path}",
                    "give a model size (large-v3, base...) or a CTranslate2 model folder",
                )
            try:
                self._model = self._open(self.model_path)
            except _Unloadable as e:
                raise ModelError(
                    f"cannot load the Whisper model in {self.model_path}: {e}",
                    "the folder needs a complete CTranslate2 model: model.bin, config.json, "
                    "tokenizer.json, vocabulary.*",
                ) from None
            return
        self.model_path = self._download()
        try:
            self._model = self._open(self.model_path)
        except _Unloadable as e:
            self._model = self._repair(e)

    # -- model files

    def _download(self) -> Path:
        opts = self.opts
        try:
            from faster_whisper.utils import download_model

            return Path(download_model(opts.model, cache_dir=opts.download_root))
        except ValueError as e:
            if "Invalid model size" in str(e):
                raise ConfigError(
                    f"unknown Whisper model {opts.model!r}",
                    "use a size such as large-v3, medium, base, a HF repo id or a model folder",
                ) from None
            raise ModelError(*_download_failure(opts.model, e)) from None
        except Exception as e:  # huggingface_hub raises many network/offline types: one meaning
            raise ModelError(*_download_failure(opts.model, e)) from None

    def _repair(self, first: _Unloadable) -> Any:
        """Delete the cached model's folder (HF cache only) and download it once more."""
        folder = _hf_cache_folder(self.model_path)
        if folder is None:
            raise ModelError(
                f"cannot load the Whisper model {self.opts.model} from {self.model_path}: {first}",
                "delete that folder and run again",
            )
        log.warning(
            "the cached Whisper model %s does not load (%s): deleting %s and downloading it again",
            self.opts.model,
            first,
            folder,
        )
        shutil.rmtree(folder, ignore_errors=True)
        try:
            self.model_path = self._download()
        except ModelError as e:
            raise ModelError(
                f"the cached Whisper model {self.opts.model} was corrupt ({first}); its folder "
                f"{folder} was deleted and downloading it again failed: {e.message}",
                e.hint,
            ) from None
        try:
            return self._open(self.model_path)
        except _Unloadable as e:
            raise ModelError(
                f"the Whisper model {self.opts.model} still does not load after a fresh "
                f"download into {_hf_cache_folder(self.model_path) or self.model_path}: {e}",
                "delete that folder, check free disk space and the HF_ENDPOINT mirror, or pass "
                "a local model folder",
            ) from None

    def _load(self, path: Path, device: str, compute_type: str) -> Any:
        threads = 0  # CTranslate2's default: 4 threads, or OMP_NUM_THREADS
        if device == "cpu" and not os.environ.get("OMP_NUM_THREADS"):
            # One thread per usable core: 4 threads on a 2-core machine only contend.
            threads = min(_usable_cores(), 8)
        return self._fw.WhisperModel(
            str(path), device=device, compute_type=compute_type, cpu_threads=threads
        )

    def _open(self, path: Path) -> Any:
        """Load on the chosen device; tell a device failure from unreadable model files.

        A failure on CUDA is retried on CPU: if the CPU load works, the GPU set-up is at fault
        (fall back under ``auto``, an error under ``cuda``); if it fails too, the files are.
        """
        try:
            model = self._load(path, self.device, self.compute_type)
            if self.device == "cuda":
                # cuBLAS/cuDNN are opened at the first run, not at load: try a tiny one now.
                segments, _ = model.transcribe(
                    np.zeros(SAMPLE_RATE, np.float32), language="en", beam_size=1
                )
                list(segments)
            return model
        except (RuntimeError, ValueError, OSError) as e:
            first = _first_line(e)
            if self.device != "cuda":
                raise _Unloadable(first) from e
        ct = _cpu_compute_type(self.opts.compute_type)
        try:
            model = self._load(path, "cpu", ct)
        except (RuntimeError, ValueError, OSError) as e:
            raise _Unloadable(_first_line(e)) from e
        if self.opts.device == "cuda":
            raise EnvironmentProblem(
                f"the Whisper model does not run on CUDA: {first}", cuda_failure_hint(first)
            )
        log.warning(
            "the Whisper model does not run on CUDA (%s): transcribing on CPU (to use the GPU: %s)",
            first,
            cuda_failure_hint(first),
        )
        self.device, self.compute_type = "cpu", ct
        return model

    # -- transcription

    def detect_language(self, audio: np.ndarray) -> tuple[str, float]:
        lang, prob, _ = self._model.detect_language(audio)
        return lang, float(prob)

    def transcribe(self, audio: np.ndarray) -> AsrResult:
        audio = _as_mono16k(audio)
        opts = self.opts
        language, lang_prob = opts.language, None
        if audio.size < SAMPLE_RATE // 50:  # under 20 ms: nothing Whisper can read
            return AsrResult(text="", language=language or "", no_speech_prob=1.0)
        if language is None and self._model.model.is_multilingual:
            # Detect first so the prompt can follow the language (transcribe would detect on
            # the same 30 s window anyway, so this costs no extra pass of the decoder).
            language, lang_prob = self.detect_language(audio)
        prompt = (
            opts.initial_prompt if opts.initial_prompt is not None else default_prompt(language)
        )
        segments, info = self._model.transcribe(
            audio,
            language=language,
            beam_size=opts.beam_size,
            initial_prompt=prompt or None,
            condition_on_previous_text=False,
            vad_filter=False,
            without_timestamps=True,
        )
        segs = list(segments)
        text = "".join(s.text for s in segs).strip()
        weights = [max(float(s.end) - float(s.start), 0.0) for s in segs]
        if not any(weights):
            weights = [1.0] * len(segs)

        def avg(name: str) -> float | None:
            if not segs:
                return None
            vals = [float(getattr(s, name)) for s in segs]
            return float(np.average(vals, weights=weights))

        return AsrResult(
            text=text,
            language=language or info.language,
            avg_logprob=avg("avg_logprob"),
            no_speech_prob=avg("no_speech_prob"),
            compression_ratio=avg("compression_ratio"),
            language_probability=lang_prob,
        )


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _first_line(e: BaseException) -> str:
    """The first sentence of an exception's message: enough for a one-line error."""
    text = (str(e).strip() or type(e).__name__).splitlines()[0]
    head, dot, _ = text.partition(". ")
    return (head + dot.strip() if dot else text)[:240]


def _download_failure(model: str, e: BaseException) -> tuple[str, str]:
    from huggingface_hub import constants

    offline = constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else False
    where = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    if offline:
        return (
            f"the Whisper model {model} is not in the Hugging Face cache and HF_HUB_OFFLINE is "
            f"set ({type(e).__name__}: {_first_line(e)})",
            "unset HF_HUB_OFFLINE to download it, or pass a local model folder",
        )
    return (
        f"cannot download the Whisper model {model} from {where} "
        f"({type(e).__name__}: {_first_line(e)})",
        "check the network, set HF_ENDPOINT to a mirror (e.g. https://hf-mirror.com), "
        "or pass a local model folder",
    )


# ---------------------------------------------------------------------------------------------
# FunASR (optional extra; not exercised by the test suite: funasr pulls torch and big models)

_FUNASR_MODELS = {
    "paraformer-zh": "paraformer-zh",
    "paraformer": "paraformer-zh",
    "sensevoice": "iic/SenseVoiceSmall",
    "sensevoicesmall": "iic/SenseVoiceSmall",
    "iic/sensevoicesmall": "iic/SenseVoiceSmall",
}
_SENSEVOICE_TAG = re.compile(r"<\|[^|<>]*\|>")
_SENSEVOICE_LANGS = {"zh", "en", "yue", "ja", "ko"}


def strip_sensevoice_tags(text: str) -> tuple[str, str | None]:
    """Remove SenseVoice's ``<|zh|><|NEUTRAL|><|Speech|><|withitn|>`` tags; return the language."""
    lang = next((t for t in re.findall(r"<\|([^|<>]*)\|>", text) if t in _SENSEVOICE_LANGS), None)
    return _SENSEVOICE_TAG.sub("", text).strip(), lang


def _funasr_model_name(model: str) -> str:
    if Path(model).expanduser().is_dir():
        return str(Path(model).expanduser())
    fw_names = {
        "tiny",
        "base",
        "small",
        "medium",
        "large",
        "large-v1",
        "large-v2",
        "large-v3",
        "large-v3-turbo",
        "turbo",
    }
    if model in fw_names:
        return "paraformer-zh"
    return _FUNASR_MODELS.get(model.lower(), model)


class FunAsrTranscriber:
    """FunASR Paraformer (with the ct-punc punctuation model) or SenseVoice.

    Neither gives Whisper's confidence figures: those fields stay None.
    """

    def __init__(self, opts: AsrOptions) -> None:
        try:
            from funasr import AutoModel
        except ImportError as e:
            raise EnvironmentProblem(
                f"the funasr backend needs the funasr package, which is not installed ({e})",
                "pip install 'voicelab[funasr]' (it brings torch), or use --asr faster-whisper",
            ) from e
        self.opts = opts
        self.name = _funasr_model_name(opts.model)
        self.sensevoice = "sensevoice" in self.name.lower()
        self.device = self._device(opts.device)
        kwargs: dict[str, Any] = {"model": self.name, "device": self.device, "disable_update": True}
        if not self.sensevoice:
            # Paraformer writes no punctuation; ct-punc restores it (TTS text needs it).
            kwargs["punc_model"] = "ct-punc"
        try:
            self._model = AutoModel(**kwargs)
        except Exception as e:  # funasr/modelscope raise assorted types for a failed fetch or load
            raise ModelError(
                f"cannot load the FunASR model {self.name}: {_first_line(e)}",
                "check the network or MODELSCOPE_CACHE, or pass a local model folder",
            ) from None

    @staticmethod
    def _device(requested: str) -> str:
        if requested not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"unknown device {requested!r}", "use auto, cpu or cuda")
        if requested == "cpu":
            return "cpu"
        import torch

        if torch.cuda.is_available():
            return "cuda:0"
        if requested == "cuda":
            raise EnvironmentProblem("--device cuda was asked for but torch sees no CUDA GPU")
        return "cpu"

    def transcribe(self, audio: np.ndarray) -> AsrResult:
        from voicelab.blocks.textnorm import detect_language

        audio = _as_mono16k(audio)
        kwargs: dict[str, Any] = {"input": audio, "batch_size_s": 300}
        if self.sensevoice:
            lang = self.opts.language if self.opts.language in _SENSEVOICE_LANGS else "auto"
            kwargs.update(language=lang, use_itn=True, cache={})
        res = self._model.generate(**kwargs)
        raw = " ".join(str(r.get("text", "")) for r in res or []).strip()
        text, tag_lang = strip_sensevoice_tags(raw)
        language = self.opts.language or tag_lang or detect_language(text)
        return AsrResult(text=text, language=language if language != "und" else "")
