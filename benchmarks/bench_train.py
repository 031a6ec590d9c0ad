"""Training throughput of ``voicelab train`` with full-size CosyVoice 3 models (GPU).

Builds, under ``--work``:

- a *full-size* randomly initialized CosyVoice 3 base model: upstream's example
  ``cosyvoice3.yaml`` at its own dims, a random Qwen2-0.5B (hidden 896, 24 layers) as
  ``CosyVoice-BlankEN`` with the Qwen2 tokenizer of :mod:`voicelab.upstream.tinymodel`, and the
  ``llm`` / ``flow`` state dicts of the instantiated yaml;
- a synthetic packed dataset of ``--minutes`` of audio (noise clips of 3-12 s, uniform, or with
  ``--lengths spread`` 1-20 s lognormal around 5 s as real recordings are; random speech tokens,
  text, speaker embeddings), sharded as ``voicelab pack`` would;

then runs the real ``voicelab train llm`` and ``voicelab train flow`` with BOTH trainers
(``--trainer voicelab``, VoiceLab's engine, and ``--trainer upstream``, upstream's train.py
through the launcher) on the same data, GPU and YAML (so the same tokens per optimizer step) for
``--epochs`` epochs, and reports per model and trainer: seconds per epoch (train, CV, save; the
engine logs its split, upstream's is read from its log times), speech tokens per second of
training (25 per second of audio) per epoch (the first against the later ones), the peak GPU
memory and the GPU utilization (nvidia-smi, sampled every 0.5 s while that run trains), and the
speed-up of the engine over upstream. Results go to ``--out`` as JSON and to stdout.

Notes (one H200, bf16, 15 min of synthetic audio, default 2500 frames x accum 2):

- first build (checkpoints written by a background *thread*): llm 5,751 vs 3,446 speech
  tokens/s (1.67x), flow 5,868 vs 3,498 (1.68x); GPU utilization 15-23 %. ``torch.save`` holds
  the GIL while it writes each tensor, so a 6 GB checkpoint (weights + Adam moments) stalled the
  host-bound loop for seconds (a 2 s gap mid-epoch, visible in the tokens_s of the log lines);
- checkpoints written by a *forked* process: llm 9,810 vs 3,696 (2.65x), no gap; the
  training thread still pays ~5 s per epoch to copy 6 GB to the CPU (``save_seconds``);
- packed passes (this round): the ``accum_grad`` batches of an optimizer step go through the
  llm as one pass, unpadded in rows of 1024 positions with a block-diagonal causal mask
  (upstream's per-batch loss normalization kept, so the gradient is the same): 17,408 vs
  8,113 tokens/s for the padded per-batch path measured in the same run (2.15x), 5.02x and
  5.56x upstream on two H200 machines; GPU utilization 34-42 %; peak memory 13.3 GiB (two
  batches' activations at once; the memory planner keeps one batch per pass below the full
  mode);
- a warm-up step per distinct packed shape before the first epoch (RNG and gradients put back):
  first epoch 1.65-1.71x the later ones on 15 min of audio (2.2 s vs 1.2-1.5 s: the epochs are
  so short that the first one's few new allocations still show);
- two forked checkpoint writers in flight instead of one: the epoch-end stall stayed 5-11 s on
  15 min of audio (the GPU-to-CPU copy of 6 GB into fresh pageable memory);
- this round (40 min of audio, a 2 x H200 host, llm on GPU 0 and flow on GPU 1 in parallel):
  the whole loss module under ``torch.compile`` gave llm 46,961 vs 17,425 tokens/s eager but
  compiled for 144 s (a graph per shape); compiled *blocks* with dynamic shapes (now the
  default) compile once in the warm-up (18.6 s llm, 28.6 s flow); the flow's batches of an
  optimizer step go through the DiT as one pass (fused); the checkpoint is snapshotted on the
  GPU and copied by a thread (straight into pageable memory that copy stalled every later
  epoch ~5 s: the ``voicelab:eager`` run measured llm 6,067 and flow 6,352 vs upstream 3,795 and
  3,660; through a pinned 64 MB buffer the stall is gone). Final same-run figures: llm 26,401
  vs 5,271 (5.01x), flow 14,690 vs 4,984 (2.95x), first epoch 0.75x / 0.88x the later ones,
  epoch-end stall 0.02-0.09 s, GPU utilization 36 % / 26 % (nvidia-smi samples).
- next round (another 2 x H200 host, 40 min of audio; the profiles on 25 min): profiles of
  the compiled engine (llm 70 % of the wall in kernels, flow 51 %; the flow's cuDNN attention
  0.86 ms host time a call); the flow without cuDNN's attention 18,476 vs 19,365 tokens/s with
  it (same run: not kept); flow 19,365 vs upstream 4,349 (4.45x); llm with a writer thread
  26,581 vs 4,800 (5.54x, GPU 0) against forked writers 20,861 vs 5,178 (4.03x, GPU 1 of the
  same call; ``voicelab:fork`` runs that variant); GPU utilization 44 % for both models.
- one H100 (40 min of audio): utilization now from NVML's own samples (one per 0.2 s), only
  those wholly inside a later epoch's training (nvidia-smi's mean kept beside it): llm 23,549
  vs 3,660 (6.43x), util 40.8 % vs 14.5 %; flow 12,265 vs 3,712 (3.30x), util 24.4 % vs
  15.8 %; ``voicelab:graphs`` (``--cuda-graphs``: the compiled blocks replay CUDA graphs, every
  llm pass padded to the run's largest, recorded in the warm-up) 50,296 vs 3,891 (12.9x), util
  80.2 %, first epoch 1.21x, warm-up 63 s (41,393 and 67.5 % in the call before; 43,698 vs
  the default engine's 19,153 in one run). The first graphs runs failed in the warm-up (a
  gradient kept into the next pass lived in graph memory): see docs/engine.md.
- the next round, one H100 each call: the graphs compiled with static shapes (every pass has
  one) warm up in 20.1 s (cold cache) instead of 99.5 s with dynamic shapes (63 s on a cache
  hit), and became the llm's default: llm 54,089 vs 4,030 (13.4x), util 84.5 % vs 15.7 %,
  first epoch 1.09x, warm-up 12.5 s; ``voicelab:nographs`` 24,875 (6.17x, util 43.6 %) in the
  same run. The flow now fuses a step's batches only where that pads at most 50 % more (a
  step's batches that go one by one take the fused call too): flow 11,238 vs 3,732 (3.01x),
  util 22.5 % vs 16.0 %, first epoch 1.07x; ``voicelab:fuseall`` (every step fused) 11,667
  (3.13x) in the same run. With ``--lengths spread`` (1-20 s) the rule against fusing every
  step: 7,166 vs 6,485 tokens/s, GPU busy 1.37 vs 1.44 s per epoch, peak 16,593 vs 25,533 MiB.
- then the flow's CUDA graphs (one H100 each call, 40 min of audio): ``voicelab:graphs`` pads
  every pass to one of 8 shapes: 29,932 vs upstream 4,002 (7.48x), util 59.4 %, warm-up 126.5 s
  (a compile per shape), the default 10,907 (2.73x) in the same run; the call before, graphs
  against
  ``voicelab:nographs`` 33,998 vs 12,290 (2.77x), util 67.4 % vs 25.2 %. With ``--epochs 16``
  the default itself picks graphs (3 shapes): 26,768 vs 11,452 (2.34x), util 62.9 % vs 20.1 %,
  the same wall time (the checkpoint writer cannot keep up with 2 s epochs).
- then how many shapes (one H100, 40 min of audio, 3 epochs, one call): ``voicelab:graphs1``,
  ``graphs2``, ``graphs3`` (``VOICELAB_ENGINE_GRAPH_SHAPES``) against ``voicelab:nographs``:
  18,278 / 26,298 / 30,855 vs 12,494 tokens/s, epochs 3.1 / 2.3 / 2.0 vs 4.9 s, GPU busy
  2.38 / 1.52 / 1.37 vs 1.31 s an epoch (3.12x / 1.85x / 1.54x the unpadded DiT work), warm-up
  23.2 / 35.7 / 32.4 (two of its shapes cached by the run before) vs 29.0 s: one static shape
  compiles faster than the dynamic-shape blocks, and a pass still gains though it does three
  times the work. ``auto`` now picks the count by these costs (``batching.graph_plan``): the
  next call, the default (one shape) 22,569 vs upstream 3,948 (5.72x), util 88.4 % (useful
  work a third of it), first epoch 0.99x, peak 22,211 vs 12,223 MiB; ``voicelab:nographs``
  13,344 (3.38x), util 27.6 %.

Run (GPU machine, vendor and the ``train`` extra importable)::

    python benchmarks/bench_train.py --minutes 20 --epochs 3 --out bench_train.json
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import math
import os
import random
import re
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

    from voicelab.testing import tiny_onnx
    from voicelab.upstream import tinymodel
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


def clip_seconds(rng: random.Random, lengths: str) -> float:
    """One synthetic clip's length: ``uniform`` 3-12 s, ``spread`` lognormal around 5 s in 1-20 s
    (many short clips and a few long ones: where fusing unlike batches costs work)."""
    if lengths == "spread":
        return min(20.0, max(1.0, rng.lognormvariate(math.log(5.0), 0.6)))
    return rng.uniform(3, 12)


def build_data(
    ws: Any, minutes: float, shards: int, seed: int = 0, lengths: str = "uniform"
) -> dict[str, Any]:
    """Synthetic packed train/dev sets: ``minutes`` of train audio, ~5% of that as dev."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import soundfile as sf

    from voicelab.stages.pack import parquet_schema
    from voicelab.workspace import DEFAULT_INSTRUCT

    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    spk = nrng.standard_normal(192).tolist()
    stats: dict[str, Any] = {}
    for split, total, n_shards in (("train", minutes * 60, shards), ("dev", minutes * 3, 2)):
        utts, secs = [], 0.0
        while secs < total:
            sec = clip_seconds(rng, lengths)
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


