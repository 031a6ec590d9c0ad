"""The HTTP side of ``voicelab serve``: an OpenAI-compatible speech API (FastAPI).

Routes: ``POST /v1/audio/speech`` (audio), ``GET /v1/models``, ``GET /v1/voices``, ``GET
/health`` and ``GET /metrics``; ``GET /v1/audio/voices`` and ``/v1/audio/models`` are the short
lists chat front ends (Open WebUI) read. The models load in a background thread after the server has
started, so the API answers at once: ``/health`` says ``loading`` (HTTP 503) until they are
ready, and speech requests get 503 with ``Retry-After`` meanwhile (or the load error when a
model cannot load). Every error is JSON in OpenAI's shape
(``{"error": {"message", "type", "param", "code"}}``), never a traceback.

The text rules are ``voicelab say``'s (:mod:`voicelab.tts_text`): normalization, splitting and
the instruct + ``<|endofprompt|>`` prefix on every segment; a blank line starts a new utterance.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from voicelab import __version__
from voicelab.errors import VoiceLabError
from voicelab.serve import encode
from voicelab.serve.engine import FAILED, LOADING, Cancelled, Engine, Job, QueueFull, Result
from voicelab.serve.metrics import CONTENT_TYPE, Metrics
from voicelab.serve.voices import Voice, VoiceTable

log = logging.getLogger(__name__)

# Model names OpenAI clients send by default: any of them means "the voice's own model".
OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
MIN_SPEED, MAX_SPEED = 0.5, 2.0  # what upstream's mel interpolation keeps intelligible
MAX_INSTRUCT = 200  # characters: an instruct is a short style prompt, spoken before every segment
_POLL = 0.2  # seconds between checks for a gone client / the time limit


@dataclass
class ServeConfig:
    instruct: str  # the voices' training instruct (the neutral preset)
    api_key: str | None = None
    max_queue: int = 8
    timeout: float = 300.0  # seconds per request, queue included
    max_input: int = 4096  # characters, as OpenAI's limit
    retry_after: int = 5  # seconds, for 503s
    fp16: bool = False


class ApiError(Exception):
    """An error answer in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        body = {"error": {"message": self.message, "type": kind, "param": self.param}}
        body["error"]["code"] = self.code
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class SpeechRequest(BaseModel):
    """OpenAI's fields (model, input, voice, response_format, speed) and VoiceLab's own."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    input: str
    voice: str | None = None
    response_format: str = "mp3"  # OpenAI's default
    speed: float = 1.0
    preset: str | None = None  # neutral (the training instruct) or hype
    instruct: str | None = None  # an instruct of one's own ('...<|endofprompt|>')
    seed: int | None = None
    stream: bool = False


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
        from voicelab.tts_text import plan_texts

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


# ---- request checks ---------------------------------------------------------------------------
def _check_auth(server: Server, request: Request) -> None:
    key = server.config.api_key
    if not key:
        return
    given = request.headers.get("authorization", "")
    token = given[7:].strip() if given[:7].lower() == "bearer " else ""
    if not token or not hmac.compare_digest(token.encode(), key.encode()):
        raise ApiError(
            401,
            "missing or wrong API key: send 'Authorization: Bearer <key>' "
            "with the key voicelab serve was started with",
            "invalid_api_key",
        )


def _pick_voice(server: Server, body: SpeechRequest) -> Voice:
    table = server.table
    names = ", ".join(table.names())
    model = (body.model or "").strip()
    known_models = {*OPENAI_MODELS, *(e.name for e in server.engines.values())}
    if model and model not in known_models and table.get(model) is None:
        raise ApiError(
            400,
            f"unknown model {model!r}: use one of {', '.join(sorted(known_models))}",
            "model_not_found",
            "model",
        )
    name = (body.voice or "").strip()
    if not name:
        if table.get(model) is not None:  # a voice named as the model
            return table.get_or_raise(model)
        if len(table.voices) == 1:
            return table.voices[0]
        raise ApiError(400, f"voice is required: one of {names}", "voice_required", "voice")
    voice = table.get(name)
    if voice is None:
        raise ApiError(
            400, f"unknown voice {name!r}: voices here: {names}", "voice_not_found", "voice"
        )
    return voice


def _check_body(server: Server, body: SpeechRequest) -> None:
    cfg = server.config
    if not body.input.strip():
        raise ApiError(400, "input is empty: give the text to speak", "empty_input", "input")
    if len(body.input) > cfg.max_input:
        raise ApiError(
            400,
            f"input is {len(body.input)} characters; this server's limit is {cfg.max_input}",
            "input_too_long",
            "input",
        )
    if body.instruct is not None and len(body.instruct) > MAX_INSTRUCT:
        raise ApiError(
            400,
            f"instruct is {len(body.instruct)} characters; the limit is {MAX_INSTRUCT}",
            "input_too_long",
            "instruct",
        )
    if body.seed is not None and not 0 <= body.seed < 2**32:
        raise ApiError(400, "seed must be from 0 to 4294967295", "invalid_seed", "seed")
    fmt = body.response_format = body.response_format.strip().lower()
    if fmt not in encode.FORMATS:
        raise ApiError(
            400,
            f"unknown response_format {fmt!r}: use one of {', '.join(encode.FORMATS)}",
            "unsupported_format",
            "response_format",
        )
    if not MIN_SPEED <= body.speed <= MAX_SPEED:
        raise ApiError(
            400,
            f"speed {body.speed} is out of range: use {MIN_SPEED} to {MAX_SPEED}",
            "invalid_speed",
            "speed",
        )
    if body.stream and body.speed != 1.0:
        raise ApiError(
            400,
            "speed works only without stream (upstream changes speed on the whole utterance)",
            "invalid_speed",
            "speed",
        )
    if body.stream and fmt not in encode.STREAMABLE:
        raise ApiError(
            400,
            f"stream needs response_format pcm or wav, not {fmt!r}",
            "unsupported_format",
            "response_format",
        )


def _plan(server: Server, body: SpeechRequest) -> list[Any]:
    """Utterances by ``say``'s rules (a blank line starts a new one)."""
    from voicelab.tts_text import plan_texts, resolve_instruct, split_input

    instruct = resolve_instruct(server.config.instruct, body.preset, body.instruct)
    utts = plan_texts(split_input(body.input, "paragraph"), instruct)
    for u in utts:
        for note in u.notes:
            log.info(note)
    return utts


