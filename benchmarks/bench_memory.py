"""Memory modes under a VRAM cap with full-size CosyVoice 3 models (GPU; issue 17).

For each model (llm, flow) and each cap (default 6, 8, 12, 24 GiB), plus a reference run of full
SFT without a cap, a child process:

1. caps its CUDA allocations (``torch.cuda.set_per_process_memory_fraction``, what
   ``--max-vram`` does) and asks :func:`voicelab.memory.plan_memory` for the mode ``auto``
   picks on a card of that size (batch frames, accumulation);
2. builds the full-size randomly initialized model of ``bench_train.py`` (same base dir, same
   synthetic data, same seed) with upstream's classes, applies the plan's modes
   (:mod:`voicelab.upstream.memory_modes`) and trains with upstream's ``model(batch, device)``
   loss, bf16 autocast, the yaml's lr (1e-5) and optimizer (Adam), through
   :class:`voicelab.upstream.memory_train.MemoryTrainer` (VoiceLab's training engine, issue 16,
   will take this over);
3. trains at least ``--steps`` optimizer steps and until ``--cv-tokens`` speech tokens were seen,
   runs CV on the dev set when that token count is crossed (the same point for every run), and
   reports: mode, batch frames x accumulation, peak GPU memory (allocator reserved and
   allocated), speech tokens/s (after ``--warmup`` steps), CV loss (and acc) at the token mark,
   OOM retries, and whether it stopped on an OOM.

Batches come from upstream's own data pipeline (decoded once per run by DataLoader workers and
kept in host memory, so the figures are the GPU's, not the fbank's). Results go to ``--out``
(JSON) and a Markdown table to stdout.

Run (GPU machine, vendor and the ``train`` extra importable, ~20 min on one H100)::

    python benchmarks/bench_memory.py --minutes 20 --steps 200 --out bench_memory.json

Subsets: ``--models llm --caps 6,8``; ``--no-reference`` skips the uncapped full run. A CPU
smoke run of the whole path with the tiny model: ``--tiny --device cpu --steps 4 --caps 6``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _setup_paths() -> Any:
    from voicelab.vendor import cosyvoice_runtime

    vendor = cosyvoice_runtime()
    sys.path[:0] = [str(p) for p in vendor.import_paths] + [str(HERE)]
    return vendor


def prepare(args: argparse.Namespace) -> tuple[Path, Path, dict[str, Any]]:
    """(base model dir, workspace dir, data stats): bench_train's model and data, built once."""
    from bench_train import build_base, build_data

    from voicelab.workspace import Workspace

    vendor = _setup_paths()
    if args.tiny:
        from voicelab.upstream.tinymodel import build_tiny_model

        base = build_tiny_model(args.work / "tiny", vendor)
    else:
        base = build_base(args.work / "base", vendor.root)
    ws_dir = args.work / ("ws-memory-tiny" if args.tiny else "ws-memory")
    stats_file = ws_dir / "bench_data.json"
    if stats_file.is_file():
        return base, ws_dir, json.loads(stats_file.read_text("utf-8"))
    ws = Workspace.init(ws_dir, "bench")
    ws.set_option("model", "base_dir", str(base))
    stats = build_data(ws, args.minutes, shards=16)
    stats_file.write_text(json.dumps(stats), "utf-8")
    return base, ws_dir, stats


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    """One (model, cap) run in this process (see the module doc)."""
    import torch

    from voicelab import memory as mem
    from voicelab.stages.train import TOKEN_RATE
    from voicelab.upstream import memory_modes as mm
    from voicelab.upstream import memory_train as mt
    from voicelab.workspace import Workspace

    vendor = _setup_paths()
    base, ws = Path(args.base), Workspace.open(Path(args.ws))
    kind, device = args.model, args.device
    cap = None if args.cap in (None, "none") else float(args.cap)
    params = sum(
        v.numel()
        for k, v in torch.load(base / f"{kind}.pt", map_location="cpu", weights_only=True).items()
        if torch.is_tensor(v)
    )
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info(0)
        card = props.name
    else:
        free, total, card = None, None, "cpu"
    plan_total = total
    if device == "cpu" and cap is not None:  # smoke run: plan as if the card had `cap`
        plan_total = int(cap * mem.GIB)
    mode = "full" if args.mode == "full" or cap is None else args.mode
    longest = args.longest_frames
    plan = mem.plan_memory(
        kind,
        params,
        total=plan_total,
        free=free,
        max_vram_gib=cap if device == "cuda" else None,
        requested_frames=args.batch_frames,
        requested_accum=args.accum_grad,
        longest_frames=longest,
        mode=mode,
    )
    if device == "cuda" and cap is not None:
        mm.cap_vram(cap, "cuda")
    out: dict[str, Any] = {
        "model": kind,
        "cap_gib": cap,
        "card": card,
        "params": params,
        "mode": plan.mode,
        "plan": plan.lines,
        "batch_frames": plan.batch_frames,
        "accum_grad": plan.accum_grad,
        "planned_peak_gib": round(plan.need_bytes / mem.GIB, 2),
    }
    print("\n".join(plan.lines), flush=True)
    if not plan.fits:
        out["error"] = "does not fit"
        return out

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    text = mt.sft_yaml_text(vendor.root, base, plan.batch_frames, accum_grad=plan.accum_grad)
    cfg = mt.load_configs(text, kind, base / "CosyVoice-BlankEN")
    model = mt.build_model(cfg, kind, base / f"{kind}.pt")
    t0 = time.time()
    workers = min(8, os.cpu_count() or 1) if device == "cuda" else 0
    # Decoded once per model and batch size, shared by the runs that plan the same batch.
    cache = Path(args.ws) / f"batches-{kind}-{plan.batch_frames}-{args.seed}.pt"
    if cache.is_file():
        train, dev = torch.load(cache, weights_only=True)
    else:
        train = mt.collect_batches(cfg, ws.data_list("train"), True, workers)
        dev = mt.collect_batches(cfg, ws.data_list("dev"), False, 0)
        torch.save((train, dev), cache)
    out["data_seconds"] = round(time.time() - t0, 1)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    # Same draws for every run from here on, whether the batches came from the cache or not.
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    trainer = mt.MemoryTrainer(
        model, kind, plan.features, device=device, lr=args.lr, accum_grad=plan.accum_grad
    )
    out["trainable"] = trainer.applied.trainable
    rng = random.Random(args.seed)
    tokens = 0
    timed_tokens, timed_seconds = 0, 0.0
    losses: list[float] = []
    cv: dict[str, float] | None = None
    stop = None
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    epoch = 0
    try:
        while trainer.step < args.steps or cv is None:
            order = list(range(len(train)))
            rng.shuffle(order)
            for i in order:
                b = train[i]
                n_tok = int(b["speech_token_len"].sum())
                sync()
                t = time.time()
                r = trainer.train_batch(b)
                sync()
                if trainer.step > args.warmup:
                    timed_tokens += n_tok
                    timed_seconds += time.time() - t
                tokens += n_tok
                losses.append(r.loss)
                if cv is None and tokens >= args.cv_tokens and r.stepped:
                    cv = trainer.evaluate(dev)
                    out["cv_at_tokens"] = tokens
                if trainer.step >= args.steps and cv is not None:
                    break
            epoch += 1
    except mm.OutOfMemoryStop as e:
        stop = e.one_line()
    out.update(
        {
            "steps": trainer.step,
            "batches": trainer.batch_index,
            "epochs": epoch,
            "speech_tokens": tokens,
            "audio_hours": round(tokens / TOKEN_RATE / 3600, 2),
            "speech_tokens_per_s": round(timed_tokens / timed_seconds, 1)
            if timed_seconds
            else None,
            "train_loss_last50": round(sum(losses[-50:]) / max(1, len(losses[-50:])), 4),
            "cv": {k: round(v, 4) for k, v in (cv or {}).items()},
            "oom_retries": trainer.guard.retries,
            "oom_stop": stop,
        }
    )
    if device == "cuda":
        out["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / mem.GIB, 2)
        out["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / mem.GIB, 2)
    return out


def table(rows: list[dict[str, Any]]) -> str:
    ref = {r["model"]: r for r in rows if r.get("cap_gib") is None}
    lines = [
        "| model | cap | mode (auto) | batch x accum | peak GiB (reserved) | speech tok/s "
        "| CV loss @ tokens | vs full, no cap |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cap = "none" if r.get("cap_gib") is None else f"{r['cap_gib']:g} GiB"
        loss = (r.get("cv") or {}).get("loss")
        base = (ref.get(r["model"], {}).get("cv") or {}).get("loss")
        delta = f"{loss - base:+.4f}" if loss is not None and base is not None else "-"
        at = r.get("cv_at_tokens")
        cv = (
            f"{loss:.4f} @ {at}" if loss is not None else r.get("error") or r.get("oom_stop") or "-"
        )
        lines.append(
            f"| {r['model']} | {cap} | {r['mode']} | {r['batch_frames']} x {r['accum_grad']} "
            f"| {r.get('peak_reserved_gib', '-')} | {r.get('speech_tokens_per_s', '-')} "
            f"| {cv} | {delta} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/voicelab-bench-train"))
    ap.add_argument("--minutes", type=float, default=20.0, help="train audio (synthetic)")
    ap.add_argument("--models", default="llm,flow")
    ap.add_argument("--caps", default="6,8,12,24", help="GiB, comma-separated")
    ap.add_argument("--no-reference", action="store_true", help="skip uncapped full SFT")
    ap.add_argument("--steps", type=int, default=200, help="optimizer steps per run, at least")
    ap.add_argument("--cv-tokens", type=int, default=150_000, help="CV after this many tokens")
    ap.add_argument("--warmup", type=int, default=10, help="steps left out of tokens/s")
    ap.add_argument("--batch-frames", type=int, default=2000, help="requested (upstream's)")
    ap.add_argument("--accum-grad", type=int, default=1, help="requested batches per step")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=1986)
    ap.add_argument("--mode", default="auto", help="auto, or force a mode for every capped run")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true", help="the tiny model (CPU smoke run)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    ap.add_argument("--out", type=Path, default=None)
    # Internal: one run in a child process.
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--cap", help=argparse.SUPPRESS)
    ap.add_argument("--base", help=argparse.SUPPRESS)
    ap.add_argument("--ws", help=argparse.SUPPRESS)
    ap.add_argument("--longest-frames", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.one:
        res = run_one(args)
        Path(args.result).write_text(json.dumps(res), "utf-8")
        return

    t0 = time.time()
    base, ws_dir, stats = prepare(args)
    longest = 12 * 50 + 100  # bench_train's clips are 3-12 s (+ token padding)
    report: dict[str, Any] = {"data": stats, "prepare_seconds": round(time.time() - t0, 1)}
    rows = []
    # The capped runs first: a run cut short by a time limit loses the reference, which an
    # earlier run on the same data and seed can stand in for (CV loss, not speed).
    caps: list[str | None] = [c.strip() for c in args.caps.split(",") if c.strip()]
    caps += [] if args.no_reference else [None]
    for model in args.models.split(","):
        for cap in caps:
            result = args.work / f"result-{model}-{cap or 'none'}.json"
            result.unlink(missing_ok=True)
            cmd = [sys.executable, __file__, "--one", "--model", model, "--cap", cap or "none"]
            cmd += ["--base", str(base), "--ws", str(ws_dir), "--result", str(result)]
            cmd += ["--longest-frames", str(longest), "--device", args.device]
            for flag in ("steps", "cv_tokens", "warmup", "batch_frames", "accum_grad", "lr"):
                cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            cmd += ["--seed", str(args.seed), "--mode", args.mode]
            print(f"== {model}, cap {cap or 'none'}", flush=True)
            t = time.time()
            try:
                proc = subprocess.run(cmd, timeout=args.timeout, check=False)
                rc = proc.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
            if result.is_file():
                row = json.loads(result.read_text("utf-8"))
            else:
                row = {"model": model, "cap_gib": None if cap is None else float(cap)}
                row.update({"mode": "?", "batch_frames": 0, "accum_grad": 0, "error": f"rc {rc}"})
            row["wall_seconds"] = round(time.time() - t, 1)
            rows.append(row)
            print(json.dumps(row, indent=1), flush=True)
            if args.out:  # every finished run kept, even if a later one is cut short
                args.out.write_text(json.dumps({**report, "runs": rows}, indent=1), "utf-8")
    report["runs"] = rows
    report["table"] = table(rows)
    print(report["table"])
    if args.out:
        args.out.write_text(json.dumps(report, indent=1), "utf-8")
    bad = [r for r in rows if r.get("error") or r.get("oom_stop")]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    os.environ.pop("onnx_path", None)
    main()
