"""Fault tests for `pocketlm serve`, all against a real uvicorn server running the real tiny model (no mocks).

1. schemathesis generates requests from the server's own OpenAPI document (valid and invalid ones) for every
   operation: no 5xx, every error in OpenAI's shape, responses as the document describes them.
2. Hand-written bad requests: each gets the status, the error shape and the `param` a client can act on.
3. 100 clients hang up mid-stream, ten at a time: each generation stops within a few tokens of its client
   leaving (a log wrapped around the real backend's `stream` counts them), and the server answers at once.
4. After all of that the server still serves.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import strategies as st  # noqa: E402

API_KEY = "test-key"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
MESSAGES = [{"role": "user", "content": "Do you price match?"}]
ERROR_KEYS = {"message", "type", "param", "code"}
FUZZ_MAX_TOKENS = 8  # the fuzzed server's --max-tokens-limit: every generation it runs is short
SERVER_LIMIT = 64  # conftest's server_url: --max-tokens-limit 64, --max-body-bytes 20,000
FUZZ_STATUSES: Counter = Counter()  # (operation, status) -> count, filled by the schemathesis run


def check_error_body(body) -> dict:
    """`body` is OpenAI's error shape: {"error": {"message": str, "type": str, "param", "code": str or None}}."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err, dict) and set(err) == ERROR_KEYS, err
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    assert err["param"] is None or isinstance(err["param"], str), err
    assert err["code"] is None or isinstance(err["code"], str), err
    return err


def assert_error(r: httpx.Response, status: int, *, param: str | None = "any", code: str | None = "any") -> dict:
    """`r` is an error answer with `status` in OpenAI's shape; `param` and `code` are checked unless "any"."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    err = check_error_body(r.json())
    if param != "any":
        assert err["param"] == param, err
    if code != "any":
        assert err["code"] == code, err
    return err


def chat(url: str, *, timeout: float = 60, **fields) -> httpx.Response:
    body = {"model": "tiny", "messages": MESSAGES, "temperature": 0, "max_tokens": 8, **fields}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=HEADERS, timeout=timeout)


# 1. schemathesis over the OpenAPI document ---------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_url(tiny_backend, start_server):
    """The tiny model behind a server whose max_tokens limit keeps every fuzzed generation short."""
    from pocketlm.serve.server import create_app
    app = create_app(tiny_backend, api_key=API_KEY, max_body_bytes=20_000, max_tokens_limit=FUZZ_MAX_TOKENS)
    with start_server(app) as url:
        yield url


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _toward_the_model(body: dict) -> dict:
    """`body` aimed at the served model, with the fields this server refuses by design (n > 1, logprobs, tools,
    ...) set to values it takes. Only a value the document allows is replaced, and only by another value it
    allows, so a body generated to be invalid stays invalid."""
    ours = {**body, "model": "tiny"}
    for key in ("max_tokens", "max_completion_tokens"):
        if _is_int(ours.get(key)) and ours[key] >= 1:
            ours[key] = ours[key] % FUZZ_MAX_TOKENS + 1
    if "prompt" in ours and "max_tokens" not in ours:  # /v1/completions' default of 16 is over the limit
        ours["max_tokens"] = FUZZ_MAX_TOKENS
    if _is_int(ours.get("n")):
        ours["n"] = 1
    allowed_off = {"logprobs": (bool, int), "tools": (list,), "response_format": (dict,), "suffix": (str,)}
    for key, types in allowed_off.items():
        if key in ours and (ours[key] is None or isinstance(ours[key], types)):
            ours[key] = None
    if isinstance(ours.get("echo"), bool):
        ours["echo"] = False
    if isinstance(ours.get("prompt"), list) and all(isinstance(p, str) for p in ours["prompt"]):
        ours["prompt"] = ours["prompt"][:1] or [""]
    if isinstance(ours.get("stop"), list) and all(isinstance(s, str) for s in ours["stop"]):
        ours["stop"] = ours["stop"][:4]
    return ours


@pytest.fixture(scope="module")
def api_schema(fuzz_url):
    config = schemathesis.Config.from_dict({
        "seed": 20240601,  # the same cases every run
        "headers": HEADERS,
        "base-url": fuzz_url,
        "request-timeout": 30,
        "generation": {"mode": "all", "max-examples": 30, "database": "none"},
        "checks": {
            # 503 (with Retry-After, see below) is how a full queue answers; any other 5xx is a bug
            "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "503"]},
            # valid per the document but over this server's limits (max_tokens, the context window) is a 400
            "positive_data_acceptance": {"expected-statuses": ["2xx", "400", "404", "413", "429", "503"]},
            "negative_data_rejection": {"expected-statuses": ["400", "401", "404", "405", "413", "429", "503"]},
        },
    })
    schema = schemathesis.openapi.from_url(f"{fuzz_url}/openapi.json", config=config, headers=HEADERS,
                                           timeout=30)

    @schema.hook
    def flatmap_body(ctx, body):
        # a random model name only ever reaches the 404: send half the bodies to the served model
        if isinstance(body, dict) and isinstance(body.get("model"), str):
            return st.sampled_from([_toward_the_model(body), body])
        return st.just(body)

    return schema


@pytest.fixture
def _pytest9_node_id(request):
    """schemathesis 4's lazy schema (`from_fixture`) renames the running node through `node._nodeid`, an
    attribute pytest 9.2 no longer has; give it one (it only changes how subtests are labelled)."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


