"""The work: utterances through the front end and both models on worker threads, batched for the
tokenizer, one BLAS thread each."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import numpy as np

from voicelab.blocks import audio as au
from voicelab.console import make_progress
from voicelab.stages.features.cache import FeatureCache
from voicelab.stages.features.encoders import Models
from voicelab.stages.features.frontend import (
    MAX_SECONDS,
    MIN_SAMPLE_RATE,
    FrontEnd,
    front_end,
    load_audio,
)


def _compute(models: Models, jobs: list[tuple[str, str]]) -> list[tuple[str, dict[str, Any]]]:
    """Front end and models for a batch of (sha, wav path); tokens batched."""
    done: list[tuple[str, dict[str, Any]]] = []
    ready: list[tuple[str, FrontEnd, list[float]]] = []
    for sha, path in jobs:
        try:
            x, sr = load_audio(path)
        except au.AudioError as e:
            done.append((sha, {"excluded": f"unreadable audio ({e.reason}): {e.detail[:120]}"}))
            continue
        seconds = len(x) / sr if sr else 0.0
        if sr < MIN_SAMPLE_RATE:
            reason = (
                f"sample rate {sr} Hz is below {MIN_SAMPLE_RATE} Hz: upstream's training "
                "pipeline drops such audio (resample it, or rerun voicelab prepare)"
            )
            done.append((sha, {"excluded": reason, "seconds": seconds}))
            continue
        if seconds > MAX_SECONDS:
            done.append(
                (
                    sha,
                    {
                        "excluded": f"longer than {MAX_SECONDS:.0f} s ({seconds:.1f} s), the "
                        "speech tokenizer's limit: split it or leave it out",
                        "seconds": seconds,
                    },
                )
            )
            continue
        if len(x) == 0 or not np.isfinite(x).all():
            done.append((sha, {"excluded": "empty or invalid audio", "seconds": seconds}))
            continue
        fe = front_end(x, sr)
        if fe.fbank.shape[0] == 0:
            done.append(
                (sha, {"excluded": f"too short ({seconds * 1000:.0f} ms)", "seconds": seconds})
            )
            continue
        ready.append((sha, fe, models.embed(fe.fbank)))
    if ready:
        tokens = models.tokenize([fe.mel for _, fe, _ in ready])
        for (sha, fe, emb), tok in zip(ready, tokens, strict=True):
            done.append(
                (
                    sha,
                    {
                        "model": models.key,
                        "emb": emb,
                        "tok": tok,
                        "n24": fe.n24,
                        "padded24": fe.padded24,
                        "seconds": fe.seconds,
                    },
                )
            )
    return done


def _batches(jobs: list[tuple[str, str, float]], size: int) -> Iterable[list[tuple[str, str]]]:
    """Jobs sorted by size (a proxy for duration) and cut into batches, so padding is small."""
    ordered = sorted(jobs, key=lambda j: j[2])
    for i in range(0, len(ordered), size):
        yield [(sha, path) for sha, path, _ in ordered[i : i + size]]


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """One BLAS thread per worker while features run: the front end's small matrix products
    are fastest single-threaded, and OpenBLAS's own threads under a thread pool on a busy
    machine made it 2-3x slower (measured, see benchmarks/bench_features.py)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: only speed depends on it
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def run_jobs(
    models: Models,
    cache: FeatureCache,
    jobs: list[tuple[str, str, float]],
    threads: int,
    token_batch: int,
) -> int:
    """Run the jobs on a thread pool, storing each result in the cache as it arrives."""
    if not jobs:
        return 0
    batches = list(_batches(jobs, token_batch))
    computed = 0
    with (
        one_blas_thread(),
        make_progress() as prog,
        ThreadPoolExecutor(max_workers=threads) as pool,
    ):
        task = prog.add_task("embeddings + speech tokens", total=len(jobs))
        pending: set[Future[list[tuple[str, dict[str, Any]]]]] = set()
        it = iter(batches)
        try:
            # Keep a bounded number of batches in flight so results stream into the cache.
            for b in it:
                pending.add(pool.submit(_compute, models, b))
                if len(pending) >= 2 * threads:
                    break
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    for sha, entry in fut.result():
                        cache.put(sha, entry)
                        computed += 1
                        prog.advance(task)
                    nxt = next(it, None)
                    if nxt is not None:
                        pending.add(pool.submit(_compute, models, nxt))
                cache.save()
        finally:
            for fut in pending:
                fut.cancel()
            cache.save(force=True)
    return computed
