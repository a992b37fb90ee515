"""`pocketlm serve`: an OpenAI-compatible HTTP API (FastAPI + uvicorn) in front of one model.

Endpoints: GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/completions (each with SSE
streaming), GET /metrics (Prometheus) and the web chat page at /. A PyTorch Llama model decodes its requests
together (continuous batching, inference/batching.py); any other model runs them one at a time on a worker
thread, behind an asyncio lock. Either way the event loop keeps answering /health, queued requests and
disconnects, and a full queue is answered 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import sys
import time
import uuid
import weakref
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pocketlm.errors import UserError
from pocketlm.inference.options import SamplingConfig
from pocketlm.serve.openai_schema import APIError, ChatRequest, CompletionRequest, ErrorResponse, error_body

_DONE = object()
ROUTES = {"/", "/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions"}
PUBLIC_PATHS = {"/health", "/", "/favicon.ico"}  # the web page itself is static; its API calls carry the key


def _error(status: int, message: str, **kw) -> JSONResponse:
    return JSONResponse(error_body(status, message, **kw), status_code=status)


class Guard:
    """Pure ASGI middleware: the API key (everything but PUBLIC_PATHS), the request body size limit (413) and
the count of answers by route and status for /metrics."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int, metrics=None):
        self.app, self.api_key, self.limit, self.metrics = app, api_key, max_body_bytes, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.metrics is not None:
            send = self._counting(scope["path"], send)
        headers = dict(scope["headers"])
        if self.api_key and scope["path"] not in PUBLIC_PATHS:
            auth = headers.get(b"authorization", b"").decode("latin-1")
            given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(given.encode(), self.api_key.encode()):
                what = "wrong API key" if given else "missing API key (send `Authorization: Bearer KEY`)"
                return await _error(401, what, code="invalid_api_key")(scope, receive, send)
        too_big = _error(413, f"request body larger than {self.limit:,} bytes", code="request_too_large")
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await too_big(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await too_big(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the client to go away

        await self.app(scope, replay, send)

    def _counting(self, path: str, send):
        route = path if path in ROUTES else "/v1/models/{id}" if path.startswith("/v1/models/") else "other"

        async def counted(message):
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(route, str(message["status"])).inc()
            await send(message)
        return counted


class Service:
    """The model behind the API, its limits and its queue: a batched backend decodes requests together; any
    other runs up to `backend.parallel` of them (1 unless it says more) on worker threads, behind a semaphore."""

    def __init__(self, backend, *, system: str | None = None, grounding=None, max_tokens_limit: int = 2048,
                 max_waiting: int = 64, metrics=None):
        self.backend, self.system, self.grounding = backend, system, grounding
        self.max_tokens_limit, self.max_waiting, self.metrics = max_tokens_limit, max_waiting, metrics
        self.engine = getattr(backend, "engine", None)
        self.slots = getattr(backend, "parallel", 1) if self.engine is None else 0
        self.gate = asyncio.Semaphore(self.slots or 1)
        self.running = self.waiting = 0  # requests generating / queued on the semaphore (the threaded path)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pocketlm-prompt")
        self.generators = ThreadPoolExecutor(max_workers=max(1, self.slots), thread_name_prefix="pocketlm-generate")

    def queue_sizes(self) -> tuple[int, int]:
        """(running, waiting) requests."""
        if self.engine is not None:
            return self.engine.running_count(), self.engine.n_waiting
        return self.running, self.waiting

    def check_model(self, name: str) -> None:
        if name != self.backend.name:
            raise APIError(404, f"the model `{name}` does not exist; this server has `{self.backend.name}`",
                           param="model", code="model_not_found")

    def sampling(self, req, n_prompt: int) -> SamplingConfig:
        if req.n != 1:
            raise APIError(400, "n: only n=1 is supported", param="n")
        if req.logprobs:
            raise APIError(400, "logprobs are not supported yet", param="logprobs")
        room = self.backend.context - n_prompt
        if room < 1:
            raise APIError(400, f"the prompt is {n_prompt} tokens; this model's context window is "
                           f"{self.backend.context}", param="messages" if isinstance(req, ChatRequest) else "prompt",
                           code="context_length_exceeded")
        wanted = req.wanted_tokens()
        field = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) is not None else "max_tokens"
        if wanted is not None and wanted > self.max_tokens_limit:
            raise APIError(400, f"{field}: at most {self.max_tokens_limit} (got {wanted})", param=field)
        if wanted is not None and n_prompt + wanted > self.backend.context:
            raise APIError(400, f"the prompt ({n_prompt} tokens) plus {field} {wanted} exceed this model's "
                           f"context window of {self.backend.context} tokens", param=field,
                           code="context_length_exceeded")
        max_new = wanted if wanted is not None else min(room, self.max_tokens_limit)
        return SamplingConfig(max_new_tokens=max_new, temperature=req.temperature, top_k=0, top_p=req.top_p,
                              repetition_penalty=1.0, stop=req.stops(), seed=req.seed)

    def constraint(self, req: ChatRequest):
        """What keeps the answer valid JSON for response_format json_object / json_schema (None for text)."""
        fmt = req.response_format or {}
        kind = fmt.get("type", "text")
        if kind == "text":
            return None
        if kind == "json_object":
            return self.backend.json_constraint(None)
        if kind == "json_schema":
            spec = fmt.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if not isinstance(schema, dict):
                raise APIError(400, "response_format.json_schema.schema: a JSON schema object is required",
                               param="response_format")
            return self.backend.json_constraint(schema)
        raise APIError(400, f"response_format.type: text, json_object or json_schema (got {kind!r})",
                       param="response_format")

    def chat_prompt(self, req: ChatRequest):
        if req.tools:
            raise APIError(400, "tools are not supported", param="tools")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in req.messages]
        if self.system and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": self.system})
        if self.grounding is not None and any(m["role"] == "user" for m in messages):
            messages = self.grounding.ground(messages)
        return self.backend.chat_prompt(messages)

    async def call(self, fn, *args):
        """`fn(*args)` on the prompt thread: the event loop is not held up by prompt building (chat template,
        grounding's retrieval)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def start(self, prompt, cfg: SamplingConfig, stats: dict, constraint=None, n_prompt: int = 0):
        """Queue a generation now (429 when the queue is full, 503 when the model has stopped) and return
        the async iterator of its text pieces. Leaving the iterator early (a client gone) cancels it."""
        return self._timed(self._start(prompt, cfg, stats, constraint), stats, n_prompt)

    async def _timed(self, pieces: AsyncIterator[str], stats: dict, n_prompt: int) -> AsyncIterator[str]:
        m, t0 = self.metrics, time.perf_counter()
        last = None
        try:
            async for piece in pieces:
                now = time.perf_counter()
                if m is not None:
                    (m.ttft if last is None else m.gap).observe(now - (t0 if last is None else last))
                last = now
                yield piece
        finally:
            if m is not None:
                m.duration.observe(time.perf_counter() - t0)
                m.prompt_tokens.inc(n_prompt)
                m.completion_tokens.inc(stats.get("tokens", 0))

    def _start(self, prompt, cfg: SamplingConfig, stats: dict, constraint=None) -> AsyncIterator[str]:
        if self.engine is not None:
            from pocketlm.inference.batching import Busy, Closed
            loop = asyncio.get_running_loop()
            pieces: asyncio.Queue = asyncio.Queue()

            def sink(kind, value):
                try:
                    loop.call_soon_threadsafe(pieces.put_nowait, (kind, value))
                except RuntimeError:  # the event loop has closed (shutdown)
                    pass

            try:
                handle = self.engine.submit(prompt, cfg, sink, constraint)
            except Busy as e:
                raise busy(429, f"the server is busy: {e}", code="rate_limit_exceeded") from None
            except Closed as e:
                raise busy(503, f"the model is not running ({e})", code="unavailable") from None
            except ValueError as e:  # an empty prompt (a tokenizer without BOS), one past the context window
                raise APIError(400, f"the prompt cannot be generated from: {e}", param="prompt") from None
            gen = self._batched(handle, pieces, stats)
            weakref.finalize(gen, handle.cancel)  # a response never started (client gone first) frees it too
            return gen
        if self.waiting >= self.max_waiting:
            raise busy(429, f"the server is busy: {self.waiting} requests are waiting already",
                       code="rate_limit_exceeded")
        self.waiting += 1
        ticket = [True]  # counted as waiting until it holds the lock, or is dropped unstarted
        gen = self._serial(prompt, cfg, stats, ticket, constraint)
        weakref.finalize(gen, self._unwait, ticket)
        return gen

    def _unwait(self, ticket: list) -> None:
        if ticket[0]:
            ticket[0] = False
            self.waiting -= 1

    async def _batched(self, handle, pieces: asyncio.Queue, stats: dict) -> AsyncIterator[str]:
        stats.update(tokens=0, finish="length")
        held = None
        try:
            while True:
                kind, value = held or await pieces.get()
                held = None
                while kind == "text" and not pieces.empty():  # pieces made while the last one was being sent
                    nxt = pieces.get_nowait()                  # go out together: under load the stream keeps
                    if nxt[0] != "text":                       # up with the engine instead of falling behind
                        held = nxt
                        break
                    value += nxt[1]
                stats["tokens"] = len(handle.generated)
                if kind == "text":
                    yield value
                elif kind == "end":
                    stats["finish"] = value
                    return
                else:
                    raise value
        finally:  # a client gone mid-stream frees its slot at the engine's next step
            handle.cancel()

    async def _serial(self, prompt, cfg: SamplingConfig, stats: dict, ticket: list,
                      constraint=None) -> AsyncIterator[str]:
        """The generated pieces; each generation runs on a worker thread while it holds the semaphore."""
        try:
            await self.gate.acquire()
        finally:
            self._unwait(ticket)
        self.running += 1
        try:
            loop = asyncio.get_running_loop()
            it = await loop.run_in_executor(self.generators, lambda: iter(self.backend.stream(prompt, cfg, stats, constraint)))
            try:
                while True:
                    piece = await loop.run_in_executor(self.generators, next, it, _DONE)
                    if piece is _DONE:
                        return
                    yield piece
            finally:  # a client gone mid-stream stops the generation at once
                await asyncio.shield(loop.run_in_executor(self.generators, _close, it))
        finally:
            self.running -= 1
            self.gate.release()


def busy(status: int, message: str, code: str) -> APIError:
    """A 429 or 503 that tells the client when to retry."""
    e = APIError(status, message, code=code)
    e.retry_after = 1
    return e


def _close(it) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        close()


def _usage(n_prompt: int, stats: dict) -> dict:
    return {"prompt_tokens": n_prompt, "completion_tokens": stats.get("tokens", 0),
            "total_tokens": n_prompt + stats.get("tokens", 0)}


def _citations(stats: dict) -> dict:
    """A bot's sources, as a top-level `citations` list (clients that do not know it ignore it)."""
    return {"citations": stats["citations"]} if stats.get("citations") else {}


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def create_app(backend, *, api_key: str | None = None, system: str | None = None, grounding=None,
               max_body_bytes: int = 1_000_000, max_tokens_limit: int = 2048, max_waiting: int = 64):
    """The ASGI application serving `backend` (inference/backends.py); run it with uvicorn."""
    from pocketlm.serve.metrics import Metrics
    service = Service(backend, system=system, grounding=grounding, max_tokens_limit=max_tokens_limit,
                      max_waiting=max_waiting)
    metrics = service.metrics = Metrics(service.queue_sizes)
    if service.engine is not None:
        service.engine.on_step = metrics.on_step
    err = {"model": ErrorResponse, "description": "an error, in OpenAI's shape"}
    app = FastAPI(title="pocketlm", version="1", docs_url=None, redoc_url=None,
                  responses={"4XX": err, "5XX": err})  # (documenting 4XX also drops FastAPI's unused 422)
    streamed = {200: {"description": "the completion, or with stream=true Server-Sent Events",
                      "content": {"text/event-stream": {"schema": {
                          "description": "each event's data: a JSON chunk, and last the text [DONE]"}}}}}
    app.state.service = service

    @app.exception_handler(APIError)
    async def api_error(request, e: APIError):
        response = _error(e.status, e.message, param=e.param, code=e.code, type=e.type)
        if getattr(e, "retry_after", None) is not None:
            response.headers["Retry-After"] = str(e.retry_after)
        return response

    @app.exception_handler(UserError)
    async def user_error(request, e: UserError):
        return _error(400, str(e))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        if first.get("type") == "json_invalid":
            return _error(400, "the request body is not valid JSON", code="invalid_json")
        param = ".".join(loc) or None
        if param is None and first.get("type") in ("model_attributes_type", "dict_type", "missing"):
            return _error(400, "the request body must be a JSON object (Content-Type: application/json)",
                          code="invalid_body")
        message = f"{param}: {first.get('msg', 'invalid')}" if param else first.get("msg", "invalid request")
        return _error(400, message, param=param, code=first.get("type"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e: StarletteHTTPException):
        status = e.status_code
        message = "no such route" if status == 404 else str(e.detail)
        response = _error(status, f"{message}: {request.method} {request.url.path}", code=None)
        response.headers.update(getattr(e, "headers", None) or {})  # a 405's Allow
        return response

    @app.exception_handler(Exception)
    async def server_error(request, e: Exception):
        # the client gets OpenAI's error shape; whoever runs the server gets one line saying what broke
        print(f"error: {request.method} {request.url.path}: {type(e).__name__}: {e}", file=sys.stderr)
        return _error(500, f"internal error: {type(e).__name__}")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": backend.name}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus():
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model_card(backend)]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        service.check_model(name)
        return _model_card(backend)

    @app.post("/v1/chat/completions", responses=streamed)
    async def chat(req: ChatRequest):
        service.check_model(req.model)
        constraint = service.constraint(req)
        prompt, n_prompt = await service.call(service.chat_prompt, req)
        cfg = service.sampling(req, n_prompt)
        return await _respond(service, req, prompt, n_prompt, cfg, chat=True, constraint=constraint)

    @app.post("/v1/completions", responses=streamed)
    async def completions(req: CompletionRequest):
        service.check_model(req.model)
        if req.echo or req.suffix:
            raise APIError(400, "echo and suffix are not supported", param="echo" if req.echo else "suffix")
        prompt, n_prompt = await service.call(service.backend.text_prompt, req.text())
        cfg = service.sampling(req, n_prompt)
        return await _respond(service, req, prompt, n_prompt, cfg, chat=False)

    from pocketlm.serve.web import add_routes
    add_routes(app)
    return Guard(app, api_key, max_body_bytes, metrics)


