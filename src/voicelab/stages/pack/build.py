"""``run_pack``: the rows of each split, shards rewritten only when their content changed, and
the data.list files."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from voicelab.blocks.kaldi import read_split
from voicelab.console import make_progress
from voicelab.errors import EnvironmentProblem, InputError, StageError
from voicelab.fsutil import (
    atomic_write_json,
    atomic_write_text,
    hash_obj,
    quick_fingerprint,
    read_json,
)
from voicelab.stages.features import (
    EMBEDDING_FILE,
    SPK_EMBEDDING_FILE,
    TOKEN_FILE,
)
from voicelab.stages.pack.options import NAME, LeftOut, PackOptions, PackResult, SplitPack
from voicelab.stages.pack.shards import (
    DEFAULT_NUM_GPUS,
    DEFAULT_NUM_WORKERS,
    MANIFEST,
    shard_count,
    shard_name,
    split_evenly,
)
from voicelab.stages.pack.write import (
    ShardRow,
    cleanup_stale,
    features_reasons,
    row_key,
    split_inputs,
    torch_load,
    verify_shard,
    write_shard,
)
from voicelab.state import stage_run, staleness
from voicelab.workspace import Workspace

log = logging.getLogger(__name__)


def _pack_split(
    ws: Workspace,
    split: str,
    opts: PackOptions,
    workers: int,
    gpus: int,
    jobs: int,
    reasons: dict[str, str],
    result: PackResult,
) -> SplitPack:
    d = ws.split_dir(split)
    utts = read_split(d)
    utt2emb = torch_load(d / EMBEDDING_FILE)
    spk2emb = torch_load(d / SPK_EMBEDDING_FILE)
    utt2tok = torch_load(d / TOKEN_FILE)
    has_instruct = (d / "instruct").is_file()
    sp = SplitPack(split, utts=len(utts))

    rows: list[ShardRow] = []
    for u in utts:
        why = None
        if u.utt not in utt2emb or u.utt not in utt2tok:
            why = reasons.get(
                f"{split}/{u.utt}", "no speech tokens/embedding from voicelab features"
            )
        elif not utt2tok[u.utt]:
            why = "empty speech token list"
        elif u.spk not in spk2emb:
            why = f"no speaker embedding for {u.spk}"
        elif has_instruct and not u.instruct:
            why = "no line in the instruct file"
        elif not Path(u.wav).is_file():
            why = f"audio file missing: {u.wav}"
        if why:
            result.left_out.append(LeftOut(split, u.utt, why))
            continue
        rows.append(
            ShardRow(
                u, list(utt2emb[u.utt]), list(spk2emb[u.spk]), list(utt2tok[u.utt]), u.instruct
            )
        )
    sp.packed = len(rows)
    if not rows:
        raise InputError(f"nothing to pack in {split}: every utterance was left out", "see above")

    n = shard_count(len(rows), workers, gpus, opts.utts_per_shard)
    if n < workers * gpus:
        result.warnings.append(
            f"{split}: {n} shard(s) for {workers} DataLoader worker(s) x {gpus} GPU(s): upstream "
            "repeats shards within an epoch when there are fewer files than workers"
        )
    chunks = split_evenly(rows, n)
    out_dir = ws.parquet_dir(split)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST
    manifest: dict[str, Any] = read_json(manifest_path, default={}) or {}
    keys = [hash_obj([i, has_instruct, [row_key(r) for r in c]]) for i, c in enumerate(chunks)]

    todo = []
    for i, (chunk, key) in enumerate(zip(chunks, keys, strict=True)):
        path = out_dir / shard_name(i)
        known = manifest.get(shard_name(i))
        if (
            not opts.force
            and known
            and known.get("key") == key
            and path.is_file()
            and known.get("file") == quick_fingerprint(path)
            and (out_dir / f"utt2parquet_{i:09d}.json").is_file()
        ):
            sp.reused += 1
            continue
        todo.append((i, chunk))

    if todo:
        # until every shard is written again, no list may name a mix of old and new shards
        for name in ("data.list", "utt2data.list", "spk2data.list"):
            (out_dir / name).unlink(missing_ok=True)
    errors: list[str] = []
    with make_progress() as prog, ThreadPoolExecutor(max_workers=jobs) as pool:
        task = prog.add_task(f"packing {split}", total=len(todo))
        futures = {
            pool.submit(write_shard, out_dir, i, chunk, has_instruct): (i, chunk)
            for i, chunk in todo
        }
        for fut in as_completed(futures):
            i, chunk = futures[fut]
            try:
                path = fut.result()
                verify_shard(path, chunk, has_instruct)
            except Exception as e:  # every worker error is collected and reported
                errors.append(f"{shard_name(i)}: {type(e).__name__}: {e}")
                log.error("pack %s %s failed: %s: %s", split, shard_name(i), type(e).__name__, e)
                manifest.pop(shard_name(i), None)
            else:
                manifest[shard_name(i)] = {"key": keys[i], "file": quick_fingerprint(path)}
                sp.written += 1
                # saved after each shard so a killed run keeps what it finished
                atomic_write_json(manifest_path, manifest)
            prog.advance(task)
    if errors:
        raise StageError(
            f"{len(errors)} of {len(todo)} {split} shard(s) failed: " + "; ".join(errors),
            "fix the cause and rerun: voicelab pack (finished shards are kept)",
        )

    cleanup_stale(out_dir, n)
    manifest = {k: v for k, v in manifest.items() if int(k[8:17]) < n}
    atomic_write_json(manifest_path, manifest)
    sp.shards = [(out_dir / shard_name(i)).resolve() for i in range(n)]
    # reused shards are checked too: the lists must never point at a broken file
    for i in range(n):
        if i not in {j for j, _ in todo}:
            verify_shard(sp.shards[i], chunks[i], has_instruct)
    sp.bytes = sum(p.stat().st_size for p in sp.shards)
    res_dir = out_dir.resolve()
    atomic_write_text(
        res_dir / "utt2data.list",
        "".join(f"{res_dir / f'utt2parquet_{i:09d}.json'}\n" for i in range(n)),
    )
    atomic_write_text(
        res_dir / "spk2data.list",
        "".join(f"{res_dir / f'spk2parquet_{i:09d}.json'}\n" for i in range(n)),
    )
    # data.list last: training only reads it, so it never names a shard that is not complete
    sp.data_list = ws.data_list(split).resolve()
    atomic_write_text(sp.data_list, "".join(f"{p}\n" for p in sp.shards))
    return sp


def run_pack(ws: Workspace, opts: PackOptions | None = None) -> PackResult:
    """Parquet shards and list files for train and dev (see the module doc)."""
    opts = opts or PackOptions()
    t0 = time.monotonic()
    try:
        import pyarrow  # noqa: F401
    except ImportError as e:  # pragma: no cover - a core dependency
        raise EnvironmentProblem("pyarrow is not installed", "pip install pyarrow") from e
    workers = int(
        opts.num_workers
        or ws.option("pack", "num_workers")
        or ws.option("train", "num_workers")
        or DEFAULT_NUM_WORKERS
    )
    # the same keys `voicelab train` reads (its [train] section), so shards match its loaders
    gpus = int(
        opts.num_gpus or ws.option("pack", "gpus") or ws.option("train", "gpus") or DEFAULT_NUM_GPUS
    )
    ups = opts.utts_per_shard or ws.option("pack", "utts_per_shard")
    opts = dataclasses.replace(opts, utts_per_shard=int(ups) if ups else None)
    jobs = max(1, opts.jobs or os.cpu_count() or 1)
    splits = [s for s in opts.splits if (ws.split_dir(s) / "wav.scp").is_file()]
    if "train" not in splits:
        raise InputError(
            f"no kaldi dir at {ws.split_dir('train')} (wav.scp missing)", "run: voicelab prepare"
        )
    inputs = {s: split_inputs(ws, s) for s in splits}
    params = {
        "utts_per_shard": opts.utts_per_shard,
        "num_workers": workers,
        "num_gpus": gpus,
        "splits": splits,
    }
    if not opts.force:
        fresh, why = staleness(ws, NAME, inputs, params)
        if fresh:
            return PackResult(skipped=True, reason=why)

    result = PackResult()
    with stage_run(ws, NAME, inputs, params) as rec:
        reasons = features_reasons(ws)
        for s in splits:
            result.splits[s] = _pack_split(ws, s, opts, workers, gpus, jobs, reasons, result)
        for w in result.warnings:
            log.warning(w)
        result.seconds = time.monotonic() - t0
        rec.outputs = [p for sp in result.splits.values() for p in (*sp.shards, sp.data_list)]
        rec.figures.update(
            {
                **{f"{s}_shards": len(sp.shards) for s, sp in result.splits.items()},
                **{f"{s}_utts": sp.packed for s, sp in result.splits.items()},
                "left_out": len(result.left_out),
                "left_out_utts": [f"{x.split}/{x.utt}: {x.reason}" for x in result.left_out][:50],
                "megabytes": round(sum(sp.bytes for sp in result.splits.values()) / 1e6, 2),
                "seconds": round(result.seconds, 2),
            }
        )
    return result
