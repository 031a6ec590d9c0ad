"""Token-budget batches: upstream's rule (shuffle, sort in windows, pad-aware frame budget),
split so every rank gets the same whole number of optimizer steps.

Upstream's pipeline shuffles utterances, sorts windows of ``sort_size`` by length and closes a
batch when ``longest * count`` would pass ``max_frames_in_batch``. We keep that rule, so a
batch (and an optimizer step of ``accum_grad`` batches) holds the same number of frames as on
upstream's trainer. Two things are ours: the RNG (a private one seeded by seed and epoch, so the
global ``random`` stream stays the model's, as upstream's forward draws from it), and splitting
the largest batches until every rank has the same multiple of ``accum_grad`` batches: each
utterance is used once per epoch, no rank waits at a join, and no half-accumulated gradient is
left at an epoch's end (which would make a resumed run differ).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


def dynamic_batches(
    order: Sequence[int], frames: Sequence[int], max_frames: int
) -> list[list[int]]:
    """Upstream's ``dynamic_batch`` over ``order`` (never an empty batch)."""
    out: list[list[int]] = []
    buf: list[int] = []
    longest = 0
    for i in order:
        f = frames[i]
        longest = max(longest, f)
        if buf and longest * (len(buf) + 1) > max_frames:
            out.append(buf)
            buf, longest = [i], f
        else:
            buf.append(i)
    if buf:
        out.append(buf)
    return out


def split_to_multiple(batches: list[list[int]], multiple: int) -> list[list[int]]:
    """Split the largest batches in two until ``len(batches)`` is a multiple of ``multiple``.
    If no batch can be split any more, the last batches are dropped (tiny sets only)."""
    out = [list(b) for b in batches]
    while len(out) % multiple:
        big = max(range(len(out)), key=lambda k: len(out[k]), default=None)
        if big is None or len(out[big]) < 2:
            return out[: len(out) // multiple * multiple]
        b = out[big]
        half = len(b) // 2
        out[big : big + 1] = [b[:half], b[half:]]
    return out


def epoch_batches(
    frames: Sequence[int],
    max_frames: int,
    *,
    epoch: int,
    seed: int = 1986,
    sort_size: int = 500,
    shuffle: bool = True,
    world: int = 1,
    accum: int = 1,
) -> list[list[int]]:
    """Every batch of one epoch (indices into ``frames``), in training order, before sharding."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(frames)))
    if shuffle:
        rng.shuffle(order)
    batches: list[list[int]] = []
    for s in range(0, len(order), max(1, sort_size)):
        window = sorted(order[s : s + sort_size], key=lambda i: frames[i])
        batches += dynamic_batches(window, frames, max_frames)
    if shuffle:
        rng.shuffle(batches)
    return split_to_multiple(batches, max(1, world) * max(1, accum))


def shard(batches: Sequence[list[int]], rank: int, world: int) -> list[list[int]]:
    """This rank's batches (round robin: ranks take turns, so their shapes stay alike)."""
    return [b for k, b in enumerate(batches) if k % world == rank]


def padded(n: int, quantum: int) -> int:
    """``n`` rounded up to a multiple of ``quantum``: fewer distinct shapes per epoch."""
    q = max(1, quantum)
    return max(q, math.ceil(n / q) * q)


def optimizer_steps(batches: int, accum: int) -> int:
    """Optimizer steps an epoch of ``batches`` batches makes (upstream: one per ``accum``)."""
    return batches // max(1, accum)