def first_visible_gpu() -> str:
    """nvidia-smi's index of the GPU this process trains on (the first of
    ``CUDA_VISIBLE_DEVICES``, else 0)."""
    return (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]


def gpu_name() -> str:
    """``name, memory`` of the GPU the figures come from, as nvidia-smi gives it."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return ""
    query = [exe, "--query-gpu=name,memory.total", "--format=csv,noheader", "-i"]
    out = subprocess.run([*query, first_visible_gpu()], capture_output=True, text=True, check=False)
    return out.stdout.strip()


class GpuMonitor:
    """Peak ``memory.used`` and ``utilization.gpu`` of the GPU training runs on (the first of
    ``CUDA_VISIBLE_DEVICES``, else 0), two ways:

    - nvidia-smi every 0.5 s (``util``): each value covers the driver's last sample period,
      which may reach back before a span starts; with epochs of 2 s the edges weigh a lot;
    - NVML's own sample buffer (``samples``, via ``nvidia-ml-py`` where importable): every
      sample the driver took, with its timestamp, so only samples whose whole period lies
      inside a training span count (:meth:`window_util`)."""

    def __init__(self) -> None:
        self.peak_mib = 0
        self.util: list[tuple[float, int]] = []  # (time, percent)
        self.samples: list[tuple[float, int]] = []  # NVML's (time, percent)
        self.clock_offset: float | None = None  # time.time() minus NVML's newest stamp, at best
        self._nvml: Any = None
        self._last_ts = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _open_nvml(self) -> None:
        try:
            import pynvml  # nvidia-ml-py

            pynvml.nvmlInit()
            gpu = first_visible_gpu()
            if gpu.isdigit():
                h = pynvml.nvmlDeviceGetHandleByIndex(int(gpu))
            else:
                h = pynvml.nvmlDeviceGetHandleByUUID(gpu)
            self._nvml = (pynvml, h)
        except Exception as e:  # no module, no driver: nvidia-smi's figure only
            print(f"bench_train: NVML samples unavailable ({e!r})", flush=True)

    def _poll_nvml(self) -> None:
        if self._nvml is None:
            return
        nv, h = self._nvml
        try:
            _, got = nv.nvmlDeviceGetSamples(h, nv.NVML_GPU_UTILIZATION_SAMPLES, self._last_ts)
        except nv.NVMLError:
            return  # NVML_ERROR_NOT_FOUND: no new sample since the last call
        now = time.time()
        for smp in got:
            if smp.timeStamp > self._last_ts:
                self.samples.append((smp.timeStamp / 1e6, int(smp.sampleValue.uiVal)))
                self._last_ts = smp.timeStamp
        if got:
            off = now - self._last_ts / 1e6
            self.clock_offset = off if self.clock_offset is None else min(self.clock_offset, off)

    def _run(self) -> None:
        self._open_nvml()
        exe = shutil.which("nvidia-smi")
        query = "--query-gpu=memory.used,utilization.gpu"
        gpu = first_visible_gpu()
        while not self._stop.is_set():
            self._poll_nvml()
            if exe:
                try:
                    out = subprocess.run(
                        [exe, query, "--format=csv,noheader,nounits", "-i", gpu],
                        capture_output=True,
                        text=True,
                        timeout=10,
                        check=False,
                    ).stdout.strip()
                    mem, util = (int(x) for x in out.splitlines()[0].split(","))
                    self.peak_mib = max(self.peak_mib, mem)
                    self.util.append((time.time(), util))
                except (ValueError, IndexError, subprocess.SubprocessError, OSError):
                    pass
            self._stop.wait(0.5)
        self._poll_nvml()

    def mean_util(self, spans: list[tuple[float, float]]) -> float | None:
        """Mean nvidia-smi utilization over the samples taken inside ``spans``."""
        xs = [u for t, u in self.util if any(a <= t <= b for a, b in spans)]
        return round(sum(xs) / len(xs), 1) if xs else None

    def window_util(self, spans: list[tuple[float, float]]) -> tuple[float | None, int, float]:
        """(mean, count, period) of NVML's samples whose whole period lies inside a span."""
        return window_mean(self.samples, spans, self.clock_offset)

    def __enter__(self) -> GpuMonitor:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(timeout=5)


