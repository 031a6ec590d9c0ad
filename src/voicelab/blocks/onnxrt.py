"""ONNX Runtime sessions: one factory, explicit options, a provider that actually works.

"Listed" is not "works": ``get_available_providers()`` names CUDA whenever onnxruntime-gpu is
installed, even when the CUDA or cuDNN libraries it needs are missing. We build the session with
the provider we want and check which providers the session really got; a CUDA session that fails
to build or to run falls back to the CPU and says so.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicelab.errors import EnvironmentProblem

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover - core dependency
        raise EnvironmentProblem(
            "onnxruntime is not installed", "pip install onnxruntime (or onnxruntime-gpu)"
        ) from e
    return onnxruntime


def force_cpu() -> bool:
    """The notes' ``COSYVOICE_ORT_FORCE_CPU=1`` (also ``VOICELAB_ORT_FORCE_CPU``)."""
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes")
        for v in ("COSYVOICE_ORT_FORCE_CPU", "VOICELAB_ORT_FORCE_CPU")
    )


@dataclass
class Session:
    """An InferenceSession plus the provider it really runs on."""

    session: Any
    provider: str
    note: str = ""

    def run(self, feeds: dict[str, Any]) -> list[Any]:
        return self.session.run(None, feeds)

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]


def _options(threads: int) -> Any:
    ort = _ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = max(1, threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


def create_session(
    model: str | os.PathLike[str] | bytes,
    device: str = "auto",
    threads: int = 1,
    device_id: int = 0,
) -> Session:
    """Open ``model`` on ``device`` (``auto``, ``cpu`` or ``cuda``).

    ``auto`` takes CUDA when it is present and works, else the CPU; ``cuda`` falls back to the
    CPU with a warning when CUDA cannot be used; the force-CPU variables win over both.
    """
    ort = _ort()
    src = model if isinstance(model, bytes) else str(model)
    if not isinstance(model, bytes) and not Path(model).is_file():
        raise EnvironmentProblem(
            f"ONNX model not found: {model}", "run: voicelab download cosyvoice3"
        )
    want_cuda = device in ("auto", "cuda") and not force_cpu()
    note = ""
    if device == "cuda" and force_cpu():
        note = "CUDA asked for, but COSYVOICE_ORT_FORCE_CPU is set: using the CPU"
    if want_cuda and CUDA in ort.get_available_providers():
        try:
            sess = ort.InferenceSession(
                src,
                sess_options=_options(threads),
                providers=[(CUDA, {"device_id": device_id}), CPU],
            )
            if sess.get_providers()[0] == CUDA:
                return Session(sess, CUDA)
            note = "onnxruntime lists CUDA but cannot load it (CUDA/cuDNN libs?): using the CPU"
        except Exception as e:  # any failure to build a CUDA session means: use the CPU
            note = f"onnxruntime CUDA session failed ({type(e).__name__}): using the CPU"
    elif device == "cuda" and not note:
        note = "CUDA asked for, but this onnxruntime has no CUDA provider: using the CPU"
    if note:
        log.warning(note)
    sess = ort.InferenceSession(src, sess_options=_options(threads), providers=[CPU])
    return Session(sess, CPU, note)


def tiny_probe_model() -> bytes:
    """A one-node ONNX model (y = x + x) built from raw protobuf bytes, so probing providers
    needs neither the ``onnx`` package nor a file."""
    return _TINY_ADD_MODEL


def probe_providers(providers: list[str] | None = None) -> dict[str, str]:
    """For each provider (default: those onnxruntime lists), try a real session on a tiny model:
    {provider: "ok" | what went wrong}."""
    import numpy as np

    ort = _ort()
    result: dict[str, str] = {}
    for prov in providers or ort.get_available_providers():
        try:
            sess = ort.InferenceSession(tiny_probe_model(), providers=[prov])
            got = sess.get_providers()
            if prov not in got:
                result[prov] = f"listed but not loadable (session fell back to {got[0]})"
                continue
            out = sess.run(None, {"x": np.ones((1, 2), dtype=np.float32)})[0]
            result[prov] = "ok" if float(out.sum()) == 4.0 else "ran but gave a wrong result"
        except Exception as e:
            result[prov] = f"failed: {str(e).splitlines()[0][:160]}"
    return result


def _build_tiny_add_model() -> bytes:
    """Serialize ModelProto{ir 8, opset 13, graph: Add(x, x) -> y, x/y float[1,2]} by hand."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            b = n & 0x7F
            n >>= 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def field(num: int, payload: bytes) -> bytes:  # length-delimited
        return varint((num << 3) | 2) + varint(len(payload)) + payload

    def vint(num: int, value: int) -> bytes:
        return varint(num << 3) + varint(value)

    def value_info(name: str) -> bytes:
        dims = b"".join(field(1, vint(1, d)) for d in (1, 2))  # Dimension{dim_value}
        tensor_type = vint(1, 1) + field(2, dims)  # elem_type FLOAT, shape
        return field(1, name.encode()) + field(2, field(1, tensor_type))

    node = field(1, b"x") + field(1, b"x") + field(2, b"y") + field(4, b"Add")
    graph = (
        field(1, node)
        + field(2, b"probe")
        + field(11, value_info("x"))
        + field(12, value_info("y"))
    )
    opset = field(1, b"") + vint(2, 13)
    return vint(1, 8) + field(7, graph) + field(8, opset)


_TINY_ADD_MODEL = _build_tiny_add_model()
