"""Training throughput of ``voicelab train`` with full-size CosyVoice 3 models (GPU).

Builds, under ``--work``:

- a *full-size* randomly initialized CosyVoice 3 base model: upstream's example
  ``cosyvoice3.yaml`` at its own dims, a random Qwen2-0.5B (hidden 896, 24 layers) as
  ``CosyVoice-BlankEN`` with the Qwen2 tokenizer of :mod:`voicelab.tinymodel`, and the ``llm`` /
  ``flow`` state dicts of the instantiated yaml;
- a synthetic packed dataset of ``--minutes`` of audio (noise clips of 3-12 s with random speech
  tokens, text, speaker embeddings), sharded as ``voicelab pack`` would;

then runs the real ``voicelab train llm`` and ``voicelab train flow`` (upstream's trainer through
the launcher) at the default batch settings for ``--epochs`` epochs, and reports, from
``train_log.jsonl``, per model and epoch: ``epoch_seconds_incl_cv``, the time from the epoch's
start record (upstream's first log line of the epoch) to its CV record, which upstream logs
*after* the CV pass over the dev set, so the CV pass is included (1.7-2.0 s in the H100 runs)
and the checkpoint written after the CV line is not; speech tokens per second (25 per second of
audio) and audio seconds per second of training audio over that same time (so slightly
understated: the dev set's audio is not counted); the last epoch is the one to quote (no
warm-up); and the peak GPU memory seen by nvidia-smi in MiB (1 GiB = 1024 MiB). Results go to
``--out`` as JSON and to stdout.

Run (GPU machine, vendor and the ``train`` extra importable)::

    python benchmarks/bench_train.py --minutes 20 --epochs 2 --out bench_train.json
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

QWEN_05B: dict[str, Any] = {
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
}
WORDS = (
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "small",
    "birds",
    "sing",
    "in",
    "tall",
    "green",
    "trees",
    "near",
    "an",
    "old",
    "stone",
    "bridge",
    "across",
    "quiet",
    "river",
    "before",
    "evening",
    "falls",
)


def build_base(dest: Path, vendor_root: Path) -> Path:
    """A full-size random CosyVoice 3 model dir (llm, flow, tokenizer, campplus stand-in)."""
    import torch
    from hyperpyyaml import load_hyperpyyaml
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from voicelab import tinymodel
    from voicelab.testing import tiny_onnx
    from voicelab.upstream.train_config import UPSTREAM_YAML

    if (dest / "flow.pt").is_file():
        return dest
    blank = dest / "CosyVoice-BlankEN"
    tinymodel.write_tokenizer(blank, tinymodel._qwen_tiktoken_file())
    torch.manual_seed(0)
    cfg = Qwen2Config(**{**tinymodel.QWEN_CONFIG, **QWEN_05B})
    Qwen2ForCausalLM(cfg).save_pretrained(str(blank), safe_serialization=True)
    text = (vendor_root / UPSTREAM_YAML).read_text("utf-8")
    (dest / "cosyvoice3.yaml").write_text(text, "utf-8")
    overrides = {"qwen_pretrain_path": str(blank), "hifigan": None, "hift": None}
    configs = load_hyperpyyaml(text, overrides=overrides)
    for name in ("llm", "flow"):
        torch.save(configs[name].state_dict(), dest / f"{name}.pt")
        n = sum(p.numel() for p in configs[name].parameters())
        print(f"base {name}: {n / 1e6:.1f} M parameters", flush=True)
    tiny_onnx.write_campplus(dest / "campplus.onnx")
    return dest


def build_data(ws: Any, minutes: float, shards: int, seed: int = 0) -> dict[str, Any]:
    """Synthetic packed train/dev sets: ``minutes`` of train audio, ~5% of that as dev."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import soundfile as sf

    from voicelab.pack import parquet_schema
    from voicelab.workspace import DEFAULT_INSTRUCT

    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    spk = nrng.standard_normal(192).tolist()
    stats: dict[str, Any] = {}
    for split, total, n_shards in (("train", minutes * 60, shards), ("dev", minutes * 3, 2)):
        utts, secs = [], 0.0
        while secs < total:
            sec = rng.uniform(3, 12)
            secs += sec
            utts.append(sec)
        out = ws.parquet_dir(split)
        out.mkdir(parents=True, exist_ok=True)
        paths, tokens = [], 0
        for s in range(n_shards):
            rows = []
            for i in range(s, len(utts), n_shards):
                n = int(utts[i] * 24000)
                buf = io.BytesIO()
                sf.write(
                    buf,
                    (0.05 * nrng.standard_normal(n)).astype("float32"),
                    24000,
                    format="WAV",
                    subtype="PCM_16",
                )
                n_tok = math.ceil(n / 960)
                tokens += n_tok
                words = max(1, int(utts[i] * 2.5))
                rows.append(
                    {
                        "utt": f"{split}_{i:06d}",
                        "audio_data": buf.getvalue(),
                        "wav": f"/synthetic/{split}_{i:06d}.wav",
                        "text": " ".join(rng.choice(WORDS) for _ in range(words)),
                        "spk": "bench",
                        "utt_embedding": nrng.standard_normal(192).tolist(),
                        "spk_embedding": spk,
                        "speech_token": nrng.integers(0, 6561, n_tok).tolist(),
                        "instruct": DEFAULT_INSTRUCT,
                    }
                )
            p = out / f"parquet_{s:09d}.tar"
            pq.write_table(pa.Table.from_pylist(rows, schema=parquet_schema(True)), p)
            paths.append(p)
        ws.data_list(split).write_text("".join(f"{p}\n" for p in paths), "utf-8")
        stats[split] = {
            "utts": len(utts),
            "seconds": round(secs, 1),
            "speech_tokens": tokens,
            "shards": n_shards,
        }
    return stats


