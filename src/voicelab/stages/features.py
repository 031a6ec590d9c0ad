"""``voicelab features``: speaker embeddings and speech tokens, as upstream's offline tools.

Replaces upstream's ``tools/extract_embedding.py`` and ``tools/extract_speech_token.py``. For each
of ``train`` and ``dev`` it writes beside the kaldi lists, with ``torch.save`` exactly as upstream:

- ``utt2embedding.pt``: ``{utt: [192 floats]}`` from ``campplus.onnx`` on CMN'd Kaldi fbank;
- ``spk2embedding.pt``: ``{spk: [192 floats]}``, the plain mean of the raw utterance vectors;
- ``utt2speech_token.pt``: ``{utt: [ints]}`` from ``speech_tokenizer_v3.onnx`` on Whisper log-mel.

The padding rule: each utterance is brought to 24 kHz, zero-padded to a multiple of 960 samples
(40 ms, one token) and only then resampled to 16 kHz, as upstream's online training path does
(``compute_fbank`` pads, ``compute_whisper_fbank`` resamples), with torchaudio's resampler
reimplemented in numpy (:func:`voicelab.blocks.fbank.resample`). A padded length ``P`` gives
``2P/3`` samples at 16 kHz, ``P/240`` log-mel frames and ``P/960`` tokens, while the flow's mel
has ``P/480`` frames: ``2 * tokens == mel frames`` for every utterance. Upstream's offline tool
tokenizes the unpadded audio and its tokens then break flow training by a frame or two.

Utterances over 30 s (the tokenizer's window) and unreadable or empty audio are excluded with a
reason; :mod:`voicelab.stages.pack` leaves them out of the shards and says so.

Work is cached per utterance, keyed by the audio's content hash and the two model files'
identities, in ``<dataset>/.features_cache.json``, saved atomically every few seconds: a rerun
recomputes only changed audio, and a killed run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voicelab.blocks import audio as au
from voicelab.blocks import fbank
from voicelab.blocks.kaldi import read_split
from voicelab.blocks.records import Utt
from voicelab.console import make_progress
from voicelab.contract import RunOptions, Stage, StageResult, resolve
from voicelab.errors import EnvironmentProblem, InputError, ModelError
from voicelab.fsutil import atomic_path, atomic_write_text, hash_obj, quick_fingerprint, read_json
from voicelab.paths import to_local_path
from voicelab.state import stage_run, staleness
from voicelab.workspace import Workspace

log = logging.getLogger(__name__)

NAME = "features"  # its state record
SPLITS = ("train", "dev")
CAMPPLUS = "campplus.onnx"
TOKENIZER = "speech_tokenizer_v3.onnx"
TOKENIZER_BATCH = "speech_tokenizer_v3.batch.onnx"  # used when batching, if present
EMBEDDING_FILE = "utt2embedding.pt"
SPK_EMBEDDING_FILE = "spk2embedding.pt"
TOKEN_FILE = "utt2speech_token.pt"
CACHE_NAME = ".features_cache.json"

SPEECH_RATE = 24000  # CosyVoice 3's rate; the flow's mel uses hop 480 at this rate
TOKEN_HOP = 960  # 24 kHz samples per speech token (25 Hz)
FEATURE_RATE = fbank.SAMPLE_RATE  # 16 kHz for both ONNX models
MIN_SAMPLE_RATE = 16000  # upstream's resample step drops audio below this rate
MAX_SECONDS = 30.0  # the speech tokenizer's window; upstream gives such audio no tokens
CACHE_SAVE_SECONDS = 3.0  # a killed run loses at most this much work
# Bump when the computation changes, so cached entries from an older VoiceLab are recomputed.
FEATURES_VERSION = 2


# =============================================================================================
# audio front end
# =============================================================================================


def load_audio(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] and the file's rate (channels averaged, as upstream's
    training pipeline downmixes). The same reader as ``prepare`` (voicelab.blocks.audio), so a
    user's wav.scp may list any format prepare takes (m4a included); raises AudioError."""
    x, sr = au.read_wav_mono(path)
    return np.ascontiguousarray(x), sr


def _resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """torchaudio's default resampler, as upstream's pipeline and tools use (not soxr: the
    tokens should be those upstream's online path computes)."""
    return fbank.resample(x, sr_in, sr_out)


def padded_length(n24: int) -> int:
    """24 kHz length after zero-padding to a multiple of 960 samples (one token)."""
    return math.ceil(n24 / TOKEN_HOP) * TOKEN_HOP


