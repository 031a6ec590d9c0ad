"""``voicelab say``: speak text in the voice with upstream's ``CosyVoice3`` (loaded once).

What the model is made of, in order of precedence (:func:`resolve_weights`):

1. ``--llm-ckpt PATH`` / ``--flow-ckpt PATH``: a training checkpoint loaded over the voice;
2. ``--epoch N``: ``exp/<spk>_sft/llm/torch_ddp/epoch_N_whole.pt`` over the voice;
3. the epoch locked in ``voicelab.toml`` (``voicelab checkpoints lock``), when its file exists;
4. the exported voice as it is (``pretrained_models/Fun-CosyVoice3-0.5B-<spk>-sft``).

Checkpoints are hot-loaded: upstream's ``epoch``/``step`` entries are dropped and the rest is
loaded strictly into ``model.llm`` / ``model.flow``, as the notes' test tool did, so an epoch can
be heard without exporting it. Text rules (instruct, normalization, splitting) are in
:mod:`voicelab.blocks.tts_text`; import-time traps of upstream in
:mod:`voicelab.upstream.inference_fixes`.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from voicelab.blocks.tts_text import MARKER, Utterance, plan_texts, resolve_instruct
from voicelab.console import status, track
from voicelab.errors import ConfigError, InputError, ModelError, WorkspaceError
from voicelab.fsutil import atomic_path, read_json
from voicelab.paths import safe_name, to_local_path
from voicelab.upstream.model_files import BLANKEN, INFERENCE_FILES, SPK2INFO
from voicelab.workspace import DEFAULT_INSTRUCT

if TYPE_CHECKING:
    from voicelab.workspace import Workspace

log = logging.getLogger(__name__)

SAMPLE_RATE = 24000
EMBEDDING_SHAPE = (1, 192)
# What CosyVoice3(model_dir) opens, plus the SFT speaker table VoiceLab writes on export.
BASE_FILES = (*INFERENCE_FILES, BLANKEN)
PROVENANCE = "voicelab.json"  # written by voicelab export
_EPOCH_FILE = re.compile(r"^epoch_(\d+)_whole\.pt$")


# ---- which model ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Weights:
    """Checkpoints hot-loaded over the voice (None: the voice's own ``llm.pt``/``flow.pt``)."""

    llm: Path | None = None
    flow: Path | None = None
    label: str = "exported voice"


def epoch_checkpoint(ws: Workspace, epoch: int, model: str = "llm") -> Path:
    return ws.exp_dir(model) / f"epoch_{int(epoch)}_whole.pt"


def epochs_on_disk(ws: Workspace, model: str = "llm") -> list[int]:
    run = ws.exp_dir(model)
    if not run.is_dir():
        return []
    return sorted(int(m.group(1)) for p in run.iterdir() if (m := _EPOCH_FILE.match(p.name)))


def _explicit_ckpt(value: str | Path, what: str) -> Path:
    path = to_local_path(value)
    if not path.is_file():
        raise ModelError(
            f"{what} {path} does not exist", "check the path (voicelab checkpoints lists them)"
        )
    return path


def exported_llm_files(voice_dir: Path) -> list[str]:
    """File names of the llm checkpoints ``voicelab export`` averaged into ``voice_dir``."""
    prov = read_json(Path(voice_dir) / PROVENANCE, default={}) or {}
    ckpts = (prov.get("llm") or {}).get("checkpoints") or []
    return [str(c.get("file")) for c in ckpts if isinstance(c, dict)]


def resolve_weights(
    ws: Workspace | None,
    llm_ckpt: str | Path | None = None,
    flow_ckpt: str | Path | None = None,
    epoch: int | None = None,
    voice_dir: Path | None = None,
) -> Weights:
    """Explicit checkpoint > ``--epoch`` > locked epoch > the exported voice (module doc).

    With ``voice_dir``, a locked epoch the voice was exported from (its ``voicelab.json``) is
    not loaded again: the voice already is that epoch.
    """
    llm: Path | None = None
    labels: list[str] = []
    if llm_ckpt is not None:
        llm = _explicit_ckpt(llm_ckpt, "--llm-ckpt")
        if epoch is not None:
            log.warning("--llm-ckpt given: --epoch %s is not used", epoch)
        labels.append(f"llm {llm.name}")
    elif epoch is not None:
        if ws is None:
            raise WorkspaceError(
                "--epoch needs a voice workspace (its training run holds the epochs)",
                "pass --workspace DIR, or --llm-ckpt PATH",
            )
        llm = epoch_checkpoint(ws, epoch)
        if not llm.is_file():
            have = epochs_on_disk(ws)
            raise ModelError(
                f"no checkpoint for epoch {epoch}: {llm} does not exist",
                f"epochs on disk: {', '.join(map(str, have))}"
                if have
                else "train first: voicelab train",
            )
        labels.append(f"epoch {epoch}")
    elif ws is not None and ws.config.locked_epoch is not None:
        locked = ws.config.locked_epoch
        path = epoch_checkpoint(ws, locked)
        if voice_dir is not None and exported_llm_files(voice_dir) == [path.name]:
            # The voice was exported from exactly this epoch: nothing to hot-load.
            labels.append(f"exported voice = epoch {locked} (locked)")
        elif path.is_file():
            llm = path
            labels.append(f"epoch {locked} (locked)")
        else:
            log.info("locked epoch %s has no checkpoint on disk: using the exported voice", locked)
    flow = _explicit_ckpt(flow_ckpt, "--flow-ckpt") if flow_ckpt is not None else None
    if flow is not None:
        labels.append(f"flow {flow.name}")
    return Weights(llm=llm, flow=flow, label=", ".join(labels) or "exported voice")


def resolve_model_dir(ws: Workspace | None, model_dir: str | Path | None) -> Path:
    if model_dir is not None:
        return to_local_path(model_dir)
    if ws is None:
        raise WorkspaceError(
            "no voice to speak with: no workspace here and no --model-dir",
            "pass --model-dir DIR of an exported voice, or --workspace DIR",
        )
    return ws.voice_dir


def check_model_dir(model_dir: Path) -> None:
    """One-line error naming every missing file and the command that makes them."""
    if not model_dir.is_dir():
        raise ModelError(
            f"model dir {model_dir} does not exist",
            "run: voicelab export, or pass --model-dir DIR of an exported voice",
        )
    missing = [name for name in (*BASE_FILES, SPK2INFO) if not (model_dir / name).exists()]
    if not missing:
        return
    if missing == [SPK2INFO]:
        hint = "run: voicelab export; it writes spk2info.pt with the speaker's embedding"
    else:
        hint = (
            "run: voicelab export; it assembles the voice from the base model, "
            "which voicelab download cosyvoice3 fetches"
        )
    raise ModelError(f"model dir {model_dir} is incomplete: missing {', '.join(missing)}", hint)


def choose_speaker(available: list[str], requested: str | None, default: str | None) -> str:
    """``--speaker``, else the workspace's speaker, else the only one in ``spk2info.pt``."""
    listing = ", ".join(sorted(available)) or "none"
    if requested:
        if requested in available:
            return requested
        raise ModelError(f"speaker {requested!r} is not in this voice", f"available: {listing}")
    if default and default in available:
        return default
    if len(available) == 1:
        return available[0]
    if not available:
        raise ModelError("spk2info.pt lists no speakers", "run: voicelab export")
    raise ConfigError("this voice has several speakers", f"choose one with --speaker: {listing}")


def read_speakers(model_dir: Path) -> list[str]:
    """Speaker ids of ``spk2info.pt`` whose embedding ``inference_sft`` can use ((1, 192))."""
    import torch

    path = model_dir / SPK2INFO
    try:
        info = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated/corrupt: torch raises several types
        raise ModelError(f"{path} is not readable: {e}", "run: voicelab export") from e
    if not isinstance(info, dict):
        raise ModelError(f"{path} is not a speaker table", "run: voicelab export")
    good = []
    for spk, entry in info.items():
        emb = entry.get("embedding") if isinstance(entry, dict) else None
        if isinstance(emb, torch.Tensor) and tuple(emb.shape) == EMBEDDING_SHAPE:
            good.append(str(spk))
        else:
            log.debug("spk2info entry %r has no (1, 192) 'embedding': not an SFT speaker", spk)
    return good


# ---- synthesis ------------------------------------------------------------------------------
def set_seed(seed: int) -> None:
    """Seed every generator upstream samples from (LLM top-k/RAS sampling, flow noise)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


@dataclass
class Spoken:
    """The audio of one utterance and how long it took."""

    audio: np.ndarray  # float32 mono at the model's rate
    sample_rate: int
    wall: float
    first_audio: float | None = None  # seconds to the first chunk (streaming)

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate

    @property
    def rtf(self) -> float:
        return self.wall / self.seconds if self.seconds > 0 else float("inf")


class Synthesizer:
    """Upstream's ``CosyVoice3`` on an exported voice, loaded once, speaking many utterances."""

    def __init__(
        self,
        model_dir: Path,
        speaker: str | None = None,
        default_speaker: str | None = None,
        fp16: bool = False,
        weights: Weights | None = None,
    ) -> None:
        import torch

        from voicelab.upstream.inference_fixes import import_cosyvoice3

        self.model_dir = Path(model_dir)
        check_model_dir(self.model_dir)
        # Speaker checks before the slow model load.
        self.speaker = choose_speaker(read_speakers(self.model_dir), speaker, default_speaker)
        cosyvoice3 = import_cosyvoice3()  # vendor and packages checked before anything slow
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cpu":
            log.warning("no CUDA GPU: synthesizing on the CPU, this will be slow")
        self.fp16 = bool(fp16 and self.device == "cuda")
        if fp16 and not self.fp16:
            log.info("--fp16 has no effect on the CPU")
        with status(f"loading {self.model_dir.name}"):
            try:
                self.cosy = cosyvoice3(str(self.model_dir), fp16=self.fp16)
            except RuntimeError as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                raise ModelError(
                    f"{self.model_dir} does not load into CosyVoice3: {first}",
                    "export the voice again: voicelab export",
                ) from e
        self.sample_rate = int(self.cosy.sample_rate)
        self._base = {"llm": self.model_dir / "llm.pt", "flow": self.model_dir / "flow.pt"}
        self._loaded: dict[str, Path | None] = dict(self._base)
        self.weights = Weights()
        self._told = ""  # the weights label last logged
        self.use_weights(weights or Weights())

    def use_weights(self, weights: Weights) -> None:
        """Hot-load checkpoints (or put the voice's own weights back); no-op when unchanged."""
        from voicelab.stages.checkpoints import check_against, load_state_dict, strip_meta

        for part, path in (("llm", weights.llm), ("flow", weights.flow)):
            target = path or self._base[part]
            if self._loaded[part] == target:
                continue
            module = getattr(self.cosy.model, part)
            with status(f"loading {part} weights from {target.name}"):
                state = strip_meta(load_state_dict(target))
                # Keys and shapes first: a strict load that fails has already copied the
                # matching tensors, leaving a model that is neither the old nor the new one.
                check_against(state, module.state_dict(), str(target), f"this voice's {part}")
                self._loaded[part] = None  # unknown until the load below completes
                module.load_state_dict(state, strict=True)
                module.eval()
            self._loaded[part] = target
        if self._told != weights.label:
            log.info("speaking with %s (%s)", weights.label, self.model_dir.name)
            self._told = weights.label
        self.weights = weights

    def speak(
        self,
        utt: Utterance,
        speed: float = 1.0,
        stream: bool = False,
        seed: int | None = None,
        on_chunk: Callable[[np.ndarray], None] | None = None,
    ) -> Spoken:
        """All segments of one utterance, concatenated; ``on_chunk`` sees audio as it arrives."""
        import torch

        from voicelab.upstream.inference_fixes import reset_stream_state

        if stream and speed != 1.0:
            raise ConfigError("--speed works only without --stream", "drop one of them")
        if seed is not None:
            set_seed(seed)
        chunks: list[np.ndarray] = []
        first: float | None = None
        start = time.perf_counter()
        for text in utt.tts_texts:
            if text.count(MARKER) != 1:  # the rules of tts_text guarantee it; upstream asserts
                raise AssertionError(f"segment must carry exactly one {MARKER}: {text!r}")
            if stream:
                reset_stream_state(self.cosy)
            with torch.inference_mode():
                for out in self.cosy.inference_sft(
                    text, self.speaker, stream=stream, speed=speed, text_frontend=False
                ):
                    chunk = out["tts_speech"].float().cpu().numpy().reshape(-1).astype(np.float32)
                    if first is None:
                        first = time.perf_counter() - start
                    chunks.append(chunk)
                    if on_chunk is not None:
                        on_chunk(chunk)
        wall = time.perf_counter() - start
        audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        return Spoken(audio=audio, sample_rate=self.sample_rate, wall=wall, first_audio=first)


# ---- audio files ----------------------------------------------------------------------------
def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> Path:
    """16-bit PCM wav (plays everywhere, browsers included), written atomically."""
    import soundfile as sf

    with atomic_path(path) as tmp:
        sf.write(tmp, np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16")
    return path


class StreamingWav:
    """A wav file that grows chunk by chunk (``--stream``): each chunk is written and flushed,
    so players and other programs can read the audio so far. Not atomic by design: an
    interrupted run leaves the audio spoken until then."""

    def __init__(self, path: Path, sample_rate: int) -> None:
        import soundfile as sf

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._f = sf.SoundFile(path, "w", samplerate=sample_rate, channels=1, subtype="PCM_16")

    def write(self, chunk: np.ndarray) -> None:
        self._f.write(np.clip(chunk, -1.0, 1.0))
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def output_paths(out: Path, texts: list[str]) -> list[Path]:
    """One wav per utterance: ``out`` itself for one text given as a ``.wav``, numbered files
    beside it for several, or ``NNN-<text>.wav`` inside ``out`` when it is a folder."""
    if out.suffix.lower() == ".wav":
        if len(texts) == 1:
            return [out]
        return [out.with_name(f"{out.stem}-{i:03d}.wav") for i in range(1, len(texts) + 1)]
    return [out / f"{i:03d}-{safe_name(t, 40)}.wav" for i, t in enumerate(texts, 1)]


def join_path(out: Path) -> Path:
    return (
        out.with_name(f"{out.stem}-joined.wav")
        if out.suffix.lower() == ".wav"
        else out / "joined.wav"
    )


def join_audio(parts: list[np.ndarray], sample_rate: int, pause: float) -> np.ndarray:
    gap = np.zeros(round(max(0.0, pause) * sample_rate), dtype=np.float32)
    pieces: list[np.ndarray] = []
    for i, p in enumerate(parts):
        if i:
            pieces.append(gap)
        pieces.append(p.astype(np.float32))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)


# ---- voicelab say ---------------------------------------------------------------------------
@dataclass
class SayOptions:
    out: Path | None = None
    model_dir: str | Path | None = None
    speaker: str | None = None
    llm_ckpt: str | Path | None = None
    flow_ckpt: str | Path | None = None
    epoch: int | None = None
    preset: str | None = None
    prompt_text: str | None = None
    speed: float = 1.0
    stream: bool = False
    fp16: bool = False
    seed: int | None = None
    text_frontend: bool = True
    join: bool = False
    pause: float = 0.3


@dataclass
class SayResult:
    files: list[Path] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)
    rtfs: list[float] = field(default_factory=list)
    joined: Path | None = None
    joined_seconds: float = 0.0
    audio_seconds: float = 0.0
    wall: float = 0.0
    device: str = ""
    speaker: str = ""
    weights: str = ""
    first_audio: float | None = None

    @property
    def rtf(self) -> float:
        return self.wall / self.audio_seconds if self.audio_seconds > 0 else float("inf")


