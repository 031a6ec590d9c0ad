"""Upstream's data pipeline rules: the parquet columns its reader needs, ``processor.filter``
and its ``sort`` + dynamic ``batch``, reproduced to size batches and check data before launch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from voicelab.blocks.records import PackedUtt, Shard
from voicelab.upstream import train_config as tc

REQUIRED_COLUMNS = ("utt", "audio_data", "text", "speech_token", "utt_embedding", "spk_embedding")


@dataclass
class FilterRules:
    """Upstream ``processor.filter`` settings (lengths in 10 ms frames, text in tokens)."""

    min_length: float = 100
    max_length: float = 6000
    token_min_length: int = 1
    token_max_length: int = 200
    min_ratio: float = 0.0005
    max_ratio: float = 1.0

    @classmethod
    def from_config(cls, values: dict[str, Any]) -> FilterRules:
        f = tc.get_value(values, tc.FILTER) or {}
        d = cls()

        def num(key: str, default: float) -> float:
            v = tc.as_number(f.get(key)) if isinstance(f, dict) else None
            return default if v is None else v

        return cls(
            num("min_length", d.min_length),
            num("max_length", d.max_length),
            int(num("token_min_length", d.token_min_length)),
            int(num("token_max_length", d.token_max_length)),
            num("min_output_input_ratio", d.min_ratio),
            num("max_output_input_ratio", d.max_ratio),
        )

    def keeps(self, u: PackedUtt) -> bool:
        frames = u.seconds * 100
        if u.speech_tokens == 0 or not (self.min_length <= frames <= self.max_length):
            return False
        if not (self.token_min_length <= u.text_tokens <= self.token_max_length):
            return False
        ratio = u.text_tokens / frames if frames else 0.0
        return self.min_ratio <= ratio <= self.max_ratio


def dynamic_batches(frames: list[int], max_frames: int, sort_size: int = 500) -> int:
    """How many batches upstream's ``sort`` + dynamic ``batch`` make of one worker's stream."""
    n = 0
    for i in range(0, len(frames), sort_size):
        chunk = sorted(frames[i : i + sort_size])
        count, longest = 0, 0
        for f in chunk:
            longest = max(longest, f)
            if count and longest * (count + 1) > max_frames:
                n += 1
                count, longest = 0, f
            count += 1
        n += 1 if count else 0
    return n


def batches_per_rank(
    shards: list[Shard], rules: FilterRules, max_frames: int, world: int, workers: int
) -> list[int]:
    """Batches each rank gets per epoch, by upstream's sharding (ranks, then workers)."""
    idx = list(range(len(shards)))
    if not idx:
        return [0] * world
    if len(idx) < world:
        idx = (idx * math.ceil(world / len(idx)))[:world]
    out = []
    for r in range(world):
        mine = idx[r::world]
        nw = max(1, workers)
        if len(mine) < nw:
            mine = (mine * math.ceil(nw / len(mine)))[:nw]
        total = 0
        for w in range(nw):
            frames = [u.frames for i in mine[w::nw] for u in shards[i].utts if rules.keeps(u)]
            total += dynamic_batches(frames, max_frames)
        out.append(total)
    return out
