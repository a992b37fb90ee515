"""`pocketlm serve` against real clients: the official openai client, and httpx for SSE framing and errors."""

from __future__ import annotations

import json

import httpx
import pytest

openai = pytest.importorskip("openai")

API_KEY = "test-key"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
MESSAGES = [{"role": "user", "content": "Do you price match?"}]


@pytest.fixture(scope="module")
def client(server_url):
    return openai.OpenAI(base_url=f"{server_url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def engine_greedy(backend, prompt_ids, max_new_tokens: int) -> str:
    from pocketlm.inference.engine import SamplingConfig, stream_text
    cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    return "".join(stream_text(backend.model, backend.tokenizer, prompt_ids, cfg, backend.stop_ids))


def test_health_needs_no_key(server_url):
    r = httpx.get(f"{server_url}/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_models(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"


def test_chat_greedy_equals_the_engine(client, tiny_backend):
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0, max_tokens=20)
    ids = tiny_backend.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    assert r.choices[0].message.content == engine_greedy(tiny_backend, ids, 20)
    assert r.choices[0].message.role == "assistant"
    assert r.object == "chat.completion" and r.model == "tiny"
    assert r.usage.prompt_tokens == len(ids)
    assert 1 <= r.usage.completion_tokens <= 20
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.choices[0].finish_reason in ("stop", "length")


def test_chat_stream_gives_the_same_text(client):
    whole = client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0, max_tokens=20)
    stream = client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0, max_tokens=20,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completions_greedy_equals_the_engine(client, tiny_backend):
    prompt = "Question: Do you price match?\nAnswer:"
    r = client.completions.create(model="tiny", prompt=prompt, temperature=0, max_tokens=16)
    ids = tiny_backend.tokenizer.encode(prompt, add_special_tokens=True)
    assert r.choices[0].text == engine_greedy(tiny_backend, ids, 16)
    assert r.usage.prompt_tokens == len(ids)
    streamed = client.completions.create(model="tiny", prompt=prompt, temperature=0, max_tokens=16, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == r.choices[0].text


def test_max_tokens_and_stop(client):
    r = client.completions.create(model="tiny", prompt="Question: What", temperature=0, max_tokens=3)
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"
    full = client.completions.create(model="tiny", prompt="Question: What", temperature=0, max_tokens=12)
    text = full.choices[0].text
    stop = text.strip()[:2] if text.strip() else None
    if stop:
        cut = client.completions.create(model="tiny", prompt="Question: What", temperature=0, max_tokens=12,
                                        stop=[stop])
        assert cut.choices[0].text == text[:text.index(stop)]
        assert cut.choices[0].finish_reason == "stop"


def test_same_seed_same_sample(client):
    def sample():
        return client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=1.0, top_p=0.9,
                                              seed=7, max_tokens=12).choices[0].message.content
    assert sample() == sample()


def test_openai_client_errors(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=MESSAGES)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=MESSAGES, n=2)
    wrong = openai.OpenAI(base_url=client.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def _sse_events(text: str) -> list[str]:
    assert text.endswith("\n\n")
    events = text.split("\n\n")[:-1]
    assert all(e.startswith("data: ") for e in events), events
    return [e[len("data: "):] for e in events]


def test_sse_framing(server_url):
    body = {"model": "tiny", "messages": MESSAGES, "temperature": 0, "max_tokens": 8, "stream": True}
    with httpx.stream("POST", f"{server_url}/v1/chat/completions", json=body, headers=HEADERS, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    events = _sse_events(text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


@pytest.mark.parametrize("body, param", [
    ({"model": "tiny", "messages": "hello"}, "messages"),
    ({"model": "tiny", "messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"model": "tiny", "messages": MESSAGES, "temperature": "hot"}, "temperature"),
    ({"model": "tiny", "messages": MESSAGES, "max_tokens": -1}, "max_tokens"),
    ({"model": "tiny", "messages": MESSAGES, "max_tokens": 10**6}, "max_tokens"),
    ({"model": "tiny", "messages": MESSAGES, "n": 2}, "n"),
    ({"model": "tiny", "messages": []}, "messages"),
    ({"messages": MESSAGES}, "model"),
])
def test_bad_requests(server_url, body, param):
    r = httpx.post(f"{server_url}/v1/chat/completions", json=body, headers=HEADERS)
    err = _error(r, 400)
    assert err["type"] == "invalid_request_error"
    assert (err["param"] or "").startswith(param), err


def test_bad_json_unknown_model_route_and_size(server_url):
    r = httpx.post(f"{server_url}/v1/chat/completions", content=b"{not json",
                   headers={**HEADERS, "Content-Type": "application/json"})
    assert _error(r, 400)["code"] == "invalid_json"
    r = httpx.post(f"{server_url}/v1/completions", json={"model": "other", "prompt": "hi"}, headers=HEADERS)
    assert _error(r, 404)["code"] == "model_not_found"
    _error(httpx.get(f"{server_url}/v1/nothing", headers=HEADERS), 404)
    big = {"model": "tiny", "prompt": "x" * 30_000}
    _error(httpx.post(f"{server_url}/v1/completions", json=big, headers=HEADERS), 413)
    long = {"model": "tiny", "prompt": "Question: " * 200, "max_tokens": 4}
    assert _error(httpx.post(f"{server_url}/v1/completions", json=long, headers=HEADERS),
                  400)["code"] == "context_length_exceeded"


def test_api_key(server_url):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "test-key"}):
        err = _error(httpx.get(f"{server_url}/v1/models", headers=headers), 401)
        assert err["code"] == "invalid_api_key"
    assert httpx.get(f"{server_url}/v1/models", headers=HEADERS).status_code == 200


def test_server_without_key_and_gguf(tiny_run, tmp_path, start_server):
    """The same API over a GGUF export of the tiny model, run by llama.cpp, with no key."""
    pytest.importorskip("llama_cpp")
    from pocketlm.export.gguf import export_gguf
    from pocketlm.inference.backends import load_backend
    from pocketlm.serve.server import create_app
    path = export_gguf(str(tiny_run), str(tmp_path / "tiny.gguf"), quant="f32")["path"]
    backend = load_backend(str(path))
    with start_server(create_app(backend)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list().data] == ["tiny.gguf"]
        chat = client.chat.completions.create(model="tiny.gguf", messages=MESSAGES, temperature=0, max_tokens=8)
        assert chat.usage.prompt_tokens > 0 and 1 <= chat.usage.completion_tokens <= 8
        streamed = client.chat.completions.create(model="tiny.gguf", messages=MESSAGES, temperature=0,
                                                  max_tokens=8, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == chat.choices[0].message.content
        done = client.completions.create(model="tiny.gguf", prompt="Question: What", temperature=0, max_tokens=4)
        assert done.usage.completion_tokens <= 4


def test_a_client_gone_mid_stream_frees_the_server(server_url, client):
    body = {"model": "tiny", "messages": MESSAGES, "temperature": 0, "max_tokens": 64, "stream": True}
    with httpx.stream("POST", f"{server_url}/v1/chat/completions", json=body, headers=HEADERS, timeout=60) as r:
        next(r.iter_lines())  # read the first event, then hang up
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0, max_tokens=4)
    assert r.choices[0].message.content is not None


def test_cli_serves_and_stops_cleanly_on_ctrl_c(tiny_run):
    """`pocketlm serve` prints where it listens, answers, and exits 0 on SIGINT."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pocketlm", "serve", str(tiny_run), "--port", str(port),
                             "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/v1" in line and "curl" in line, line + proc.stderr.read()
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=60,
                       json={"model": tiny_run.name, "prompt": "Question:", "max_tokens": 3, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
