"""The OpenAI-compatible HTTP API over a serving engine (tunelab.serve.engine's interface).

    app = create_app(engine, api_key=None, served_name="smollm2", request_timeout_s=300, log_path=None,
                     feedback_db=None, max_tokens_limit=2048)

Endpoints: GET /v1/models (the base under `served_name`, then each adapter under its own name),
POST /v1/chat/completions and /v1/completions (streaming as server-sent events ending in `data: [DONE]`,
with the usage chunk when stream_options.include_usage asks, or one JSON reply), POST /v1/feedback, GET
/metrics (Prometheus, metrics.py) and GET /health.

How a request is kept honest:
- a model name is looked up among the served names and nothing else: it is never opened as a path;
- the prompt is rendered with the engine's TRAINING chat template, counted, and refused with OpenAI's
  context_length_exceeded error when prompt + max_tokens would not fit the model's context;
- every wait on the engine is bounded by the request's deadline (request_timeout_s from its arrival) and
  watches the connection: a timeout answers 504, a client that went away (streaming or not) is counted as
  499, and in both cases the engine Stream is cancelled, so its batch slot is freed at the next step.
  Handlers never block a thread per request: they await the Stream's async iterator.
- with an API key configured, every /v1 route and /metrics needs it as the bearer token of the
  Authorization header (compared in constant time); /health does not, so a load balancer can probe without it.

With a feedback database, each answer is stored (prompt messages and answer, by completion id) so that
POST /v1/feedback {"completion_id", "rating", "preferred_answer", "note"} can later become a preference
record (tunelab.data.feedback, read by `tunelab data prepare`).
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data.feedback import FeedbackStore
from ..errors import TunelabError
from ..secrets import redact_text, register_secret
from .engine import GenerationRequest
from .metrics import CONTENT_TYPE, Monitor
from .protocol import (
    APIError,
    ChatRequest,
    CompletionRequest,
    FeedbackRequest,
    Reply,
    parse_body,
    sse,
    unknown_model,
    validation_error,
)

# How often a request waiting on the engine checks that its client is still connected.
_POLL_S = 0.1
_CLIENT_GONE = 499  # nginx's status for "client closed the request": counted, never sent
_ENDPOINTS = {"/v1/chat/completions": "chat.completions", "/v1/completions": "completions",
              "/v1/feedback": "feedback", "/v1/models": "models"}


class _Timeout(Exception):
    pass


class _Gone(Exception):
    pass


class _Clock:
    """Pure ASGI middleware: stamps each request's arrival, so latency and timeouts count from it (a
    BaseHTTPMiddleware would wrap streaming responses and hide client disconnects)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})["t0"] = time.perf_counter()
        await self.app(scope, receive, send)


@dataclass
class _Job:
    """One generation request, validated and submitted."""

    endpoint: str
    model: str
    prompt: list[dict[str, str]] | str | list[int]
    n_prompt: int
    stream: Any
    reply: Reply
    include_usage: bool
    deadline: float
    t0: float
    checked: float = 0.0  # when the connection was last checked
    last: Any = None  # the engine's latest Delta
    ttft: float | None = None
    parts: list[str] = field(default_factory=list)


def create_app(engine: Any, *, api_key: str | None, served_name: str, request_timeout_s: float,
               log_path: Path | None, feedback_db: Path | None, max_tokens_limit: int) -> FastAPI:
    """The FastAPI app serving `engine`. The base model is served as `served_name`, each adapter under the
    engine's name for it; the caller owns the engine (and closes it)."""
    if request_timeout_s <= 0:
        raise TunelabError(f"request timeout {request_timeout_s}: give a positive number of seconds")
    if max_tokens_limit < 1:
        raise TunelabError(f"max_tokens limit {max_tokens_limit}: give at least 1")
    register_secret(api_key)  # masked in the request log and in every error message from here on
    names = list(engine.model_names())
    if served_name in names[1:]:
        raise TunelabError(f"the base model's served name '{served_name}' is also an adapter's name; rename one")
    # served name -> the engine's name for it
    routes = {served_name: names[0], **{n: n for n in names[1:]}}
    store = FeedbackStore(feedback_db) if feedback_db is not None else None
    monitor = Monitor(engine.stats, list(routes), log_path)
    server = _Server(engine, routes, api_key, request_timeout_s, max_tokens_limit, monitor, store)

    app = FastAPI(title="tunelab", docs_url=None, redoc_url=None, lifespan=server.lifespan)
    app.add_middleware(_Clock)
    app.add_exception_handler(APIError, server.on_api_error)
    app.add_exception_handler(RequestValidationError, server.on_validation_error)
    app.add_exception_handler(StarletteHTTPException, server.on_http_error)
    auth = [Depends(server.authorize)]
    app.add_api_route("/health", server.health, methods=["GET"])
    app.add_api_route("/metrics", server.metrics, methods=["GET"], dependencies=auth)
    app.add_api_route("/v1/models", server.list_models, methods=["GET"], dependencies=auth)
    app.add_api_route("/v1/models/{model_id:path}", server.get_model, methods=["GET"], dependencies=auth)
    app.add_api_route("/v1/chat/completions", server.chat, methods=["POST"], dependencies=auth)
    app.add_api_route("/v1/completions", server.completions, methods=["POST"], dependencies=auth)
    app.add_api_route("/v1/feedback", server.feedback, methods=["POST"], dependencies=auth)
    app.state.monitor = monitor
    return app