def _model_card(backend) -> dict:
    return {"id": backend.name, "object": "model", "created": 0, "owned_by": "pocketlm",
            "context_window": backend.context}


async def _respond(service: Service, req, prompt, n_prompt: int, cfg: SamplingConfig, *, chat: bool,
                   constraint=None):
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    kind = "chat.completion" if chat else "text_completion"
    stats: dict = {}
    head = {"id": rid, "object": kind, "created": created, "model": service.backend.name}
    if not req.stream:
        text = "".join([piece async for piece in service.start(prompt, cfg, stats, constraint, n_prompt=n_prompt)])
        choice = {"index": 0, "finish_reason": stats.get("finish", "stop"), "logprobs": None}
        choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
        return {**head, "choices": [choice], "usage": _usage(n_prompt, stats), **_citations(stats)}

    head["object"] = kind + ".chunk" if chat else kind
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(piece: str | None, finish: str | None = None, first: bool = False) -> str:
        if chat:
            delta = {"role": "assistant", "content": ""} if first else ({"content": piece} if piece else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": piece or "", "finish_reason": finish, "logprobs": None}
        extra = _citations(stats) if finish else {}  # a bot's sources come with the last chunk
        return _sse({**head, "choices": [choice], **({"usage": None} if include_usage else {}), **extra})

    pieces = service.start(prompt, cfg, stats, constraint, n_prompt=n_prompt)  # queued now: a full queue is a 429, not an error event

    async def events():
        if chat:
            yield chunk(None, first=True)
        try:
            async for piece in pieces:
                yield chunk(piece)
        except Exception as e:  # the status line is sent already: say it in the stream, as OpenAI does
            message = str(e) if isinstance(e, UserError) else f"internal error: {type(e).__name__}"
            if not isinstance(e, UserError):
                print(f"error: a stream broke off: {type(e).__name__}: {e}", file=sys.stderr)
            yield _sse(error_body(500, message))
            return
        yield chunk(None, finish=stats.get("finish", "stop"))
        if include_usage:
            yield _sse({**head, "choices": [], "usage": _usage(n_prompt, stats)})
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
