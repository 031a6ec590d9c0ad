"""Answering ``POST /v1/audio/speech``: queue the job, wait (or stream), cancel it when the
client leaves or time runs out, encode the audio."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from voicelab.errors import VoiceLabError
from voicelab.serve import encode
from voicelab.serve.checks import (
    ApiError,
    SpeechRequest,
    check_body,
    pick_voice,
    plan,
    ready_engine,
)
from voicelab.serve.engine import Cancelled, Engine, Job, QueueFull, Spoken
from voicelab.serve.server import Server

log = logging.getLogger(__name__)

_POLL = 0.2  # seconds between checks for a gone client / the time limit


async def _cancel_until_done(engine: Engine, job: Job, fut: asyncio.Future[Any]) -> None:
    """Cancel ``job`` and keep aborting until its worker has let go (covers the moment before
    upstream registered the run, when there is nothing to abort yet)."""
    while not fut.done():
        engine.cancel(job)
        await asyncio.sleep(_POLL)
    if not fut.cancelled() and isinstance(fut.exception(), Exception):
        log.debug("cancelled request ended with %r", fut.exception())


_background: set[asyncio.Task[None]] = set()  # kept referenced until done


def _cancel_soon(engine: Engine, job: Job, fut: asyncio.Future[Any]) -> None:
    task = asyncio.ensure_future(_cancel_until_done(engine, job, fut))
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _wait(
    server: Server,
    engine: Engine,
    job: Job,
    fut: asyncio.Future[Spoken],
    request: Request,
    deadline: float,
) -> Spoken:
    """The job's result; cancels it when the client goes away or time runs out."""
    while True:
        done, _ = await asyncio.wait({fut}, timeout=_POLL)
        if done:
            return _result(fut)
        if await request.is_disconnected():
            _cancel_soon(engine, job, fut)
            raise ApiError(499, "client closed the request", "client_closed")
        if time.monotonic() > deadline:
            _cancel_soon(engine, job, fut)
            raise ApiError(
                504, f"the request took longer than {server.config.timeout:g} s", "timeout"
            )


def _result(fut: asyncio.Future[Spoken]) -> Spoken:
    """The job's result; a user-fixable failure (a broken checkpoint, ...) as a 500 that says
    what it was. Bugs stay bugs: the generic handler logs them."""
    try:
        return fut.result()
    except VoiceLabError as e:
        raise ApiError(500, e.one_line(), "synthesis_failed") from e


def _submit(server: Server, engine: Engine, job: Job) -> asyncio.Future[Spoken]:
    try:
        return asyncio.wrap_future(engine.submit(job))
    except QueueFull as e:
        raise ApiError(
            503,
            f"server busy: {e}; retry later",
            "queue_full",
            headers={"Retry-After": str(server.config.retry_after)},
        ) from e


def _observe(server: Server, arrived: float, first: float | None, result: Spoken) -> None:
    if first is not None:
        server.metrics.first_chunk.observe(first - arrived)
    if result.seconds > 0:
        server.metrics.rtf.observe(result.rtf)
        server.metrics.audio_seconds.inc(result.seconds)


async def answer_speech(server: Server, request: Request, body: SpeechRequest) -> Response:
    arrived = time.monotonic()
    deadline = arrived + server.config.timeout
    check_body(server, body)
    voice = pick_voice(server, body)
    try:
        utts = await run_in_threadpool(plan, server, body)
    except VoiceLabError as e:
        raise ApiError(400, e.one_line(), "invalid_input", "input") from e
    engine = ready_engine(server, voice)
    if body.stream:
        return await _stream(
            server,
            engine,
            Job(voice, utts, seed=body.seed, stream=True),
            body.response_format,
            request,
            arrived,
            deadline,
        )
    job = Job(voice, utts, speed=body.speed, seed=body.seed)
    result = await _wait(server, engine, job, _submit(server, engine, job), request, deadline)
    if result.seconds == 0:
        raise ApiError(500, "no audio came out for this text", "no_audio")
    _observe(server, arrived, time.monotonic(), result)
    data = await run_in_threadpool(
        encode.encode, result.audio, result.sample_rate, body.response_format
    )
    return Response(data, media_type=encode.content_type(body.response_format))


async def _stream(
    server: Server,
    engine: Engine,
    job: Job,
    fmt: str,
    request: Request,
    arrived: float,
    deadline: float,
) -> Response:
    """Chunked audio from the first chunk upstream yields. Errors before the first chunk are
    still JSON; after it the stream just ends (the status line has been sent)."""
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[np.ndarray | None] = asyncio.Queue()
    job.on_chunk = lambda c: loop.call_soon_threadsafe(chunks.put_nowait, c)
    fut = _submit(server, engine, job)
    fut.add_done_callback(lambda _: chunks.put_nowait(None))
    first_at: float | None = None

    async def next_chunk() -> np.ndarray | None:
        while True:
            try:
                return await asyncio.wait_for(chunks.get(), timeout=_POLL)
            except asyncio.TimeoutError:
                pass
            if await request.is_disconnected():
                raise Cancelled
            if time.monotonic() > deadline:
                raise TimeoutError

    try:
        first = await next_chunk()
    except Cancelled:
        _cancel_soon(engine, job, fut)
        raise ApiError(499, "client closed the request", "client_closed") from None
    except TimeoutError:
        _cancel_soon(engine, job, fut)
        raise ApiError(
            504, f"the request took longer than {server.config.timeout:g} s", "timeout"
        ) from None
    if first is None:  # the job ended without audio: its error, or none at all
        result = _result(fut)
        raise ApiError(500, f"no audio came out for this text ({result.seconds:.1f} s)", "no_audio")
    first_at = time.monotonic()

    async def body() -> AsyncIterator[bytes]:
        finished = False
        try:
            if fmt == "wav":
                yield encode.wav_stream_header(engine.sample_rate)
            yield encode.pcm16(first)
            while True:
                try:
                    chunk = await next_chunk()
                except TimeoutError:
                    log.warning("stream cut at the time limit (%g s)", server.config.timeout)
                    return
                except Cancelled:  # the client hung up: nobody to tell
                    log.info("client closed a streamed request")
                    return
                if chunk is None:
                    break
                yield encode.pcm16(chunk)
            finished = True
            try:
                result = fut.result()
            except Exception as e:  # after the status line: log it, the stream just ends
                log.warning("stream ended early: %s", e)
                return
            _observe(server, arrived, first_at, result)
        finally:
            if not finished:
                _cancel_soon(engine, job, fut)

    headers = {"X-Accel-Buffering": "no"}  # no proxy buffering: the point is early audio
    return StreamingResponse(body(), media_type=encode.content_type(fmt), headers=headers)