def openai_error_shape(ctx, response, case) -> None:
    """Every answer that is not a success is in OpenAI's error shape."""
    if response.status_code >= 400:
        check_error_body(json.loads(response.content))


def retry_after_when_busy(ctx, response, case) -> None:
    """A busy server (429, 503) says when to come back."""
    if response.status_code in (429, 503):
        value = response.headers.get("retry-after")  # schemathesis' headers: lowercase names, lists of values
        assert value and value[0].strip(), f"{response.status_code} without Retry-After"


lazy_schema = schemathesis.pytest.from_fixture("api_schema")


@lazy_schema.parametrize()
@pytest.mark.usefixtures("_pytest9_node_id")
def test_schemathesis(case):
    response = case.call_and_validate(additional_checks=[openai_error_shape, retry_after_when_busy])
    FUZZ_STATUSES[(case.operation.label, response.status_code)] += 1


def test_schemathesis_reached_the_model():
    """The fuzzing above got past validation into generation on both generating routes (not only 4xx)."""
    if not FUZZ_STATUSES:
        pytest.skip("test_schemathesis did not run")
    for label in ("POST /v1/chat/completions", "POST /v1/completions"):
        assert FUZZ_STATUSES[(label, 200)] > 0, sorted(FUZZ_STATUSES.items())


def test_the_openapi_document_describes_errors_and_streams(fuzz_url):
    doc = httpx.get(f"{fuzz_url}/openapi.json", headers=HEADERS).json()
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            responses = op["responses"]
            assert "422" not in responses, f"{method} {path}: documents a 422, but validation errors are 400"
            documented = responses.get("4XX") or responses.get("400")
            assert documented and "ErrorResponse" in json.dumps(documented), f"{method} {path}: {responses}"
    for path in ("/v1/chat/completions", "/v1/completions"):
        assert "text/event-stream" in doc["paths"][path]["post"]["responses"]["200"]["content"]


def test_a_405_says_which_methods_are_allowed(server_url):
    r = httpx.delete(f"{server_url}/v1/chat/completions", headers=HEADERS)
    assert r.status_code == 405
    assert r.headers.get("allow") == "POST"


