"""The OpenAI-compatible HTTP API: /v1/chat/completions, /v1/models, /health.

Route handlers only translate: JSON -> checked request (omnilm.serve.protocol), audio routing,
then the shared Engine does the model work. Every failure leaves as OpenAI's error JSON.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from omnilm.errors import MediaError, OmniError
from omnilm.serve.engine import Busy, Engine, PromptTooLong
from omnilm.serve.errors import APIError, bad_request
from omnilm.serve.limits import Limits
from omnilm.serve.protocol import (ChatRequest, chunk, completion_id, completion_response, parse_request,
                                   to_chat_request, to_sample, usage)

log = logging.getLogger(__name__)
CREATED = int(time.time())
# An oversized body is still read (and thrown away) up to these bounds before the 413 goes out:
# a client that sends its whole body before reading the answer would otherwise see a reset.
DRAIN_MAX_BYTES = 256 * 1024 * 1024
DRAIN_MAX_SECONDS = 30.0


class ServerState:
    """What the routes share: the engine, the served name, the API key and the request limits."""

    def __init__(self, engine: Engine, model_name: str, api_key: str | None = None, limits: Limits | None = None):
        self.engine = engine
        self.model_name = model_name
        self.api_key = api_key
        self.limits = limits or engine.limits  # request checks; queueing limits stay the engine's
        processor = engine.processor
        # native (audio encoder) | transcribe (Whisper text in the prompt) | none
        self.audio_route = processor.audio_route
        self.audio_max_seconds = processor.audio_max_seconds


def create_app(state: ServerState, ui: bool = False) -> FastAPI:
    app = FastAPI(title="omnilm", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.omnilm = state
    _install_error_handlers(app)
    app.include_router(_routes(state))
    app.add_api_route("/health", lambda: health(state), methods=["GET"])
    if ui:
        from omnilm.serve.webui import mount_ui

        mount_ui(app, state)
    return app


def health(state: ServerState) -> JSONResponse:
    ok = state.engine.alive
    body = {"status": "ok" if ok else "down", "model": state.model_name, "queued": state.engine.load}
    return JSONResponse(body, status_code=200 if ok else 503)


def _routes(state: ServerState) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(_authorize(state))])

    @router.get("/models")
    async def models():
        return {"object": "list", "data": [_model_card(state)]}

    @router.get("/models/{model_id:path}")
    async def model(model_id: str):
        _check_model(state, model_id)
        return _model_card(state)

    @router.post("/chat/completions")
    async def chat_completions(request: Request):
        raw = await _read_body(request, state.limits.max_body_bytes)
        # Parsing megabytes and decoding images and audio is CPU work: off the event loop, so
        # other requests keep flowing.
        parsed = await run_in_threadpool(parse_request, raw, state.limits)
        _check_model(state, parsed.model)
        chat = await run_in_threadpool(to_chat_request, parsed, state.limits, state.audio_max_seconds)
        if chat.audio_clips() and state.audio_route == "none":
            raise bad_request("this model has no audio encoder and no transcriber, so it cannot take input_audio; "
                              "send text, or start the server with --transcriber (e.g. zoo:whisper-tiny.en)",
                              "messages", "audio_not_supported")
        sample = to_sample(chat.turns)
        engine = state.engine
        try:
            if chat.stream:
                handle = engine.stream(sample, chat.config, chat.max_tokens_given, asyncio.get_running_loop())
                try:
                    await handle.start()
                except BaseException:
                    handle.cancel()
                    raise
                return StreamingResponse(_sse(state, chat, handle), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            done = await asyncio.wrap_future(engine.submit(sample, chat.config, chat.max_tokens_given))
        except Exception as err:  # noqa: BLE001 - translated to the request's error response
            raise to_api_error(err) from None
        return completion_response(completion_id(), state.model_name, done.text, done.finish_reason,
                                   done.prompt_tokens, done.completion_tokens)

    return router


async def _sse(state: ServerState, chat: ChatRequest, handle):
    """OpenAI's chunk stream: a role chunk, content chunks, a finish chunk, [usage], [DONE]."""
    cid, created, name = completion_id(), int(time.time()), state.model_name
    extra = {"usage": None} if chat.include_usage else {}
    try:
        yield _event(chunk(cid, name, created, {"role": "assistant", "content": ""}) | extra)
        async for piece in handle:
            yield _event(chunk(cid, name, created, {"content": piece}) | extra)
        end = handle.end
        yield _event(chunk(cid, name, created, {}, end.finish_reason) | extra)
        if chat.include_usage:
            yield _event(chunk(cid, name, created, {}, usage_=usage(end.prompt_tokens, end.completion_tokens),
                               choices=False))
    except Exception as err:  # noqa: BLE001 - headers are sent: the error goes in the stream, as OpenAI does
        yield _event(to_api_error(err).body())
    finally:
        handle.cancel()  # client gone (this generator is cancelled) or done: stop generating for it
    yield "data: [DONE]\n\n"


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def to_api_error(err: BaseException) -> APIError:
    if isinstance(err, APIError):
        return err
    if isinstance(err, Busy):
        return APIError(503, str(err), code="server_busy")
    if isinstance(err, PromptTooLong):
        return bad_request(str(err), "messages", "context_length_exceeded")
    if isinstance(err, MediaError):
        return bad_request(str(err), "messages", "invalid_media")
    if isinstance(err, OmniError):
        return bad_request(str(err), "messages")
    log.error("request failed: %s: %s", type(err).__name__, err)
    return APIError(500, f"the server failed to answer: {type(err).__name__}: {err}", code="internal_error")


