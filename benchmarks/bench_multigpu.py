"""Several GPUs of one machine, and two "nodes" on one host: ``voicelab train --gpus 2``.

For each trainer (``--trainers``; ``upstream`` is upstream's train.py, ``voicelab`` our engine
where this checkout has it) this runs, on synthetic data built like ``bench_train.py``'s:

* **scaling** (full-size randomly initialized models, ``--models``): the same epochs on 1 GPU and
  on 2 GPUs, speech tokens per second of the last epoch, and the efficiency
  ``tokens/s(2) / (2 * tokens/s(1))``;
* **correctness** on the tiny model (fast): a 2-GPU run that records which utterances each rank
  trained on (the launcher's ``VOICELAB_SEEN_UTTS``), so the count per epoch across ranks is
  exact; checkpoints written once, by rank 0; ``--resume`` on 2 GPUs; the 2-GPU checkpoint
  resumed on 1 GPU; two torchrun launches as node 0 and node 1 over 127.0.0.1 with one GPU each;
  and, for ``upstream``, ``--engine deepspeed`` on 2 GPUs.

While a run trains, nvidia-smi is sampled every 0.5 s for each GPU's utilization and memory.
Every figure is written to ``--out`` (JSON) as soon as it exists, so a run cut short keeps what
it measured. Needs a machine with 2 GPUs, the vendor and the ``train`` extra::

    python benchmarks/bench_multigpu.py --minutes 10 --out multigpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _bench_train() -> Any:
    """bench_train.py's model and data builders (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_train", HERE / "bench_train.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class GpuSampler:
    """Utilization and memory of every GPU from nvidia-smi, every 0.5 s, while in the block."""

    def __init__(self) -> None:
        self.samples: list[tuple[int, int, int]] = []  # (gpu, util %, memory MiB)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        exe = shutil.which("nvidia-smi")
        query = "--query-gpu=index,utilization.gpu,memory.used"
        while exe and not self._stop.is_set():
            with contextlib.suppress(subprocess.SubprocessError, OSError, ValueError):
                out = subprocess.run(
                    [exe, query, "--format=csv,noheader,nounits"],
                    capture_output=True, text=True, timeout=10, check=False,
                ).stdout  # fmt: skip
                for line in out.strip().splitlines():
                    i, u, m = (int(x) for x in line.split(","))
                    self.samples.append((i, u, m))
            self._stop.wait(0.5)

    def __enter__(self) -> GpuSampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(timeout=5)

    def summary(self) -> dict[str, Any]:
        """Per GPU: peak memory, mean utilization over busy samples (> 0 %), and the share of
        samples that were busy (a GPU that never worked shows 0)."""
        out: dict[str, Any] = {}
        for gpu in sorted({s[0] for s in self.samples}):
            rows = [s for s in self.samples if s[0] == gpu]
            busy = [u for _, u, _ in rows if u > 0]
            out[str(gpu)] = {
                "peak_mib": max(m for _, _, m in rows),
                "mean_util_busy": round(sum(busy) / len(busy), 1) if busy else 0.0,
                "busy_share": round(len(busy) / len(rows), 2),
            }
        return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _opts(tr: Any, trainer: str, **kw: Any) -> Any:
    fields = tr.TrainOptions.__dataclass_fields__
    if "trainer" in fields:
        kw["trainer"] = trainer
    elif trainer != "upstream":
        raise SystemExit(f"this checkout has no --trainer {trainer}")
    return tr.TrainOptions(device="cuda", **kw)


def _epoch_rates(tr: Any, run_dir: Path, tokens: int) -> dict[str, Any]:
    """Seconds from each epoch's start to its CV and speech tokens/s; ``tokens_per_s`` is the
    last epoch's (the first includes warm-up). Upstream's epochs on several GPUs end with a wait
    of up to ``--timeout`` s in ``cosyvoice_join`` when ranks got uneven batches: it is counted."""
    rows = tr.read_train_log(run_dir / "train_log.jsonl")
    starts = {r["epoch"]: r["time"] for r in rows if r.get("event") == "epoch"}
    cvs = {r["epoch"]: r["time"] for r in rows if r.get("tag") == "CV"}
    secs = {e: cvs[e] - starts[e] for e in sorted(starts) if e in cvs}
    if not secs:
        return {}
    last = max(secs)
    return {
        "epoch_seconds": [round(v, 2) for v in secs.values()],
        "tokens_per_s": round(tokens / secs[last], 1),
    }