def window_mean(
    samples: list[tuple[float, int]], spans: list[tuple[float, float]], offset: float | None
) -> tuple[float | None, int, float]:
    """(mean, count, period) of the samples whose period (the gap to the one before, the
    median gap for the first) lies wholly inside one of ``spans``. NVML stamps its samples
    with the CPU clock in microseconds; should its clock differ from ``time.time()`` by more
    than a few seconds (``offset``: the smallest lag seen at a poll), the stamps are moved."""
    if len(samples) < 2:
        return None, 0, 0.0
    shift = offset if offset is not None and abs(offset) > 5 else 0.0
    ts = [t + shift for t, _ in samples]
    gaps = sorted(b - a for a, b in itertools.pairwise(ts))
    period = gaps[len(gaps) // 2]
    xs = []
    for i, (t, (_, u)) in enumerate(zip(ts, samples, strict=True)):
        start = ts[i - 1] if i else t - period
        if any(a <= start and t <= b for a, b in spans):
            xs.append(u)
    mean = round(sum(xs) / len(xs), 1) if xs else None
    return mean, len(xs), round(period, 3)


_ENGINE_RE = re.compile(r"voicelab engine: epoch (\d+) train_s (\S+) cv_s (\S+) save_s (\S+)")


def epoch_figures(
    rows: list[dict[str, Any]], log_text: str, tokens: int
) -> tuple[list[dict[str, Any]], list[tuple[float, float]]]:
    """Per epoch: train/CV/save seconds and training speech tokens/s; the training spans."""
    starts = {r["epoch"]: r["time"] for r in rows if r.get("event") == "epoch"}
    cvs = {r["epoch"]: r["time"] for r in rows if r.get("tag") == "CV"}
    saves = {
        r["epoch"]: r["time"]
        for r in rows
        if r.get("event") == "checkpoint" and "whole" in str(r.get("checkpoint"))
    }
    engine = {int(m[0]): [float(x) for x in m[1:]] for m in _ENGINE_RE.findall(log_text)}
    trains = sorted(r["time"] for r in rows if r.get("tag") == "TRAIN")
    out, spans = [], []
    for e in sorted(starts):
        if e not in cvs:
            continue
        if e in engine:
            train_s, cv_s, save_s = engine[e]
        else:
            # Upstream: training ends at its last TRAIN line of the epoch (logged every
            # log_interval batches); CV then runs until the CV line; the save until its event.
            last = max((t for t in trains if starts[e] <= t <= cvs[e]), default=cvs[e])
            train_s, cv_s = last - starts[e], cvs[e] - last
            save_s = max(0.0, saves.get(e, cvs[e]) - cvs[e])
        spans.append((starts[e], starts[e] + train_s))
        out.append(
            {
                "epoch": e,
                "train_seconds": round(train_s, 2),
                "cv_seconds": round(cv_s, 2),
                "save_seconds": round(save_s, 2),
                "speech_tokens_per_s": round(tokens / train_s, 1) if train_s > 0 else None,
            }
        )
    return out, spans


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/voicelab-bench-train"))
    ap.add_argument("--minutes", type=float, default=20.0, help="train audio (synthetic)")
    ap.add_argument("--lengths", choices=["uniform", "spread"], default="uniform")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--models", default="llm,flow")
    ap.add_argument("--trainers", default="voicelab,upstream")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from voicelab.stages import train as tr
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
    stats = build_data(ws, args.minutes, shards=2 * workers, lengths=args.lengths)
    prep = time.time() - t0
    report: dict[str, Any] = {
        "gpu": gpu_name(),
        "data": stats,
        "prepare_seconds": round(prep, 1),
        "models": {},
    }
    tokens = stats["train"]["speech_tokens"]
    for model in args.models.split(","):
        report["models"][model] = {}
        for spec in args.trainers.split(","):
            # "voicelab:eager" (no torch.compile), "voicelab:compile" (compile forced),
            # "voicelab:nofuse" (padded batches, one per pass), "voicelab:fuseall" (the flow
            # fuses every step's batches, however unlike), "voicelab:fork" (forked
            # checkpoint writers), "voicelab:graphs" / "voicelab:nographs" (CUDA graphs asked
            # for / turned off; by default the llm's compiled blocks replay them on one GPU):
            # variants of the engine, measured in the same run for the notes.
            trainer, _, variant = spec.partition(":")
            os.environ["VOICELAB_ENGINE_FUSE"] = {"nofuse": "off", "fuseall": "on"}.get(
                variant, "auto"
            )
            os.environ["VOICELAB_SAVE_FORK"] = "1" if variant == "fork" else ""
            # "voicelab:graphsN": the flow's graphs with N shapes (VOICELAB_ENGINE_GRAPH_SHAPES)
            shapes = re.fullmatch(r"graphs(\d+)", variant)
            os.environ["VOICELAB_ENGINE_GRAPH_SHAPES"] = shapes[1] if shapes else ""
            variant = "graphs" if shapes else variant
            opts = tr.TrainOptions(
                device="cuda",
                epochs=args.epochs,
                new=True,
                trainer=trainer,
                compile={"compile": True, "eager": False}.get(variant),
                cuda_graphs={"graphs": True, "nographs": False}.get(variant),
            )
            name = tr.run_name(trainer, opts.engine)
            run = ws.exp_dir(model, name)
            with GpuMonitor() as mon:
                t = time.time()
                try:
                    res = tr.run_train(ws, model, opts)
                except Exception as e:  # one failed pair must not lose the others' figures
                    tail = (run / "train.log").read_text("utf-8", errors="replace")[-3000:]
                    report["models"][model][spec] = {"error": repr(e), "log_tail": tail}
                    print(json.dumps(report["models"][model][spec], indent=1), flush=True)
                    continue
                wall = time.time() - t
            rows = tr.read_train_log(run / "train_log.jsonl")
            log_text = (run / "train.log").read_text("utf-8", errors="replace")
            epochs, spans = epoch_figures(rows, log_text, tokens)
            cfg = tc.read_values((run / "train_config.yaml").read_text("utf-8"))
            later = [e["speech_tokens_per_s"] for e in epochs[1:] if e["speech_tokens_per_s"]]
            first = epochs[0]["train_seconds"] if epochs else None
            later_s = [e["train_seconds"] for e in epochs[1:]]
            warm = re.search(r"voicelab engine: warm-up (\S+) s", log_text)
            passes = re.search(r"voicelab engine: warm-up .*passes ([\d./ ]+) s\)", log_text)
            util, n_util, period = mon.window_util(spans[1:] or spans)
            smi_util = mon.mean_util(spans[1:] or spans)
            fig = {
                "wall_seconds": round(wall, 1),
                "warmup_seconds": float(warm[1]) if warm else None,
                "warmup_pass_seconds": [float(x) for x in passes[1].split(" / ")]
                if passes
                else None,
                "max_frames_in_batch": tc.get_value(cfg, tc.MAX_FRAMES),
                "accum_grad": tc.get_value(cfg, tc.ACCUM_GRAD),
                "amp": "--use_amp" in res.argv,
                "peak_gpu_mib": mon.peak_mib,
                # NVML's samples inside the later epochs' training; nvidia-smi's where NVML
                # is not importable (the figure of earlier rounds, kept as gpu_util_smi_pct).
                "gpu_util_training_pct": util if util is not None else smi_util,
                "gpu_util_method": "nvml-windows" if util is not None else "nvidia-smi",
                "gpu_util_samples": n_util,
                "gpu_util_sample_period_s": period,
                "gpu_util_smi_pct": smi_util,
                # The raw figures behind them: the training spans, NVML's and nvidia-smi's
                # samples of this run (time, percent), for the notes' per-epoch reading.
                "gpu_util_trace": {
                    "spans": spans,
                    "clock_offset_s": mon.clock_offset,
                    "nvml": [x for x in mon.samples if t <= x[0] <= t + wall],
                    "smi": [x for x in mon.util if t <= x[0] <= t + wall],
                },
                "best_cv_loss": res.best_cv_loss,
                "epochs": epochs,
                "speech_tokens_per_s": round(sum(later) / len(later), 1) if later else None,
                # What a card that is busy computing pays: the GPU's busy share of the later
                # epochs' training time, in seconds per epoch.
                "gpu_busy_seconds_per_epoch": round(util * sum(later_s) / len(later_s) / 100, 2)
                if util is not None and later_s
                else None,
                "first_epoch_vs_later": (
                    round(first / (sum(later_s) / len(later_s)), 2) if first and later_s else None
                ),
            }
            report["models"][model][spec] = fig
            print(json.dumps({model: {spec: fig}}, indent=1), flush=True)
            if args.out:
                args.out.write_text(json.dumps(report, indent=1), "utf-8")
            shutil.rmtree(run.with_name(f"{name}.1"), ignore_errors=True)
        pair = report["models"][model]
        base = pair.get("upstream", {}).get("speech_tokens_per_s")
        for spec in list(pair):
            rate = pair[spec].get("speech_tokens_per_s") if isinstance(pair[spec], dict) else None
            if base and rate and spec != "upstream":
                key = "speedup" if spec == "voicelab" else f"speedup_{spec.replace(':', '_')}"
                pair[key] = round(rate / base, 2)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text, "utf-8")


if __name__ == "__main__":
    os.environ.pop("onnx_path", None)
    sys.exit(main())