def _ready_engine(server: Server, voice: Voice) -> Engine:
    engine = server.engine_of(voice)
    retry = {"Retry-After": str(server.config.retry_after)}
    if engine.state == LOADING:
        raise ApiError(
            503, f"{engine.name} is still loading: retry shortly", "model_loading", headers=retry
        )
    if engine.state == FAILED:
        raise ApiError(
            503, f"{engine.name} could not be loaded: {engine.error}", "model_unavailable"
        )
    return engine


# ---- running a job ----------------------------------------------------------------------------
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
    fut: asyncio.Future[Result],
    request: Request,
    deadline: float,
) -> Result:
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


def _result(fut: asyncio.Future[Result]) -> Result:
    """The job's result; a user-fixable failure (a broken checkpoint, ...) as a 500 that says
    what it was. Bugs stay bugs: the generic handler logs them."""
    try:
        return fut.result()
    except VoiceLabError as e:
        raise ApiError(500, e.one_line(), "synthesis_failed") from e


def _submit(server: Server, engine: Engine, job: Job) -> asyncio.Future[Result]:
    try:
        return asyncio.wrap_future(engine.submit(job))
    except QueueFull as e:
        raise ApiError(
            503,
            f"server busy: {e}; retry later",
            "queue_full",
            headers={"Retry-After": str(server.config.retry_after)},
        ) from e