# 2. hand-written bad requests ----------------------------------------------------------------------------

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
JSON_TYPE = {"Content-Type": "application/json"}
BAD_REQUESTS = [
    # id, method, path, httpx keyword arguments, status, param, code ("any": not checked)
    ("not json", "POST", CHAT, {"content": b'{"model": "tiny", "messages": [', "headers": JSON_TYPE},
     400, None, "invalid_json"),
    ("empty body", "POST", CHAT, {"content": b"", "headers": JSON_TYPE}, 400, None, "any"),
    ("json array", "POST", CHAT, {"json": [{"model": "tiny", "messages": MESSAGES}]}, 400, None, "any"),
    ("json string", "POST", COMPLETIONS, {"json": "Question:"}, 400, None, "any"),
    ("max_tokens ten", "POST", CHAT, {"json": {"model": "tiny", "messages": MESSAGES, "max_tokens": "ten"}},
     400, "max_tokens", "any"),
    ("messages a string", "POST", CHAT, {"json": {"model": "tiny", "messages": "hi"}}, 400, "messages", "any"),
    ("temperature hot", "POST", CHAT, {"json": {"model": "tiny", "messages": MESSAGES, "temperature": "hot"}},
     400, "temperature", "any"),
    ("temperature 3", "POST", CHAT, {"json": {"model": "tiny", "messages": MESSAGES, "temperature": 3}},
     400, "temperature", "any"),
    ("prompt a number", "POST", COMPLETIONS, {"json": {"model": "tiny", "prompt": 5}}, 400, "prompt", "any"),
    ("max_tokens negative", "POST", CHAT, {"json": {"model": "tiny", "messages": MESSAGES, "max_tokens": -5}},
     400, "max_tokens", "any"),
    ("max_tokens zero", "POST", COMPLETIONS, {"json": {"model": "tiny", "prompt": "Q:", "max_tokens": 0}},
     400, "max_tokens", "any"),
    ("max_tokens over the limit", "POST", CHAT,
     {"json": {"model": "tiny", "messages": MESSAGES, "max_tokens": SERVER_LIMIT + 1}},
     400, "max_tokens", "any"),
    ("max_tokens huge", "POST", COMPLETIONS, {"json": {"model": "tiny", "prompt": "Q:", "max_tokens": 10**30}},
     400, "max_tokens", "any"),
    ("seed out of 64 bits", "POST", CHAT, {"json": {"model": "tiny", "messages": MESSAGES, "seed": 2**64}},
     400, "seed", "any"),
    ("unknown model chat", "POST", CHAT, {"json": {"model": "gpt-4o", "messages": MESSAGES}},
     404, "model", "model_not_found"),
    ("unknown model completions", "POST", COMPLETIONS, {"json": {"model": "other", "prompt": "hi"}},
     404, "model", "model_not_found"),
    ("unknown model card", "GET", "/v1/models/nope", {}, 404, "model", "model_not_found"),
    ("unknown route", "GET", "/v1/nothing", {}, 404, None, None),
    ("unknown route post", "POST", "/v1/embeddings", {"json": {"model": "tiny", "input": "hi"}},
     404, None, None),
    ("wrong method", "DELETE", CHAT, {}, 405, None, None),
    ("over the size limit", "POST", COMPLETIONS, {"json": {"model": "tiny", "prompt": "x" * 30_000}},
     413, None, "request_too_large"),
    ("over the size limit, chunked", "POST", COMPLETIONS,
     {"chunks": [b'{"model": "tiny", "prompt": "'] + [b"x" * 1000] * 30 + [b'"}'], "headers": JSON_TYPE},
     413, None, "request_too_large"),
    ("prompt over the context", "POST", COMPLETIONS,
     {"json": {"model": "tiny", "prompt": "Question: " * 200, "max_tokens": 4}},
     400, "prompt", "context_length_exceeded"),
    ("messages over the context", "POST", CHAT,
     {"json": {"model": "tiny", "messages": [{"role": "user", "content": "Do you price match? " * 60}],
               "max_tokens": 4}}, 400, "messages", "context_length_exceeded"),
    ("prompt plus max_tokens over the context", "POST", COMPLETIONS,
     {"json": {"model": "tiny", "prompt": "Question: " * 30, "max_tokens": SERVER_LIMIT}},
     400, "max_tokens", "context_length_exceeded"),
    ("text/plain body", "POST", CHAT,
     {"content": json.dumps({"model": "tiny", "messages": MESSAGES}).encode(),
      "headers": {"Content-Type": "text/plain"}},
     400, None, "any"),
    ("form body", "POST", CHAT,
     {"content": b"model=tiny&messages=hi", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
     400, None, "any"),
    ("empty messages", "POST", CHAT, {"json": {"model": "tiny", "messages": []}}, 400, "messages", "any"),
    ("unknown role", "POST", CHAT,
     {"json": {"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}}, 400, "messages.0.role", "any"),
    ("message without role", "POST", CHAT, {"json": {"model": "tiny", "messages": [{"content": "hi"}]}},
     400, "messages.0.role", "any"),
    ("five stop strings", "POST", CHAT,
     {"json": {"model": "tiny", "messages": MESSAGES, "max_tokens": 2, "stop": list("abcde")}},
     400, "stop", "any"),
    ("two prompts", "POST", COMPLETIONS, {"json": {"model": "tiny", "prompt": ["a", "b"], "max_tokens": 2}},
     400, "prompt", "any"),
    ("no key", "POST", CHAT, {"json": {"model": "tiny", "messages": MESSAGES}, "headers": {"Authorization": ""}},
     401, None, "invalid_api_key"),
]


@pytest.mark.parametrize("method, path, kwargs, status, param, code",
                         [pytest.param(*case[1:], id=case[0]) for case in BAD_REQUESTS])
def test_bad_request(server_url, method, path, kwargs, status, param, code):
    kwargs = dict(kwargs)
    headers = {**HEADERS, **kwargs.pop("headers", {})}
    if "chunks" in kwargs:  # a body of unknown length (no Content-Length: chunked transfer encoding)
        kwargs["content"] = iter(kwargs.pop("chunks"))
    r = httpx.request(method, f"{server_url}{path}", headers=headers, timeout=30, **kwargs)
    err = assert_error(r, status, param=param, code=code)
    if status == 400 and param is not None and code != "context_length_exceeded":
        assert err["message"].startswith(param), err  # the message names the field too
    expected_type = {401: "authentication_error", 404: "not_found_error"}.get(status, "invalid_request_error")
    assert err["type"] == expected_type, err


def test_max_completion_tokens_over_the_limit_names_that_field(server_url):
    r = chat(server_url, max_tokens=None, max_completion_tokens=SERVER_LIMIT + 1)
    assert assert_error(r, 400)["param"] == "max_completion_tokens"


def test_values_at_the_edges_are_served(server_url):
    """Valid but extreme values generate instead of failing deep in sampling (they used to be 500s)."""
    greedy = chat(server_url, max_tokens=4)
    assert greedy.status_code == 200, greedy.text
    tiny = chat(server_url, max_tokens=4, temperature=1e-300)  # logits / 1e-300 overflowed float32
    assert tiny.status_code == 200, tiny.text
    assert tiny.json()["choices"][0]["message"] == greedy.json()["choices"][0]["message"]
    for seed in (-(2**63), 2**63 - 1):  # the 64-bit range torch's generator takes
        r = chat(server_url, max_tokens=2, temperature=1.0, seed=seed)
        assert r.status_code == 200, r.text


# 3. clients that hang up mid-stream ----------------------------------------------------------------------

N_CLIENTS, AT_ONCE = 100, 10


def _stream_body(seed: int) -> dict:
    # as many tokens as the server allows, at a temperature that makes an early stop unlikely: the generation is
    # still running when the client hangs up, and would run ~64 tokens if nothing stopped it
    return {"model": "tiny", "messages": MESSAGES, "temperature": 2.0, "seed": seed, "max_tokens": SERVER_LIMIT,
            "stream": True}


def _hang_up_httpx(url: str, events: int, seed: int) -> int:
    """Stream a chat completion, read `events` SSE events, then close the connection (FIN)."""
    seen = 0
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", f"{url}/v1/chat/completions", json=_stream_body(seed), headers=HEADERS) as r:
            assert r.status_code == 200, r.read()
            for line in r.iter_lines():
                if line.startswith("data: "):
                    assert line != "data: [DONE]"
                    json.loads(line[len("data: "):])
                    seen += 1
                    if seen == events:
                        break
    return seen


def _hang_up_socket(url: str, events: int, seed: int) -> int:
    """The same over a raw socket, hanging up with a reset (RST) instead of a clean close."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    body = json.dumps(_stream_body(seed)).encode()
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
               f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(4096)
            assert chunk, f"the server closed the stream early: {data!r}"
            data += chunk
            head, blank, sse = data.partition(b"\r\n\r\n")
            if blank and sse.count(b"data: ") >= events:
                break
        assert head.startswith(b"HTTP/1.1 200"), head
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return events


class GenerationLog:
    """Wraps the real backend's `stream` (the model still generates every token) to log each generation the
    server runs: how many tokens it made and whether it has ended."""

    def __init__(self, stream):
        self.stream, self.lock, self.runs = stream, threading.Lock(), []

    def __call__(self, prompt, cfg, stats, *args, **kwargs):
        run = {"tokens": 0, "ended": False}
        with self.lock:
            self.runs.append(run)
        pieces = self.stream(prompt, cfg, stats, *args, **kwargs)
        try:
            for piece in pieces:
                run["tokens"] = max(run["tokens"] + 1, stats.get("tokens", 0))
                yield piece
        finally:
            getattr(pieces, "close", lambda: None)()
            run["tokens"] = max(run["tokens"], stats.get("tokens", 0))
            run["ended"] = True


def test_100_clients_hanging_up_mid_stream_leave_the_server_free(server_url, tiny_backend, monkeypatch):
    before = chat(server_url, max_tokens=16)
    assert before.status_code == 200, before.text
    log = GenerationLog(tiny_backend.stream)
    monkeypatch.setattr(tiny_backend, "stream", log)

    # Clients reading 1 event leave while queued (the role chunk is sent before generation starts); those
    # reading 2 leave mid-generation (the second event carries the first token)
    events = [1 + i % 2 for i in range(N_CLIENTS)]
    deadline = time.monotonic() + 120  # a server that has stopped answering fails the test, not hangs it

    def client(i: int) -> int:
        if time.monotonic() > deadline:
            return 0
        hang_up = _hang_up_httpx if i // 2 % 2 else _hang_up_socket
        return hang_up(server_url, events[i], i)

    with ThreadPoolExecutor(AT_ONCE) as pool:
        read = list(pool.map(client, range(N_CLIENTS)))
    assert read == events, f"{read.count(0)} of {N_CLIENTS} clients were not served in time"

    # every generation for a gone client has ended, within a few tokens of its client leaving (not 64 later)
    wait = time.monotonic() + 10
    while not all(run["ended"] for run in log.runs) and time.monotonic() < wait:
        time.sleep(0.05)
    runs = list(log.runs)
    assert runs, "the server generated nothing through the backend's stream"
    assert all(run["ended"] for run in runs), f"{sum(not r['ended'] for r in runs)} generations still running"
    tokens = sorted(run["tokens"] for run in runs)
    assert tokens[-1] <= 8, f"generations ran on after their clients left: tokens per generation {tokens}"

    # and the server answers at once, correctly
    t = time.monotonic()
    health = httpx.get(f"{server_url}/health", timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert time.monotonic() - t < 2
    t = time.monotonic()
    after = chat(server_url, max_tokens=16, timeout=30)
    took = time.monotonic() - t
    assert after.status_code == 200, after.text
    assert after.json()["choices"][0]["message"] == before.json()["choices"][0]["message"]  # same greedy text
    assert took < 10, f"a 16-token chat took {took:.1f} s after the hang-ups"


# 4. still serving ----------------------------------------------------------------------------------------


def test_the_server_still_serves(server_url, fuzz_url):
    for url in (server_url, fuzz_url):
        assert httpx.get(f"{url}/health", timeout=5).json()["status"] == "ok"
        r = chat(url, max_tokens=4, stream=False)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["object"] == "chat.completion" and answer["choices"][0]["message"]["role"] == "assistant"
        assert 1 <= answer["usage"]["completion_tokens"] <= 4
        with httpx.stream("POST", f"{url}/v1/chat/completions", headers=HEADERS, timeout=60,
                          json={"model": "tiny", "messages": MESSAGES, "max_tokens": 4, "stream": True}) as s:
            assert s.status_code == 200
            assert "".join(s.iter_text()).endswith("data: [DONE]\n\n")
