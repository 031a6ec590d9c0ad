"""The two ONNX models (``campplus.onnx`` speaker embeddings, ``speech_tokenizer_v3`` tokens):
where they are, their identities, their sessions."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from voicelab.errors import EnvironmentProblem, ModelError
from voicelab.fsutil import hash_obj
from voicelab.paths import to_local_path
from voicelab.stages.features.cache import FEATURES_VERSION
from voicelab.workspace import Workspace

log = logging.getLogger(__name__)


CAMPPLUS = "campplus.onnx"

TOKENIZER = "speech_tokenizer_v3.onnx"

TOKENIZER_BATCH = "speech_tokenizer_v3.batch.onnx"  # used when batching, if present


def model_identity(path: Path) -> str:
    """Name, size and mtime: a re-downloaded or replaced model invalidates the cache."""
    st = path.stat()
    return f"{path.name}:{st.st_size}:{st.st_mtime_ns}"


class Models:
    """The two ONNX sessions, shared by the worker threads (``InferenceSession.run`` is
    thread-safe and releases the GIL)."""

    def __init__(
        self,
        campplus: Path,
        tokenizer: Path,
        device: str = "auto",
        intra_threads: int = 1,
        token_batch: int | None = None,
    ) -> None:
        from voicelab.blocks.onnxrt import create_session

        for p in (campplus, tokenizer):
            if not p.is_file():
                raise ModelError(
                    f"ONNX model not found: {p}",
                    "run: voicelab download cosyvoice3 (or pass --onnx-dir DIR)",
                )
        self.campplus = create_session(campplus, device, threads=intra_threads)
        # Batches pay off on a GPU only; the small campplus session shows whether CUDA works
        # before the ~1 GB tokenizer is loaded.
        on_cuda = self.campplus.provider == "CUDAExecutionProvider"
        self.token_batch = max(1, token_batch or (16 if on_cuda else 1))
        batch_model = tokenizer.with_name(TOKENIZER_BATCH)
        if self.token_batch > 1 and batch_model.is_file():
            # upstream's batch export, which its online training path feeds padded batches
            tokenizer = batch_model
        self.campplus_path, self.tokenizer_path = campplus, tokenizer
        self.tokenizer = create_session(tokenizer, device, threads=intra_threads)
        self.notes = [n for n in (self.campplus.note, self.tokenizer.note) if n]
        self._lock = threading.Lock()
        self._threads = intra_threads
        shape = self.tokenizer.session.get_inputs()[0].shape
        if isinstance(shape[0], int) and shape[0] == 1:  # exported with a fixed batch of 1
            self.token_batch = 1
        self.key = hash_obj([model_identity(campplus), model_identity(tokenizer), FEATURES_VERSION])

    def _run(self, which: str, feeds: dict[str, np.ndarray]) -> list[Any]:
        """Run a session; a CUDA session that fails at run time (out of memory, a cuDNN
        library that only loads on first use) is rebuilt on the CPU once, with a warning."""
        sess = getattr(self, which)
        try:
            return sess.run(feeds)
        except Exception as e:
            if sess.provider != "CUDAExecutionProvider":
                raise
            with self._lock:
                if getattr(self, which) is sess:  # another worker may have switched already
                    from voicelab.blocks.onnxrt import create_session

                    path = self.campplus_path if which == "campplus" else self.tokenizer_path
                    note = f"{path.name} failed on CUDA ({type(e).__name__}): using the CPU"
                    log.warning(note)
                    self.notes.append(note)
                    setattr(self, which, create_session(path, "cpu", threads=self._threads))
            return getattr(self, which).run(feeds)

    @property
    def provider(self) -> str:
        return self.tokenizer.provider

    def describe(self) -> str:
        p = {self.campplus.provider, self.tokenizer.provider}
        name = "CUDA" if p == {"CUDAExecutionProvider"} else "CPU" if len(p) == 1 else "mixed"
        return f"onnxruntime on {name} ({', '.join(sorted(p))})"

    def embed(self, feat: np.ndarray) -> list[float]:
        inp = self.campplus.session.get_inputs()[0].name
        out = self._run("campplus", {inp: feat[None].astype(np.float32, copy=False)})[0]
        vec = np.asarray(out, dtype=np.float32).reshape(-1)
        if vec.shape[0] != 192:
            raise ModelError(
                f"{self.campplus_path.name} gave {vec.shape[0]} values, expected 192",
                "check the model file (voicelab download cosyvoice3)",
            )
        return vec.tolist()

    def tokenize(self, mels: Sequence[np.ndarray]) -> list[list[int]]:
        """Tokens for a batch of log-mels ``(128, T_i)``: zero-padded to the longest, lengths
        passed, each row cut to ``T_i // 4``."""
        inputs = self.tokenizer.session.get_inputs()
        t_max = max(m.shape[1] for m in mels)
        batch = np.zeros((len(mels), mels[0].shape[0], t_max), dtype=np.float32)
        for i, m in enumerate(mels):
            batch[i, :, : m.shape[1]] = m
        lengths = np.array([m.shape[1] for m in mels], dtype=np.int32)
        out = np.asarray(
            self._run("tokenizer", {inputs[0].name: batch, inputs[1].name: lengths})[0]
        )
        out = out.reshape(len(mels), -1)
        result = []
        for i, m in enumerate(mels):
            n = m.shape[1] // 4
            if out.shape[1] < n:
                raise ModelError(
                    f"{self.tokenizer_path.name} gave {out.shape[1]} tokens for {m.shape[1]} "
                    f"frames, expected {n}",
                    "check the model file (voicelab download cosyvoice3)",
                )
            result.append([int(t) for t in out[i, :n]])
        return result


def import_torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise EnvironmentProblem(
            "torch is needed to write the .pt files upstream reads",
            "pip install 'voicelab[features]'",
        ) from e
    return torch


def model_paths(ws: Workspace, onnx_dir: str | os.PathLike[str] | None) -> tuple[Path, Path]:
    d = to_local_path(onnx_dir) if onnx_dir else ws.base_model_dir
    return d / CAMPPLUS, d / TOKENIZER
