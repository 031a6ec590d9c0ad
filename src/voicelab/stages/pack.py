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
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voicelab.blocks import audio as au
from voicelab.blocks.kaldi import read_split
from voicelab.blocks.records import Utt
from voicelab.console import make_progress
from voicelab.contract import RunOptions, Stage, StageResult, resolve
from voicelab.errors import EnvironmentProblem, InputError, StageError, WorkspaceError
from voicelab.fsutil import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    hash_obj,
    quick_fingerprint,
    read_json,
)
from voicelab.stages.features import (
    EMBEDDING_FILE,
    SPK_EMBEDDING_FILE,
    SPLITS,
    TOKEN_FILE,
)
from voicelab.state import load_record, stage_run, staleness
from voicelab.workspace import Workspace

log = logging.getLogger(__name__)

NAME = "pack"  # its state record
MANIFEST = ".shards.json"
DEFAULT_MAX_UTTS_PER_SHARD = 1000  # upstream's --num_utts_per_parquet default
DEFAULT_NUM_WORKERS = 4
DEFAULT_NUM_GPUS = 1
_SHARD_RE = re.compile(r"^(?:parquet|utt2parquet|spk2parquet)_(\d{9})\.(?:tar|json)$")

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


# =============================================================================================
# results
# =============================================================================================


@dataclass
class PackOptions:
    utts_per_shard: int | None = None
    num_workers: int | None = None  # DataLoader workers per GPU during training
    num_gpus: int | None = None
    jobs: int | None = None  # writer threads (default: CPU count)
    splits: tuple[str, ...] = SPLITS
    force: bool = False


@dataclass
class LeftOut:
    split: str
    utt: str
    reason: str


@dataclass
class SplitPack:
    split: str
    utts: int = 0
    packed: int = 0
    shards: list[Path] = field(default_factory=list)
    data_list: Path | None = None
    bytes: int = 0
    written: int = 0
    reused: int = 0


@dataclass
class PackResult:
    splits: dict[str, SplitPack] = field(default_factory=dict)
    left_out: list[LeftOut] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    skipped: bool = False
    reason: str = ""

    def summary(self) -> str:
        if self.skipped:
            return f"pack: {self.reason}, nothing to do (--force rewrites)"
        lines = []
        for s in self.splits.values():
            lines.append(
                f"pack {s.split}: {s.packed}/{s.utts} utterances in {len(s.shards)} shard(s) "
                f"({s.bytes / 1e6:.1f} MB; {s.written} written, {s.reused} unchanged) -> "
                f"{s.data_list}"
            )
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [f"  left out {x.split}/{x.utt}: {x.reason}" for x in self.left_out]
        return "\n".join(lines)


# =============================================================================================
# inputs
# =============================================================================================


def _torch_load(path: Path) -> dict[str, Any]:
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


def _features_reasons(ws: Workspace) -> dict[str, str]:
    """Why ``voicelab features`` excluded utterances, from its stage record."""
    rec = load_record(ws, "features")
    out: dict[str, str] = {}
    for line in (rec.figures.get("excluded_utts", []) if rec else []) or []:
        key, _, reason = str(line).partition(": ")
        out[key] = reason
    return out


def _split_inputs(ws: Workspace, split: str) -> list[Any]:
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


# =============================================================================================
# writing
# =============================================================================================


@dataclass
class _Row:
    utt: Utt
    emb: list[float]
    spk_emb: list[float]
    tokens: list[int]
    instruct: str | None


def _row_key(r: _Row) -> Any:
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


def _write_shard(out_dir: Path, index: int, rows: list[_Row], with_instruct: bool) -> Path:
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


def verify_shard(path: Path, rows: list[_Row], with_instruct: bool) -> None:
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


def _cleanup_stale(out_dir: Path, n_shards: int) -> None:
    """Remove shards (and their json) of an earlier run that had more shards."""
    for p in out_dir.iterdir():
        m = _SHARD_RE.match(p.name)
        if m and int(m.group(1)) >= n_shards:
            p.unlink()


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
    utt2emb = _torch_load(d / EMBEDDING_FILE)
    spk2emb = _torch_load(d / SPK_EMBEDDING_FILE)
    utt2tok = _torch_load(d / TOKEN_FILE)
    has_instruct = (d / "instruct").is_file()
    sp = SplitPack(split, utts=len(utts))

    rows: list[_Row] = []
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
            _Row(u, list(utt2emb[u.utt]), list(spk2emb[u.spk]), list(utt2tok[u.utt]), u.instruct)
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
    keys = [hash_obj([i, has_instruct, [_row_key(r) for r in c]]) for i, c in enumerate(chunks)]

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
            pool.submit(_write_shard, out_dir, i, chunk, has_instruct): (i, chunk)
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

    _cleanup_stale(out_dir, n)
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
    inputs = {s: _split_inputs(ws, s) for s in splits}
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
        reasons = _features_reasons(ws)
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


# =============================================================================================
# the stage contract (voicelab.contract)
# =============================================================================================

Options = PackOptions


def stage_options(ws: Workspace, run: RunOptions) -> PackOptions:
    """[pack] falls back to [train] for the DataLoader workers and GPUs (they shape shards)."""
    force = bool(run.overrides.get("pack", {}).get("force") or run.force)
    return resolve(ws, PackOptions, "pack", run, also=("train",), force=force)


def stage_params(ws: Workspace, opts: PackOptions) -> dict[str, Any]:
    return {
        "utts_per_shard": opts.utts_per_shard,
        "num_workers": opts.num_workers,
        "gpus": opts.num_gpus,
    }


def stage_outputs(ws: Workspace, opts: PackOptions) -> list[Path]:
    return [ws.data_list("train"), ws.data_list("dev")]


def run(ws: Workspace, opts: PackOptions) -> StageResult:
    res = run_pack(ws, opts)
    figures = {f"{s}_shards": len(sp.shards) for s, sp in res.splits.items()}
    return StageResult(stage_outputs(ws, opts), figures, res.summary().splitlines()[0], res)


STAGE = Stage(
    NAME,
    ("features",),
    stage_params,
    run,
    stage_outputs,
    summary="parquet shards",
    records_itself=True,
    options=stage_options,
)
