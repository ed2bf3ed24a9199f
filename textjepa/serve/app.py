"""The OpenAI-compatible HTTP API over one loaded world model (FastAPI app factory).

POST /v1/chat/completions (JSON or SSE stream), POST /v1/embeddings, GET /v1/models, GET /health; and for
people rather than programs, GET / (the chat page, page.py) and POST /v1/textjepa/inspect (the nearest
training replies to the world model's prediction, inspect.py).
The model loads in the background after the socket is open: /health answers 503 until it is ready.

Concurrency (see limits.py, worker.py, decoding.py): a request first gets one of `max_concurrency` slots
(waiting in a bounded FIFO, else 429 + Retry-After), then its conversation goes through the world model
batched with every other request that arrived meanwhile (one model thread), then the decoder runs on a
worker thread (several at once for a thread-safe decoder). The event loop only parses, routes and streams.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from textjepa.agent import Agent
from textjepa.config import DEFAULT_ACTION, ServeConfig
from textjepa.decoders.base import Generation
from textjepa.errors import TextJepaError
from textjepa.inference.conversation import require_context
from textjepa.inference.world import ablated
from textjepa.serve.decoding import DecoderRunner
from textjepa.serve.errors import ApiError, bad_request, dumps, error_body, json_response
from textjepa.serve.guard import BrowserGuard
from textjepa.serve.inspect import MAX_TOP_K, ReplyIndex, neighbours
from textjepa.serve.limits import Admission, Slot
from textjepa.serve.page import ChatPage
from textjepa.serve.schemas import (
    ChatMessage,
    ChatRequest,
    EmbeddingRequest,
    InspectRequest,
    parse_json,
    validate,
)
from textjepa.serve.worker import Conditioned, ModelWorker

log = logging.getLogger("textjepa.serve")

# The world model keeps the last max_seq tokens; cutting the text to this many characters per token first
# bounds tokenizer work on huge conversations without changing what the model sees.
CHARS_PER_TOKEN_CAP = 64
# A body over the limit is still read (and dropped) up to this many times the limit, so the client gets the
# 413 answer instead of a connection reset while it is still sending.
DRAIN_FACTOR = 4

AgentSource = Agent | Callable[[], Agent]


@dataclass
class ServerState:
    config: ServeConfig
    gate: Admission
    agent: Agent | None = None
    worker: ModelWorker | None = None
    decoder: DecoderRunner | None = None
    replies: ReplyIndex | None = None
    load_error: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    page: ChatPage = field(default_factory=ChatPage.load)

    async def load(self, source: Callable[[], Agent], on_load_error: Callable[[BaseException], None] | None) -> None:
        started = time.perf_counter()
        try:
            agent = await asyncio.to_thread(source)
            self.attach(agent)
            # A full garbage collection walks every object: after torch, FastAPI and the model, some 200k of
            # them, 100-200 ms during which no request moves (measured: the p99 of a load test). What exists
            # now lives as long as the server, so it is moved out of the collector's sight.
            gc.collect()
            gc.freeze()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, TextJepaError):
                self.load_error = str(exc)
                log.error("could not load the model: %s", exc)
            else:
                self.load_error = f"{type(exc).__name__}: {exc}"
                log.exception("could not load the model")
            if on_load_error is not None:
                on_load_error(exc)
            return
        log.info(
            "ready: %s as %r, decoder %s, in %.1f s",
            agent.model_name,
            self.config.model_id,
            agent.decoder.name,
            time.perf_counter() - started,
        )

    def attach(self, agent: Agent) -> None:
        worker = ModelWorker(agent.world, self.config.max_batch)
        worker.start()
        self.decoder = DecoderRunner(agent.decoder, self.config.max_concurrency)
        self.replies = ReplyIndex(agent.world.checkpoint.path, agent.decoder)
        self.worker, self.agent = worker, agent  # set last: a non-None agent means ready

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
        if self.decoder is not None:
            self.decoder.close()

    def require_ready(self) -> Agent:
        if self.load_error is not None:
            raise ApiError(503, "the model failed to load; see the server log", "model_load_failed", "server_error")
        if self.agent is None:
            raise ApiError(
                503,
                "the model is still loading; retry shortly",
                "model_loading",
                "server_error",
                None,
                {"Retry-After": "1"},
            )
        return self.agent


class BearerAuth:
    """`Authorization: Bearer <key>` on /v1/*; /health stays open for load balancers and probes."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            scheme, _, token = header.partition(b" ")
            given = b"Bearer " + token.strip() if scheme.lower() == b"bearer" else b""
            if not hmac.compare_digest(given, self.expected):
                message = "invalid API key" if header else "missing API key: send Authorization: Bearer <key>"
                error = ApiError(401, message, "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    agent_or_loader: AgentSource,
    config: ServeConfig,
    on_load_error: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """agent_or_loader: a loaded Agent, or a function that loads one (run on a thread after startup)."""
    state = ServerState(config, Admission(config.max_concurrency, config.max_queue, config.queue_timeout))
    lifespan = partial(lifetime, agent_or_loader, on_load_error)
    app = FastAPI(title="textjepa", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.textjepa = state
    # Middleware added last runs first: the browser guard, then CORS answers (preflights carry no key), then the key.
    if config.api_key:
        app.add_middleware(BearerAuth, api_key=config.api_key)
    if config.cors_origins:
        origins = [origin.rstrip("/") for origin in config.cors_origins]
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    app.add_middleware(
        BrowserGuard, bound_host=config.host, allowed_hosts=config.allowed_hosts, cors_origins=config.cors_origins
    )
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)
    for method, path, endpoint in ROUTES:
        app.add_api_route(path, endpoint, methods=[method])
    return app


@asynccontextmanager
async def lifetime(
    source: AgentSource, on_load_error: Callable[[BaseException], None] | None, app: FastAPI
) -> AsyncIterator[None]:
    """The model loads in the background once the app has started (or is attached at once when given loaded)."""
    state: ServerState = app.state.textjepa
    loading = None
    if callable(source):
        loading = asyncio.create_task(state.load(source, on_load_error), name="textjepa-load")
    else:
        state.attach(source)  # already loaded: ready as soon as the app starts
    try:
        yield
    finally:
        if loading is not None:
            loading.cancel()
        state.close()


def server_state(request: Request) -> ServerState:
    return request.app.state.textjepa


State = Annotated[ServerState, Depends(server_state)]


async def api_error(_: Request, exc: ApiError) -> Response:
    return exc.response()


async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return json_response(error_body(str(exc.detail), "invalid_request_error", code), exc.status_code, exc.headers)


async def unexpected_error(_: Request, exc: Exception) -> Response:
    log.exception("unexpected error")
    return json_response(error_body(f"internal error: {type(exc).__name__}", "server_error", "internal_error"), 500)


async def chat_page(state: State) -> Response:
    # Open like /health: the page holds no data, and asks for the API key itself when the server has one.
    return state.page.response()


async def health(state: State) -> Response:
    if state.load_error is not None:
        # Open to everyone: the reason (which names local paths) is in the server's log only.
        return json_response({"status": "error", "error": "the model failed to load; see the server log"}, 503)
    if state.agent is None or state.worker is None:
        return json_response({"status": "loading"}, 503, {"Retry-After": "1"})
    stats = state.worker.stats
    return json_response(
        {
            "status": "ok",
            "model": state.config.model_id,
            "in_flight": state.gate.in_flight,
            "waiting": state.gate.waiting,
            "encoder_batches": stats.batches,
            "largest_batch": stats.largest_batch,
        }
    )


async def list_models(state: State) -> Response:
    state.require_ready()
    return json_response({"object": "list", "data": [_model_card(state)]})


async def get_model(model_id: str, state: State) -> Response:
    state.require_ready()
    served = state.config.model_id
    if model_id != served:
        raise ApiError(404, f"model {model_id!r} not found; this server serves {served!r}", "model_not_found")
    return json_response(_model_card(state))


async def chat_completions(request: Request, state: State) -> Response:
    agent, config = state.require_ready(), state.config
    chat = validate(ChatRequest, parse_json(await read_body(request, config.max_body_bytes)))
    messages, context = conversation(chat.messages, agent)
    max_tokens = _max_tokens(chat, config)
    options = _decoder_options(chat)
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    slot = await state.gate.acquire()
    try:
        conditioned = await _condition(state, context)
        if chat.ablate_conditioning:
            conditioned = replace(conditioned, conditioning=ablated(conditioned.conditioning))
        if chat.stream:
            include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
            events = _sse_events(state, slot, completion_id, messages, conditioned, max_tokens, options, include_usage)
            # Start the generator now: from here on its `finally` owns the slot, whatever the client does.
            first = await events.__anext__()
            slot = None
            return StreamingResponse(
                _prepend(first, events),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        generation = await _generate(state, messages, conditioned, max_tokens, options)
    finally:
        if slot is not None:
            slot.release()
    finish = "length" if generation.completion_tokens >= max_tokens else "stop"
    message = {"role": "assistant", "content": generation.text}
    return json_response(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": config.model_id,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": _usage(conditioned.prompt_tokens, generation.completion_tokens),
        }
    )


async def inspect(request: Request, state: State) -> Response:
    agent = state.require_ready()
    body = validate(InspectRequest, parse_json(await read_body(request, state.config.max_body_bytes)))
    _, context = conversation(body.messages, agent)
    if not 1 <= body.top_k <= MAX_TOP_K:
        raise bad_request(f"top_k must be between 1 and {MAX_TOP_K}, got {body.top_k}", param="top_k")
    slot = await state.gate.acquire()
    try:
        conditioned = await _condition(state, context)
        index, missing = await state.replies.get()
        found = (
            await asyncio.to_thread(neighbours, index, conditioned.conditioning, body.top_k)
            if index is not None
            else {"nearest": [], "context_nearest": [], "recalled": None, "prediction_context_cosine": None}
        )
    finally:
        slot.release()
    return json_response(
        {
            "object": "textjepa.inspection",
            "model": state.config.model_id,
            "decoder": agent.decoder.name,
            "action": DEFAULT_ACTION,
            "prompt_tokens": conditioned.prompt_tokens,
            **found,
            "notes": [missing] if missing else [],
        }
    )


async def embeddings(request: Request, state: State) -> Response:
    agent, config = state.require_ready(), state.config
    body = validate(EmbeddingRequest, parse_json(await read_body(request, config.max_body_bytes)))
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    _check_embedding_input(texts, config, agent.world.config.dim, body.dimensions)
    cap = agent.world.config.max_seq * CHARS_PER_TOKEN_CAP
    slot = await state.gate.acquire()
    try:
        embedded = await state.worker.embed([text[-cap:] for text in texts])
    finally:
        slot.release()
    vectors = embedded.vectors.numpy().astype("<f4")
    base64_rows = body.encoding_format == "base64"
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": base64.b64encode(row.tobytes()).decode() if base64_rows else row.tolist(),
        }
        for i, row in enumerate(vectors)
    ]
    tokens = sum(embedded.token_counts)
    return json_response(
        {
            "object": "list",
            "data": data,
            "model": config.model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


# (method, path, endpoint) of every route the app serves.
ROUTES = (
    ("GET", "/", chat_page),
    ("GET", "/health", health),
    ("GET", "/v1/models", list_models),
    ("GET", "/v1/models/{model_id:path}", get_model),
    ("POST", "/v1/chat/completions", chat_completions),
    ("POST", "/v1/textjepa/inspect", inspect),
    ("POST", "/v1/embeddings", embeddings),
)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 when it is over `limit` bytes (never buffering more than the limit)."""
    declared = request.headers.get("content-length")
    too_large = ApiError(413, f"the request body is over the {limit}-byte limit", "request_too_large")
    if declared is not None and declared.isdigit() and int(declared) > limit * DRAIN_FACTOR:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit * DRAIN_FACTOR:
                break
            if size <= limit:
                chunks.append(chunk)
    except ClientDisconnect:
        # Routine on a network (a closed tab, a timeout): one line, not a traceback; the answer goes nowhere.
        log.info("a client disconnected after %d bytes of its request body to %s", size, request.url.path)
        raise ApiError(400, "the client disconnected before its request body was complete", "client_gone") from None
    if size > limit:
        raise too_large
    return b"".join(chunks)


def conversation(raw: list[ChatMessage], agent: Agent) -> tuple[list[dict], str]:
    """The request's messages for the decoder and the context text for the world model (400 if it has none)."""
    messages = normalize_messages(raw)
    if not any(m["role"] == "user" for m in messages):
        raise bad_request("messages must contain at least one user message", param="messages")
    try:
        context = require_context(messages)
    except TextJepaError:
        raise bad_request("the conversation has no text", param="messages") from None
    return messages, context[-agent.world.config.max_seq * CHARS_PER_TOKEN_CAP :]


def normalize_messages(messages: list[ChatMessage]) -> list[dict]:
    """OpenAI messages -> [{"role", "content": str}]; text content parts are joined, other parts refused."""
    out = []
    for i, message in enumerate(messages):
        content = message.content
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if part.type != "text" or part.text is None:
                    raise bad_request(
                        f"content part of type {part.type!r} is not supported; only text parts are",
                        code="unsupported_content",
                        param=f"messages[{i}].content[{j}]",
                    )
                texts.append(part.text)
            content = "\n".join(texts)
        # "developer" is the newer name of "system"; decoders' chat templates know only the older one.
        role = "system" if message.role == "developer" else message.role
        out.append({"role": role, "content": content or ""})
    return out


def _max_tokens(chat: ChatRequest, config: ServeConfig) -> int:
    param = "max_completion_tokens" if chat.max_completion_tokens is not None else "max_tokens"
    value = getattr(chat, param)
    if value is None:
        return config.default_max_tokens
    if not 1 <= value <= config.max_tokens_limit:
        raise bad_request(f"{param} must be between 1 and {config.max_tokens_limit}, got {value}", param=param)
    return value


def _decoder_options(chat: ChatRequest) -> dict:
    if chat.n is not None and chat.n != 1:
        raise bad_request(f"only n=1 is supported, got {chat.n}", param="n")
    if chat.temperature is not None and not 0 <= chat.temperature <= 2:
        raise bad_request(f"temperature must be between 0 and 2, got {chat.temperature}", param="temperature")
    if chat.top_p is not None and not 0 <= chat.top_p <= 1:
        raise bad_request(f"top_p must be between 0 and 1, got {chat.top_p}", param="top_p")
    # Only temperature is passed on: every decoder accepts it (retrieval ignores it); top_p is checked, not used.
    return {} if chat.temperature is None else {"temperature": float(chat.temperature)}


def _check_embedding_input(texts: list, config: ServeConfig, dim: int, dimensions: int | None) -> None:
    if not texts:
        raise bad_request("input must not be empty", param="input")
    if any(not isinstance(text, str) for text in texts):
        raise bad_request(
            "token-id input is not supported (its ids belong to another tokenizer); send text",
            code="unsupported_input",
            param="input",
        )
    if len(texts) > config.max_embedding_inputs:
        raise bad_request(f"at most {config.max_embedding_inputs} inputs per request, got {len(texts)}", param="input")
    for i, text in enumerate(texts):
        if not text.strip():
            raise bad_request(f"input[{i}] is empty", param=f"input[{i}]")
    if dimensions is not None and dimensions != dim:
        raise bad_request(
            f"dimensions must be {dim} (the encoder's latent width) or omitted, got {dimensions}", param="dimensions"
        )


def _model_card(state: ServerState) -> dict:
    return {"id": state.config.model_id, "object": "model", "created": state.created, "owned_by": "textjepa"}


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


async def _condition(state: ServerState, context: str) -> Conditioned:
    try:
        return await state.worker.condition(context)
    except TextJepaError as exc:
        raise bad_request(str(exc)) from exc


async def _generate(
    state: ServerState, messages: list[dict], conditioned: Conditioned, max_tokens: int, options: dict
) -> Generation:
    try:
        return await state.decoder.generate(messages, conditioned.conditioning, max_tokens, **options)
    except TextJepaError as exc:
        raise bad_request(str(exc)) from exc
    except Exception as exc:
        log.exception("decoder failed")
        raise ApiError(500, f"the decoder failed: {exc}", "decoder_error", "server_error") from exc


def _sse(data: dict) -> str:
    return f"data: {dumps(data)}\n\n"


async def _sse_events(
    state: ServerState,
    slot: Slot,
    completion_id: str,
    messages: list[dict],
    conditioned: Conditioned,
    max_tokens: int,
    options: dict,
    include_usage: bool,
) -> AsyncIterator[str]:
    """role delta, content deltas, a final chunk with finish_reason, [usage], [DONE]; or an error event."""
    created = int(time.time())
    model = state.config.model_id

    def chunk(delta: dict, finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse(
            {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [choice],
            }
        )

    try:
        yield chunk({"role": "assistant", "content": ""})
        count = 0
        try:
            async for texts in state.decoder.stream(messages, conditioned.conditioning, max_tokens, **options):
                count += len(texts)
                yield "".join(chunk({"content": text}) for text in texts)  # one write for what came together
        except Exception as exc:
            log.exception("decoder failed mid-stream")
            # The status line is long sent; an error event (which OpenAI clients raise as APIError) and the end
            # of the stream, without [DONE], tell the client that this reply is incomplete.
            yield _sse(error_body(f"the decoder failed: {exc}", "server_error", "decoder_error"))
            return
        ending = [chunk({}, "length" if count >= max_tokens else "stop")]
        if include_usage:
            # Stream chunks stand for tokens here: decoders stream one token (retrieval: one word) at a time.
            ending.append(
                _sse(
                    {
                        "id": completion_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": _usage(conditioned.prompt_tokens, count),
                    }
                )
            )
        yield "".join(ending) + "data: [DONE]\n\n"  # one write
    finally:
        slot.release()


async def _prepend(first: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    try:
        yield first
        async for item in rest:
            yield item
    finally:
        await rest.aclose()  # a client that went away closes the generation too (and frees its slot)