class _Server:
    def __init__(self, engine: Any, routes: dict[str, str], api_key: str | None, timeout_s: float,
                 max_tokens_limit: int, monitor: Monitor, store: FeedbackStore | None):
        self.engine = engine
        self.routes = routes
        self.key = api_key.encode() if api_key else None
        self.timeout_s = timeout_s
        self.max_tokens_limit = max_tokens_limit
        self.monitor = monitor
        self.store = store
        self.created = int(time.time())

    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            self.monitor.close()
            if self.store is not None:
                self.store.close()

    # -- errors, auth, bookkeeping ----------------------------------------------------------------
    def _finish(self, request: Request, status: int, *, model: str | None = None, latency_s: float | None = None,
                error: APIError | None = None, **fields: Any) -> None:
        endpoint = _ENDPOINTS.get(request.url.path, "models" if request.url.path.startswith("/v1/models/")
                                  else "other")
        t0 = getattr(request.state, "t0", time.perf_counter())
        self.monitor.record(endpoint=endpoint, model=model, status=status,
                            latency_s=time.perf_counter() - t0 if latency_s is None else latency_s,
                            error_type=error.type if error else None,
                            error=redact_text(error.message) if error else None, **fields)

    def _error_response(self, request: Request, err: APIError) -> JSONResponse:
        if request.url.path not in ("/metrics", "/health"):
            self._finish(request, err.status, model=getattr(request.state, "model", None), error=err)
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    async def on_api_error(self, request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        return self._error_response(request, exc)

    async def on_validation_error(self, request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return self._error_response(request, validation_error(list(exc.errors())))

    async def on_http_error(self, request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return self._error_response(request, APIError(exc.status_code, f"{request.method} {request.url.path}: "
                                                      f"{exc.detail}", code=code))

    async def authorize(self, request: Request) -> None:
        if self.key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise APIError(401, "no API key given: send it as the bearer token of the Authorization header",
                           code="invalid_api_key")
        if not hmac.compare_digest(given.strip().encode(), self.key):
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")

    # -- small endpoints --------------------------------------------------------------------------
    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "engine": self.engine.kind}

    async def metrics(self) -> Response:
        return Response(self.monitor.exposition(), media_type=CONTENT_TYPE)

    def _model_card(self, name: str) -> dict[str, Any]:
        base = next(iter(self.routes))
        return {"id": name, "object": "model", "created": self.created, "owned_by": "tunelab",
                "root": base, "parent": None if name == base else base}

    async def list_models(self, request: Request) -> dict[str, Any]:
        self._finish(request, 200)
        return {"object": "list", "data": [self._model_card(n) for n in self.routes]}

    async def get_model(self, request: Request, model_id: str) -> dict[str, Any]:
        if model_id not in self.routes:
            raise unknown_model(model_id, list(self.routes))
        request.state.model = model_id
        self._finish(request, 200, model=model_id)
        return self._model_card(model_id)

    async def feedback(self, request: Request) -> dict[str, Any]:
        body: FeedbackRequest = parse_body(await request.body(), FeedbackRequest)
        if self.store is None:
            raise APIError(404, "feedback is not enabled on this server: start it with --feedback-db FILE",
                           code="feedback_disabled")
        if body.rating is None and not body.preferred_answer:
            raise APIError(400, "give a rating (-1, 0 or 1), a preferred_answer, or both", param="rating")
        try:
            feedback_id = await asyncio.to_thread(self.store.add_feedback, body.completion_id, rating=body.rating,
                                                  preferred_answer=body.preferred_answer, note=body.note)
        except TunelabError as exc:
            raise APIError(404, str(exc), param="completion_id", code="completion_not_found") from None
        self._finish(request, 200)
        return {"id": feedback_id, "object": "feedback", "completion_id": body.completion_id}

    # -- generation -------------------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        return await self._generate(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, chat=False)

    def _resolve(self, request: Request, name: str) -> str:
        request.state.model = name
        if name not in self.routes:
            raise unknown_model(name, list(self.routes))
        return self.routes[name]

    def _prompt_ids(self, body: ChatRequest | CompletionRequest) -> tuple[list[int], Any]:
        """(token ids, the prompt as stored for feedback)."""
        if isinstance(body, ChatRequest):
            messages = body.chat_messages()
            try:
                return list(self.engine.render_chat(messages)), messages
            except TunelabError as exc:
                raise APIError(400, f"the model's chat template refused these messages: {exc}",
                               param="messages") from None
            except Exception as exc:  # a template's own raise_exception ("roles must alternate", ...)
                if type(exc).__module__.startswith("jinja2"):
                    raise APIError(400, f"the model's chat template refused these messages: {exc}",
                                   param="messages") from None
                raise
        prompt = body.prompt_value()
        if isinstance(prompt, list):
            vocab = len(self.engine.tokenizer)
            bad = next((t for t in prompt if not 0 <= t < vocab), None)
            if bad is not None:
                raise APIError(400, f"'prompt' holds token id {bad}, outside the vocabulary (0..{vocab - 1})",
                               param="prompt")
            return prompt, prompt
        ids = list(self.engine.tokenizer(prompt)["input_ids"])
        if not ids:
            raise APIError(400, "'prompt' encodes to no tokens", param="prompt")
        return ids, prompt

    def _max_tokens(self, body: ChatRequest | CompletionRequest, n_prompt: int) -> int:
        asked, param = body.requested_max_tokens()
        limit = self.max_tokens_limit
        if asked is not None and not 1 <= asked <= limit:
            raise APIError(400, f"'{param}' is {asked}; it must be between 1 and {limit}", param=param,
                           code="invalid_value")
        context = self.engine.context_length()
        wanted = asked if asked is not None else 1
        if n_prompt + wanted > context:
            what = "messages" if isinstance(body, ChatRequest) else "prompt"
            raise APIError(400, f"This model's maximum context length is {context} tokens. However, you "
                           f"requested {n_prompt + wanted} tokens ({n_prompt} in the {what}, {wanted} in the "
                           "completion). Please reduce the length of the messages or completion.",
                           param=what, code="context_length_exceeded")
        # without max_tokens an answer may fill what the context has left, up to the server's limit
        return asked if asked is not None else min(limit, context - n_prompt)

    async def _generate(self, request: Request, chat: bool) -> Response:
        endpoint = "chat.completions" if chat else "completions"
        t0 = request.state.t0
        body = parse_body(await request.body(), ChatRequest if chat else CompletionRequest)
        engine_model = self._resolve(request, body.model)
        body.check_supported()
        stop = body.stops()
        prompt_ids, prompt = self._prompt_ids(body)
        max_tokens = self._max_tokens(body, len(prompt_ids))
        try:
            stream = self.engine.submit(GenerationRequest(
                model=engine_model, prompt_ids=prompt_ids, max_tokens=max_tokens, temperature=body.sampling_temperature(),
                top_p=body.top_p, stop=stop, seed=body.seed))
        except TunelabError as exc:
            raise APIError(400, str(exc)) from None
        prefix = "chatcmpl-" if chat else "cmpl-"
        job = _Job(endpoint, body.model, prompt, len(prompt_ids), stream, Reply(chat, prefix + uuid.uuid4().hex, body.model),
                   body.include_usage(), t0 + self.timeout_s, t0)
        if body.stream:
            return StreamingResponse(self._events(request, job), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await self._whole(request, job)

    async def _next(self, ait: Any, request: Request, job: _Job) -> Any:
        """The engine's next Delta; _Timeout past the deadline, _Gone when the client disconnected. The
        connection is checked every _POLL_S whether or not tokens keep coming: a fast stream must not hide
        that nobody reads it any more."""
        task = asyncio.ensure_future(ait.__anext__())
        try:
            while True:
                now = time.perf_counter()
                if now >= job.deadline:
                    raise _Timeout
                if now - job.checked >= _POLL_S:
                    job.checked = now
                    if await request.is_disconnected():
                        raise _Gone
                wait = min(_POLL_S - (now - job.checked), job.deadline - now)
                done, _ = await asyncio.wait({task}, timeout=max(wait, 0.001))
                if done:
                    return task.result()
        finally:
            if not task.done():
                task.cancel()

    def _timeout_error(self) -> APIError:
        return APIError(504, f"the request took longer than the server's limit of {self.timeout_s:g} s and was "
                        "cancelled", type="timeout_error", code="request_timeout")

    @staticmethod
    def _engine_error(job: _Job) -> APIError | None:
        """Why the engine's last word on `job` is not an answer, if it is not."""
        last = job.last
        if last is None:
            return APIError(500, "the engine ended the request without an answer", type="server_error")
        if last.finish_reason == "error":
            return APIError(500, f"generation failed: {last.error or 'engine error'}", type="server_error")
        if last.finish_reason == "cancelled":
            return APIError(503, "the engine cancelled the request (is it shutting down?)", type="server_error")
        return None

    async def _pieces(self, request: Request, job: _Job) -> AsyncIterator[str]:
        """The answer's text as the engine makes it; job.last, job.ttft and job.parts follow along."""
        ait = job.stream.__aiter__()
        while job.last is None or job.last.finish_reason is None:
            try:
                job.last = await self._next(ait, request, job)
            except StopAsyncIteration:
                return
            if job.last.text:
                if job.ttft is None:
                    job.ttft = time.perf_counter() - job.t0
                job.parts.append(job.last.text)
                yield job.last.text

    async def _store(self, job: _Job, text: str, finish_reason: str) -> None:
        if self.store is not None:
            await asyncio.to_thread(self.store.add_completion, job.reply.id, job.model, job.prompt, text,
                                    finish_reason)

    async def _whole(self, request: Request, job: _Job) -> Response:
        try:
            async for _ in self._pieces(request, job):
                pass
        except _Gone:
            job.stream.cancel()
            self._finish(request, _CLIENT_GONE, model=job.model, request_id=job.reply.id, prompt_tokens=job.n_prompt,
                         finish_reason="cancelled")
            return Response(status_code=_CLIENT_GONE)  # nobody reads it; uvicorn drops it
        except _Timeout:
            job.stream.cancel()
            raise self._timeout_error() from None
        except BaseException:
            job.stream.cancel()
            raise
        err = self._engine_error(job)
        if err is not None:
            raise err
        last, text = job.last, "".join(job.parts)
        await self._store(job, text, last.finish_reason)
        self._finish(request, 200, model=job.model, request_id=job.reply.id, prompt_tokens=last.prompt_tokens,
                     completion_tokens=last.completion_tokens, ttft_s=job.ttft, finish_reason=last.finish_reason)
        return JSONResponse(job.reply.full(text, last.finish_reason, last.prompt_tokens, last.completion_tokens))

    async def _events(self, request: Request, job: _Job) -> AsyncIterator[bytes]:
        """The SSE stream of one request; always counts and logs it once, and cancels the engine Stream
        unless it finished."""
        reply, usage = job.reply, job.include_usage
        status, err = 200, None
        done = False
        try:
            if reply.chat:
                yield sse(reply.chunk("", first=True, with_usage=usage))
            async for piece in self._pieces(request, job):
                yield sse(reply.chunk(piece, with_usage=usage))
            done = True
            err = self._engine_error(job)
            if err is not None:
                status = err.status
                yield sse(err.body())
                return
            last = job.last
            await self._store(job, "".join(job.parts), last.finish_reason)
            yield sse(reply.chunk(None, last.finish_reason, with_usage=usage))
            if usage:
                yield sse(reply.usage_chunk(last.prompt_tokens, last.completion_tokens))
            yield sse("[DONE]")
        except _Timeout:
            err = self._timeout_error()
            status = err.status
            yield sse(err.body())
        except _Gone:
            status = _CLIENT_GONE
        except (asyncio.CancelledError, GeneratorExit):  # Starlette saw the disconnect first
            status = _CLIENT_GONE
            raise
        finally:
            if not done:
                job.stream.cancel()
            last = job.last
            self._finish(request, status, model=job.model, request_id=reply.id,
                         prompt_tokens=last.prompt_tokens if last else job.n_prompt,
                         completion_tokens=last.completion_tokens if last else None, ttft_s=job.ttft,
                         finish_reason=(last.finish_reason if last and done else "cancelled"), error=err)
