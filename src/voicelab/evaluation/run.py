"""``voicelab eval``: every candidate speaks the evaluation set, then every take is scored.

Candidates are llm epochs (hot-loaded), checkpoint files, other voice dirs (their llm.pt and
flow.pt hot-loaded), and two baselines: ``base``, the untuned base model speaking zero-shot from
a reference clip of the speaker (what the user gets without fine-tuning), and ``real``, the dev
recordings themselves (the ceiling). The model loads once; then it is freed and the scorers
(ASR, speaker encoder, DNSMOS) load, so synthesis and ASR never hold one GPU together.

Everything lands in ``eval/<run>/``: ``<candidate>/audio/<line>.wav``, ``<candidate>/lines/
<line>.json`` (written after synthesis, completed after scoring: a run resumes per line),
``<candidate>/candidate.json``, ``metrics.tsv`` (one row per candidate) and ``run.json``.
"""

from __future__ import annotations

import gc
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from voicelab.console import status, track
from voicelab.errors import ConfigError, ModelError, WorkspaceError
from voicelab.evaluation import metrics
from voicelab.evaluation.results import TABLE, write_table
from voicelab.evaluation.sets import EvalLine, eval_root, load_set, prompt_clip, train_clips
from voicelab.fsutil import atomic_write_json, link_or_copy, read_json
from voicelab.paths import safe_name, to_local_path

if TYPE_CHECKING:
    from voicelab.stages.synth import Synthesizer, Weights
    from voicelab.workspace import Workspace

log = logging.getLogger(__name__)

MODEL_DIR = "model"  # eval/model: the base model + this speaker, when no voice is exported yet
_BASELINES = ("base", "real")


@dataclass
class EvalOptions:
    epochs: str | None = None  # "4,5,6", "all" or "last:N"; default: all when nothing else
    checkpoints: str | None = None  # comma-separated .pt files (llm checkpoints)
    voices: tuple[str, ...] = ()  # other exported voice dirs
    lines: int = 20
    seed: int = 0
    fixed: bool = True  # include the fixed audition sentences
    new_set: bool = False
    run: str | None = None  # a run name to resume or extend; default: a new timestamped one
    baselines: bool = True
    device: str = "auto"
    fp16: bool = False
    asr_model: str | None = None  # default: the Whisper model prepare used
    funasr: bool | None = None  # Paraformer for zh lines; None: when funasr is installed
    speaker_model: str = "campplus"  # campplus | resemblyzer | path.onnx


@dataclass
class Candidate:
    name: str
    kind: str  # epoch | checkpoint | voice | base | real
    weights: Weights | None = None  # None: real recordings
    epoch: int | None = None
    label: str = ""


@dataclass
class EvalResult:
    run_dir: Path
    table: Path
    rows: list[dict[str, Any]]
    best: list[str]
    synth_seconds: dict[str, float] = field(default_factory=dict)
    score_seconds: float = 0.0
    lines: int = 0


# ---- candidates -----------------------------------------------------------------------------
def parse_epochs(ws: Workspace, spec: str) -> list[int]:
    from voicelab.stages.synth import epochs_on_disk

    have = epochs_on_disk(ws)
    spec = spec.strip().lower()
    if spec == "all":
        wanted = have
    elif spec.startswith("last:") and spec[5:].isdigit():
        wanted = have[-int(spec[5:]) :] if int(spec[5:]) > 0 else []
    else:
        parts = [p.strip().removeprefix("epoch_") for p in spec.split(",") if p.strip()]
        if not parts or not all(p.isdigit() for p in parts):
            raise ConfigError(f"--epochs {spec!r}: expected 4,5,6, all or last:N", None)
        wanted = list(dict.fromkeys(int(p) for p in parts))
        missing = [e for e in wanted if e not in have]
        if missing:
            raise ModelError(
                f"no checkpoint for epoch {missing[0]} in {ws.exp_dir('llm')}",
                f"epochs on disk: {', '.join(map(str, have)) or 'none (train first)'}",
            )
    return wanted