def _observe(server: Server, arrived: float, first: float | None, result: Result) -> None:
    if first is not None:
        server.metrics.first_chunk.observe(first - arrived)
    if result.seconds > 0:
        server.metrics.rtf.observe(result.rtf)
        server.metrics.audio_seconds.inc(result.seconds)


async def _speech(server: Server, request: Request, body: SpeechRequest) -> Response:
    arrived = time.monotonic()
    deadline = arrived + server.config.timeout
    _check_body(server, body)
    voice = _pick_voice(server, body)
    try:
        utts = await run_in_threadpool(_plan, server, body)
    except VoiceLabError as e:
        raise ApiError(400, e.one_line(), "invalid_input", "input") from e
    engine = _ready_engine(server, voice)
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


# ---- the app ----------------------------------------------------------------------------------
class _Guard:
    """API key check (all routes but /health) and request counting, as plain ASGI: Starlette's
    BaseHTTPMiddleware would sit between a streamed answer and the client and hide the
    client's disconnect from it."""

    def __init__(self, app: Any, server: Server) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path != "/health":
            try:
                _check_auth(self.server, Request(scope))
            except ApiError as e:
                await _error_response(self.server, e)(scope, receive, send)
                return
        if path != "/v1/audio/speech":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.server.metrics.requests.labels(status=str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


def _error_response(server: Server, err: ApiError) -> JSONResponse:
    server.metrics.errors.labels(code=err.code).inc()
    return err.response()


def create_app(server: Server, load: bool = True) -> FastAPI:
    """The FastAPI app; with ``load``, the models load in a thread once it has started."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if load:
            threading.Thread(target=server.load_all, name="voicelab-load", daemon=True).start()
        yield
        for e in server.engines.values():
            e.shutdown()

    app = FastAPI(
        title="VoiceLab speech",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.server = server
    app.add_middleware(_Guard, server=server)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(server, exc)

    @app.exception_handler(RequestValidationError)
    async def _bad_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = (exc.errors() or [{}])[0]
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = loc[-1] if loc else None
        msg = str(first.get("msg", "invalid request"))
        if first.get("type") == "json_invalid" or not loc:
            text = f"the request body is not valid JSON: {msg}"
            param = None
        else:
            text = f"{'.'.join(loc)}: {msg}"
        return _error_response(server, ApiError(400, text, "invalid_request", param))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        msg = f"{request.method} {request.url.path}: {exc.detail}"
        return _error_response(server, ApiError(exc.status_code, msg, code))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.error("error answering %s %s", request.method, request.url.path, exc_info=exc)
        return _error_response(
            server, ApiError(500, "internal error: see the server log", "internal_error")
        )

    @app.post("/v1/audio/speech")
    async def speech(request: Request, body: SpeechRequest) -> Response:
        return await _speech(server, request, body)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        data = [
            {
                "id": e.name,
                "object": "model",
                "created": server.started,
                "owned_by": "voicelab",
                "voices": e.voice_names,
                "state": e.state,
            }
            for e in server.engines.values()
        ]
        return {"object": "list", "data": data}

    @app.get("/v1/voices")
    async def voices() -> dict[str, Any]:
        out = []
        for v in server.table.voices:
            d = v.describe()
            d["state"] = server.engine_of(v).state
            out.append(d)
        return {"object": "list", "data": out}

    # The lists Open WebUI (and other front ends) read from an OpenAI-compatible TTS server.
    @app.get("/v1/audio/voices")
    async def audio_voices() -> dict[str, Any]:
        return {"voices": [{"id": v.name, "name": v.speaker} for v in server.table.voices]}

    @app.get("/v1/audio/models")
    async def audio_models() -> dict[str, Any]:
        return {"models": [{"id": m} for m in (*OPENAI_MODELS[:1], *server.model_names())]}

    @app.get("/health")
    async def health() -> JSONResponse:
        h = server.health()
        return JSONResponse(h, status_code=200 if h["status"] == "ok" else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(server.metrics.render(), media_type=CONTENT_TYPE)

    return app
