"""First-chunk latency and real-time factor of ``voicelab serve`` (GPU), against upstream.

Builds, under ``--work``, a *full-size* randomly initialized CosyVoice 3 voice (the base of
``bench_train.py`` plus ``hift.pt`` of the same yaml and the stand-in speech tokenizer, a random
speaker embedding), then measures on the same GPU and the same text:

- **upstream**: ``CosyVoice3.inference_sft(tts_text, spk, stream=True)`` called directly in this
  process, at each concurrency level from that many threads (as upstream's own FastAPI example
  serves it: one thread per request on one model);
- **serve**: a real ``voicelab serve`` process on a loopback port, ``--concurrency`` clients each
  sending ``--requests`` streamed ``pcm`` requests over HTTP (httpx).

Per request: first-chunk latency (request sent -> first audio, queue included) and RTF
(request wall time / audio seconds); per level: p50/p90 first chunk, mean RTF, audio seconds
per wall second, 503s. The random LLM rarely stops by itself: each answer runs to upstream's
length limit (about 20 speech tokens per text token), so all takes of a text are alike in length.

Run (GPU machine, vendor, the ``train`` and ``serve`` extras and httpx importable)::

    python benchmarks/bench_serve.py --out bench_serve.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import build_base, gpu_name

TEXT = "The quick brown fox jumps over the lazy dog near the old stone bridge."
SPK = "bench"
RATE = 24000


def complete_voice(base: Path, ws: Any, vendor_root: Path) -> Path:
    """The workspace's voice: base files linked, plus hift.pt, the speech tokenizer stand-in,
    a random speaker and ``voicelab.json`` (as ``voicelab export`` leaves it)."""
    import torch
    from hyperpyyaml import load_hyperpyyaml

    from voicelab.fsutil import link_or_copy
    from voicelab.testing import tiny_onnx

    if not (base / "hift.pt").is_file():
        text = (base / "cosyvoice3.yaml").read_text("utf-8")
        blank = base / "CosyVoice-BlankEN"
        # Only hift is built (llm and flow were saved by build_base).
        overrides = {"qwen_pretrain_path": str(blank), "llm": None, "flow": None, "hifigan": None}
        configs = load_hyperpyyaml(text, overrides=overrides)
        torch.save(configs["hift"].state_dict(), base / "hift.pt")
    if not (base / "speech_tokenizer_v3.onnx").is_file():
        tiny_onnx.write_speech_tokenizer(base / "speech_tokenizer_v3.onnx")
    voice = ws.voice_dir
    for src in base.rglob("*"):
        if src.is_file():
            link_or_copy(src, voice / src.relative_to(base))
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(1, 192, generator=gen) * 0.1
    torch.save({SPK: {"embedding": emb}}, voice / "spk2info.pt")
    prov = {"speaker": SPK, "base_model": {"name": base.name, "id": "bench"}}
    (voice / "voicelab.json").write_text(json.dumps(prov), "utf-8")
    return voice


def summarize(rows: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    ok = [r for r in rows if r.get("ok")]
    firsts = sorted(r["first"] for r in ok)
    audio = sum(r["audio"] for r in ok)

    def pct(p: float) -> float | None:
        if not firsts:
            return None
        return round(firsts[min(len(firsts) - 1, int(p * len(firsts)))], 3)

    return {
        "requests": len(rows),
        "ok": len(ok),
        "busy_503": sum(1 for r in rows if r.get("status") == 503),
        "errors": [r["error"] for r in rows if r.get("error")][:3],
        "first_chunk_p50_s": pct(0.5),
        "first_chunk_p90_s": pct(0.9),
        "rtf_mean": round(statistics.mean(r["wall"] / r["audio"] for r in ok), 3) if ok else None,
        "audio_s_per_wall_s": round(audio / wall, 2) if wall > 0 else None,
        "audio_s_per_request": round(audio / len(ok), 1) if ok else None,
        "wall_s": round(wall, 1),
    }


def run_clients(n: int, per_client: int, one: Any) -> tuple[list[dict[str, Any]], float]:
    rows: list[dict[str, Any]] = []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(per_client):
            r = one()
            with lock:
                rows.append(r)

    threads = [threading.Thread(target=client) for _ in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return rows, time.perf_counter() - t0


def bench_upstream(
    voice: Path, tts_text: str, levels: list[int], per: int, fp16: bool, spk: str = SPK
) -> dict:
    import torch

    from voicelab.upstream.inference_fixes import import_cosyvoice3, reset_stream_state

    cosy = import_cosyvoice3()(str(voice), fp16=fp16)

    def one() -> dict[str, Any]:
        t0 = time.perf_counter()
        first, samples = None, 0
        try:
            with torch.inference_mode():
                for out in cosy.inference_sft(tts_text, spk, stream=True, text_frontend=False):
                    if first is None:
                        first = time.perf_counter() - t0
                    samples += out["tts_speech"].shape[-1]
        except Exception as e:  # upstream under threads: report it, go on
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}
        wall = time.perf_counter() - t0
        return {"ok": samples > 0, "first": first, "wall": wall, "audio": samples / RATE}

    one()  # warm-up (CUDA kernels, allocator)
    out = {}
    for n in levels:
        reset_stream_state(cosy)
        rows, wall = run_clients(n, per, one)
        out[str(n)] = summarize(rows, wall)
        print(json.dumps({"upstream": {n: out[str(n)]}}), flush=True)
    return out


def bench_serve(
    ws_root: Path, levels: list[int], per: int, fp16: bool, spk: str = SPK, text: str = TEXT
) -> dict:
    import httpx

    from voicelab.testing.server import ServerProcess

    args = ["--max-queue", "64", "--timeout", "1200"] + (["--fp16"] if fp16 else [])
    out: dict[str, Any] = {}
    with ServerProcess(ws_root, args, log=ws_root / "serve.log") as srv:
        t0 = time.perf_counter()
        srv.wait_ready(600)
        out["load_s"] = round(time.perf_counter() - t0, 1)
        body = {"input": text, "voice": spk, "response_format": "pcm", "stream": True}

        def one() -> dict[str, Any]:
            t0 = time.perf_counter()
            first, size = None, 0
            try:
                with httpx.stream(
                    "POST", f"{srv.url}/v1/audio/speech", json=body, timeout=1200
                ) as resp:
                    if resp.status_code != 200:
                        resp.read()
                        return {"ok": False, "status": resp.status_code, "error": resp.text[:200]}
                    for piece in resp.iter_bytes():
                        if first is None and piece:
                            first = time.perf_counter() - t0
                        size += len(piece)
            except httpx.HTTPError as e:
                return {"ok": False, "error": f"{type(e).__name__}: {e}"}
            wall = time.perf_counter() - t0
            return {"ok": size > 0, "first": first, "wall": wall, "audio": size / 2 / RATE}

        one()  # warm-up
        for n in levels:
            rows, wall = run_clients(n, per, one)
            out[str(n)] = summarize(rows, wall)
            print(json.dumps({"serve": {n: out[str(n)]}}), flush=True)
        out["metrics"] = [
            line
            for line in httpx.get(f"{srv.url}/metrics").text.splitlines()
            if line.startswith(("voicelab_rtf_sum", "voicelab_rtf_count", "voicelab_first_chunk"))
            and "bucket" not in line
        ]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/voicelab-bench-serve"))
    ap.add_argument("--concurrency", default="1,4,16", help="comma-separated levels")
    ap.add_argument("--requests", type=int, default=1, help="requests per client and level")
    ap.add_argument("--fp16", action="store_true", help="half precision (both sides)")
    ap.add_argument("--skip-upstream", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from voicelab.blocks.tts_text import plan_utterance
    from voicelab.vendor import cosyvoice_runtime
    from voicelab.workspace import DEFAULT_INSTRUCT, Workspace

    vendor = cosyvoice_runtime()
    sys.path[:0] = [str(p) for p in vendor.import_paths]
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    t0 = time.time()
    base = build_base(args.work / "base", vendor.root)
    root = args.work / "ws"
    ws = Workspace.open(root) if (root / "voicelab.toml").is_file() else Workspace.init(root, SPK)
    voice = complete_voice(base, ws, vendor.root)
    # The exact text serve gives upstream (same normalization, instruct and marker).
    (tts_text,) = plan_utterance(TEXT, ws.instruct or DEFAULT_INSTRUCT).tts_texts
    report: dict[str, Any] = {
        "gpu": gpu_name(),
        "text": tts_text,
        "fp16": args.fp16,
        "requests_per_client": args.requests,
        "prepare_seconds": round(time.time() - t0, 1),
    }
    if not args.skip_upstream:
        report["upstream"] = bench_upstream(voice, tts_text, levels, args.requests, args.fp16)
        if args.out:  # kept if the server's half is cut short
            args.out.write_text(json.dumps(report, indent=1), "utf-8")
        import gc

        import torch

        gc.collect()  # the upstream model's GPU memory back before the server loads its own
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    report["serve"] = bench_serve(ws.root, levels, args.requests, args.fp16)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text, "utf-8")


if __name__ == "__main__":
    os.environ.pop("onnx_path", None)
    sys.exit(main())