def plan_candidates(ws: Workspace, opts: EvalOptions) -> list[Candidate]:
    from voicelab.stages.synth import Weights, epoch_checkpoint

    out: list[Candidate] = []
    epochs_spec = opts.epochs
    if epochs_spec is None and not opts.checkpoints and not opts.voices:
        epochs_spec = "all"
    for e in parse_epochs(ws, epochs_spec) if epochs_spec else []:
        w = Weights(llm=epoch_checkpoint(ws, e), label=f"epoch {e}")
        out.append(Candidate(f"epoch_{e}", "epoch", w, e, w.label))
    for tok in (opts.checkpoints or "").split(","):
        if tok.strip():
            p = to_local_path(tok.strip())
            if not p.is_file():
                raise ModelError(f"--checkpoints: {p} does not exist", "check the path")
            out.append(Candidate(safe_name(p.stem, 60), "checkpoint", Weights(llm=p, label=p.name)))
    for v in opts.voices:
        d = to_local_path(v)
        if not (d / "llm.pt").is_file() or not (d / "flow.pt").is_file():
            raise ModelError(f"--voice {d} has no llm.pt and flow.pt", "pass an exported voice")
        w = Weights(llm=d / "llm.pt", flow=d / "flow.pt", label=f"voice {d.name}")
        out.append(Candidate(safe_name(f"voice-{d.name}", 60), "voice", w, None, w.label))
    if not out and not opts.baselines:
        raise WorkspaceError("nothing to evaluate", "train first, or pass --checkpoints/--voice")
    if opts.baselines:
        base = ws.base_model_dir
        bw = Weights(llm=base / "llm.pt", flow=base / "flow.pt", label="base model, zero-shot")
        out.append(Candidate("base", "base", bw, None, bw.label))
        out.append(Candidate("real", "real", None, None, "real recordings"))
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise ConfigError("a candidate is named twice", "list each epoch/checkpoint/voice once")
    return out


# ---- the model --------------------------------------------------------------------------------
def model_dir(ws: Workspace) -> Path:
    """The exported voice when complete; else ``eval/model``: the base model's files linked,
    plus a spk2info.pt of this speaker's embedding (as export writes it)."""
    from voicelab.stages.synth import check_model_dir

    try:
        check_model_dir(ws.voice_dir)
        return ws.voice_dir
    except ModelError:
        pass
    import torch

    from voicelab.stages.checkpoints import load_state_dict, save_state_dict
    from voicelab.stages.export import base_files, check_base_dir
    from voicelab.upstream.model_files import SPK2INFO

    base = ws.base_model_dir
    check_base_dir(base)
    dest = eval_root(ws) / MODEL_DIR
    for rel in base_files(base):
        if rel != SPK2INFO and not (dest / rel).is_file():
            link_or_copy(base / rel, dest / rel)
    emb_file = ws.split_dir("train") / "spk2embedding.pt"
    if not emb_file.is_file():
        raise WorkspaceError(f"no speaker embedding at {emb_file}", "run: voicelab features")
    emb = load_state_dict(emb_file).get(ws.speaker)
    if emb is None:
        raise WorkspaceError(f"{emb_file} has no speaker {ws.speaker!r}", "run: voicelab features")
    vec = torch.as_tensor(emb, dtype=torch.float32).reshape(1, 192).clone()
    save_state_dict({ws.speaker: {"embedding": vec}}, dest / SPK2INFO)
    return dest


def speak_zero_shot(
    synth: Synthesizer, segments: list[str], prompt_text: str, prompt_wav: str, seed: int
) -> tuple[np.ndarray, float]:
    """upstream's ``inference_zero_shot`` segment by segment (the base-model baseline)."""
    import torch

    from voicelab.stages.synth import set_seed
    from voicelab.upstream.launcher import fix_torchaudio_load

    fix_torchaudio_load()  # upstream reads the prompt wav with torchaudio.load (torchcodec)
    set_seed(seed)
    chunks: list[np.ndarray] = []
    start = time.perf_counter()
    for seg in segments:
        with torch.inference_mode():
            for out in synth.cosy.inference_zero_shot(
                seg, prompt_text, prompt_wav, stream=False, text_frontend=False
            ):
                chunks.append(out["tts_speech"].float().cpu().numpy().reshape(-1))
    audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    return audio, time.perf_counter() - start


#: What a take may raise when upstream cannot voice the tokens the model gave (an out-of-memory
#: error is a RuntimeError too: it is caught first and re-raised).
_TAKE_ERRORS = (RuntimeError, ValueError, IndexError)


