"""How long epochs wait for the checkpoint writer when they end faster than it writes.

The engine hands each epoch's checkpoint to :class:`~voicelab.upstream.engine.checkpoint.AsyncSaver`
(weights, and a resume state of optimizer moments twice their size) and trains on; the next
epoch's save waits for the writer of the one before. This runs the writer alone on this machine's
disk (files fsync'd as in training): ``--epochs`` epochs of ``--epoch-seconds`` each (the training
thread sleeps: no GPU, no model), states of ``--weights-mib`` of weights, once with the engine's
rule (a resume state the next epoch supersedes before its write has finished is dropped, the
write stopped part-way) and once writing every resume state (the rule before), and reports the
seconds each save waited.

Measured on a 2-core VM's virtual disk (512 MiB of weights + 1 GiB of moments in 64 tensors
each, 1 s epochs, 10 epochs): each later save waited 0.48 s on average with the rule (9 resume
states dropped, the last written) against 2.98 s writing every one; 19.7 against 43.1 s in all.
The first try kept every resume state whose write had begun (this benchmark's first form, each
state one tensor): 2.39 against 2.84 s, one dropped, because the writer begins the resume state
as soon as the weights are out, before the next epoch ends; hence the write that stops part-way.

Run::

    python benchmarks/bench_checkpoint.py --weights-mib 512 --epoch-seconds 1 --epochs 10
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def one_run(
    root: Path, weights_mib: int, epoch_s: float, epochs: int, skip: bool
) -> dict[str, Any]:
    import torch

    from voicelab.upstream.engine import checkpoint

    run = root / ("skip" if skip else "every")
    saver = checkpoint.AsyncSaver(run, keep=2, on_saved=lambda pt: None, use_fork=False)
    if not skip:
        saver.resume_max_age = 0.0  # every resume state written: the rule before
    # As a model's: many tensors (the writer's records), the Adam moments two per parameter.
    params = 64
    n = weights_mib * (1 << 20) // 4 // params
    weights = {f"p{i}": torch.randn(n) for i in range(params)}
    moments = {i: {"exp_avg": torch.randn(n), "exp_avg_sq": torch.randn(n)} for i in range(params)}
    waits = []
    t0 = time.time()
    for e in range(epochs):
        time.sleep(epoch_s)  # the epoch's training
        t = time.time()
        saver.make_room(0)
        w = {**checkpoint.cpu_tree(weights), "epoch": e}  # the snapshot the writer owns
        res = (checkpoint.resume_path(run, e), {"state": checkpoint.cpu_tree(moments)})
        saver.save(checkpoint.whole_name(e), w, {"epoch": e}, res)
        waits.append(round(time.time() - t, 2))
        rule = "dropping superseded" if skip else "every resume state"
        print(f"{rule}: epoch {e + 1}/{epochs} waited {waits[-1]:.2f} s", file=sys.stderr)
    t = time.time()
    saver.wait()
    final = time.time() - t
    assert checkpoint.resume_path(run, epochs - 1).is_file()
    return {
        "save_waits_s": waits,
        "mean_wait_s": round(sum(waits[1:]) / max(1, epochs - 1), 2),
        "final_wait_s": round(final, 2),
        "wall_s": round(time.time() - t0, 1),
        "resume_states_dropped": saver.skipped_resume,
    }


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text}: give a number above 0")
        return value

    return parse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights-mib", type=_positive(int), default=512)
    ap.add_argument("--epoch-seconds", type=_positive(float), default=1.0)
    ap.add_argument("--epochs", type=_positive(int), default=10)
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="vl-bench-ckpt-", dir=args.dir))
    sizes = (args.weights_mib, args.epoch_seconds, args.epochs)
    try:
        report = {
            "weights_mib": args.weights_mib,
            "epoch_seconds": args.epoch_seconds,
            "epochs": args.epochs,
            "every_resume_state": one_run(root, *sizes, skip=False),
            "superseded_dropped": one_run(root, *sizes, skip=True),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", "utf-8")


if __name__ == "__main__":
    main()