@dataclass
class FrontEnd:
    """What the two models consume for one utterance."""

    fbank: np.ndarray  # (T, 80) float32, mean-normalized
    mel: np.ndarray  # (128, P/240) float32
    n24: int  # 24 kHz samples before padding
    padded24: int  # after padding: a multiple of 960

    @property
    def seconds(self) -> float:
        return self.n24 / SPEECH_RATE

    @property
    def n_tokens(self) -> int:
        return self.padded24 // TOKEN_HOP


def to_24k_padded(x: np.ndarray, sr: int) -> tuple[np.ndarray, int]:
    """(24 kHz audio zero-padded to a multiple of 960, unpadded length)."""
    x24 = _resample(x, sr, SPEECH_RATE)
    peak = float(np.abs(x24).max()) if len(x24) else 0.0
    if peak > 1.0:  # upstream's resample step peak-normalizes what resampling pushed past 1
        x24 = x24 / peak
    n = len(x24)
    p = padded_length(n)
    return (np.pad(x24, (0, p - n)) if p > n else x24), n


def to_16k_exact(x24: np.ndarray) -> np.ndarray:
    """24 kHz -> 16 kHz with exactly 2/3 of the samples (the resampler gives ceil(2n/3), which
    is exact for multiples of 960; the fix-up only guards the padding rule)."""
    want = len(x24) * 2 // 3
    y = _resample(x24, SPEECH_RATE, FEATURE_RATE)
    if len(y) > want:
        y = y[:want]
    elif len(y) < want:
        y = np.pad(y, (0, want - len(y)))
    return y


def front_end(x: np.ndarray, sr: int) -> FrontEnd:
    """Padding rule, resampling and both feature types for one utterance."""
    x24, n24 = to_24k_padded(x, sr)
    x16 = to_16k_exact(x24)
    # The embedding sees the unpadded audio, as upstream's extract_embedding does.
    n16 = min(len(x16), math.ceil(n24 * FEATURE_RATE / SPEECH_RATE))
    fb = fbank.cmn(fbank.kaldi_fbank(x16[:n16]))
    mel = fbank.whisper_log_mel(x16)
    return FrontEnd(fb, mel, n24, len(x24))


# =============================================================================================
# models
# =============================================================================================


def model_identity(path: Path) -> str:
    """Name, size and mtime: a re-downloaded or replaced model invalidates the cache."""
    st = path.stat()
    return f"{path.name}:{st.st_size}:{st.st_mtime_ns}"