def _speak(
    synth: Synthesizer, c: Candidate, utt: Any, prompt: tuple[str, str] | None, seed: int
) -> tuple[np.ndarray, float, int]:
    """(audio, seconds it took, sample rate) of one take: the base model zero-shot with the
    speaker's reference clip, a trained candidate as the speaker."""
    if c.kind == "base":
        assert prompt is not None
        audio, wall = speak_zero_shot(
            synth, utt.segments, utt.instruct + prompt[1], prompt[0], seed
        )
        return audio, wall, synth.sample_rate
    spoken = synth.speak(utt, seed=seed)
    return spoken.audio, spoken.wall, spoken.sample_rate


# ---- files of a run ---------------------------------------------------------------------------
def line_file(run_dir: Path, cand: str, line: str) -> Path:
    return run_dir / cand / "lines" / f"{safe_name(line, 80)}.json"


def wav_file(run_dir: Path, cand: str, line: str) -> Path:
    return run_dir / cand / "audio" / f"{safe_name(line, 80)}.wav"


def weights_identity(c: Candidate) -> dict[str, str]:
    from voicelab.fsutil import quick_fingerprint

    w = c.weights
    if w is None:
        return {}
    return {k: quick_fingerprint(p) for k, p in (("llm", w.llm), ("flow", w.flow)) if p}


def forget_changed(run_dir: Path, cands: list[Candidate]) -> None:
    """A candidate whose files changed since this run spoke it (a retrained epoch N under the
    same name) is spoken and scored again."""
    for c in cands:
        ident = weights_identity(c)
        path = run_dir / c.name / "weights.json"
        old = read_json(path, default=None)
        if old is not None and old != ident:
            log.warning(
                "%s changed since run %s scored it: evaluating it again", c.name, run_dir.name
            )
            shutil.rmtree(run_dir / c.name)
        atomic_write_json(path, ident)


def _lines_for(c: Candidate, lines: list[EvalLine]) -> list[EvalLine]:
    # The real recordings exist for dev lines only.
    return [ln for ln in lines if c.kind != "real" or ln.ref_wav]


def _free_gpu() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


# ---- synthesis ----------------------------------------------------------------------------------
def synthesize(
    ws: Workspace, opts: EvalOptions, run_dir: Path, cands: list[Candidate], lines: list[EvalLine]
) -> dict[str, float]:
    """Speak every line not yet spoken; returns synthesis seconds per candidate (this call)."""
    import torch

    from voicelab.blocks.tts_text import plan_utterance
    from voicelab.stages.synth import Synthesizer, write_wav

    for c in cands:
        if c.kind == "real":
            for ln in _lines_for(c, lines):
                if not line_file(run_dir, c.name, ln.id).is_file():
                    assert ln.ref_wav is not None
                    wav = wav_file(run_dir, c.name, ln.id)
                    link_or_copy(ln.ref_wav, wav)
                    row = {**asdict(ln), "seconds": ln.ref_seconds, "wall": None}
                    atomic_write_json(line_file(run_dir, c.name, ln.id), row)
    todo = [
        (c, ln)
        for c in cands
        if c.kind != "real"
        for ln in lines
        if not line_file(run_dir, c.name, ln.id).is_file()
    ]
    if not todo:
        return {}
    plans = {ln.id: plan_utterance(ln.text, ws.instruct) for ln in lines}
    prompt: tuple[str, str] | None = None
    if any(c.kind == "base" for c, _ in todo):
        wav, text = prompt_clip(ws)
        prompt = (wav, text)
        log.info("base model zero-shot reference: %s (%s)", Path(wav).name, text[:40])
    synth = Synthesizer(model_dir(ws), default_speaker=ws.speaker, fp16=opts.fp16)
    spent: dict[str, float] = {}
    try:
        for c, ln in track(todo, "speaking the evaluation set"):
            assert c.weights is not None
            synth.use_weights(c.weights)
            utt = plans[ln.id]
            start, failed = time.perf_counter(), None
            try:
                audio, wall, sr = _speak(synth, c, utt, prompt, opts.seed)
            except torch.OutOfMemoryError:
                raise  # the machine's problem, not the take's
            except _TAKE_ERRORS as e:
                # Upstream fails on what it cannot voice (a model that stops after a token or
                # two: too few frames for the flow's convolutions). A candidate that does that is
                # bad, not the evaluation: the take scores as silence (error rate 1, no voice).
                failed = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
                log.warning("%s could not speak line %s (%s)", c.name, ln.id, failed)
                sr = synth.sample_rate
                audio, wall = np.zeros(0, np.float32), time.perf_counter() - start
            write_wav(wav_file(run_dir, c.name, ln.id), audio, sr)
            row = {**asdict(ln), "seconds": len(audio) / sr, "wall": wall, "spoken": utt.segments}
            if failed:
                row["failed"] = failed
            atomic_write_json(line_file(run_dir, c.name, ln.id), row)
            spent[c.name] = spent.get(c.name, 0.0) + wall
    finally:
        del synth
        _free_gpu()
    return spent


