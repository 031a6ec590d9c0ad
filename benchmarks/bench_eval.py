"""Time per candidate of ``voicelab eval`` with a full-size random CosyVoice 3 model (GPU).

Builds, under ``--work``:

- the full-size random base model of ``bench_train.py`` (Qwen2-0.5B-sized llm, upstream's flow),
  plus the ``hift.pt`` of the same yaml and the speech tokenizer stand-in (zero-shot needs it);
- a workspace with synthetic train/dev splits (tone-and-noise clips with random English text,
  no espeak needed) and two "trained" epochs: the base llm scaled by small seeded factors;

then runs the real ``run_eval`` over 3 candidates (epoch_0, epoch_1, the base model zero-shot;
the real recordings are scored too) on ``--lines`` lines, and reports per candidate the
synthesis seconds, plus the scoring seconds (ASR + speaker model + DNSMOS over every take) and
the total wall time divided by the candidates. Random weights rarely emit the stop token, so
each take runs to upstream's maximum length: an upper bound. Results go to ``--out`` as JSON.

Run (GPU machine, vendor + the ``train`` and ``eval`` extras + the test extra's Whisper base)::

    python benchmarks/bench_eval.py --lines 20 --out bench_eval.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def add_inference_files(base: Path) -> None:
    """hift.pt of upstream's yaml and the speech tokenizer stand-in (bench_train skips them)."""
    import torch
    from hyperpyyaml import load_hyperpyyaml

    from voicelab.testing import tiny_onnx

    if not (base / "hift.pt").is_file():
        text = (base / "cosyvoice3.yaml").read_text("utf-8")
        overrides = {"qwen_pretrain_path": str(base / "CosyVoice-BlankEN"), "llm": None}
        overrides["flow"] = None
        configs = load_hyperpyyaml(text, overrides=overrides)
        torch.save(configs["hift"].state_dict(), base / "hift.pt")
    if not (base / "speech_tokenizer_v3.onnx").is_file():
        tiny_onnx.write_speech_tokenizer(base / "speech_tokenizer_v3.onnx")


def synthetic_clip(path: Path, seconds: float, rng: random.Random) -> None:
    import numpy as np
    import soundfile as sf

    sr = 24000
    t = np.arange(int(seconds * sr)) / sr
    f0 = rng.uniform(110, 220)
    voice = 0.2 * np.sin(2 * np.pi * f0 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    noise = np.random.default_rng(rng.randrange(1 << 30)).normal(0, 0.01, len(t))
    sf.write(path, (voice + noise).astype("float32"), sr)


def build_workspace(work: Path, base: Path, lines: int) -> Any:
    import torch
    from bench_train import WORDS

    from voicelab.blocks.kaldi import write_kaldi_dir
    from voicelab.blocks.records import Utt
    from voicelab.workspace import Workspace

    root = work / "ws"
    if (root / "voicelab.toml").is_file():
        return Workspace.open(root)
    ws = Workspace.init(root, "spk1")
    ws.set_option("model", "base_dir", str(base))
    ws.save()
    rng = random.Random(0)
    clips = work / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 12), ("dev", lines)):
        utts = []
        for i in range(n):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 14))).capitalize()
            wav = clips / f"{split}_{i:03d}.wav"
            synthetic_clip(wav, rng.uniform(3.0, 6.0), rng)
            utts.append(Utt(f"spk1_{split}_{i:03d}", wav, text + ".", "spk1"))
        write_kaldi_dir(ws.split_dir(split), utts)
    emb = torch.randn(192, generator=torch.Generator().manual_seed(3)).tolist()
    torch.save({"spk1": emb}, ws.split_dir("train") / "spk2embedding.pt")
    base_llm = torch.load(base / "llm.pt", map_location="cpu", weights_only=True)
    run = ws.exp_dir("llm")
    run.mkdir(parents=True, exist_ok=True)
    for e in range(2):
        g = torch.Generator().manual_seed(e)
        sd = {
            k: v * (1 + 0.01 * torch.randn(v.shape, generator=g)).to(v.dtype)
            if v.is_floating_point()
            else v
            for k, v in base_llm.items()
        }
        torch.save({**sd, "epoch": e, "step": 10 * (e + 1)}, run / f"epoch_{e}_whole.pt")
        (run / f"epoch_{e}_whole.yaml").write_text(f"epoch: {e}\nstep: {10 * (e + 1)}\n")
    return ws


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/voicelab-bench-eval"))
    ap.add_argument("--lines", type=int, default=20)
    ap.add_argument("--asr-model", default=None, help="Whisper model (default: registry base)")
    ap.add_argument("--fp16", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="the tiny model (a CPU smoke test)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from bench_train import build_base

    from voicelab.evaluation.run import EvalOptions, run_eval
    from voicelab.vendor import cosyvoice_runtime

    rt = cosyvoice_runtime()
    # build_base instantiates upstream's classes in this process.
    sys.path[:0] = [str(p) for p in rt.import_paths]
    t0 = time.perf_counter()
    if args.tiny:
        from voicelab.upstream.tinymodel import build_tiny_model

        base = build_tiny_model(args.work / "tiny" / "Fun-CosyVoice3-0.5B", rt)
    else:
        base = build_base(args.work / "Fun-CosyVoice3-0.5B", Path(rt.root))
        add_inference_files(base)
    ws = build_workspace(args.work / ("tiny" if args.tiny else ""), base, args.lines)
    print(f"built in {time.perf_counter() - t0:.0f} s", flush=True)
    asr = args.asr_model
    if asr is None:
        from voicelab.testing.whisper import whisper_base_dir

        asr = str(whisper_base_dir(args.work / "cache"))
    run = time.strftime("bench-%Y%m%d-%H%M%S")
    opts = EvalOptions(epochs="all", lines=args.lines, run=run, asr_model=asr, fp16=args.fp16)
    start = time.perf_counter()
    res = run_eval(ws, opts)
    wall = time.perf_counter() - start
    import torch

    synthesized = {k: round(v, 2) for k, v in res.synth_seconds.items()}
    n = max(1, len(synthesized))
    out = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "lines": res.lines,
        "candidates": list(synthesized),
        "synth_seconds_per_candidate": synthesized,
        "score_seconds_all": round(res.score_seconds, 2),
        "score_seconds_per_candidate": round(res.score_seconds / (n + 1), 2),  # + real
        "wall_seconds": round(wall, 2),
        "wall_seconds_per_candidate": round(wall / n, 2),
        "target_seconds_per_candidate": 60,
        "rows": res.rows,
    }
    text = json.dumps(out, indent=2, default=str)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
