"""The files of a CosyVoice 3 model dir that upstream opens: one list for export, say and the
tiny model (cosyvoice/cli/cosyvoice.py, frontend.py, model.py at the pinned commit)."""

from __future__ import annotations

#: What ``CosyVoice3(model_dir)`` opens, besides the CosyVoice-BlankEN folder.
INFERENCE_FILES = (
    "cosyvoice3.yaml",
    "llm.pt",
    "flow.pt",
    "hift.pt",
    "campplus.onnx",
    "speech_tokenizer_v3.onnx",
)
#: Qwen2 config, tokenizer and weights (``from_pretrained`` and the text tokenizer).
BLANKEN = "CosyVoice-BlankEN"
BLANKEN_FILES = (
    "config.json",
    "model.safetensors",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
)
#: Read only by training's online features (``--onnx_path``).
TRAINING_FILES = ("speech_tokenizer_v3.batch.onnx",)
SPK2INFO = "spk2info.pt"


def model_dir_files(training: bool = False) -> tuple[str, ...]:
    """Every file (relative path) a complete model dir holds for inference (and training)."""
    blank = tuple(f"{BLANKEN}/{f}" for f in BLANKEN_FILES)
    return INFERENCE_FILES + (TRAINING_FILES if training else ()) + blank