#: The scores of a take with no audio: unintelligible, no voice, no quality figure.
SILENT: dict[str, Any] = {"transcript": "", "err": 1.0, "sim": None, "sim_ref": None, "mos": None}


# ---- scoring ------------------------------------------------------------------------------------
class Scorer:
    """ASR, speaker encoder and DNSMOS, loaded once; the centroid from real training clips."""

    def __init__(self, ws: Workspace, opts: EvalOptions, run_dir: Path) -> None:
        model = opts.asr_model or str(ws.option("prepare", "whisper_model", None, "large-v3"))
        funasr = metrics.funasr_available() if opts.funasr is None else opts.funasr
        with status("loading the scoring models"):
            self.asr = metrics.Asr(model, opts.device, funasr_zh=funasr)
            self.encoder = metrics.load_encoder(opts.speaker_model, ws.base_model_dir, opts.device)
            self.dnsmos = metrics.Dnsmos(opts.device)
        self.centroid = self._centroid(ws, opts, run_dir)
        self._ref: dict[str, np.ndarray] = {}

    def _centroid(self, ws: Workspace, opts: EvalOptions, run_dir: Path) -> np.ndarray:
        cache = run_dir / "centroid.json"
        data = read_json(cache, default=None)
        if isinstance(data, dict) and data.get("encoder") == self.encoder.name:
            return np.asarray(data["centroid"], dtype=np.float64)
        embs = []
        for wav, _ in track(train_clips(ws, seed=opts.seed), "speaker centroid"):
            audio, sr = _load(Path(wav))
            if len(audio) >= sr // 10:
                embs.append(self.encoder.embed(audio, sr))
        c = metrics.centroid(embs)
        atomic_write_json(
            cache, {"encoder": self.encoder.name, "clips": len(embs), "centroid": c.tolist()}
        )
        return c

    def reference(self, ln: EvalLine) -> np.ndarray | None:
        if not ln.ref_wav:
            return None
        if ln.id not in self._ref:
            audio, sr = _load(Path(ln.ref_wav))
            self._ref[ln.id] = self.encoder.embed(audio, sr)
        return self._ref[ln.id]

    def score(self, wav: Path, ln: EvalLine) -> dict[str, Any]:
        audio, sr = _load(wav)
        if len(audio) < sr // 10:  # nothing (or a click) came out: unintelligible, no voice
            return dict(SILENT)
        x16 = metrics.to_16k(audio, sr)
        hyp = self.asr.transcribe(x16, ln.lang)
        emb = self.encoder.embed(audio, sr)
        ref = self.reference(ln)
        mos = self.dnsmos(x16)
        return {
            "transcript": hyp,
            "err": metrics.error_rate(ln.text, hyp, ln.lang),
            "sim": metrics.cosine(emb, self.centroid),
            "sim_ref": metrics.cosine(emb, ref) if ref is not None else None,
            "mos": mos["ovrl"],
            "sig": mos["sig"],
            "bak": mos["bak"],
            "dur_ratio": metrics.duration_ratio(len(audio) / sr, ln.ref_seconds),
        }


def _load(path: Path) -> tuple[np.ndarray, int]:
    from voicelab.stages.features import load_audio

    return load_audio(path)


