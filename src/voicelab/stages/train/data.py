"""Facts of the packed data training reads: shards, utterance lengths, text token estimates."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

from voicelab.blocks.records import TOKEN_RATE, PackedUtt, Shard
from voicelab.fsutil import (
    read_user_text,
)
from voicelab.upstream import train_config as tc
from voicelab.upstream.data_rules import REQUIRED_COLUMNS

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")


def estimate_text_tokens(text: str) -> int:
    """Qwen2 BPE token count without the tokenizer: ~1 per CJK character, ~1 per 4 others."""
    cjk = len(_CJK.findall(text))
    rest = len(text) - cjk
    return cjk + math.ceil(rest / 4)


def read_list(path: Path) -> list[Path]:
    return [Path(line.strip()) for line in read_user_text(path).splitlines() if line.strip()]


def read_shards(
    list_file: Path, count_tokens: Callable[[str], int] = estimate_text_tokens
) -> tuple[list[Shard], list[str]]:
    """(shards, problems) of a data.list: utterance lengths from the packed speech tokens."""
    import pyarrow.parquet as pq

    shards: list[Shard] = []
    problems: list[str] = []
    for p in read_list(list_file):
        if not p.is_file():
            problems.append(f"{list_file} lists {p}, which does not exist")
            continue
        try:
            pf = pq.ParquetFile(p)
        except Exception as e:  # any unreadable file is reported the same way
            problems.append(f"{p} is not a readable parquet file ({type(e).__name__})")
            continue
        names = set(pf.schema_arrow.names)
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if missing:
            problems.append(f"{p} lacks column(s) {', '.join(missing)}")
            continue
        cols = ["utt", "text", "speech_token"] + (["instruct"] if "instruct" in names else [])
        utts: list[PackedUtt] = []
        for batch in pf.iter_batches(columns=cols, batch_size=512):
            d = batch.to_pydict()
            for i, utt in enumerate(d["utt"]):
                n_tok = len(d["speech_token"][i] or [])
                text_tokens = count_tokens(d["text"][i] or "")
                utts.append(PackedUtt(utt, n_tok / TOKEN_RATE, text_tokens, n_tok))
        shards.append(Shard(p, utts))
    return shards, problems


def has_instruct(list_file: Path) -> bool:
    import pyarrow.parquet as pq

    files = read_list(list_file)
    return bool(files) and all(
        "instruct" in pq.ParquetFile(f).schema_arrow.names for f in files if f.is_file()
    )


def default_epochs(train_seconds: float) -> int:
    """Epochs sized to the data: 10, more for very small sets, fewer for large ones."""
    hours = train_seconds / 3600
    if hours < 1 / 3:
        return 20
    if hours > 5:
        return 5
    return tc.DEFAULT_EPOCHS
