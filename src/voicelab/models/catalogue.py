"""The catalogue: which models VoiceLab fetches, from which repos, with which files, sizes and
pinned hashes (Fun-CosyVoice3-0.5B, ttsfrd, Whisper, FunASR)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from voicelab.errors import ModelError

COSYVOICE3_REPO = "FunAudioLLM/Fun-CosyVoice3-0.5B-2512"

TTSFRD_REPOS = {"modelscope": "iic/CosyVoice-ttsfrd", "huggingface": "FunAudioLLM/CosyVoice-ttsfrd"}

TTSFRD_DIR_NAME = "CosyVoice-ttsfrd"

MANIFEST_FILE = ".voicelab-manifest.json"

VOICE_PROVENANCE = "voicelab.json"

SOURCES = ("modelscope", "huggingface")

DEFAULT_SOURCE = "modelscope"

HF_DEFAULT_ENDPOINT = "https://huggingface.co"

MS_DEFAULT_ENDPOINT = "https://modelscope.cn"

HF_MIRROR = "https://hf-mirror.com"

# Files below this size that the hub lists are fetched too (README, configuration.json): cheap,
# and they keep the dir looking like upstream's own download.
SMALL_EXTRA_BYTES = 1 << 20

# Never downloaded into a model dir, never counted as part of it.
SKIP_REMOTE = {".gitattributes"}

INTERNAL_DIRS = {".cache", "._____temp", ".msc", ".mdl", ".mv"}


@dataclass(frozen=True)
class FileSpec:
    """One file a model dir should hold. ``size``/hashes are None where unknown."""

    path: str
    size: int | None
    sha256: str | None = None
    git_sha1: str | None = None  # the hub's git blob id, for small non-LFS files
    required: bool = True

    @property
    def digest(self) -> tuple[str, str] | None:
        if self.sha256:
            return "sha256", self.sha256
        if self.git_sha1:
            return "git_sha1", self.git_sha1
        return None


def _spec(path: str, size: int | None, required: bool = True) -> FileSpec:
    return FileSpec(path, size, required=required)


# The Hugging Face revision VoiceLab downloads unless --revision says otherwise (ModelScope's
# commit ids differ; there the pinned hashes below are what holds the files to this revision).
COSYVOICE3_HF_REVISION = "29e01c4e8d000f4bcd70751be16fa94bf3d85a18"

# sha256 of the files that are code-like: the YAML that hyperpyyaml instantiates in process and
# the JSON/tokenizer files transformers reads. A mirror serving anything else is refused; the
# hub's listing never replaces these. Source: public records of this revision by independent
# projects pinning it (cosyvoice3.yaml in two of them, agreeing); not re-derived from the hub
# by VoiceLab (no network here): see docs/models.md.
COSYVOICE3_PINNED_SHA256 = {
    "cosyvoice3.yaml": "f5a6b2c6f05139d0f18861a1fe506f751e787026b77c05f7e8fef9f8a4405965",
    "CosyVoice-BlankEN/config.json": (
        "168aa1bd401abc3bc262ba15ba4e499627a8b4e006e9d050b47c22de20660185"
    ),
    "CosyVoice-BlankEN/generation_config.json": (
        "e558847a8b4402616f1273797b015104dc266fe4b520056fca88823ba8f8ebe6"
    ),
    "CosyVoice-BlankEN/merges.txt": (
        "ac8ff86a72bee70828fbc1119bc4398c6f3a9a6e490d7b0dbe917be025478bd0"
    ),
    "CosyVoice-BlankEN/tokenizer_config.json": (
        "482bd979881423375ca5414e4e0d94cd7c5349dbb17fffd46b4d36d71e62a1bc"
    ),
    "CosyVoice-BlankEN/vocab.json": (
        "ca10d7e9fb3ed18575dd1e277a2579c16d108e32f27439684afa0e10b1440910"
    ),
}

# Which files are code-like (pinned whenever a catalogue gives their sha256).
PINNED_FILES = frozenset(COSYVOICE3_PINNED_SHA256)


def _pinned(path: str, size: int) -> FileSpec:
    return FileSpec(path, size, sha256=COSYVOICE3_PINNED_SHA256[path])


# Sizes of HF revision COSYVOICE3_HF_REVISION (see docs/models.md). The hub's own listing (sizes
# and hashes) replaces these whenever it can be fetched, except the pinned hashes.
COSYVOICE3_FILES: dict[str, FileSpec] = {
    s.path: s
    for s in (
        _pinned("cosyvoice3.yaml", 6_934),
        _spec("llm.pt", 2_024_669_519),
        _spec("flow.pt", 1_329_116_148),
        _spec("hift.pt", 83_202_622),
        _spec("campplus.onnx", 28_303_423),
        _spec("speech_tokenizer_v3.onnx", 969_451_503),
        _spec("speech_tokenizer_v3.batch.onnx", 969_451_579),
        _pinned("CosyVoice-BlankEN/config.json", 659),
        _pinned("CosyVoice-BlankEN/generation_config.json", 242),
        _pinned("CosyVoice-BlankEN/merges.txt", 1_402_109),
        _spec("CosyVoice-BlankEN/model.safetensors", 988_097_824),
        _pinned("CosyVoice-BlankEN/tokenizer_config.json", 1_287),
        _pinned("CosyVoice-BlankEN/vocab.json", 2_776_833),
        _spec("llm.rl.pt", 2_024_682_701, required=False),
        _spec("flow.decoder.estimator.fp32.onnx", 1_326_216_933, required=False),
    )
}

COSYVOICE3_REQUIRED = tuple(p for p, s in COSYVOICE3_FILES.items() if s.required)

# What fine-tuning replaces in a voice dir: their sizes differ from the base model's.
TRAINABLE_FILES = ("llm.pt", "flow.pt", "hift.pt")

WHISPER_PATTERNS = [
    "config.json", "preprocessor_config.json", "model.bin", "tokenizer.json", "vocabulary.*"
]  # fmt: skip

# faster-whisper's own table (faster_whisper.utils._MODELS, 1.2). Importing faster_whisper
# loads CTranslate2 and PyAV (seconds), so it is consulted only for names not listed here.
WHISPER_REPOS = {
    **{
        size: f"Systran/faster-whisper-{size}"
        for size in (
            "tiny.en",
            "tiny",
            "base.en",
            "base",
            "small.en",
            "small",
            "medium.en",
            "medium",
            "large-v1",
            "large-v2",
            "large-v3",
        )
    },
    "large": "Systran/faster-whisper-large-v3",
    "distil-large-v2": "Systran/faster-distil-whisper-large-v2",
    "distil-medium.en": "Systran/faster-distil-whisper-medium.en",
    "distil-small.en": "Systran/faster-distil-whisper-small.en",
    "distil-large-v3": "Systran/faster-distil-whisper-large-v3",
    "distil-large-v3.5": "distil-whisper/distil-large-v3.5-ct2",
    "large-v3-turbo": "mobiuslabsgmbh/faster-whisper-large-v3-turbo",
    "turbo": "mobiuslabsgmbh/faster-whisper-large-v3-turbo",
}

# FunASR's names (funasr/download/name_maps_from_hub.py) -> ModelScope ids.
FUNASR_MODELS = {
    "paraformer-zh": "iic/speech_seaco_paraformer_large_asr_nat-zh-cn-16k-common-vocab8404-pytorch",
    "sensevoice": "iic/SenseVoiceSmall",
    "fsmn-vad": "iic/speech_fsmn_vad_zh-cn-16k-common-pytorch",
    "ct-punc": "iic/punc_ct-transformer_cn-en-common-vocab471067-large",
}

FUNASR_DEFAULT = ("paraformer-zh", "fsmn-vad", "ct-punc")

FUNASR_REQUIRED = ("model.pt", "config.yaml", "configuration.json")


def pins_of(catalogue: Mapping[str, FileSpec]) -> dict[str, str]:
    """The code-like files a catalogue pins, with their sha256."""
    return {r: s.sha256 for r, s in catalogue.items() if r in PINNED_FILES and s.sha256}


def pin_error(rel: str, got: str, want: str, where: str, local: bool = False) -> ModelError:
    return ModelError(
        f"{rel} from {where} is not the file VoiceLab pins "
        f"(sha256 {got[:16]}..., expected {want[:16]}...): refused, nothing was loaded",
        "that folder holds a modified copy: copy the model from a trusted source"
        if local
        else "the mirror serves a modified file: use another --source or --endpoint",
    )


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


human_bytes = human
