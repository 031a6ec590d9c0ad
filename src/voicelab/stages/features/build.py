"""``run_features``: hash the audio, skip what is cached, compute the rest, write the three
``.pt`` files of each split."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from voicelab.blocks.kaldi import read_split
from voicelab.blocks.records import Utt
from voicelab.errors import InputError, ModelError
from voicelab.fsutil import atomic_path
from voicelab.stages.features.cache import CACHE_NAME, FEATURES_VERSION, FeatureCache
from voicelab.stages.features.encoders import (
    TOKENIZER_BATCH,
    Models,
    import_torch,
    model_identity,
    model_paths,
)
from voicelab.stages.features.frontend import TOKEN_HOP
from voicelab.stages.features.jobs import run_jobs
from voicelab.stages.features.options import (
    EMBEDDING_FILE,
    NAME,
    SPK_EMBEDDING_FILE,
    TOKEN_FILE,
    Excluded,
    FeaturesOptions,
    FeaturesResult,
    SplitFeatures,
)
from voicelab.state import stage_run, staleness
from voicelab.workspace import Workspace

log = logging.getLogger(__name__)


def _save_pt(obj: Any, dest: Path) -> Path:
    torch = import_torch()
    with atomic_path(dest) as tmp:
        torch.save(obj, tmp)
    return dest


def run_features(ws: Workspace, opts: FeaturesOptions | None = None) -> FeaturesResult:
    """Embeddings and speech tokens for the train and dev kaldi dirs (see the module doc)."""
    opts = opts or FeaturesOptions()
    t_start = time.monotonic()
    import_torch()  # fail before any work, not after an hour of it
    if opts.device not in ("auto", "cpu", "cuda"):
        raise InputError(f"unknown device {opts.device!r}", "use --device auto, cpu or cuda")
    camp_path, tok_path = model_paths(ws, opts.onnx_dir)
    for p in (camp_path, tok_path):
        if not p.is_file():
            raise ModelError(
                f"ONNX model not found: {p}",
                "run: voicelab download cosyvoice3 (or pass --onnx-dir DIR)",
            )

    splits = {s: read_split(ws.split_dir(s)) for s in opts.splits if _has_split(ws, s)}
    if not splits:
        raise InputError(f"no train/dev kaldi dirs under {ws.dataset_dir}", "run: voicelab prepare")
    cache = FeatureCache(ws.dataset_dir / CACHE_NAME)
    hashes: dict[str, str] = {}
    missing: list[Excluded] = []
    for split, utts in splits.items():
        for u in utts:
            if str(u.wav) in hashes:
                continue
            try:
                hashes[str(u.wav)] = cache.audio_hash(str(u.wav))
            except FileNotFoundError:
                missing.append(Excluded(split, u.utt, f"audio file missing: {u.wav}"))
    cache.save(force=True)

    inputs = {
        "splits": {
            s: [[u.utt, u.spk, hashes.get(str(u.wav), "")] for u in us] for s, us in splits.items()
        },
        "models": [
            model_identity(p)
            for p in (camp_path, tok_path, tok_path.with_name(TOKENIZER_BATCH))
            if p.is_file()
        ],
        "version": FEATURES_VERSION,
    }
    params = {"splits": sorted(splits)}
    if not opts.force:
        fresh, why = staleness(ws, NAME, inputs, params)
        if fresh:
            return FeaturesResult(skipped=True, reason=why)

    with stage_run(ws, NAME, inputs, params) as rec:
        threads = max(1, opts.threads or os.cpu_count() or 1)
        models = Models(
            camp_path, tok_path, opts.device, intra_threads=1, token_batch=opts.token_batch
        )
        token_batch = models.token_batch
        log.info(
            "features: %s, speech tokenizer %s, batch %d",
            models.describe(),
            models.tokenizer_path.name,
            token_batch,
        )

        todo: dict[str, tuple[str, str, float]] = {}
        cached = 0
        for utts in splits.values():
            for u in utts:
                sha = hashes.get(str(u.wav))
                if sha is None or sha in todo:
                    continue
                if cache.get(sha, models.key) is not None:
                    cached += 1
                else:
                    todo[sha] = (sha, str(u.wav), float(os.path.getsize(str(u.wav))))
        computed = run_jobs(models, cache, list(todo.values()), threads, token_batch)

        result = FeaturesResult(
            computed=computed,
            cached=cached,
            provider=models.describe(),
            notes=models.notes,
            excluded=list(missing),
        )
        for split, utts in splits.items():
            result.splits[split] = _write_split(ws, split, utts, hashes, cache, models.key, result)
        result.seconds = time.monotonic() - t_start
        rec.outputs = [p for s in result.splits.values() for p in s.outputs]
        rec.figures.update(
            {
                "utterances": sum(s.utts for s in result.splits.values()),
                "kept": sum(s.kept for s in result.splits.values()),
                "excluded": len(result.excluded),
                "computed": computed,
                "cached": cached,
                "seconds": round(result.seconds, 2),
                "provider": models.provider,
                "excluded_utts": [f"{e.split}/{e.utt}: {e.reason}" for e in result.excluded][:50],
            }
        )
    return result


def _has_split(ws: Workspace, split: str) -> bool:
    if (ws.split_dir(split) / "wav.scp").is_file():
        return True
    if split == "train":
        raise InputError(
            f"no kaldi dir at {ws.split_dir(split)} (wav.scp missing)", "run: voicelab prepare"
        )
    log.warning("no %s kaldi dir at %s: skipping it", split, ws.split_dir(split))
    return False


def _write_split(
    ws: Workspace,
    split: str,
    utts: list[Utt],
    hashes: dict[str, str],
    cache: FeatureCache,
    model_key: str,
    result: FeaturesResult,
) -> SplitFeatures:
    sf = SplitFeatures(split, utts=len(utts))
    utt2emb: dict[str, list[float]] = {}
    utt2tok: dict[str, list[int]] = {}
    spk_vecs: dict[str, list[list[float]]] = {}
    for u in utts:
        sha = hashes.get(str(u.wav))
        if sha is None:
            continue  # already reported as missing
        e = cache.get(sha, model_key)
        if e is None:
            raise ModelError(f"no features computed for {u.utt}", "rerun: voicelab features")
        if e.get("excluded"):
            result.excluded.append(Excluded(split, u.utt, e["excluded"]))
            continue
        expected = e["padded24"] // TOKEN_HOP
        if len(e["tok"]) != expected:  # the padding rule, checked for every utterance
            raise ModelError(
                f"{u.utt}: {len(e['tok'])} speech tokens for {e['padded24']} padded samples "
                f"(expected {expected})",
                "check speech_tokenizer_v3.onnx (voicelab download cosyvoice3)",
            )
        utt2emb[u.utt] = e["emb"]
        utt2tok[u.utt] = e["tok"]
        spk_vecs.setdefault(u.spk, []).append(e["emb"])
        sf.seconds += e["seconds"]
        sf.tokens += len(e["tok"])
    # Plain mean of the raw (unnormalized) utterance vectors, as upstream's extract_embedding.
    # Accumulated in float64, stored as float32 values like everything upstream's torch writes.
    spk2emb = {
        spk: np.mean(np.asarray(v, dtype=np.float64), axis=0).astype(np.float32).tolist()
        for spk, v in spk_vecs.items()
    }
    sf.kept, sf.speakers = len(utt2emb), len(spk2emb)
    d = ws.split_dir(split)
    sf.outputs = [
        _save_pt(utt2emb, d / EMBEDDING_FILE),
        _save_pt(spk2emb, d / SPK_EMBEDDING_FILE),
        _save_pt(utt2tok, d / TOKEN_FILE),
    ]
    return sf
