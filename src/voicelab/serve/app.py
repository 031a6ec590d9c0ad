"""The HTTP side of ``voicelab serve``: an OpenAI-compatible speech API (FastAPI).

Routes: ``POST /v1/audio/speech`` (audio), ``GET /v1/models``, ``GET /v1/voices``, ``GET
/health`` and ``GET /metrics``; ``GET /v1/audio/voices`` and ``/v1/audio/models`` are the short
lists chat front ends (Open WebUI) read. The models load in a background thread after the server has
started, so the API answers at once: ``/health`` says ``loading`` (HTTP 503) until they are
ready, and speech requests get 503 with ``Retry-After`` meanwhile (or the load error when a
model cannot load). Every error is JSON in OpenAI's shape
(``{"error": {"message", "type", "param", "code"}}``), never a traceback.

Request checks are in :mod:`voicelab.serve.checks`, answering in :mod:`voicelab.serve.speech`,
the server's state in :mod:`voicelab.serve.server`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from voicelab import __version__
from voicelab.serve.checks import OPENAI_MODELS, ApiError, SpeechRequest, check_auth
from voicelab.serve.metrics import CONTENT_TYPE
from voicelab.serve.server import Server
from voicelab.serve.speech import answer_speech

log = logging.getLogger(__name__)


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
                check_auth(self.server, Request(scope))
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
        return await answer_speech(server, request, body)

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
