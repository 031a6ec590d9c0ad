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
from collections import Counter
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


#: The flow fuses an optimizer step's batches into one pass only where padding them to the
#: longest of them costs at most this much DiT work over padding each to its own longest.
#: Batches are shuffled after they are formed, so a step may pair many short utterances with a
#: few long ones: on lengths spread like real recordings (lognormal, 1-20 s) fusing every step
#: did 1.57x the work of padding each batch alone (1.10x with this limit, for 38 % more
#: passes), and a pass could hold 3x the frames the memory plan counted. Not lower: on a fast
#: GPU the flow's passes are host-bound, and every pass more costs time (3-12 s uniform
#: lengths: 1.26x -> 1.16x the work for 14 % more passes).
FUSE_SLACK = 1.5


def fuse_pays(lens: Sequence[Sequence[int]], quantum: int, slack: float = FUSE_SLACK) -> bool:
    """Whether batches of these lengths (one list per batch) go through the flow as one pass:
    rows x longest of them all, against each batch's own rows x longest (padded to
    ``quantum``), at most ``slack`` times."""
    alone = sum(len(b) * padded(max(b), quantum) for b in lens)
    fused = sum(len(b) for b in lens) * padded(max(max(b) for b in lens), quantum)
    return fused <= slack * alone


#: The flow's DiT work of a pass of ``rows`` sequences of ``tokens`` speech tokens, in units
#: of one token through the linear layers: attention adds a term that grows with the length
#: (two mel frames per token; dim 1024: ~12 d^2 per position for the linears against ~4 n d
#: for attention over n frames).
ATTN_TOKENS = 1536


def dit_work(rows: int, tokens: int) -> float:
    return rows * tokens * (1 + tokens / ATTN_TOKENS)


Shape = tuple[int, int]  # (rows, speech tokens) of a flow pass


def _cover_cost(counts: Counter[Shape], shapes: Sequence[Shape]) -> float:
    """The work of every pass padded to the cheapest of ``shapes`` that holds it."""
    return sum(n * dit_work(*graph_shape(s, shapes)) for s, n in counts.items())


def padded_work(shapes: Sequence[Shape], chosen: Sequence[Shape]) -> float:
    """How many times their own DiT work ``shapes`` (a run's passes) take padded to ``chosen``."""
    counts = Counter(shapes)
    return _cover_cost(counts, chosen) / _cover_cost(counts, list(counts))


def _merged(front: list[Shape], counts: Counter[Shape], k: int) -> list[Shape]:
    """``front`` (shapes no other shape holds, by length) merged, neighbour with neighbour,
    the cheapest merge first, down to ``k`` shapes that still hold every pass."""
    while len(front) > k:
        options = []
        for i in range(len(front) - 1):
            (r1, t1), (r2, t2) = front[i], front[i + 1]
            cand = [*front[:i], (max(r1, r2), max(t1, t2)), *front[i + 2 :]]
            options.append((_cover_cost(counts, cand), cand))
        front = min(options)[1]
    return front


def graph_shapes(shapes: Sequence[Shape], most: int = 8) -> list[Shape]:
    """At most ``most`` (rows, tokens) pass shapes that hold every one of ``shapes`` with the
    least padded work (:func:`dit_work`): CUDA graphs replay one recording per shape, and each
    shape compiles on its own, so a run's flow passes are padded to a few.
    How: the shapes no other holds, merged with their neighbours (by length) down to ``c``
    shapes, the cheapest merge first (every pass still fits one, and no shape is much larger
    than the passes it holds: a pass's memory), then smaller shapes added where they save the
    most work, up to ``most``; the best ``c`` wins, shapes that hold no pass dropped. On
    lengths like the benchmark's (3-12 s) 8 shapes pad to 1.2-1.3x the unpadded work, on
    lengths spread like real recordings (1-20 s) to 1.6-1.7x (a simulation of our batching)."""
    counts = Counter(shapes)
    if not counts:
        return []
    order = sorted(counts, key=lambda s: (s[1], -s[0]))
    front = [s for s in order if not any(o != s and o[0] >= s[0] and o[1] >= s[1] for o in order)]
    lengths = sorted({t for _, t in counts})
    # Candidates to add: every pass shape, and for each length the most rows up to it.
    extra = {*counts, *((max(r for r, t in counts if t <= n), n) for n in lengths)}
    best: tuple[float, list[Shape]] | None = None
    for c in range(1, min(most, len(front)) + 1):
        chosen = _merged(list(front), counts, c)
        cost = _cover_cost(counts, chosen)
        while len(chosen) < most:
            gains = [(_cover_cost(counts, [*chosen, s]), s) for s in extra if s not in chosen]
            if not gains or min(gains)[0] >= cost:
                break
            cost, s = min(gains)
            chosen.append(s)
        if best is None or cost < best[0]:
            best = (cost, chosen)
    assert best is not None
    used = {graph_shape(s, best[1]) for s in counts}  # a merged shape may have lost its passes
    return sorted(used, key=lambda s: (s[1], s[0]))


def graph_shape(shape: Shape, shapes: Sequence[Shape]) -> Shape:
    """The cheapest of ``shapes`` that holds ``shape`` (``shape`` itself where none does)."""
    fits = [s for s in shapes if s[0] >= shape[0] and s[1] >= shape[1]]
    return min(fits, key=lambda s: dit_work(*s)) if fits else shape
