"""The :class:`Synthesizer`: upstream's model loaded once (weights swapped in strictly), speaking
one utterance at a time."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from voicelab.blocks.tts_text import MARKER, Utterance
from voicelab.console import status
from voicelab.errors import ConfigError, ModelError

if TYPE_CHECKING:
    pass
from voicelab.stages.synth.voice_dir import check_model_dir, choose_speaker, read_speakers
from voicelab.stages.synth.weights import Weights

log = logging.getLogger(__name__)


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
