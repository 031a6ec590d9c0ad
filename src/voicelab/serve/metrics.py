"""Prometheus metrics of one server (``GET /metrics``), in a registry of its own."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
# First audio: from tens of milliseconds (GPU, short text) to minutes (CPU, long text).
_LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 60, 120, 300)
_RTF_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5, 10, 50)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "voicelab_requests", "Speech requests answered, by HTTP status", ["status"], registry=r
        )
        self.errors = Counter(
            "voicelab_errors", "Error answers, by error code", ["code"], registry=r
        )
        self.queue_depth = Gauge(
            "voicelab_queue_depth", "Requests waiting for a model", ["model"], registry=r
        )
        self.busy = Gauge("voicelab_busy", "1 while a model synthesizes", ["model"], registry=r)
        self.first_chunk = Histogram(
            "voicelab_first_chunk_seconds",
            "From request arrival to its first audio (the whole audio when not streaming)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.rtf = Histogram(
            "voicelab_rtf",
            "Real-time factor of each request: synthesis seconds / audio seconds",
            buckets=_RTF_BUCKETS,
            registry=r,
        )
        self.audio_seconds = Counter(
            "voicelab_audio_seconds", "Seconds of audio synthesized", registry=r
        )

    def watch(self, model: str, depth: Callable[[], float], busy: Callable[[], float]) -> None:
        self.queue_depth.labels(model=model).set_function(depth)
        self.busy.labels(model=model).set_function(busy)

    def render(self) -> bytes:
        return generate_latest(self.registry)
