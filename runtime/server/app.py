"""The OpenAI-compatible HTTP API over one loaded model (a Starlette ASGI app).

Routes: POST /v1/chat/completions, POST /v1/completions (both streaming as
Server-Sent Events ending with ``data: [DONE]``, or whole), GET /v1/models,
GET /health (503 while the model loads, 200 once it has answered a token).
Requests are checked in full before they queue (protocol.py), so a bad one
costs nothing and gets a 4xx ``{"error": ...}``; see scheduler.py for the
queue and cancellation.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from edgelut.model import Completion, GenerateOptions, GenerationStats, Model
from edgelut.server import tools
from edgelut.server.errors import APIError, bad_request
from edgelut.server.grammar import Grammars, response_format_schema
from edgelut.server.protocol import (
    ChatRequest,
    CompletionRequest,
    GenerationRequest,
    parse_chat,
    parse_completion,
    parse_json_body,
)
from edgelut.server.scheduler import Scheduler, Ticket

log = logging.getLogger("edgelut.serve")

# The model's stop reasons in OpenAI's words ("cancelled" never reaches a client that listens).
_FINISH = {"eos": "stop", "stop": "stop", "length": "length", "context": "length", "cancelled": "stop"}


@dataclass
class ServerConfig:
    """What `edgelut serve` was asked for, beyond the model."""

    model_id: str = "edgelut"
    api_key: str | None = None  # None: no auth
    cors_origins: list[str] = field(default_factory=list)  # empty: no CORS headers
    max_waiting: int = 32  # requests queued behind the running one before a 429
    max_body_bytes: int = 4 << 20
    prompt_cache_bytes: int = 0  # Model.prompt_cache_bytes: saved KV caches of other conversations
    stream_interval_s: float = 0.0  # Scheduler.stream_interval_s: how often a stream's tokens are taken


class _State:
    """The model as it loads: None until ready, then the model and its grammar builder."""

    def __init__(self) -> None:
        self.model: Model | None = None
        self.grammars: Grammars | None = None
        self.created = int(time.time())


class SSEResponse(StreamingResponse):
    """A stream that also watches the connection, so a client that goes away while its
    request still waits in the queue (nothing is being sent yet) is noticed too.

    ``on_close`` runs however the response ends: a generator cancelled while it
    waits at a ``yield`` (or never started) would not reach its own ``finally``.
    """

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None], **kw: Any) -> None:
        super().__init__(content, **kw)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._stream_and_watch(receive, send)
        finally:
            self._on_close()

    async def _stream_and_watch(self, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as tg:

            async def stream() -> None:
                with contextlib.suppress(OSError):  # the client went away between two chunks
                    await self.stream_response(send)
                tg.cancel_scope.cancel()

            async def watch() -> None:
                await self.listen_for_disconnect(receive)
                tg.cancel_scope.cancel()

            tg.start_soon(stream)
            tg.start_soon(watch)


class Server:
    """The app's handlers over a (possibly still loading) model and a request scheduler."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.state = _State()
        self.scheduler = Scheduler(config.max_waiting, stream_interval_s=config.stream_interval_s)

    # ---- the model --------------------------------------------------------------------------
    def set_model(self, model: Model) -> None:
        """Install a loaded model after one token of warm-up (so /health's 200 means it answers)."""
        # Repeated requests get the same reply as the first one (see Model.chunk_aligned_reuse).
        model.chunk_aligned_reuse = True
        model.prompt_cache_bytes = self.config.prompt_cache_bytes
        model.complete([0], GenerateOptions(max_tokens=1, temperature=0.0), lambda _: None)
        model.reset()
        tok = model.tokenizer
        if getattr(tok, "settings", None) is not None:  # an edgelut Tokenizer: it can serialise itself
            # The document is asked for when the first constrained request comes (Tokenizer
            # serialises it anew; holding it would cost tens of MB for a large vocabulary).
            self.state.grammars = Grammars(
                lambda: tok.data.tokenizer_json, model.config.vocab_size, model._eos_ids()
            )
        self.state.model = model

    def _model(self) -> Model:
        if self.state.model is None:
            raise APIError(503, "the model is still loading", code="loading", headers={"Retry-After": "1"})
        return self.state.model

    # ---- request plumbing ---------------------------------------------------------------------
    def _authorize(self, request: Request) -> None:
        key = self.config.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise APIError(
                401, "a valid API key is required (Authorization: Bearer KEY)", code="invalid_api_key"
            )

    async def _body(self, request: Request) -> dict[str, Any]:
        limit = self.config.max_body_bytes
        too_big = APIError(413, f"the request body is larger than {limit} bytes", code="body_too_large")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
        return parse_json_body(b"".join(chunks))

    def _budget(self, model: Model, n_prompt: int, max_tokens: int | None) -> int:
        """The max_tokens to run with: a 400 when the prompt or the reply cannot fit the context."""
        n_ctx = model.n_ctx
        slide = model.context_overflow == "slide"
        if n_prompt >= n_ctx and not slide:
            raise bad_request(
                f"this model's context is {n_ctx} tokens but the prompt has {n_prompt}",
                "messages",
                code="context_length_exceeded",
            )
        room = max(n_ctx - n_prompt, 1)
        if max_tokens is None:
            return n_ctx if slide else room
        if max_tokens > room and not slide:
            raise bad_request(
                f"this model's context is {n_ctx} tokens: the prompt has {n_prompt}, "
                f"so at most {room} can be generated, but max_tokens is {max_tokens}",
                "max_tokens",
                code="context_length_exceeded",
            )
        return max_tokens

    # ---- routes -----------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        if self.state.model is None:
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "1"})
        s = self.scheduler
        return JSONResponse(
            {
                "status": "ok",
                "busy": s.busy,
                "waiting": s.waiting,
                "served": s.served,
                "max_waiting": s.max_waiting,
            }
        )

    async def models(self, request: Request) -> Response:
        self._authorize(request)
        model = self._model()
        entry = {
            "id": self.config.model_id,
            "object": "model",
            "created": self.state.created,
            "owned_by": "edgelut",
            "context_length": model.n_ctx,
            "meta": {
                "architecture": model.config.architecture,
                "n_layers": model.config.n_layers,
                "vocab_size": model.config.vocab_size,
            },
        }
        return JSONResponse({"object": "list", "data": [entry]})

    async def chat_completions(self, request: Request) -> Response:
        self._authorize(request)
        model = self._model()
        req = parse_chat(await self._body(request))
        tok = model.tokenizer
        if tok is None:
            raise bad_request("this model has no tokenizer; use /v1/completions with token ids", "messages")
        template = getattr(getattr(tok, "settings", None), "chat_template", None)
        plan = tools.plan(req.tools, req.tool_choice, template)
        schema = response_format_schema(req.response_format)
        if schema is not None and plan.forced is not None:
            raise bad_request(
                "response_format and a forced tool_choice cannot be combined", "response_format"
            )
        variables = {"tools": plan.tools} if plan.tools else {}
        try:
            rendered = tok.apply_chat_template(req.messages, add_generation_prompt=True, **variables)
        except ValueError as e:  # TemplateError, or no template at all
            raise bad_request(str(e), "messages", code="template_error") from None
        ids = model.tokenize(rendered, add_special=False)
        constraint = None
        if schema is not None or plan.forced is not None:
            grammars = self._grammars()
            if schema is not None:
                constraint = await anyio.to_thread.run_sync(grammars.json_schema, schema)
            else:
                forced = plan.forced
                constraint = await anyio.to_thread.run_sync(
                    lambda: grammars.tool_call(forced, tools.OPEN, tools.CLOSE)
                )
        opts = replace(
            req.options, max_tokens=self._budget(model, len(ids), req.max_tokens), constraint=constraint
        )
        return await self._respond(
            request,
            req,
            model,
            ids,
            opts,
            chat=True,
            names=tools.tool_names(plan.tools) if plan.tools else None,
        )

    async def completions(self, request: Request) -> Response:
        self._authorize(request)
        model = self._model()
        req = parse_completion(await self._body(request))
        if isinstance(req.prompt, str):
            if model.tokenizer is None:
                raise bad_request("this model has no tokenizer; send the prompt as token ids", "prompt")
            # Prompt text is data: special-token text in it is not turned into control tokens.
            ids = model.tokenizer.encode(req.prompt, add_special=True, parse_special=False)
        else:
            vocab = model.config.vocab_size
            bad = next((t for t in req.prompt if not 0 <= t < vocab), None)
            if bad is not None:
                raise bad_request(f"token id {bad} is outside the vocabulary [0, {vocab})", "prompt")
            ids = req.prompt
        if not ids:
            raise bad_request("the prompt has no tokens", "prompt")
        opts = replace(req.options, max_tokens=self._budget(model, len(ids), req.max_tokens))
        return await self._respond(request, req, model, ids, opts, chat=False, names=None)

    def _grammars(self) -> Grammars:
        if self.state.grammars is None:
            raise bad_request("constrained output needs the model's tokenizer", "response_format")
        return self.state.grammars

    # ---- answers ----------------------------------------------------------------------------
    async def _respond(
        self,
        request: Request,
        req: GenerationRequest,
        model: Model,
        ids: list[int],
        opts: GenerateOptions,
        *,
        chat: bool,
        names: set[str] | None,
    ) -> Response:
        try:
            model.sampler_params(opts)
        except ValueError as e:
            raise bad_request(f"sampling: {e}") from None
        try:
            job = model.completion(ids, opts)
        except ValueError as e:
            raise bad_request(str(e)) from None
        ticket = self.scheduler.reserve()
        answer = _Answer(self.config.model_id, chat)
        if req.stream:
            return SSEResponse(
                self._sse(ticket, job, answer, req.include_usage, names),
                ticket.cancel,
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        text, stats = await self._collect(request, ticket, job)
        if stats is None:  # the client went away; nobody reads this
            return Response(status_code=499)
        return JSONResponse(answer.whole(text, stats, names))

    async def _collect(
        self, request: Request, ticket: Ticket, job: Completion
    ) -> tuple[str, GenerationStats | None]:
        """The whole reply, given up as soon as the client disconnects."""
        pieces: list[str] = []
        stats: list[GenerationStats] = []
        failure: list[BaseException] = []  # raised after the task group, not wrapped in a group
        try:
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    while (await request.receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(watch)
                try:
                    async for kind, value in ticket.run(job):
                        if kind == "text":
                            pieces.append(value)
                        else:
                            stats.append(value)
                except Exception as e:
                    failure.append(e)
                tg.cancel_scope.cancel()
        finally:
            ticket.cancel()
        if failure:
            raise failure[0]
        return "".join(pieces), (stats[0] if stats else None)

    async def _sse(
        self, ticket: Ticket, job: Completion, answer: _Answer, include_usage: bool, names: set[str] | None
    ) -> AsyncIterator[str]:
        try:
            if answer.chat:
                yield _event(answer.chunk({"role": "assistant", "content": ""}))
            held: list[str] = []  # with tools the reply is held back until it can be parsed
            async for kind, value in ticket.run(job):
                if kind == "text":
                    if names is not None:
                        held.append(value)
                    else:
                        yield answer.text_event(value)
                    continue
                stats: GenerationStats = value
                finish = _FINISH.get(stats.finish_reason, "stop")
                if names is not None:
                    content, calls = tools.parse_reply("".join(held), names)
                    delta: dict[str, Any] = {}
                    if content:
                        delta["content"] = content
                    if calls:
                        delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(calls)]
                        finish = "tool_calls"
                    if delta:
                        yield _event(answer.chunk(delta))
                yield _event(answer.chunk({} if answer.chat else answer.delta(""), finish))
                if include_usage:
                    yield _event(answer.chunk(None, usage=_usage(stats)))
            yield "data: [DONE]\n\n"
        except APIError as e:
            yield _event(e.body())
        except Exception as e:  # the headers are sent: the error can only be an event now
            log.exception("generation failed")
            yield _event(APIError(500, f"generation failed: {type(e).__name__}: {e}").body())
        finally:
            ticket.cancel()


def _usage(stats: GenerationStats) -> dict[str, Any]:
    return {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
        "total_tokens": stats.prompt_tokens + stats.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": stats.cached_tokens},
    }


def _event(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class _Answer:
    """The response objects of one request (chat.completion or text_completion, whole or in chunks)."""

    def __init__(self, model_id: str, chat: bool) -> None:
        self.chat = chat
        self.model_id = model_id
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        # A text chunk's event is the same JSON every time but for the piece: cut it
        # once around a placeholder, so a token costs one string's encoding rather
        # than building and encoding the whole chunk (the server's per-token work
        # competes with the compute threads for the cores).
        mark = "\x01" + uuid.uuid4().hex
        event = _event(self.chunk(self.delta(mark)))
        self._text_head, self._text_tail = event.split(json.dumps(mark, ensure_ascii=False))

    def text_event(self, piece: str) -> str:
        """The SSE event of one text chunk (the bytes of ``_event(chunk(delta(piece)))``)."""
        return self._text_head + json.dumps(piece, ensure_ascii=False) + self._text_tail

    def delta(self, text: str) -> dict[str, Any]:
        return {"content": text} if self.chat else {"text": text}

    def _base(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model_id}

    def chunk(
        self, delta: dict[str, Any] | None, finish: str | None = None, usage: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        out = self._base("chat.completion.chunk" if self.chat else "text_completion")
        if delta is None:
            out["choices"] = []
        elif self.chat:
            out["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        else:
            out["choices"] = [{"index": 0, **delta, "logprobs": None, "finish_reason": finish}]
        if usage is not None:
            out["usage"] = usage
        return out

    def whole(self, text: str, stats: GenerationStats, names: set[str] | None) -> dict[str, Any]:
        finish = _FINISH.get(stats.finish_reason, "stop")
        if not self.chat:
            out = self._base("text_completion")
            out["choices"] = [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]
        else:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if names is not None:
                content, calls = tools.parse_reply(text, names)
                message["content"] = content
                if calls:
                    message["tool_calls"] = calls
                    finish = "tool_calls"
            out = self._base("chat.completion")
            out["choices"] = [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}]
        out["usage"] = _usage(stats)
        return out


# ---- the app --------------------------------------------------------------------------------


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    err = APIError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)
    return JSONResponse(err.body(), status_code=exc.status_code, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s", request.url.path)
    err = APIError(500, f"internal error: {type(exc).__name__}: {exc}")
    return JSONResponse(err.body(), status_code=500)


def create_app(server: Server, lifespan: Any = None) -> Starlette:
    """The ASGI app; ``lifespan`` (an async context manager factory) loads the model."""
    routes = [
        Route("/health", server.health, methods=["GET"]),
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
        Route("/v1/completions", server.completions, methods=["POST"]),
    ]
    middleware = []
    if server.config.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=server.config.cors_origins,
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["Authorization", "Content-Type"],
            )
        )
    return Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={APIError: _api_error, HTTPException: _http_error, Exception: _server_error},
    )


__all__ = ["ChatRequest", "CompletionRequest", "Server", "ServerConfig", "create_app"]
