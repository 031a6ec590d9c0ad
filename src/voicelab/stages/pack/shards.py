"""The shard layout upstream's reader expects: the parquet columns and schema, how many shards
for the DataLoader workers and GPUs, and their names."""

from __future__ import annotations

import math
import re
from typing import Any

MANIFEST = ".shards.json"

DEFAULT_MAX_UTTS_PER_SHARD = 1000  # upstream's --num_utts_per_parquet default

DEFAULT_NUM_WORKERS = 4

DEFAULT_NUM_GPUS = 1

SHARD_RE = re.compile(r"^(?:parquet|utt2parquet|spk2parquet)_(\d{9})\.(?:tar|json)$")

# (column, arrow type name) in upstream's order; see parquet_schema().
COLUMNS = (
    ("utt", "string"),
    ("audio_data", "binary"),
    ("wav", "string"),
    ("text", "string"),
    ("spk", "string"),
    ("utt_embedding", "list<double>"),
    ("spk_embedding", "list<double>"),
    ("speech_token", "list<int64>"),
    ("instruct", "string"),
)


def parquet_schema(with_instruct: bool = True) -> Any:
    """The arrow schema of upstream's shards (what ``pd.DataFrame(...).to_parquet`` gives for
    str, bytes, lists of floats and lists of ints), without pandas metadata."""
    import pyarrow as pa

    types = {
        "string": pa.string(),
        "binary": pa.binary(),
        "list<double>": pa.list_(pa.float64()),
        "list<int64>": pa.list_(pa.int64()),
    }
    return pa.schema(
        [pa.field(name, types[t]) for name, t in COLUMNS if with_instruct or name != "instruct"]
    )


def shard_count(
    n_utts: int,
    num_workers: int = DEFAULT_NUM_WORKERS,
    num_gpus: int = DEFAULT_NUM_GPUS,
    utts_per_shard: int | None = None,
) -> int:
    """How many shards ``n_utts`` utterances go into.

    With ``utts_per_shard`` (the notes' ``--num_utts_per_parquet``): ``ceil(n / utts_per_shard)``.
    Otherwise at least two per DataLoader worker on every GPU (``2 * workers * gpus``), at most
    ``DEFAULT_MAX_UTTS_PER_SHARD`` utterances per shard, and never more shards than utterances.
    """
    if n_utts <= 0:
        return 0
    if utts_per_shard:
        return math.ceil(n_utts / max(1, utts_per_shard))
    wanted = max(2 * max(1, num_workers) * max(1, num_gpus), 1)
    return min(n_utts, max(wanted, math.ceil(n_utts / DEFAULT_MAX_UTTS_PER_SHARD)))


def split_evenly(items: list[Any], n: int) -> list[list[Any]]:
    """``n`` consecutive chunks whose sizes differ by at most one (order kept)."""
    q, r = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + q + (1 if i < r else 0)
        out.append(items[start:end])
        start = end
    return out


def shard_name(i: int) -> str:
    return f"parquet_{i:09d}.tar"
