"""An exported voice loads in upstream's ``CosyVoice3(model_dir)`` and speaks (``inference_sft``).

The base is the tiny CosyVoice 3 model built from the vendor's classes; the "trained" checkpoints
are its llm state dict scaled by small seeded factors (zero rows stay zero, so the tiny LLM still
runs to its maximum length) plus upstream's ``epoch``/``step`` keys, with yamls as upstream's
``save_model`` writes them. Upstream runs in a child process with the vendor's environment and
without the ``onnx_path`` variable (its modules read it at import).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from speech_corpus import tiny_model_dir
from voicelab.stages.export import ExportOptions, run_export
from voicelab.workspace import Workspace

pytestmark = pytest.mark.vendor

CHILD = r"""
import json, sys
import torch
from cosyvoice.cli.cosyvoice import CosyVoice3

model_dir, speaker = sys.argv[1], sys.argv[2]
m = CosyVoice3(model_dir)
ours = torch.load(model_dir + "/llm.pt", weights_only=True)
loaded = m.model.llm.state_dict()
differ = [k for k, v in ours.items() if not torch.equal(loaded[k].cpu(), v)]
text = "You are a helpful assistant.<|endofprompt|>hello world"
out = [o["tts_speech"] for o in m.inference_sft(text, speaker, stream=False)]
samples = sum(int(o.shape[-1]) for o in out)
print("RESULT " + json.dumps({"spks": m.list_available_spks(), "llm_differ": differ,
                              "samples": samples, "sr": m.sample_rate}))
"""


def _scaled(v: torch.Tensor, epoch: int) -> torch.Tensor:
    if not v.is_floating_point():
        return v
    # Seeded by shape, not key: tied weights (Qwen2's embed_tokens / lm_head) stay identical,
    # as training keeps them.
    g = torch.Generator().manual_seed(epoch * 100_003 + sum(v.shape) * 31 + v.dim())
    return v * (1 + 0.01 * torch.randn(v.shape, generator=g)).to(v.dtype)


def _fake_run(ws: Workspace, base_llm: Path, epochs: int = 2) -> None:
    base = torch.load(base_llm, weights_only=True)
    run = ws.exp_dir("llm")
    run.mkdir(parents=True, exist_ok=True)
    for e in range(epochs):
        sd = {k: _scaled(v, e) for k, v in base.items()}
        step = 20 * (e + 1)
        torch.save({**sd, "epoch": e, "step": step}, run / f"epoch_{e}_whole.pt")
        info = {
            "epoch": e,
            "step": step,
            "tag": "CV",
            "loss_dict": {"loss": 5.0 - e, "acc": 0.1 * e},
            "grad_norm": torch.tensor(1.0),
        }
        (run / f"epoch_{e}_whole.yaml").write_text(yaml.dump(info), encoding="utf-8")


def test_exported_voice_loads_in_upstream(tmp_path: Path) -> None:
    from voicelab.upstream.tinymodel import build_tiny_model
    from voicelab.vendor import cosyvoice_runtime

    rt = cosyvoice_runtime()
    base = build_tiny_model(tiny_model_dir(), rt)
    ws = Workspace.init(tmp_path / "ws", "spk1")
    ws.set_option("model", "base_dir", str(base))
    ws.split_dir("train").mkdir(parents=True)
    emb = torch.randn(192, generator=torch.Generator().manual_seed(3)).tolist()
    torch.save({"spk1": emb}, ws.split_dir("train") / "spk2embedding.pt")
    _fake_run(ws, base / "llm.pt")

    res = run_export(ws, ExportOptions())
    assert [c.name for c in res.llm] == ["epoch_0_whole", "epoch_1_whole"]
    assert res.verify is not None and res.verify.ok
    vd = res.voice_dir
    assert (vd / "flow.pt").stat().st_ino == (base / "flow.pt").stat().st_ino

    env = rt.env()
    env.pop("onnx_path", None)
    env["COSYVOICE_ORT_FORCE_CPU"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(vd), "spk1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    got = json.loads(line[len("RESULT ") :])
    print(got)
    assert "spk1" in got["spks"]
    assert got["llm_differ"] == [], "upstream did not load our averaged llm.pt"
    assert got["samples"] > 0 and got["sr"] == 24000
