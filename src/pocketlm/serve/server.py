"""`pocketlm serve`: an OpenAI-compatible HTTP API (FastAPI + uvicorn) in front of one model.

Endpoints: GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/completions (each with SSE
streaming). In this first version requests are served one at a time: an asyncio lock admits one
generation, which runs on a worker thread so the event loop keeps answering /health, queued requests and
disconnects. Continuous batching is the next step (docs/serve.md).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pocketlm.errors import UserError
from pocketlm.inference.options import SamplingConfig
from pocketlm.serve.openai_schema import APIError, ChatRequest, CompletionRequest, error_body

_DONE = object()


def _error(status: int, message: str, **kw) -> JSONResponse:
    return JSONResponse(error_body(status, message, **kw), status_code=status)


class Guard:
    """Pure ASGI middleware: the API key (everything but /health) and the request body size limit (413)."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app, self.api_key, self.limit = app, api_key, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.api_key and scope["path"] != "/health":
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


class Service:
    """The model behind the API, its limits, and the one-at-a-time generation lock."""

    def __init__(self, backend, *, system: str | None = None, grounding=None, max_tokens_limit: int = 2048):
        self.backend, self.system, self.grounding = backend, system, grounding
        self.max_tokens_limit = max_tokens_limit
        self.lock = asyncio.Lock()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pocketlm-generate")

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
        if wanted is not None and wanted > self.max_tokens_limit:
            raise APIError(400, f"max_tokens: at most {self.max_tokens_limit} (got {wanted})", param="max_tokens")
        if wanted is not None and n_prompt + wanted > self.backend.context:
            raise APIError(400, f"the prompt ({n_prompt} tokens) plus max_tokens {wanted} exceed this model's "
                           f"context window of {self.backend.context} tokens", param="max_tokens",
                           code="context_length_exceeded")
        max_new = wanted if wanted is not None else min(room, self.max_tokens_limit)
        return SamplingConfig(max_new_tokens=max_new, temperature=req.temperature, top_k=0, top_p=req.top_p,
                              repetition_penalty=1.0, stop=req.stops(), seed=req.seed)

    def chat_prompt(self, req: ChatRequest):
        if req.response_format and req.response_format.get("type", "text") != "text":
            raise APIError(400, "response_format json_object/json_schema is not supported yet",
                           param="response_format")
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
        """`fn(*args)` on the worker thread: the tokenizer (and llama.cpp) is only ever used from that thread,
        and the event loop is not held up by prompt building (chat template, grounding's retrieval)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def run(self, prompt, cfg: SamplingConfig, stats: dict) -> AsyncIterator[str]:
        """The generated pieces; generation runs on the worker thread, one request at a time."""
        async with self.lock:
            loop = asyncio.get_running_loop()
            it = await loop.run_in_executor(self.executor, lambda: iter(self.backend.stream(prompt, cfg, stats)))
            try:
                while True:
                    piece = await loop.run_in_executor(self.executor, next, it, _DONE)
                    if piece is _DONE:
                        return
                    yield piece
            finally:  # a client gone mid-stream stops the generation at once
                await asyncio.shield(loop.run_in_executor(self.executor, _close, it))


def _close(it) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        close()


def _usage(n_prompt: int, stats: dict) -> dict:
    return {"prompt_tokens": n_prompt, "completion_tokens": stats.get("tokens", 0),
            "total_tokens": n_prompt + stats.get("tokens", 0)}


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def create_app(backend, *, api_key: str | None = None, system: str | None = None, grounding=None,
               max_body_bytes: int = 1_000_000, max_tokens_limit: int = 2048):
    """The ASGI application serving `backend` (inference/backends.py); run it with uvicorn."""
    service = Service(backend, system=system, grounding=grounding, max_tokens_limit=max_tokens_limit)
    app = FastAPI(title="pocketlm", version="1", docs_url=None, redoc_url=None)
    app.state.service = service

    @app.exception_handler(APIError)
    async def api_error(request, e: APIError):
        return _error(e.status, e.message, param=e.param, code=e.code, type=e.type)

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
        message = f"{param}: {first.get('msg', 'invalid')}" if param else first.get("msg", "invalid request")
        return _error(400, message, param=param, code=first.get("type"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e: StarletteHTTPException):
        status = e.status_code
        message = "no such route" if status == 404 else str(e.detail)
        return _error(status, f"{message}: {request.method} {request.url.path}", code=None)

    @app.exception_handler(Exception)
    async def server_error(request, e: Exception):
        # the client gets OpenAI's error shape; whoever runs the server gets one line saying what broke
        print(f"error: {request.method} {request.url.path}: {type(e).__name__}: {e}", file=sys.stderr)
        return _error(500, f"internal error: {type(e).__name__}")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": backend.name}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model_card(backend)]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        service.check_model(name)
        return _model_card(backend)

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest):
        service.check_model(req.model)
        prompt, n_prompt = await service.call(service.chat_prompt, req)
        cfg = service.sampling(req, n_prompt)
        return await _respond(service, req, prompt, n_prompt, cfg, chat=True)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        service.check_model(req.model)
        if req.echo or req.suffix:
            raise APIError(400, "echo and suffix are not supported", param="echo" if req.echo else "suffix")
        prompt, n_prompt = await service.call(service.backend.text_prompt, req.text())
        cfg = service.sampling(req, n_prompt)
        return await _respond(service, req, prompt, n_prompt, cfg, chat=False)

    return Guard(app, api_key, max_body_bytes)


def _model_card(backend) -> dict:
    return {"id": backend.name, "object": "model", "created": 0, "owned_by": "pocketlm",
            "context_window": backend.context}


async def _respond(service: Service, req, prompt, n_prompt: int, cfg: SamplingConfig, *, chat: bool):
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    kind = "chat.completion" if chat else "text_completion"
    stats: dict = {}
    head = {"id": rid, "object": kind, "created": created, "model": service.backend.name}
    if not req.stream:
        text = "".join([piece async for piece in service.run(prompt, cfg, stats)])
        choice = {"index": 0, "finish_reason": stats.get("finish", "stop"), "logprobs": None}
        choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
        return {**head, "choices": [choice], "usage": _usage(n_prompt, stats)}

    head["object"] = kind + ".chunk" if chat else kind
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(piece: str | None, finish: str | None = None, first: bool = False) -> str:
        if chat:
            delta = {"role": "assistant", "content": ""} if first else ({"content": piece} if piece else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": piece or "", "finish_reason": finish, "logprobs": None}
        return _sse({**head, "choices": [choice], **({"usage": None} if include_usage else {})})

    async def events():
        if chat:
            yield chunk(None, first=True)
        try:
            async for piece in service.run(prompt, cfg, stats):
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