def _saves(run_dir: Path) -> list[tuple[str, str]]:
    log = (run_dir / "train.log").read_text("utf-8", errors="replace")
    found = re.findall(r"\[Rank (\d+)\] Checkpoint: save to checkpoint (\S+)", log)
    return [(r, Path(p).name) for r, p in found]


class Report:
    def __init__(self, out: Path | None) -> None:
        self.data: dict[str, Any] = {}
        self.out = out

    def put(self, *keys: str, value: Any) -> None:
        d = self.data
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = value
        print(json.dumps({"/".join(keys): value}), flush=True)
        if self.out:
            tmp = self.out.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, indent=1), "utf-8")
            os.replace(tmp, self.out)


def scaling(tr: Any, ws: Any, trainer: str, model: str, tokens: int, epochs: int, rep: Report):
    for gpus in (1, 2):
        ids = "0" if gpus == 1 else "0,1"
        with GpuSampler() as gs:
            res = tr.run_train(
                ws, model, _opts(tr, trainer, gpus=gpus, gpu_ids=ids, epochs=epochs, new=True)
            )
        rate = _epoch_rates(tr, res.run_dir, tokens)
        rep.put(trainer, "scaling", model, f"{gpus}gpu", value={**rate, "gpus": gs.summary()})
    one = rep.data[trainer]["scaling"][model]["1gpu"].get("tokens_per_s")
    two = rep.data[trainer]["scaling"][model]["2gpu"].get("tokens_per_s")
    if one and two:
        rep.put(trainer, "scaling", model, "efficiency", value=round(two / (2 * one), 3))


#: Batch frames for the tiny model: bench_train's synthetic clips reach 12 s (600 frames), above
#: the tiny model's 500; preflight refuses clips longer than a batch.
TINY_FRAMES = 1200


def correctness(
    tr: Any, ws: Any, trainer: str, work: Path, rep: Report, join_timeout: int = 60
) -> None:
    from voicelab.upstream.launcher import SEEN_UTTS_ENV, read_seen_utts

    tiny = {"batch_frames": TINY_FRAMES, "timeout": join_timeout}
    shards, _ = tr.read_shards(ws.data_list("train"))
    every = {u.utt for s in shards for u in s.utts}
    seen_dir = work / f"seen-{trainer}"
    shutil.rmtree(seen_dir, ignore_errors=True)
    os.environ[SEEN_UTTS_ENV] = str(seen_dir)
    try:
        with GpuSampler() as gs:
            res = tr.run_train(ws, "llm", _opts(tr, trainer, gpus=2, epochs=2, new=True, **tiny))
    finally:
        os.environ.pop(SEEN_UTTS_ENV, None)
    counts = {}
    for (tag, epoch), ranks in sorted(read_seen_utts(seen_dir).items()):
        if tag != "TRAIN":
            continue
        flat = [u for r in ranks.values() for u in r]
        counts[f"epoch{epoch}"] = {
            "per_rank": {str(r): len(v) for r, v in ranks.items()},
            "distinct": len(set(flat)),
            "twice_or_more": len(flat) - len(set(flat)),
            "unseen": len(every - set(flat)),
            "total": len(every),
        }
    rep.put(trainer, "tiny", "two_gpu", value={"utterances": counts, "gpus": gs.summary()})
    rep.put(
        trainer, "tiny", "checkpoint_writers", value=sorted({r for r, _ in _saves(res.run_dir)})
    )
    res = tr.run_train(ws, "llm", _opts(tr, trainer, gpus=2, epochs=3, resume=True, **tiny))
    rep.put(trainer, "tiny", "resume_2gpu", value={"epochs_done": res.epochs_done})
    res = tr.run_train(
        ws,
        "llm",
        _opts(tr, trainer, gpus=1, gpu_ids="0", epochs=4, resume=True, **tiny),
    )
    rep.put(trainer, "tiny", "resume_on_1gpu", value={"epochs_done": res.epochs_done})
    rep.put(trainer, "tiny", "two_nodes", value=two_nodes(tr, ws, trainer, work))
    if trainer == "upstream":
        res = tr.run_train(
            ws,
            "llm",
            _opts(
                tr,
                trainer,
                gpus=2,
                epochs=1,
                new=True,
                engine="deepspeed",
                **tiny,
            ),
        )
        rep.put(trainer, "tiny", "deepspeed_2gpu", value={"epochs_done": res.epochs_done})