def score_all(
    ws: Workspace, opts: EvalOptions, run_dir: Path, cands: list[Candidate], lines: list[EvalLine]
) -> float:
    todo = []
    for c in cands:
        for ln in _lines_for(c, lines):
            row = read_json(line_file(run_dir, c.name, ln.id), default=None)
            if isinstance(row, dict) and "err" not in row:
                todo.append((c, ln, row))
    if not todo:
        return 0.0
    start = time.perf_counter()
    scorer = Scorer(ws, opts, run_dir)
    for c, ln, row in track(todo, "scoring"):
        # A take that failed is an empty wav (no audio to read): scored as silence.
        got = SILENT if row.get("failed") else scorer.score(wav_file(run_dir, c.name, ln.id), ln)
        row.update(got)
        atomic_write_json(line_file(run_dir, c.name, ln.id), _finite(row))
    return time.perf_counter() - start


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    """NaN is not JSON: store None."""
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()
    }


# ---- summary ----------------------------------------------------------------------------------
def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [float(r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    vals = [v for v in vals if math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def summarize(run_dir: Path, cands: list[Candidate], lines: list[EvalLine]) -> list[dict]:
    out = []
    for c in cands:
        rows = [
            r
            for ln in _lines_for(c, lines)
            if isinstance(r := read_json(line_file(run_dir, c.name, ln.id)), dict) and "err" in r
        ]
        walls = [r["wall"] for r in rows if isinstance(r.get("wall"), (int, float))]
        audio = sum(float(r.get("seconds") or 0.0) for r in rows)
        summary = {
            "candidate": c.name,
            "kind": c.kind,
            "epoch": c.epoch,
            "lines": len(rows),
            "err": _mean(rows, "err"),
            "cer": _mean([r for r in rows if r.get("lang") == "zh"], "err"),
            "wer": _mean([r for r in rows if r.get("lang") == "en"], "err"),
            "sim": _mean(rows, "sim"),
            "sim_ref": _mean(rows, "sim_ref"),
            "mos": _mean(rows, "mos"),
            "sig": _mean(rows, "sig"),
            "bak": _mean(rows, "bak"),
            "dur_ratio": _mean(rows, "dur_ratio"),
            "rtf": sum(walls) / audio if walls and audio > 0 else None,
            "ckpt": (read_json(run_dir / c.name / "weights.json", default={}) or {}).get("llm"),
        }
        atomic_write_json(
            run_dir / c.name / "candidate.json",
            {**summary, "label": c.label, "per_line": rows},
        )
        out.append(summary)
    return out


def new_run_name(root: Path) -> str:
    name, n = time.strftime("%Y%m%d-%H%M%S"), 1
    while (root / name).exists():
        n += 1
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{n}"
    return name


def run_eval(ws: Workspace, opts: EvalOptions | None = None) -> EvalResult:
    """Synthesize, score and tabulate; resumable (``--run NAME``) per line."""
    from voicelab.evaluation.choose import best

    opts = opts or EvalOptions()
    metrics.check_installed(opts.speaker_model)
    cands = plan_candidates(ws, opts)
    lines = load_set(ws, opts.lines, opts.seed, opts.fixed, opts.new_set)
    train_clips(ws, n=1)  # the speaker centroid needs training clips: fail before synthesis
    root = eval_root(ws)
    run_dir = root / (safe_name(opts.run, 60) if opts.run else new_run_name(root))
    run_dir.mkdir(parents=True, exist_ok=True)
    info = read_json(run_dir / "run.json", default={}) or {}
    known = {c["name"]: c for c in info.get("candidates", [])}
    known.update({c.name: {"name": c.name, "kind": c.kind, "epoch": c.epoch} for c in cands})
    atomic_write_json(
        run_dir / "run.json",
        {
            "options": {k: v for k, v in asdict(opts).items()},
            "lines": [asdict(ln) for ln in lines],
            "candidates": list(known.values()),
        },
    )
    forget_changed(run_dir, cands)
    spent = synthesize(ws, opts, run_dir, cands, lines)
    scored = score_all(ws, opts, run_dir, cands, lines)
    # The table holds every candidate this run has scored, across resumed calls.
    every = [
        Candidate(k["name"], k["kind"], None, k.get("epoch"))
        for k in known.values()
        if (run_dir / k["name"] / "lines").is_dir()
    ]
    rows = summarize(run_dir, every, lines)
    table = write_table(run_dir / TABLE, rows)
    base = next((r for r in rows if r["kind"] == "base"), None)
    tuned = [r for r in rows if r["kind"] not in _BASELINES]
    chosen = [str(r["candidate"]) for r in best(tuned, base)]
    return EvalResult(run_dir, table, rows, chosen, spent, scored, len(lines))