class Models:
    """The two ONNX sessions, shared by the worker threads (``InferenceSession.run`` is
    thread-safe and releases the GIL)."""

    def __init__(
        self,
        campplus: Path,
        tokenizer: Path,
        device: str = "auto",
        intra_threads: int = 1,
        token_batch: int | None = None,
    ) -> None:
        from voicelab.blocks.onnxrt import create_session

        for p in (campplus, tokenizer):
            if not p.is_file():
                raise ModelError(
                    f"ONNX model not found: {p}",
                    "run: voicelab download cosyvoice3 (or pass --onnx-dir DIR)",
                )
        self.campplus = create_session(campplus, device, threads=intra_threads)
        # Batches pay off on a GPU only; the small campplus session shows whether CUDA works
        # before the ~1 GB tokenizer is loaded.
        on_cuda = self.campplus.provider == "CUDAExecutionProvider"
        self.token_batch = max(1, token_batch or (16 if on_cuda else 1))
        batch_model = tokenizer.with_name(TOKENIZER_BATCH)
        if self.token_batch > 1 and batch_model.is_file():
            # upstream's batch export, which its online training path feeds padded batches
            tokenizer = batch_model
        self.campplus_path, self.tokenizer_path = campplus, tokenizer
        self.tokenizer = create_session(tokenizer, device, threads=intra_threads)
        self.notes = [n for n in (self.campplus.note, self.tokenizer.note) if n]
        self._lock = threading.Lock()
        self._threads = intra_threads
        shape = self.tokenizer.session.get_inputs()[0].shape
        if isinstance(shape[0], int) and shape[0] == 1:  # exported with a fixed batch of 1
            self.token_batch = 1
        self.key = hash_obj([model_identity(campplus), model_identity(tokenizer), FEATURES_VERSION])

    def _run(self, which: str, feeds: dict[str, np.ndarray]) -> list[Any]:
        """Run a session; a CUDA session that fails at run time (out of memory, a cuDNN
        library that only loads on first use) is rebuilt on the CPU once, with a warning."""
        sess = getattr(self, which)
        try:
            return sess.run(feeds)
        except Exception as e:
            if sess.provider != "CUDAExecutionProvider":
                raise
            with self._lock:
                if getattr(self, which) is sess:  # another worker may have switched already
                    from voicelab.blocks.onnxrt import create_session

                    path = self.campplus_path if which == "campplus" else self.tokenizer_path
                    note = f"{path.name} failed on CUDA ({type(e).__name__}): using the CPU"
                    log.warning(note)
                    self.notes.append(note)
                    setattr(self, which, create_session(path, "cpu", threads=self._threads))
            return getattr(self, which).run(feeds)

    @property
    def provider(self) -> str:
        return self.tokenizer.provider

    def describe(self) -> str:
        p = {self.campplus.provider, self.tokenizer.provider}
        name = "CUDA" if p == {"CUDAExecutionProvider"} else "CPU" if len(p) == 1 else "mixed"
        return f"onnxruntime on {name} ({', '.join(sorted(p))})"

    def embed(self, feat: np.ndarray) -> list[float]:
        inp = self.campplus.session.get_inputs()[0].name
        out = self._run("campplus", {inp: feat[None].astype(np.float32, copy=False)})[0]
        vec = np.asarray(out, dtype=np.float32).reshape(-1)
        if vec.shape[0] != 192:
            raise ModelError(
                f"{self.campplus_path.name} gave {vec.shape[0]} values, expected 192",
                "check the model file (voicelab download cosyvoice3)",
            )
        return vec.tolist()

    def tokenize(self, mels: Sequence[np.ndarray]) -> list[list[int]]:
        """Tokens for a batch of log-mels ``(128, T_i)``: zero-padded to the longest, lengths
        passed, each row cut to ``T_i // 4``."""
        inputs = self.tokenizer.session.get_inputs()
        t_max = max(m.shape[1] for m in mels)
        batch = np.zeros((len(mels), mels[0].shape[0], t_max), dtype=np.float32)
        for i, m in enumerate(mels):
            batch[i, :, : m.shape[1]] = m
        lengths = np.array([m.shape[1] for m in mels], dtype=np.int32)
        out = np.asarray(
            self._run("tokenizer", {inputs[0].name: batch, inputs[1].name: lengths})[0]
        )
        out = out.reshape(len(mels), -1)
        result = []
        for i, m in enumerate(mels):
            n = m.shape[1] // 4
            if out.shape[1] < n:
                raise ModelError(
                    f"{self.tokenizer_path.name} gave {out.shape[1]} tokens for {m.shape[1]} "
                    f"frames, expected {n}",
                    "check the model file (voicelab download cosyvoice3)",
                )
            result.append([int(t) for t in out[i, :n]])
        return result


# =============================================================================================
# cache
# =============================================================================================