class GpuMemory:
    """Peak ``memory.used`` of GPU 0 from nvidia-smi, sampled every second."""

    def __init__(self) -> None:
        self.peak_mib = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        exe = shutil.which("nvidia-smi")
        while exe and not self._stop.is_set():
            try:
                out = subprocess.run(
                    [exe, "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                    check=False,
                ).stdout.strip()
                self.peak_mib = max(self.peak_mib, int(out.splitlines()[0]))
            except (ValueError, IndexError, subprocess.SubprocessError, OSError):
                pass
            self._stop.wait(1.0)

    def __enter__(self) -> GpuMemory:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(timeout=5)


def epoch_figures(rows: list[dict[str, Any]], train_stats: dict[str, Any]) -> dict[str, Any]:
    """Seconds per epoch from its start record to its CV record (CV pass included, checkpoint
    writing not) and the training throughput over that time, per epoch."""
    starts = {r["epoch"]: r["time"] for r in rows if r.get("event") == "epoch"}
    cvs = {r["epoch"]: r["time"] for r in rows if r.get("tag") == "CV"}
    epochs = []
    for e in sorted(starts):
        if e in cvs:
            sec = cvs[e] - starts[e]
            epochs.append(
                {
                    "epoch": e,
                    "epoch_seconds_incl_cv": round(sec, 2),
                    "speech_tokens_per_s": round(train_stats["speech_tokens"] / sec, 1),
                    "audio_seconds_per_s": round(train_stats["seconds"] / sec, 2),
                }
            )
    return {"epochs": epochs, "last": epochs[-1] if epochs else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/voicelab-bench-train"))
    ap.add_argument("--minutes", type=float, default=20.0, help="train audio (synthetic)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--models", default="llm,flow")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from voicelab import train as tr
    from voicelab.upstream import train_config as tc
    from voicelab.vendor import cosyvoice_runtime
    from voicelab.workspace import Workspace

    vendor = cosyvoice_runtime()
    # build_base instantiates upstream's classes in this process.
    sys.path[:0] = [str(p) for p in vendor.import_paths]
    t0 = time.time()
    base = build_base(args.work / "base", vendor.root)
    ws = Workspace.init(args.work / "ws", "bench")
    ws.set_option("model", "base_dir", str(base))
    workers = 4  # voicelab train's default on a GPU
    stats = build_data(ws, args.minutes, shards=2 * workers)
    prep = time.time() - t0
    gpus = tr.query_gpus()
    report: dict[str, Any] = {
        "gpu": subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip(),
        "data": stats,
        "prepare_seconds": round(prep, 1),
        "models": {},
    }
    for model in args.models.split(","):
        opts = tr.TrainOptions(device="cuda", epochs=args.epochs, new=True)
        with GpuMemory() as mem:
            t = time.time()
            res = tr.run_train(ws, model, opts)
            wall = time.time() - t
        rows = tr.read_train_log(ws.exp_dir(model) / "train_log.jsonl")
        cfg = (ws.exp_dir(model) / "train_config.yaml").read_text("utf-8")
        frames = tc.get_value(tc.read_values(cfg), tc.MAX_FRAMES)
        report["models"][model] = {
            "wall_seconds": round(wall, 1),
            "max_frames_in_batch": frames,
            "amp": "--use_amp" in res.argv,
            "peak_gpu_mib": mem.peak_mib,
            "best_cv_loss": res.best_cv_loss,
            "default_frames_for_gpu": tr.default_batch_frames(
                model, tr.model_params(base / f"{model}.pt"), gpus[0].total if gpus else None
            ),
            **epoch_figures(rows, stats["train"]),
        }
        print(json.dumps({model: report["models"][model]}, indent=1), flush=True)
        shutil.rmtree(ws.exp_dir(model).with_name("torch_ddp.1"), ignore_errors=True)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text, "utf-8")


if __name__ == "__main__":
    os.environ.pop("onnx_path", None)
    sys.exit(main())
