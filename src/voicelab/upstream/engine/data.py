"""Data that is ready once: each parquet shard goes through upstream's own pipeline stages
(``parquet_opener``, ``tokenize``, ``filter``, ``resample``, ``compute_fbank`` for the flow,
``parse_embedding``, exactly as the run's YAML configures them) one time, and the result is
cached beside the parquet. An epoch then does no audio decoding, no mel/fbank and no
tokenization; the whisper fbank upstream computes for online tokens is not needed at all.

The cache file is ``<shard>.<kind>-<key>.vlcache.pt``, ``key`` a SHA-256 over the parquet's
bytes, the YAML's data settings, the tokenizer files and :data:`CACHE_VERSION`: a changed input
makes a new file, never a stale hit. ``kind`` is ``llm`` (tokens and embeddings) or ``flow``
(also the mel features).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CACHE_VERSION = 1
#: The YAML keys whose values shape what the cache holds.
DATA_KEYS = (
    "sample_rate",
    "get_tokenizer",
    "allowed_special",
    "tokenize",
    "filter",
    "resample",
    "feat_extractor",
    "compute_fbank",
    "parse_embedding",
)
LLM_STAGES = ("parquet_opener", "tokenize", "filter", "resample", "parse_embedding")
FLOW_STAGES = (
    "parquet_opener",
    "tokenize",
    "filter",
    "resample",
    "compute_fbank",
    "parse_embedding",
)
SAMPLES_PER_TOKEN = 960  # compute_fbank pads the audio to whole 25 Hz tokens (24 kHz)
HOP = 480  # mel hop: 2 mel frames per token


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tokenizer_digest(qwen_dir: Path) -> str:
    """The tokenizer's files (everything small in the Qwen folder: not the weights)."""
    h = hashlib.sha256()
    if qwen_dir.is_dir():
        for p in sorted(qwen_dir.iterdir()):
            if p.is_file() and p.suffix not in (".safetensors", ".bin", ".pt"):
                h.update(p.name.encode() + b"\0" + file_sha256(p).encode())
    return h.hexdigest()


