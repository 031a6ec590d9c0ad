"""Tiny ONNX stand-ins for CosyVoice 3's ``campplus.onnx`` and ``speech_tokenizer_v3.onnx``.

Neither real model ships in a registry package, so tests, the demo and ``doctor`` use these:
same inputs and outputs (addressed by position, as upstream does), a few kilobytes, deterministic.

- ``write_campplus``: float32 ``(B, T, 80)`` kaldi fbank -> float32 ``(B, 192)``: a projection,
  ``tanh``, a mean over time, a projection. The non-linearity matters: a plain mean of
  mean-normalized (CMN) features is zero for everybody, so distinct speakers would collapse.
- ``write_speech_tokenizer``: float32 ``(B, 128, T)`` Whisper log-mel + int32 ``(B,)`` lengths ->
  int64 ``(B, T // 4)`` ids in ``[0, 6561)``: a stride-4 convolution to 8 channels, each rounded
  and clipped to {0, 1, 2}, combined base 3 (3**8 = 6561, CosyVoice 3's FSQ vocabulary); ids past
  ``length // 4`` are 0, as a batched tokenizer's padding would be.

Built with the ``onnx`` helper API (the ``test`` extra); no torch.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from voicelab.fsutil import atomic_path

OPSET = 17
IR_VERSION = 8  # loadable by every onnxruntime VoiceLab supports (>= 1.18)
EMBED_DIM = 192
FBANK_BINS = 80
MEL_BINS = 128
TOKEN_STRIDE = 4
FSQ_CHANNELS = 8
VOCAB = 3**FSQ_CHANNELS  # 6561


def _onnx():  # type: ignore[no-untyped-def]
    try:
        import onnx
    except ImportError as e:  # pragma: no cover - the test extra has it
        raise ImportError("the tiny ONNX stand-ins need the onnx package: pip install onnx") from e
    return onnx


def _save(model: object, path: str | os.PathLike[str]) -> Path:
    onnx = _onnx()
    onnx.checker.check_model(model)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return Path(path)


def campplus_model(seed: int = 0, hidden: int = 64) -> object:
    """The campplus stand-in as an in-memory ``ModelProto``."""
    onnx = _onnx()
    h, tp = onnx.helper, onnx.TensorProto
    rng = np.random.RandomState(seed)
    w1 = (rng.randn(FBANK_BINS, hidden) / np.sqrt(FBANK_BINS) * 0.5).astype(np.float32)
    b1 = (rng.randn(hidden) * 0.1).astype(np.float32)
    w2 = (rng.randn(hidden, EMBED_DIM) / np.sqrt(hidden) * 4.0).astype(np.float32)
    inits = [
        onnx.numpy_helper.from_array(w1, "w1"),
        onnx.numpy_helper.from_array(b1, "b1"),
        onnx.numpy_helper.from_array(w2, "w2"),
    ]
    nodes = [
        h.make_node("MatMul", ["input", "w1"], ["proj"]),
        h.make_node("Add", ["proj", "b1"], ["proj_b"]),
        h.make_node("Tanh", ["proj_b"], ["act"]),
        h.make_node("ReduceMean", ["act"], ["pooled"], axes=[1], keepdims=0),
        h.make_node("MatMul", ["pooled", "w2"], ["output"]),
    ]
    graph = h.make_graph(
        nodes,
        "campplus_tiny",
        [h.make_tensor_value_info("input", tp.FLOAT, ["B", "T", FBANK_BINS])],
        [h.make_tensor_value_info("output", tp.FLOAT, ["B", EMBED_DIM])],
        inits,
    )
    return h.make_model(
        graph,
        opset_imports=[h.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="voicelab-tiny",
    )


def speech_tokenizer_model(seed: int = 0) -> object:
    """The speech tokenizer stand-in as an in-memory ``ModelProto``."""
    onnx = _onnx()
    h, tp = onnx.helper, onnx.TensorProto
    rng = np.random.RandomState(seed + 1000)
    # Scaled so that log-mel input (roughly [-1.5, 1.5]) spreads over all three levels.
    w = rng.randn(FSQ_CHANNELS, MEL_BINS, TOKEN_STRIDE) / np.sqrt(MEL_BINS * TOKEN_STRIDE) * 3.0
    b = rng.randn(FSQ_CHANNELS) * 0.3
    base = (3.0 ** np.arange(FSQ_CHANNELS)).reshape(1, FSQ_CHANNELS, 1)
    inits = [
        onnx.numpy_helper.from_array(w.astype(np.float32), "conv_w"),
        onnx.numpy_helper.from_array(b.astype(np.float32), "conv_b"),
        onnx.numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        onnx.numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
        onnx.numpy_helper.from_array(np.array(2.0, np.float32), "hi"),
        onnx.numpy_helper.from_array(base.astype(np.float32), "base3"),
        onnx.numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        onnx.numpy_helper.from_array(np.array(0, np.int64), "zero_i"),
        onnx.numpy_helper.from_array(np.array(1, np.int64), "one_i"),
        onnx.numpy_helper.from_array(np.array(TOKEN_STRIDE, np.int64), "stride_i"),
    ]
    nodes = [
        h.make_node("Conv", ["feats", "conv_w", "conv_b"], ["conv"], strides=[TOKEN_STRIDE]),
        h.make_node("Add", ["conv", "one"], ["shifted"]),
        h.make_node("Round", ["shifted"], ["rounded"]),
        h.make_node("Clip", ["rounded", "lo", "hi"], ["levels"]),  # (B, 8, T/4) in {0,1,2}
        h.make_node("Mul", ["levels", "base3"], ["weighted"]),
        h.make_node("ReduceSum", ["weighted", "axis1"], ["summed"], keepdims=0),  # (B, T/4)
        h.make_node("Cast", ["summed"], ["ids"], to=tp.INT64),
        # mask positions past each row's length // 4 (a batched tokenizer's padding)
        h.make_node("Shape", ["ids"], ["ids_shape"]),
        h.make_node("Gather", ["ids_shape", "one_i"], ["n_tok"], axis=0),
        h.make_node("Range", ["zero_i", "n_tok", "one_i"], ["pos"]),
        h.make_node("Cast", ["feats_length"], ["len64"], to=tp.INT64),
        h.make_node("Div", ["len64", "stride_i"], ["tok_len"]),
        h.make_node("Unsqueeze", ["tok_len", "axis1"], ["tok_len_col"]),
        h.make_node("Less", ["pos", "tok_len_col"], ["valid"]),
        h.make_node("Where", ["valid", "ids", "zero_i"], ["indices"]),
    ]
    graph = h.make_graph(
        nodes,
        "speech_tokenizer_v3_tiny",
        [
            h.make_tensor_value_info("feats", tp.FLOAT, ["B", MEL_BINS, "T"]),
            h.make_tensor_value_info("feats_length", tp.INT32, ["B"]),
        ],
        [h.make_tensor_value_info("indices", tp.INT64, ["B", "T4"])],
        inits,
    )
    return h.make_model(
        graph,
        opset_imports=[h.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="voicelab-tiny",
    )


def write_campplus(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write the campplus stand-in: float32 (B, T, 80) -> float32 (B, 192)."""
    return _save(campplus_model(seed), path)


def write_speech_tokenizer(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write the speech tokenizer stand-in: (B, 128, T) float32 + (B,) int32 -> int64 (B, T//4)."""
    return _save(speech_tokenizer_model(seed), path)


def write_all(onnx_dir: str | os.PathLike[str], seed: int = 0) -> dict[str, Path]:
    """Both stand-ins under upstream's file names (``campplus.onnx``,
    ``speech_tokenizer_v3.onnx`` and its ``.batch`` twin, which upstream's online path loads)."""
    d = Path(onnx_dir)
    return {
        "campplus": write_campplus(d / "campplus.onnx", seed),
        "speech_tokenizer": write_speech_tokenizer(d / "speech_tokenizer_v3.onnx", seed),
        "speech_tokenizer_batch": write_speech_tokenizer(
            d / "speech_tokenizer_v3.batch.onnx", seed
        ),
    }