class FeatureCache:
    """Per-audio results: ``entries[audio_sha] = {model, emb, tok, n24, padded24, excluded}``,
    and ``files[path] = [quick fingerprint, sha]`` so unchanged files are not re-hashed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            data = read_json(path, default={}) or {}
        except ValueError:  # not JSON (edited by hand?): start over, it is only a cache
            log.warning("ignoring the unreadable features cache %s", path)
            data = {}
        if not isinstance(data, dict) or data.get("version") != FEATURES_VERSION:
            data = {}
        self.entries: dict[str, dict[str, Any]] = data.get("entries", {})
        self.files: dict[str, list[str]] = data.get("files", {})
        self.lock = threading.Lock()
        self.dirty = False
        self.last_save = time.monotonic()
        self.save_cost = 0.0

    def audio_hash(self, path: str) -> str:
        qfp = quick_fingerprint(path)
        known = self.files.get(path)
        if known and known[0] == qfp:
            return known[1]
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        sha = h.hexdigest()[:32]
        self.files[path] = [qfp, sha]
        self.dirty = True
        return sha

    def get(self, sha: str, model_key: str) -> dict[str, Any] | None:
        e = self.entries.get(sha)
        if e is None:
            return None
        if e.get("excluded"):  # exclusions depend on the audio only
            return e
        return e if e.get("model") == model_key else None

    def put(self, sha: str, entry: dict[str, Any]) -> None:
        with self.lock:
            self.entries[sha] = entry
            self.dirty = True

    def save(self, force: bool = False) -> None:
        """Atomic save; throttled so a big cache is not rewritten after every utterance."""
        now = time.monotonic()
        every = max(CACHE_SAVE_SECONDS, 5 * self.save_cost)
        if not self.dirty or (not force and now - self.last_save < every):
            return
        with self.lock:
            t0 = time.monotonic()
            # compact: one line, no indentation (a big set's cache is tens of MB)
            blob = json.dumps(
                {"version": FEATURES_VERSION, "entries": self.entries, "files": self.files},
                separators=(",", ":"),
            )
            atomic_write_text(self.path, blob)
            self.dirty = False
            self.last_save = time.monotonic()
            self.save_cost = self.last_save - t0


# =============================================================================================
# the stage
# =============================================================================================


@dataclass
class FeaturesOptions:
    device: str = "auto"  # auto | cpu | cuda
    onnx_dir: Path | None = None  # default: the base model dir
    threads: int | None = None  # worker threads (default: CPU count)
    token_batch: int | None = None  # tokenizer batch (default: 16 on CUDA, 1 on CPU)
    splits: tuple[str, ...] = SPLITS
    force: bool = False


@dataclass
class Excluded:
    split: str
    utt: str
    reason: str


@dataclass
class SplitFeatures:
    split: str
    utts: int = 0
    kept: int = 0
    speakers: int = 0
    seconds: float = 0.0
    tokens: int = 0
    outputs: list[Path] = field(default_factory=list)


@dataclass
class FeaturesResult:
    splits: dict[str, SplitFeatures] = field(default_factory=dict)
    excluded: list[Excluded] = field(default_factory=list)
    computed: int = 0
    cached: int = 0
    provider: str = ""
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    skipped: bool = False
    reason: str = ""

    def summary(self) -> str:
        if self.skipped:
            return f"features: {self.reason}, nothing to do (--force recomputes)"
        parts = [
            f"{s.split}: {s.kept}/{s.utts} utterances, {s.speakers} speaker(s), "
            f"{s.seconds / 60:.1f} min, {s.tokens} tokens"
            for s in self.splits.values()
        ]
        lines = [
            "features: " + "; ".join(parts),
            f"  computed {self.computed}, from cache {self.cached}, {self.seconds:.1f} s, "
            f"{self.provider}",
        ]
        lines += [f"  excluded {e.split}/{e.utt}: {e.reason}" for e in self.excluded]
        return "\n".join(lines)


def _torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise EnvironmentProblem(
            "torch is needed to write the .pt files upstream reads",
            "pip install 'voicelab[features]'",
        ) from e
    return torch


def model_paths(ws: Workspace, onnx_dir: str | os.PathLike[str] | None) -> tuple[Path, Path]:
    d = to_local_path(onnx_dir) if onnx_dir else ws.base_model_dir
    return d / CAMPPLUS, d / TOKENIZER


def _compute(models: Models, jobs: list[tuple[str, str]]) -> list[tuple[str, dict[str, Any]]]:
    """Front end and models for a batch of (sha, wav path); tokens batched."""
    done: list[tuple[str, dict[str, Any]]] = []
    ready: list[tuple[str, FrontEnd, list[float]]] = []
    for sha, path in jobs:
        try:
            x, sr = load_audio(path)
        except au.AudioError as e:
            done.append((sha, {"excluded": f"unreadable audio ({e.reason}): {e.detail[:120]}"}))
            continue
        seconds = len(x) / sr if sr else 0.0
        if sr < MIN_SAMPLE_RATE:
            reason = (
                f"sample rate {sr} Hz is below {MIN_SAMPLE_RATE} Hz: upstream's training "
                "pipeline drops such audio (resample it, or rerun voicelab prepare)"
            )
            done.append((sha, {"excluded": reason, "seconds": seconds}))
            continue
        if seconds > MAX_SECONDS:
            done.append(
                (
                    sha,
                    {
                        "excluded": f"longer than {MAX_SECONDS:.0f} s ({seconds:.1f} s), the "
                        "speech tokenizer's limit: split it or leave it out",
                        "seconds": seconds,
                    },
                )
            )
            continue
        if len(x) == 0 or not np.isfinite(x).all():
            done.append((sha, {"excluded": "empty or invalid audio", "seconds": seconds}))
            continue
        fe = front_end(x, sr)
        if fe.fbank.shape[0] == 0:
            done.append(
                (sha, {"excluded": f"too short ({seconds * 1000:.0f} ms)", "seconds": seconds})
            )
            continue
        ready.append((sha, fe, models.embed(fe.fbank)))
    if ready:
        tokens = models.tokenize([fe.mel for _, fe, _ in ready])
        for (sha, fe, emb), tok in zip(ready, tokens, strict=True):
            done.append(
                (
                    sha,
                    {
                        "model": models.key,
                        "emb": emb,
                        "tok": tok,
                        "n24": fe.n24,
                        "padded24": fe.padded24,
                        "seconds": fe.seconds,
                    },
                )
            )
    return done


def _batches(jobs: list[tuple[str, str, float]], size: int) -> Iterable[list[tuple[str, str]]]:
    """Jobs sorted by size (a proxy for duration) and cut into batches, so padding is small."""
    ordered = sorted(jobs, key=lambda j: j[2])
    for i in range(0, len(ordered), size):
        yield [(sha, path) for sha, path, _ in ordered[i : i + size]]


def _save_pt(obj: Any, dest: Path) -> Path:
    torch = _torch()
    with atomic_path(dest) as tmp:
        torch.save(obj, tmp)
    return dest


def run_features(ws: Workspace, opts: FeaturesOptions | None = None) -> FeaturesResult:
    """Embeddings and speech tokens for the train and dev kaldi dirs (see the module doc)."""
    opts = opts or FeaturesOptions()
    t_start = time.monotonic()
    _torch()  # fail before any work, not after an hour of it
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
        computed = _run_jobs(models, cache, list(todo.values()), threads, token_batch)

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


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """One BLAS thread per worker while features run: the front end's small matrix products
    are fastest single-threaded, and OpenBLAS's own threads under a thread pool on a busy
    machine made it 2-3x slower (measured, see benchmarks/bench_features.py)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: only speed depends on it
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _run_jobs(
    models: Models,
    cache: FeatureCache,
    jobs: list[tuple[str, str, float]],
    threads: int,
    token_batch: int,
) -> int:
    """Run the jobs on a thread pool, storing each result in the cache as it arrives."""
    if not jobs:
        return 0
    batches = list(_batches(jobs, token_batch))
    computed = 0
    with (
        one_blas_thread(),
        make_progress() as prog,
        ThreadPoolExecutor(max_workers=threads) as pool,
    ):
        task = prog.add_task("embeddings + speech tokens", total=len(jobs))
        pending: set[Future[list[tuple[str, dict[str, Any]]]]] = set()
        it = iter(batches)
        try:
            # Keep a bounded number of batches in flight so results stream into the cache.
            for b in it:
                pending.add(pool.submit(_compute, models, b))
                if len(pending) >= 2 * threads:
                    break
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    for sha, entry in fut.result():
                        cache.put(sha, entry)
                        computed += 1
                        prog.advance(task)
                    nxt = next(it, None)
                    if nxt is not None:
                        pending.add(pool.submit(_compute, models, nxt))
                cache.save()
        finally:
            for fut in pending:
                fut.cancel()
            cache.save(force=True)
    return computed


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