def two_nodes(tr: Any, ws: Any, trainer: str, work: Path) -> dict[str, Any]:
    """Node 0 (GPU 0) and node 1 (GPU 1): two ``voicelab train`` processes over 127.0.0.1."""
    from voicelab.workspace import Workspace

    port = _free_port()
    procs, roots = [], []
    for node in (0, 1):
        root = work / f"node{node}-{trainer}"
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(ws.root, root, ignore=shutil.ignore_patterns("exp", "tensorboard"))
        roots.append(root)
        argv = [
            sys.executable, "-m", "voicelab", "-w", str(root), "train", "llm", "--device", "cuda",
            "--gpus", "1", "--gpu-ids", str(node), "--epochs", "1", "--nnodes", "2",
            "--batch-frames", str(TINY_FRAMES),
            "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port),
        ]  # fmt: skip
        if "trainer" in tr.TrainOptions.__dataclass_fields__:
            argv += ["--trainer", trainer]
        log = (work / f"node{node}-{trainer}.log").open("w")
        procs.append((subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), log))
    rcs = []
    for p, log in procs:
        rcs.append(p.wait(timeout=600))
        log.close()
    out: dict[str, Any] = {"returncodes": rcs}
    for node, root in enumerate(roots):
        logs = list(Workspace.open(root).exp_root.glob("*/llm/*/train.log"))
        ckpts = sorted(p.name for log in logs for p in log.parent.glob("epoch_*_whole.pt"))
        out[f"node{node}"] = {"run_dirs": len(logs), "checkpoints": ckpts}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/voicelab-bench-multigpu"))
    ap.add_argument("--minutes", type=float, default=10.0, help="train audio (synthetic)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--trainers", default="upstream,voicelab")
    ap.add_argument("--models", default="llm,flow")
    ap.add_argument("--skip", default="", help="comma list of: scaling, tiny")
    ap.add_argument(
        "--join-timeout", type=int, default=60,
        help="upstream's --timeout in the tiny runs (its end-of-epoch wait for uneven ranks)",
    )  # fmt: skip
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from voicelab.stages import train as tr
    from voicelab.upstream.tinymodel import build_tiny_model
    from voicelab.vendor import cosyvoice_runtime
    from voicelab.workspace import Workspace

    bt = _bench_train()
    vendor = cosyvoice_runtime()
    sys.path[:0] = [str(p) for p in vendor.import_paths]
    rep = Report(args.out)
    rep.put("gpu", value=subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
        capture_output=True, text=True, check=False,
    ).stdout.strip().splitlines())  # fmt: skip
    skip = set(filter(None, args.skip.split(",")))
    full_ws = tiny_ws = None
    if "scaling" not in skip:
        base = bt.build_base(args.work / "base", vendor.root)
        full_ws = Workspace.init(args.work / "ws-full", "bench")
        full_ws.set_option("model", "base_dir", str(base))
        stats = bt.build_data(full_ws, args.minutes, shards=16)
        rep.put("data_full", value=stats)
    if "tiny" not in skip:
        tiny = build_tiny_model(args.work / "tiny")
        tiny_ws = Workspace.init(args.work / "ws-tiny", "bench")
        tiny_ws.set_option("model", "base_dir", str(tiny))
        rep.put("data_tiny", value=bt.build_data(tiny_ws, 3, shards=8))
    for trainer in args.trainers.split(","):
        # Correctness first: it is quick, and what a run cut short must not lose.
        if tiny_ws is not None:
            correctness(tr, tiny_ws, trainer, args.work, rep, args.join_timeout)
        if full_ws is not None:
            for model in args.models.split(","):
                tokens = rep.data["data_full"]["train"]["speech_tokens"]
                scaling(tr, full_ws, trainer, model, tokens, args.epochs, rep)


if __name__ == "__main__":
    os.environ.pop("onnx_path", None)
    sys.exit(main())