def _authorize(state: ServerState):
    async def check(request: Request) -> None:
        if state.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        # compare_digest: the time taken must not reveal how much of the key matched.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), state.api_key.encode()):
            raise APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    return check


def _check_model(state: ServerState, name) -> None:
    if name != state.model_name:
        raise APIError(404, f"the model {name!r} does not exist on this server; it serves {state.model_name!r}",
                       param="model", code="model_not_found")


def _model_card(state: ServerState) -> dict:
    return {"id": state.model_name, "object": "model", "created": CREATED, "owned_by": "omnilm"}


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, or a 413 once it is known to be over the limit; never more than `limit` bytes in memory.

    The refused rest is drained (bounded by DRAIN_MAX_BYTES / DRAIN_MAX_SECONDS) before answering:
    HTTP clients like urllib send the whole body before reading, and closing on them unread
    resets the connection, so they would never see the 413.
    """
    declared = request.headers.get("content-length", "")
    size = int(declared) if declared.isdigit() else 0
    pieces = request.stream()
    chunks, seen = [], 0
    if size <= limit:
        async for piece in pieces:
            seen += len(piece)
            if seen > limit:
                break
            chunks.append(piece)
        else:
            return b"".join(chunks)
    # A client that waits for "100 Continue" has sent nothing yet: it can read the 413 right away.
    if seen or request.headers.get("expect", "").lower() != "100-continue":
        await _drain(pieces)
    raise _too_large(size if size > limit else None, limit)


async def _drain(pieces) -> None:
    drained = 0
    try:
        async with asyncio.timeout(DRAIN_MAX_SECONDS):
            async for piece in pieces:
                drained += len(piece)
                if drained > DRAIN_MAX_BYTES:
                    return
    except (TimeoutError, ClientDisconnect):
        return


def _too_large(declared: int | None, limit: int) -> APIError:
    """What was too large is the body as a whole: it is refused unparsed, so what filled it is unknown."""
    size = f"is {declared} bytes, over" if declared is not None else "is over"
    # Connection: close, as the rest of the body may not all have been read.
    return APIError(413, f"the request body {size} this server's limit of {limit} bytes for the whole "
                    "body (text, images and base64 audio together); send shorter text, fewer or smaller images, "
                    "or shorter audio", code="request_too_large", headers={"Connection": "close"})


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError):
        return err.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        detail = err.detail if isinstance(err.detail, str) else json.dumps(err.detail)
        if err.status_code == 404:
            detail = f"no route {request.method} {request.url.path}; see /v1/chat/completions, /v1/models, /health"
        return APIError(err.status_code, detail).response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError):
        return bad_request(f"invalid request: {err.errors()}").response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception):
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return to_api_error(err).response()