def cache_key(parquet_sha: str, data_values: dict[str, Any], tok_digest: str, kind: str) -> str:
    blob = json.dumps(
        {
            "v": CACHE_VERSION,
            "kind": kind,
            "parquet": parquet_sha,
            "tok": tok_digest,
            "data": data_values,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def cache_path(parquet: Path, kind: str, key: str) -> Path:
    return parquet.with_name(f"{parquet.stem}.{kind}-{key[:16]}.vlcache.pt")


def data_values(config_text: str) -> dict[str, Any]:
    from voicelab.upstream import train_config as tc

    values = tc.read_values(config_text)
    return {k: values.get(k) for k in DATA_KEYS}


# ------------------------------------------------------------------------------------------------
# Building (upstream's stages) and storing
# ------------------------------------------------------------------------------------------------
def _stages(configs: dict[str, Any], names: tuple[str, ...]) -> list[Any]:
    by_name = {getattr(f, "func", f).__name__: f for f in configs["data_pipeline"]}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValueError(f"the YAML's data_pipeline lacks {', '.join(missing)}")
    return [by_name[n] for n in names]


def _flat(seqs: list[Any], dtype: Any) -> tuple[Any, Any]:
    import torch

    lens = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
    parts = [torch.as_tensor(s, dtype=dtype).reshape(len(s), -1) for s in seqs]
    flat = torch.cat(parts) if parts else torch.zeros(0, 1, dtype=dtype)
    return flat.squeeze(1) if flat.dim() == 2 and flat.size(1) == 1 else flat, lens


def build_shard(parquet: Path, configs: dict[str, Any], kind: str) -> dict[str, Any]:
    """One shard through upstream's stages: what every step of an epoch needs."""
    import torch

    data: Iterable[dict[str, Any]] = [{"src": str(parquet)}]
    for stage in _stages(configs, FLOW_STAGES if kind == "flow" else LLM_STAGES):
        data = stage(data, mode="train")
    utts, text, instruct, speech, samples, utt_emb, spk_emb, feats = [], [], [], [], [], [], [], []
    for s in data:
        utts.append(str(s["utt"]))
        text.append(list(s["text_token"]))
        instruct.append(list(s.get("instruct_token") or []))
        speech.append([int(x) for x in s["speech_token"]])
        samples.append(int(s["speech"].shape[1]))
        utt_emb.append(s["utt_embedding"].float())
        spk_emb.append(s["spk_embedding"].float())
        if kind == "flow":
            feats.append(s["speech_feat"].float())
    out: dict[str, Any] = {"version": CACHE_VERSION, "kind": kind, "utts": utts}
    out["text"], out["text_len"] = _flat(text, torch.int64)
    out["instruct"], out["instruct_len"] = _flat(instruct, torch.int64)
    out["speech"], out["speech_len"] = _flat(speech, torch.int64)
    out["samples"] = torch.tensor(samples, dtype=torch.int64)
    out["utt_embedding"] = torch.stack(utt_emb) if utt_emb else torch.zeros(0, 192)
    out["spk_embedding"] = torch.stack(spk_emb) if spk_emb else torch.zeros(0, 192)
    if kind == "flow":
        out["feat"], out["feat_len"] = _flat(feats, torch.float32)
    return out


def load_or_build(
    parquet: Path,
    configs: dict[str, Any],
    config_text: str,
    qwen_dir: Path,
    kind: str,
    build: bool = True,
) -> dict[str, Any]:
    """The shard's cache, built (and written atomically) when missing and ``build`` is set."""
    import torch

    from voicelab.fsutil import atomic_path

    key = cache_key(
        file_sha256(parquet), data_values(config_text), tokenizer_digest(qwen_dir), kind
    )
    path = cache_path(parquet, kind, key)
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    if not build:
        raise FileNotFoundError(path)
    shard = build_shard(parquet, configs, kind)
    with atomic_path(path) as tmp:
        torch.save(shard, tmp)
    drop_stale(parquet, kind, keep=path)
    return shard


def drop_stale(parquet: Path, kind: str, keep: Path) -> list[Path]:
    """Remove this shard's older caches of ``kind`` (a re-pack or a changed YAML made them)."""
    gone = [p for p in parquet.parent.glob(f"{parquet.stem}.{kind}-*.vlcache.pt") if p != keep]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


# ------------------------------------------------------------------------------------------------
# The dataset of a run: every shard's cache, concatenated
# ------------------------------------------------------------------------------------------------
def _split(flat: Any, lens: Any) -> list[Any]:
    return list(flat.split(lens.tolist())) if len(lens) else []


@dataclass
class Dataset:
    """Per-utterance tensors on the host; ``feat`` (flow) as one flat tensor for device gathers."""

    utts: list[str]
    text: list[Any]
    instruct: list[Any]
    speech: list[Any]
    samples: list[int]
    utt_embedding: Any
    spk_embedding: Any
    feat: Any = None  # (sum frames, 80) float32
    feat_off: list[int] = field(default_factory=list)
    feat_len: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.utts)

    @property
    def frames(self) -> list[int]:
        """Mel frames per utterance, what ``max_frames_in_batch`` counts (compute_fbank pads the
        audio to whole tokens; 2 frames per token)."""
        if self.feat_len:
            return list(self.feat_len)
        return [-(-n // SAMPLES_PER_TOKEN) * (SAMPLES_PER_TOKEN // HOP) for n in self.samples]


def concat(shards: list[dict[str, Any]]) -> Dataset:
    import torch

    utts, text, instruct, speech, samples, ue, se, feats, flen = [], [], [], [], [], [], [], [], []
    for s in shards:
        utts += s["utts"]
        text += _split(s["text"], s["text_len"])
        instruct += _split(s["instruct"], s["instruct_len"])
        speech += _split(s["speech"], s["speech_len"])
        samples += s["samples"].tolist()
        ue.append(s["utt_embedding"])
        se.append(s["spk_embedding"])
        if "feat" in s:
            feats.append(s["feat"])
            flen += s["feat_len"].tolist()
    ds = Dataset(
        utts,
        text,
        instruct,
        speech,
        samples,
        torch.cat(ue) if ue else torch.zeros(0, 192),
        torch.cat(se) if se else torch.zeros(0, 192),
    )
    if feats:
        ds.feat = torch.cat(feats)
        ds.feat_len = flen
        off, acc = [], 0
        for n in flen:
            off.append(acc)
            acc += n
        ds.feat_off = off
    return ds
