"""The state of one running ``voicelab serve``: its voices, one engine per base model, limits
and metrics."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from voicelab import __version__
from voicelab.errors import VoiceLabError
from voicelab.serve.engine import FAILED, LOADING, Engine
from voicelab.serve.metrics import Metrics
from voicelab.serve.voices import Voice, VoiceTable

log = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    instruct: str  # the voices' training instruct (the neutral preset)
    api_key: str | None = None
    max_queue: int = 8
    timeout: float = 300.0  # seconds per request, queue included
    max_input: int = 4096  # characters, as OpenAI's limit
    retry_after: int = 5  # seconds, for 503s
    fp16: bool = False


class Server:
    """Voices, engines (one per base model), limits and metrics of one running server."""

    def __init__(self, voices: list[Voice], config: ServeConfig) -> None:
        self.config = config
        self.table = VoiceTable(voices)
        self.engines: dict[str, Engine] = {
            key: Engine(vs, max_queue=config.max_queue, fp16=config.fp16)
            for key, vs in self.table.groups().items()
        }
        self.metrics = Metrics()
        for e in self.engines.values():
            self.metrics.watch(e.name, lambda e=e: e.queue_depth, lambda e=e: float(e.busy))
        self.started = int(time.time())

    def model_names(self) -> list[str]:
        return [e.name for e in self.engines.values()]

    def engine_of(self, voice: Voice) -> Engine:
        return self.engines[voice.base_key]

    def load_all(self) -> None:
        for engine in self.engines.values():
            engine.load()
        from voicelab.blocks.tts_text import plan_texts

        # wetext builds its zh/en normalizers on first use (seconds): not in the first request.
        try:
            plan_texts(["你好，3点见。", "Hello at 3 pm."], self.config.instruct)
        except VoiceLabError as e:
            log.warning("text rules: %s", e.one_line())

    @property
    def status(self) -> str:
        states = {e.state for e in self.engines.values()}
        if LOADING in states:
            return LOADING
        return FAILED if states == {FAILED} else "ok"

    def health(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "version": __version__,
            "models": [
                {
                    "id": e.name,
                    "state": e.state,
                    "error": e.error,
                    "device": e.device,
                    "voices": e.voice_names,
                    "queue_depth": e.queue_depth,
                    "busy": e.busy,
                }
                for e in self.engines.values()
            ],
        }