def check_options(opts: SayOptions) -> None:
    if opts.stream and opts.speed != 1.0:
        raise ConfigError(
            "--speed works only without --stream (upstream changes speed on the whole mel)",
            "drop --stream, or --speed",
        )
    if not 0.5 <= opts.speed <= 2.0:
        raise ConfigError(f"--speed {opts.speed} is out of range", "use a value from 0.5 to 2.0")
    if opts.pause < 0:
        raise ConfigError("--pause must be 0 or more seconds", None)


def voice_instruct(ws: Workspace | None) -> str:
    """The instruct the voice was trained with (``[prepare] instruct``), else upstream's default."""
    return ws.instruct if ws is not None else DEFAULT_INSTRUCT


def default_out(ws: Workspace | None) -> Path:
    return (ws.root if ws is not None else Path.cwd()) / "out_wav"


def load_synthesizer(ws: Workspace | None, opts: SayOptions) -> Synthesizer:
    model_dir = resolve_model_dir(ws, opts.model_dir)
    check_model_dir(model_dir)
    weights = resolve_weights(ws, opts.llm_ckpt, opts.flow_ckpt, opts.epoch, model_dir)
    default_spk = ws.config.speaker if ws is not None else None
    return Synthesizer(model_dir, opts.speaker, default_spk, fp16=opts.fp16, weights=weights)


