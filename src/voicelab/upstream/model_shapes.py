"""The state-dict keys and tensor shapes a model dir's own ``cosyvoice3.yaml`` defines.

``voicelab export --check`` compares a voice's ``llm.pt``/``flow.pt``/``hift.pt`` with its base
model's; without a base at hand it needs another reference, and the only one that cannot drift
is the YAML upstream builds the modules from. The modules are instantiated with upstream's own
classes on PyTorch's ``meta`` device (shapes, no memory, no weights read), in a child process
with the vendor on ``sys.path`` (upstream's imports have side effects, as in
:mod:`voicelab.upstream.tinymodel`). Qwen2 is built from the model dir's ``CosyVoice-BlankEN``
config instead of its 1 GB of weights.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voicelab.errors import ModelError

if TYPE_CHECKING:
    from voicelab.vendor import VendorRuntime

MODULES = ("llm", "flow", "hift")
TIMEOUT_S = 600


def yaml_shapes(model_dir: Path, vendor: VendorRuntime) -> dict[str, dict[str, list[int]]]:
    """{module: {key: shape}} for ``model_dir/cosyvoice3.yaml``; ModelError when it cannot be
    instantiated (which is itself a broken model dir)."""
    cmd = [sys.executable, "-m", "voicelab.upstream.model_shapes", str(model_dir)]
    env = vendor.env()
    env.pop("onnx_path", None)
    try:
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise ModelError(f"reading {model_dir / 'cosyvoice3.yaml'} took over {TIMEOUT_S} s") from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines() or ["?"]
        raise ModelError(
            f"{model_dir / 'cosyvoice3.yaml'} does not build upstream's modules: {tail[-1][:200]}",
            "the model dir is damaged: export it again",
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _shapes(model_dir: Path) -> dict[str, dict[str, list[int]]]:
    import torch
    import transformers
    from hyperpyyaml import load_hyperpyyaml

    blank = model_dir / "CosyVoice-BlankEN"

    def from_config(path: str, *args: Any, **kwargs: Any) -> Any:
        return transformers.Qwen2ForCausalLM(transformers.AutoConfig.from_pretrained(path))

    transformers.Qwen2ForCausalLM.from_pretrained = from_config  # type: ignore[method-assign]
    text = (model_dir / "cosyvoice3.yaml").read_text(encoding="utf-8")
    with torch.device("meta"):
        configs = load_hyperpyyaml(
            text, overrides={"qwen_pretrain_path": str(blank), "hifigan": None}
        )
        out = {}
        for name in MODULES:
            out[name] = {k: list(v.shape) for k, v in configs[name].state_dict().items()}
    return out


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        raise SystemExit("usage: python -m voicelab.upstream.model_shapes MODEL_DIR")
    print(json.dumps(_shapes(Path(args[0]))))


if __name__ == "__main__":
    main()
