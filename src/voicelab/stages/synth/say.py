"""``voicelab say``: options, checks and the run."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from voicelab.blocks.tts_text import plan_texts, resolve_instruct
from voicelab.console import track
from voicelab.errors import ConfigError, InputError
from voicelab.paths import to_local_path
from voicelab.workspace import DEFAULT_INSTRUCT

if TYPE_CHECKING:
    from voicelab.workspace import Workspace
from voicelab.stages.synth.synthesizer import Synthesizer
from voicelab.stages.synth.voice_dir import check_model_dir, resolve_model_dir
from voicelab.stages.synth.wavs import StreamingWav, join_audio, join_path, output_paths, write_wav
from voicelab.stages.synth.weights import resolve_weights

log = logging.getLogger(__name__)


# ---- voicelab say ---------------------------------------------------------------------------
@dataclass
class VoiceChoice:
    """Which voice speaks and how: what ``say``, ``audition`` and the web page share."""

    model_dir: str | Path | None = None
    speaker: str | None = None
    llm_ckpt: str | Path | None = None
    flow_ckpt: str | Path | None = None
    epoch: int | None = None
    preset: str | None = None
    prompt_text: str | None = None
    speed: float = 1.0
    fp16: bool = False
    seed: int | None = None
    text_frontend: bool = True

    def __post_init__(self) -> None:
        if self.preset is not None and self.prompt_text is not None:
            raise ConfigError(
                "--preset and --prompt-text both set the instruct", "pass one of them"
            )


@dataclass
class SayOptions(VoiceChoice):
    out: Path | None = None
    stream: bool = False
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
