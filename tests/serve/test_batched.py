"""The server with continuous batching: concurrent requests get what they would get alone, a full queue is
a 429 with Retry-After, a client gone frees its slot, and /metrics counts it all."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

openai = pytest.importorskip("openai")

QUESTIONS = ["Do you price match?", "where's my order??", "how do i return a jacket", "hi",
             "Can I pay with PayPal?", "do u ship to canada", "What sizes do the boots come in?", "thanks!"]


@pytest.fixture(scope="module")
def batched(tiny_run):
    from pocketlm.inference.backends import load_backend
    backend = load_backend(str(tiny_run), name="tiny", device="cpu", parallel=4)
    assert backend.engine is not None
    yield backend
    backend.engine.close()


def engine_greedy(backend, question: str, max_tokens: int) -> str:
    from pocketlm.inference.engine import SamplingConfig, stream_text
    ids, _ = backend.chat_prompt([{"role": "user", "content": question}])
    cfg = SamplingConfig(max_new_tokens=max_tokens, temperature=0.0)
    return "".join(stream_text(backend.model, backend.tokenizer, ids, cfg, backend.stop_ids))


def test_concurrent_requests_get_what_they_get_alone(batched, start_server):
    from pocketlm.serve.server import create_app
    with start_server(create_app(batched)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)

        def ask(i: int) -> str:
            messages = [{"role": "user", "content": QUESTIONS[i]}]
            if i % 2:  # half of them stream
                stream = client.chat.completions.create(model="tiny", messages=messages, temperature=0,
                                                        max_tokens=24, stream=True)
                return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            r = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=24)
            return r.choices[0].message.content

        with ThreadPoolExecutor(len(QUESTIONS)) as pool:
            answers = list(pool.map(ask, range(len(QUESTIONS))))
        assert answers == [engine_greedy(batched, q, 24) for q in QUESTIONS]

        metrics = httpx.get(f"{url}/metrics").text
        assert 'pocketlm_requests_total{route="/v1/chat/completions",status="200"} 8.0' in metrics
        assert "pocketlm_time_to_first_token_seconds_count 8.0" in metrics
        assert "pocketlm_requests_waiting 0.0" in metrics
        assert float(re.search(r"^pocketlm_completion_tokens_total (\S+)$", metrics, re.M)[1]) > 8


def test_full_queue_is_429_with_retry_after(batched, start_server):
    from pocketlm.serve.server import create_app
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5}
    with start_server(create_app(batched)) as url:
        engine = batched.engine
        with engine.lock:  # the queue is made full by hand: a real one empties too fast to catch on a tiny model
            engine.n_waiting, saved = engine.max_waiting, engine.n_waiting
        try:
            for stream in (False, True):  # a stream is refused before it starts: a status, not an error event
                refused = httpx.post(f"{url}/v1/chat/completions", json={**body, "stream": stream}, timeout=30)
                assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
                assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        finally:
            with engine.lock:
                engine.n_waiting = saved
        assert httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30).status_code == 200
        assert 'status="429"} 2.0' in httpx.get(f"{url}/metrics").text


def test_a_client_gone_mid_stream_frees_its_slot(batched, start_server):
    from pocketlm.serve.server import create_app
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 100,
            "temperature": 0.8, "stream": True}
    with start_server(create_app(batched, max_tokens_limit=100)) as url, httpx.Client(timeout=30) as http:
        for _ in range(8):  # twice the slots: leaked slots would leave nothing for the request after
            with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                next(r.iter_lines())
        e = batched.engine
        deadline = time.monotonic() + 10  # the engine sees each hang-up at its next step: wait for all of them
        while (e.running_count() or e.n_waiting) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert e.running_count() == 0 and e.n_waiting == 0, (len(e.waiting), e.inbox.qsize(), len(e.running))
        r = httpx.post(f"{url}/v1/chat/completions", json={**body, "stream": False, "max_tokens": 5}, timeout=30)
        assert r.status_code == 200


def test_gguf_requests_run_side_by_side_in_their_own_contexts(tiny_run, tmp_path, start_server):
    """A GGUF file served with --parallel 3: concurrent greedy requests get what they get alone, and no more
    than three llama.cpp contexts are made."""
    pytest.importorskip("llama_cpp")
    from pocketlm.export.gguf import export_gguf
    from pocketlm.inference.backends import load_backend
    from pocketlm.serve.server import create_app
    path = export_gguf(str(tiny_run), str(tmp_path / "tiny.gguf"), quant="f32")["path"]
    backend = load_backend(str(path), parallel=3)
    with start_server(create_app(backend)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)

        def ask(question: str) -> str:
            r = client.chat.completions.create(model="tiny.gguf", temperature=0, max_tokens=16,
                                               messages=[{"role": "user", "content": question}])
            return r.choices[0].message.content

        alone = [ask(q) for q in QUESTIONS[:6]]
        with ThreadPoolExecutor(6) as pool:
            together = list(pool.map(ask, QUESTIONS[:6]))
        assert together == alone
        assert 2 <= backend._made <= 3 and backend._busy == 0


def _json_or_valid_prefix(text: str, finish: str) -> None:
    import json

    from pocketlm.inference.constrained import json_prefix_state
    if finish == "stop":
        assert isinstance(json.loads(text), dict), text
    else:  # cut by max_tokens: still nothing but JSON so far
        assert json_prefix_state(text) in ("partial", "complete") and text.lstrip().startswith("{"), text


def test_response_format_json_object_batched_and_one_at_a_time(batched, tiny_run, start_server):
    from pocketlm.inference.backends import load_backend
    from pocketlm.serve.server import create_app
    serial = load_backend(str(tiny_run), name="tiny", device="cpu")  # parallel 1: the one-at-a-time path
    for backend in (batched, serial):
        with start_server(create_app(backend)) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
            for q in QUESTIONS[:3]:
                r = client.chat.completions.create(model="tiny", max_tokens=60, response_format={"type": "json_object"},
                                                   messages=[{"role": "user", "content": q + " Answer in JSON."}])
                _json_or_valid_prefix(r.choices[0].message.content, r.choices[0].finish_reason)
            with pytest.raises(openai.BadRequestError, match="response_format"):
                client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                               response_format={"type": "yaml"})


def test_response_format_json_schema_on_gguf(tiny_run, tmp_path, start_server):
    pytest.importorskip("llama_cpp")
    import json

    from pocketlm.export.gguf import export_gguf
    from pocketlm.inference.backends import load_backend
    from pocketlm.serve.server import create_app
    path = export_gguf(str(tiny_run), str(tmp_path / "tiny.gguf"), quant="f32")["path"]
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 20},
                                               "sure": {"type": "boolean"}},
              "required": ["answer", "sure"], "additionalProperties": False}
    with start_server(create_app(load_backend(str(path)))) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
        r = client.chat.completions.create(
            model="tiny.gguf", max_tokens=100, temperature=0,
            response_format={"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}},
            messages=[{"role": "user", "content": "Do you price match?"}])
        data = json.loads(r.choices[0].message.content)
        assert set(data) == {"answer", "sure"} and isinstance(data["sure"], bool)
