"""Files upstream derives from the weights and reuses when they exist: after new weights they
are stale and must go (upstream would load them silently)."""

from __future__ import annotations

# The flow's ONNX export; upstream's load_trt rebuilds the TensorRT plan from it.
FLOW_ONNX = "flow.decoder.estimator.fp32.onnx"


def is_stale(rel: str, new_flow: bool) -> bool:
    """Derived files upstream would silently reuse although they were made from the old weights:
    vLLM's export (``vllm/``), TensorRT ``*.plan`` files, and the flow's ONNX after a new flow."""
    first = rel.split("/", 1)[0]
    if first == "vllm" or rel.endswith(".plan"):
        return True
    return new_flow and rel == FLOW_ONNX