# =============================================================================================
# the stage contract (voicelab.contract)
# =============================================================================================

Options = FeaturesOptions


def stage_options(ws: Workspace, run: RunOptions) -> FeaturesOptions:
    device = run.get(ws, "features", "device", run.device) or "auto"
    force = bool(run.overrides.get("features", {}).get("force") or run.force)
    return resolve(ws, FeaturesOptions, "features", run, device=device, force=force)


def stage_params(ws: Workspace, opts: FeaturesOptions) -> dict[str, Any]:
    return {"onnx_dir": str(opts.onnx_dir or ws.base_model_dir)}


def stage_outputs(ws: Workspace, opts: FeaturesOptions) -> list[Path]:
    names = (EMBEDDING_FILE, SPK_EMBEDDING_FILE, TOKEN_FILE)
    return [ws.split_dir(s) / n for s in SPLITS for n in names]


def run(ws: Workspace, opts: FeaturesOptions) -> StageResult:
    res = run_features(ws, opts)
    outputs = [p for s in res.splits.values() for p in s.outputs]
    figures = {"provider": res.provider, "excluded": len(res.excluded)}
    return StageResult(outputs, figures, res.summary().splitlines()[0], res)


STAGE = Stage(
    NAME,
    ("prepare", "download"),
    stage_params,
    run,
    stage_outputs,
    summary="speaker embeddings and speech tokens",
    records_itself=True,
    options=stage_options,
)
