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
from dataclasses import dataclass


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


@dataclass(frozen=True)
class GraphCosts:
    """What the flow's passes cost with and without CUDA graphs, for :func:`graph_plan`.
    Measured on one H100 (full-size flow, bf16, 40 min of audio, 3 epochs of ~29 passes, one
    call): without graphs an epoch took 4.9 s however little its passes held (the host
    launching kernels: ~0.165 s a pass); with graphs padded to 1, 2 or 3 shapes (3.12x, 1.85x,
    1.54x the unpadded DiT work) 3.1, 2.3 and 2.0 s, the GPU busy 2.38, 1.52 and 1.37 s: ~0.024
    s a pass plus ~8.5 us per unit of padded :func:`dit_work`. The first shape compiled in 22 s,
    less than the dynamic-shape compile the blocks take without graphs (27 s); each further
    shape 12-14 s with its recording."""

    pass_s: float = 0.165  # a pass without graphs
    graphed_pass_s: float = 0.024  # a replayed pass, besides its work...
    work_s: float = 8.5e-6  # ...and per unit of padded dit_work
    shape_s: float = 14.0  # compiling and recording a shape beyond the first
    #: no shape may hold more than this times the DiT work of the largest pass (its memory)
    memory: float = 2.5


def graph_plan(
    shapes: Sequence[Shape], most: int = 8, costs: GraphCosts = GraphCosts()
) -> tuple[list[Shape], float, float]:
    """The shapes CUDA graphs should pad a run's flow passes (``shapes``) to, chosen for the
    least predicted time (compiling them and the run's passes, :class:`GraphCosts`), the
    predicted seconds of the best plan with graphs and of the run without them. ``[]``: the
    run is faster without (a shape costs more to compile than its passes save, or padding to
    few shapes costs more than the launches it saves, as on lengths spread like real
    recordings in short runs)."""
    counts = Counter(shapes)
    n = sum(counts.values())
    without = n * costs.pass_s
    if not counts:
        return [], 0.0, 0.0
    biggest = max(dit_work(*s) for s in counts)
    best: tuple[float, list[Shape]] = (math.inf, [])
    for k in range(1, most + 1):
        chosen = graph_shapes(shapes, k)
        if len(chosen) < k and k > 1:
            break  # no more distinct shapes to add
        if max(dit_work(*s) for s in chosen) > costs.memory * biggest:
            continue
        t = (len(chosen) - 1) * costs.shape_s + n * costs.graphed_pass_s
        t += costs.work_s * _cover_cost(counts, chosen)
        if t < best[0]:
            best = (t, chosen)
    return (best[1] if best[0] < without else []), best[0], without
