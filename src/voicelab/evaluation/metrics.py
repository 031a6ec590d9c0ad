"""Scores of one utterance, as the seed-tts-eval / CV3-Eval protocols define them.

* intelligibility: CER (zh) or WER (en) of an ASR transcript against the text; both sides go
  through our text normalization (numbers, dates and symbols in words, simplified Chinese), then
  lower case without punctuation; jiwer computes the edit distance;
* speaker similarity: cosine of speaker embeddings (campplus.onnx of the base model by default;
  any :class:`SpeakerEncoder`, e.g. Resemblyzer's pretrained encoder);
* quality: DNSMOS P.835 (the ONNX models the ``speechmos`` package ships) and the duration
  ratio against a real recording of the same text.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from voicelab.errors import ConfigError, EnvironmentProblem, ModelError

log = logging.getLogger(__name__)

ASR_RATE = 16000
EVAL_HINT = "pip install 'voicelab[eval]'"
# Everything that is not a letter, digit, Han character or blank (unicode \w keeps Han).
_PUNCT = re.compile(r"[^\w\s]|_")
_SPACES = re.compile(r"\s+")


# ---- intelligibility ------------------------------------------------------------------------
def scoring_language(text: str) -> str:
    """``zh`` (scored by characters) or ``en`` (scored by words) for a reference text."""
    from voicelab.blocks.textnorm import detect_language

    return "zh" if detect_language(text) in ("zh", "ja", "ko") else "en"


def normalize_for_scoring(text: str, lang: str) -> str:
    """Text as the error rate compares it: normalized numbers, lower case, no punctuation;
    zh without blanks (CER counts characters), en words separated by one blank."""
    from voicelab.blocks.textnorm import normalize

    t = normalize(text, lang).lower().replace("'", "")
    t = _PUNCT.sub(" ", t)
    if lang == "zh":
        return _SPACES.sub("", t)
    return _SPACES.sub(" ", t).strip()


def _jiwer() -> Any:
    try:
        import jiwer
    except ImportError as e:
        raise EnvironmentProblem(f"jiwer is not installed ({e})", EVAL_HINT) from e
    return jiwer


def error_rate(reference: str, hypothesis: str, lang: str | None = None) -> float:
    """CER for zh, WER for en, after :func:`normalize_for_scoring`; NaN for an empty reference.

    Not capped at 1: a transcript full of insertions (a model that babbles) scores above 1.
    """
    lang = lang or scoring_language(reference)
    ref = normalize_for_scoring(reference, lang)
    hyp = normalize_for_scoring(hypothesis, lang)
    if not ref:
        return math.nan
    jiwer = _jiwer()
    if lang == "zh":
        return float(jiwer.cer(ref, hyp)) if hyp else 1.0
    return float(jiwer.wer(ref, hyp)) if hyp else 1.0


class Asr:
    """One ASR model for every line; the language is fixed per line (the text's language), so
    Whisper never guesses it from a bad take. FunASR Paraformer scores zh when asked for."""

    def __init__(
        self, model: str, device: str = "auto", funasr_zh: bool = False, beam_size: int = 5
    ) -> None:
        from voicelab.blocks.asr import AsrOptions, load_transcriber

        # No prompt: it would bias the transcript toward well-formed text.
        self._opts = AsrOptions(model=model, device=device, initial_prompt="", beam_size=beam_size)
        self._whisper = load_transcriber(self._opts)
        self._zh = None
        if funasr_zh:
            self._zh = load_transcriber(
                AsrOptions(backend="funasr", model="paraformer-zh", device=device, language="zh")
            )
        self.name = f"faster-whisper {Path(model).name}" + (" + paraformer-zh" if funasr_zh else "")

    def transcribe(self, audio16k: np.ndarray, lang: str) -> str:
        if lang == "zh" and self._zh is not None:
            return self._zh.transcribe(audio16k).text
        # The transcriber reads its options at each call: the language is set per line.
        self._whisper.opts = dataclasses.replace(self._opts, language=lang)
        return self._whisper.transcribe(audio16k).text


def check_installed(speaker_model: str = "campplus") -> None:
    """Fail before any slow synthesis when a scoring package is missing."""
    import importlib.util

    need = {"jiwer": "jiwer", "speechmos": "speechmos", "faster_whisper": "faster-whisper"}
    if speaker_model == "resemblyzer":
        need["resemblyzer"] = "resemblyzer"
    missing = [pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise EnvironmentProblem(
            f"voicelab eval needs {', '.join(missing)}, which is not installed",
            EVAL_HINT + (" and 'voicelab[asr]'" if "faster-whisper" in missing else ""),
        )


def funasr_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("funasr") is not None


# ---- speaker similarity ---------------------------------------------------------------------
class SpeakerEncoder(Protocol):
    name: str

    def embed(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """A unit-length speaker embedding of one utterance."""
        ...


def unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(unit(a), unit(b)))


def centroid(embeddings: list[np.ndarray]) -> np.ndarray:
    """The unit mean of unit embeddings: the speaker as a whole."""
    if not embeddings:
        raise ModelError("no embeddings to average into a speaker centroid", None)
    return unit(np.mean([unit(e) for e in embeddings], axis=0))


class CampplusEncoder:
    """CAM++ (``campplus.onnx``, the embedding CosyVoice itself uses) on kaldi fbank with CMN,
    the front end of :mod:`voicelab.stages.features`."""

    def __init__(self, path: Path, device: str = "auto") -> None:
        from voicelab.blocks.onnxrt import create_session

        if not path.is_file():
            raise ModelError(
                f"speaker model not found: {path}",
                "run: voicelab download cosyvoice3, or pass --speaker-model PATH.onnx",
            )
        self.session = create_session(path, device)
        self.name = f"campplus ({path.name})"

    def embed(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        from voicelab.blocks import fbank

        x16 = fbank.resample(np.asarray(audio, dtype=np.float32), sample_rate, ASR_RATE)
        feat = fbank.cmn(fbank.kaldi_fbank(x16))
        inp = self.session.session.get_inputs()[0].name
        out = self.session.run({inp: feat[None].astype(np.float32)})[0]
        return unit(np.asarray(out))


class ResemblyzerEncoder:
    """Resemblyzer's pretrained GE2E speaker encoder (a registry package with its weights)."""

    def __init__(self) -> None:
        try:
            from resemblyzer import VoiceEncoder
        except ImportError as e:
            raise EnvironmentProblem(f"resemblyzer is not installed ({e})", EVAL_HINT) from e
        self._enc = VoiceEncoder("cpu", verbose=False)
        self.name = "resemblyzer"

    def embed(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        from resemblyzer import preprocess_wav

        wav = preprocess_wav(np.asarray(audio, dtype=np.float32), source_sr=sample_rate)
        if len(wav) < 1600:  # its silence trimming left almost nothing: use the audio as is
            from voicelab.blocks import fbank

            wav = fbank.resample(np.asarray(audio, dtype=np.float32), sample_rate, 16000)
        return unit(self._enc.embed_utterance(wav))


def load_encoder(spec: str, base_model_dir: Path, device: str = "auto") -> SpeakerEncoder:
    """``campplus`` (the base model's campplus.onnx), ``resemblyzer``, or a path to an ONNX
    speaker model with campplus' interface."""
    if spec == "campplus":
        return CampplusEncoder(base_model_dir / "campplus.onnx", device)
    if spec == "resemblyzer":
        return ResemblyzerEncoder()
    if spec.endswith(".onnx"):
        from voicelab.paths import to_local_path

        return CampplusEncoder(to_local_path(spec), device)
    raise ConfigError(
        f"unknown speaker model {spec!r}", "use campplus, resemblyzer or a path to a .onnx file"
    )


# ---- quality --------------------------------------------------------------------------------
class Dnsmos:
    """DNSMOS P.835 (``sig``, ``bak``, ``ovrl``) and P.808 (``p808``) with the ONNX models and
    feature code of ``speechmos``, in sessions of our own: speechmos opens them without naming
    a provider, which onnxruntime-gpu refuses, and cannot use the GPU."""

    def __init__(self, device: str = "auto") -> None:
        try:
            from speechmos import dnsmos as _dnsmos
        except ImportError as e:
            raise EnvironmentProblem(f"speechmos is not installed ({e})", EVAL_HINT) from e
        from voicelab.blocks.onnxrt import create_session

        models = Path(_dnsmos.__file__).parent / "dnsmos_models"
        self._model = _dnsmos.DNSMOS.__new__(_dnsmos.DNSMOS)
        self._model.primary_model_path = str(models / "sig_bak_ovr.onnx")
        self._model.onnx_sess = create_session(models / "sig_bak_ovr.onnx", device).session
        self._model.p808_onnx_sess = create_session(models / "model_v8.onnx", device).session

    def __call__(self, audio16k: np.ndarray) -> dict[str, float]:
        x = np.clip(np.asarray(audio16k, dtype=np.float32), -1.0, 1.0)
        if len(x) < ASR_RATE // 10:
            return {"ovrl": math.nan, "sig": math.nan, "bak": math.nan, "p808": math.nan}
        r = self._model(x, ASR_RATE, False)
        return {
            "ovrl": float(r["ovrl_mos"]),
            "sig": float(r["sig_mos"]),
            "bak": float(r["bak_mos"]),
            "p808": float(r["p808_mos"]),
        }


_DNSMOS: Dnsmos | None = None


def dnsmos(audio16k: np.ndarray) -> dict[str, float]:
    """:class:`Dnsmos` on the CPU, loaded once."""
    global _DNSMOS
    if _DNSMOS is None:
        _DNSMOS = Dnsmos("cpu")
    return _DNSMOS(audio16k)


def duration_ratio(seconds: float, reference_seconds: float | None) -> float:
    """Synthesized over real duration of the same text (1.0 = same pace); NaN without one."""
    if not reference_seconds or reference_seconds <= 0:
        return math.nan
    return seconds / reference_seconds


def to_16k(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    from voicelab.blocks import fbank

    a = np.asarray(audio, dtype=np.float32)
    return a if sample_rate == ASR_RATE else fbank.resample(a, sample_rate, ASR_RATE)