def run_say(ws: Workspace | None, texts: list[str], opts: SayOptions) -> SayResult:
    """Speak each text (one utterance each) into its own wav; optionally a joined file."""
    check_options(opts)
    instruct = resolve_instruct(voice_instruct(ws), opts.preset, opts.prompt_text)
    utts = plan_texts(texts, instruct, text_frontend=opts.text_frontend)
    for u in utts:
        for note in u.notes:
            log.warning(note)
        log.debug("%r -> %s", u.text, u.tts_texts)
    out = to_local_path(opts.out) if opts.out is not None else default_out(ws)
    paths = output_paths(out, [u.body for u in utts])
    synth = load_synthesizer(ws, opts)
    result = SayResult(device=synth.device, speaker=synth.speaker, weights=synth.weights.label)
    audios: list[np.ndarray] = []
    for utt, path in track(list(zip(utts, paths, strict=True)), "speaking"):
        if opts.stream:
            writer = StreamingWav(path, synth.sample_rate)
            try:
                spoken = synth.speak(utt, stream=True, seed=opts.seed, on_chunk=writer.write)
            finally:
                writer.close()
            if result.first_audio is None:
                result.first_audio = spoken.first_audio
        else:
            spoken = synth.speak(utt, speed=opts.speed, seed=opts.seed)
            write_wav(path, spoken.audio, spoken.sample_rate)
        if spoken.seconds == 0:
            raise InputError(f"no audio came out for {utt.text[:40]!r}", "try another text")
        log.debug("%s  %.2f s  RTF %.2f", path.name, spoken.seconds, spoken.rtf)
        result.files.append(path)
        result.durations.append(spoken.seconds)
        result.rtfs.append(spoken.rtf)
        result.audio_seconds += spoken.seconds
        result.wall += spoken.wall
        audios.append(spoken.audio)
    if opts.join and audios:
        joined = join_audio(audios, synth.sample_rate, opts.pause)
        result.joined = write_wav(join_path(out), joined, synth.sample_rate)
        result.joined_seconds = len(joined) / synth.sample_rate
    return result


def describe(result: SayResult) -> list[str]:
    """The summary lines ``voicelab say`` prints."""
    lines = [f"{p}  ({d:.2f} s)" for p, d in zip(result.files, result.durations, strict=True)]
    if result.joined is not None:
        lines.append(f"{result.joined}  ({result.joined_seconds:.2f} s, joined)")
    extra = f", first audio after {result.first_audio:.2f} s" if result.first_audio else ""
    lines.append(
        f"{result.audio_seconds:.1f} s of audio in {result.wall:.1f} s: RTF {result.rtf:.2f} "
        f"on {result.device} ({result.speaker}, {result.weights}{extra})"
    )
    return lines
