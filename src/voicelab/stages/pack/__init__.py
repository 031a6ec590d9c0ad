"""``voicelab pack``: parquet shards for upstream's training data pipeline.

Replaces upstream's ``tools/make_parquet_list.py``. For each of ``train`` and ``dev`` it writes
into ``<split>/parquet/``:

- ``parquet_{i:09d}.tar``: parquet (despite the name) with upstream's columns and arrow types:
  ``utt`` string, ``audio_data`` binary (the whole audio file's bytes), ``wav`` string, ``text``
  string, ``spk`` string, ``utt_embedding`` list<double>, ``spk_embedding`` list<double> (the
  speaker mean), ``speech_token`` list<int64>, ``instruct`` string;
- ``utt2parquet_{i:09d}.json`` and ``spk2parquet_{i:09d}.json`` (upstream leaves the latter
  empty through a bug; nothing reads it);
- ``data.list``, ``utt2data.list``, ``spk2data.list``: absolute paths, one per line.

Differences from upstream, on purpose:
- the shard count gives every DataLoader worker on every GPU at least two shards (upstream's
  sampler repeats shards within an epoch when there are fewer files than workers);
- shards are written in parallel with every worker error reported (upstream's pool swallows
  them), each file atomically, and then read back and checked;
- utterances that ``voicelab features`` excluded (no tokens or embedding) are left out with a
  reason instead of failing with a KeyError;
- pandas is not needed: pyarrow writes the schema pandas would produce, minus the pandas
  metadata that upstream's reader (``iter_batches`` then ``to_pandas``) does not need.

Reruns skip unchanged inputs; shards whose rows did not change are not rewritten, so an
interrupted run resumes with the shards it had not finished.

The package, by job: ``shards`` (the layout upstream reads), ``options``, ``write`` (shards and
their maps), ``build`` (``run_pack``) and ``stage`` (the stage contract). This module
re-exports the names other packages use.
"""

from voicelab.stages.pack.build import run_pack
from voicelab.stages.pack.options import NAME, LeftOut, PackOptions, PackResult, SplitPack
from voicelab.stages.pack.shards import (
    COLUMNS,
    MANIFEST,
    parquet_schema,
    shard_count,
    shard_name,
    split_evenly,
)
from voicelab.stages.pack.stage import STAGE, Options
from voicelab.stages.pack.write import verify_shard

__all__ = [
    "COLUMNS", "MANIFEST", "NAME", "STAGE", "LeftOut", "Options", "PackOptions", "PackResult",
    "SplitPack", "parquet_schema", "run_pack", "shard_count", "shard_name", "split_evenly",
    "verify_shard",
]  # fmt: skip
