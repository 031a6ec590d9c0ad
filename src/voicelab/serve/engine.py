"""One loaded model per base, one synthesis at a time, behind a bounded queue.

Each :class:`Engine` owns a :class:`voicelab.stages.synth.Synthesizer` for the voices of one base
model and a single worker thread: requests run one after another (the GPU is one device, and
upstream's model keeps per-call state that concurrent calls would share), each with its own
seed, so one request's audio cannot end up in another's answer. At most ``max_queue``
requests wait; one more is refused at once (:class:`QueueFull`, the HTTP layer's 503) rather
than queued for minutes.

Switching voice loads only what differs: every voice's speaker embedding is registered with
the model at load time, and ``llm.pt`` / ``flow.pt`` are hot-loaded when the voice's file is
not the one loaded (a voice exported without a new flow shares the base's ``flow.pt``).

Cancelling a job (client gone, time limit) stops upstream's LLM at its next token
(:mod:`voicelab.upstream.serving`), so the slot frees within about one token, not at the end
of the utterance.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from voicelab.blocks.tts_text import Utterance
from voicelab.errors import ModelError, VoiceLabError
from voicelab.serve.voices import Voice
from voicelab.stages.synth import SAMPLE_RATE, Spoken, Weights

log = logging.getLogger(__name__)

LOADING, READY, FAILED = "loading", "ready", "error"
T = TypeVar("T")


class QueueFull(Exception):
    """No room in the queue: try again later."""


class Cancelled(Exception):
    """The job was cancelled (client gone or out of time)."""


@dataclass
class Job:
    voice: Voice
    utts: list[Utterance]
    speed: float = 1.0
    stream: bool = False
    seed: int | None = None
    on_chunk: Callable[[np.ndarray], None] | None = None  # called in the worker thread
    cancel: threading.Event = field(default_factory=threading.Event)


def speaker_key(voice: Voice) -> str:
    """The name the voice's embedding is registered under (voice folder names are unique)."""
    return f"voicelab:{voice.name}"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


