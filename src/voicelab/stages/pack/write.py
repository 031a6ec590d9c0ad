"""Writing and checking shards: one parquet file plus its utt2parquet/spk2parquet json, each
atomically; what features left out; stale shards removed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicelab.blocks import audio as au
from voicelab.blocks.kaldi import read_split
from voicelab.blocks.records import Utt
from voicelab.errors import EnvironmentProblem, StageError, WorkspaceError
from voicelab.fsutil import (
    atomic_path,
    atomic_write_text,
    hash_obj,
    quick_fingerprint,
)
from voicelab.stages.features import (
    EMBEDDING_FILE,
    SPK_EMBEDDING_FILE,
    TOKEN_FILE,
)
from voicelab.stages.pack.shards import SHARD_RE, parquet_schema, shard_name
from voicelab.state import load_record
from voicelab.workspace import Workspace


def torch_load(path: Path) -> dict[str, Any]:
    try:
        import torch
    except ImportError as e:
        raise EnvironmentProblem(
            "torch is needed to read the .pt feature files", "pip install 'voicelab[features]'"
        ) from e
    if not path.is_file():
        raise WorkspaceError(f"{path.name} is missing in {path.parent}", "run: voicelab features")
    obj = torch.load(path, weights_only=True)
    if not isinstance(obj, dict):
        raise WorkspaceError(f"{path} does not hold a dict", "rerun: voicelab features --force")
    return obj


def features_reasons(ws: Workspace) -> dict[str, str]:
    """Why ``voicelab features`` excluded utterances, from its stage record."""
    rec = load_record(ws, "features")
    out: dict[str, str] = {}
    for line in (rec.figures.get("excluded_utts", []) if rec else []) or []:
        key, _, reason = str(line).partition(": ")
        out[key] = reason
    return out


def split_inputs(ws: Workspace, split: str) -> list[Any]:
    """Cheap identity of everything a split's shards are built from."""
    d = ws.split_dir(split)
    files = [
        "wav.scp",
        "text",
        "utt2spk",
        "instruct",
        EMBEDDING_FILE,
        SPK_EMBEDDING_FILE,
        TOKEN_FILE,
    ]
    ids: list[Any] = [[f, quick_fingerprint(d / f)] for f in files if (d / f).is_file()]
    for u in read_split(d):
        try:
            ids.append([u.utt, quick_fingerprint(u.wav)])
        except FileNotFoundError:
            ids.append([u.utt, "missing"])
    return ids


@dataclass
class ShardRow:
    utt: Utt
    emb: list[float]
    spk_emb: list[float]
    tokens: list[int]
    instruct: str | None


def row_key(r: ShardRow) -> Any:
    return [
        r.utt.utt,
        str(r.utt.wav),
        quick_fingerprint(r.utt.wav),
        r.utt.text,
        r.utt.spk,
        r.instruct,
        hash_obj(r.emb),
        hash_obj(r.spk_emb),
        hash_obj(r.tokens),
    ]


def write_shard(out_dir: Path, index: int, rows: list[ShardRow], with_instruct: bool) -> Path:
    """One parquet shard plus its utt2parquet/spk2parquet json, each atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = (out_dir / shard_name(index)).resolve()
    cols: dict[str, list[Any]] = {
        "utt": [r.utt.utt for r in rows],
        "audio_data": [au.upstream_bytes(r.utt.wav) for r in rows],
        "wav": [str(r.utt.wav) for r in rows],
        "text": [r.utt.text for r in rows],
        "spk": [r.utt.spk for r in rows],
        "utt_embedding": [r.emb for r in rows],
        "spk_embedding": [r.spk_emb for r in rows],
        "speech_token": [r.tokens for r in rows],
    }
    if with_instruct:
        cols["instruct"] = [r.instruct for r in rows]
    table = pa.Table.from_pydict(cols, schema=parquet_schema(with_instruct))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    atomic_write_text(
        out_dir / f"utt2parquet_{index:09d}.json",
        _json({r.utt.utt: str(path) for r in rows}),
    )
    atomic_write_text(
        out_dir / f"spk2parquet_{index:09d}.json",
        _json({spk: str(path) for spk in sorted({r.utt.spk for r in rows})}),
    )
    return path


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, ensure_ascii=False, indent=2) + "\n"


def verify_shard(path: Path, rows: list[ShardRow], with_instruct: bool) -> None:
    """Read a shard back: schema, row count, utterance order, vector and token lengths."""
    import pyarrow.parquet as pq

    expected = parquet_schema(with_instruct)
    pf = pq.ParquetFile(path)
    got = pf.schema_arrow
    if not got.equals(expected, check_metadata=False):
        raise StageError(f"{path.name}: schema {got} differs from upstream's {expected}")
    if pf.metadata.num_rows != len(rows):
        raise StageError(f"{path.name}: {pf.metadata.num_rows} rows, expected {len(rows)}")
    t = pf.read(columns=["utt", "utt_embedding", "spk_embedding", "speech_token"])
    if t.column("utt").to_pylist() != [r.utt.utt for r in rows]:
        raise StageError(f"{path.name}: utterances differ from what was written")
    for name, want in (
        ("utt_embedding", [len(r.emb) for r in rows]),
        ("spk_embedding", [len(r.spk_emb) for r in rows]),
        ("speech_token", [len(r.tokens) for r in rows]),
    ):
        lengths = t.column(name).combine_chunks().value_lengths().to_pylist()
        if lengths != want:
            raise StageError(f"{path.name}: {name} lengths differ from what was written")


def cleanup_stale(out_dir: Path, n_shards: int) -> None:
    """Remove shards (and their json) of an earlier run that had more shards."""
    for p in out_dir.iterdir():
        m = SHARD_RE.match(p.name)
        if m and int(m.group(1)) >= n_shards:
            p.unlink()
