"""What a speech request may ask for, and the errors it gets otherwise (OpenAI's shape).

Every check gives a 4xx with a message that says what to change; the text itself goes through
``voicelab say``'s rules (:mod:`voicelab.blocks.tts_text`): normalization, splitting and the
instruct + ``<|endofprompt|>`` prefix on every segment; a blank line starts a new utterance.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from voicelab.serve import encode
from voicelab.serve.engine import FAILED, LOADING, Engine
from voicelab.serve.server import Server
from voicelab.serve.voices import Voice

log = logging.getLogger(__name__)

# Model names OpenAI clients send by default: any of them means "the voice's own model".
OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
MIN_SPEED, MAX_SPEED = 0.5, 2.0  # what upstream's mel interpolation keeps intelligible
MAX_INSTRUCT = 200  # characters: an instruct is a short style prompt, spoken before every segment


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


# ---- checks -----------------------------------------------------------------------------------
def check_auth(server: Server, request: Request) -> None:
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


def pick_voice(server: Server, body: SpeechRequest) -> Voice:
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


def check_body(server: Server, body: SpeechRequest) -> None:
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


def plan(server: Server, body: SpeechRequest) -> list[Any]:
    """Utterances by ``say``'s rules (a blank line starts a new one)."""
    from voicelab.blocks.tts_text import plan_texts, resolve_instruct, split_input

    instruct = resolve_instruct(server.config.instruct, body.preset, body.instruct)
    utts = plan_texts(split_input(body.input, "paragraph"), instruct)
    for u in utts:
        for note in u.notes:
            log.info(note)
    return utts


def ready_engine(server: Server, voice: Voice) -> Engine:
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