class SerialQueue:
    """One worker thread running jobs in arrival order; at most ``max_waiting`` wait."""

    def __init__(self, max_waiting: int, name: str = "voicelab-synth") -> None:
        self.max_waiting = max(0, int(max_waiting))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._pending = 0  # submitted and not finished (waiting + running)
        self._running = 0

    @property
    def waiting(self) -> int:
        with self._lock:
            return self._pending - self._running

    @property
    def running(self) -> bool:
        return self._running > 0

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Queue ``fn``; :class:`QueueFull` when ``max_waiting`` calls already wait."""
        with self._lock:
            waiting = self._pending - self._running
            if self._pending > 0 and waiting >= self.max_waiting:
                raise QueueFull(f"{waiting} requests are waiting")
            self._pending += 1
        try:
            return self._pool.submit(self._call, fn)
        except BaseException:
            with self._lock:
                self._pending -= 1
            raise

    def _call(self, fn: Callable[[], T]) -> T:
        with self._lock:
            self._running += 1
        try:
            return fn()
        finally:
            with self._lock:
                self._running -= 1
                self._pending -= 1

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class Engine:
    """The voices of one base model on one loaded ``CosyVoice3``."""

    def __init__(self, voices: list[Voice], max_queue: int = 8, fp16: bool = False) -> None:
        if not voices:
            raise ValueError("an engine needs at least one voice")
        self.voices = list(voices)
        self.name = voices[0].base
        self.max_queue = max(0, int(max_queue))
        self.fp16 = fp16
        self.state = LOADING
        self.error: str | None = None
        self.device = "?"
        self.sample_rate = SAMPLE_RATE
        self.synth: Any = None
        self._queue = SerialQueue(self.max_queue)
        self._lock = threading.Lock()
        self._current: Job | None = None

    # ---- loading ------------------------------------------------------------------------
    def load(self) -> None:
        """Load the model (slow; the server calls it in a background thread)."""
        from voicelab.stages.synth import Synthesizer, read_speakers
        from voicelab.upstream.serving import register_speaker

        first = self.voices[0]
        try:
            synth = Synthesizer(first.model_dir, speaker=first.speaker, fp16=self.fp16)
            for v in self.voices:
                if v.speaker not in read_speakers(v.model_dir):
                    raise ModelError(
                        f"voice {v.name}: spk2info.pt has no speaker {v.speaker!r}",
                        "export the voice again: voicelab export",
                    )
                register_speaker(synth.cosy, speaker_key(v), _embedding(v))
        except VoiceLabError as e:
            self._fail(e.one_line())
            return
        except Exception as e:  # a broken model file: say so on /health, keep serving the rest
            log.exception("loading %s failed", self.name)
            self._fail(f"{type(e).__name__}: {e}")
            return
        self.synth = synth
        self.device = synth.device
        self.sample_rate = synth.sample_rate
        self.state = READY
        log.info("%s ready on %s: %s", self.name, self.device, ", ".join(self.voice_names))

    def _fail(self, message: str) -> None:
        self.error = message
        self.state = FAILED
        log.error("cannot serve %s: %s", ", ".join(self.voice_names), message)

    @property
    def voice_names(self) -> list[str]:
        return [v.name for v in self.voices]

    # ---- queue --------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._queue.running

    @property
    def queue_depth(self) -> int:
        """Requests waiting for the model (the running one not counted)."""
        return self._queue.waiting

    def submit(self, job: Job) -> Future[Spoken]:
        """Queue ``job``; :class:`QueueFull` when ``max_queue`` requests already wait."""
        try:
            return self._queue.submit(lambda: self._run(job))
        except QueueFull as e:
            raise QueueFull(f"{e} for {self.name}") from None

    def cancel(self, job: Job) -> None:
        """Stop ``job``: at once when it runs (its LLM ends at the next token), else at start."""
        from voicelab.upstream.serving import abort_inference

        job.cancel.set()
        with self._lock:
            if self._current is job and self.synth is not None:
                abort_inference(self.synth.cosy)

    def shutdown(self) -> None:
        """Drop waiting jobs and stop the running one (the process exits without waiting for
        the end of an utterance)."""
        self._queue.shutdown()
        current = self._current
        if current is not None:
            self.cancel(current)

    # ---- the worker ---------------------------------------------------------------------
    def _run(self, job: Job) -> Spoken:
        from voicelab.upstream.serving import drop_leftovers

        with self._lock:
            self._current = job
        try:
            if job.cancel.is_set():  # the client left while waiting: nothing to do
                raise Cancelled
            if self.synth is None:
                raise ModelError(f"{self.name} is not loaded", self.error)
            self._use(job.voice)
            return self._speak(job)
        finally:
            with self._lock:
                self._current = None
            if self.synth is not None:
                drop_leftovers(self.synth.cosy)

    def _use(self, voice: Voice) -> None:
        base = self.voices[0].model_dir

        def part(name: str) -> Path | None:
            mine = voice.model_dir / f"{name}.pt"
            return None if _same_file(mine, base / f"{name}.pt") else mine

        self.synth.use_weights(Weights(llm=part("llm"), flow=part("flow"), label=voice.name))
        self.synth.speaker = speaker_key(voice)

    def _speak(self, job: Job) -> Spoken:
        def on_chunk(chunk: np.ndarray) -> None:
            if job.cancel.is_set():
                raise Cancelled
            if job.on_chunk is not None:
                job.on_chunk(chunk)

        parts: list[np.ndarray] = []
        start = time.perf_counter()
        for utt in job.utts:
            if job.cancel.is_set():
                raise Cancelled
            spoken = self.synth.speak(
                utt, speed=job.speed, stream=job.stream, seed=job.seed, on_chunk=on_chunk
            )
            parts.append(spoken.audio)
        if job.cancel.is_set():
            raise Cancelled
        audio = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
        return Spoken(audio, self.sample_rate, time.perf_counter() - start)


def _embedding(voice: Voice) -> Any:
    import torch

    info = torch.load(voice.model_dir / "spk2info.pt", map_location="cpu", weights_only=True)
    return info[voice.speaker]["embedding"]
