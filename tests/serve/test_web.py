"""The web chat page at `/` in headless Chromium (Debian's, never a downloaded one) against a real server."""

from __future__ import annotations

import json
import os
import shutil
import time

import httpx
import pytest

pytest.importorskip("playwright", reason="the playwright package is not installed (pip install playwright)")
from playwright.sync_api import Error as PlaywrightError  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402

CHROMIUM = "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else shutil.which("chromium")
if CHROMIUM is None:
    pytest.skip("no Chromium at /usr/bin/chromium or on PATH (apt-get install chromium)", allow_module_level=True)

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
QUESTION = "Do you price match?"
BUSY = "document.body.classList.contains('busy')"


class SlowBackend:
    """The real tiny model, its text pieces `delay` seconds apart: streaming is visible, Stop has time.
    `engine = None` keeps the server on its one-at-a-time path, which calls `stream` below."""

    engine = None

    def __init__(self, backend):
        self.backend, self.delay, self.closed_after = backend, 0.0, None

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def stream(self, prompt, cfg, stats, constraint=None):
        n = 0
        try:
            for piece in self.backend.stream(prompt, cfg, stats, constraint):
                time.sleep(self.delay)
                n += 1
                yield piece
        finally:
            self.closed_after = n


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        except PlaywrightError as e:
            pytest.skip(f"Chromium at {CHROMIUM} does not start: {e}")
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 390, "height": 800})  # a phone's width
    page = context.new_page()
    errors = []  # script errors and Content-Security-Policy violations; an HTTP error status is expected
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: m.type == "error" and not m.text.startswith("Failed to load resource")
            and errors.append(m.text))
    yield page
    context.close()
    assert not errors


@pytest.fixture(scope="module")
def slow(tiny_backend):
    return SlowBackend(tiny_backend)


@pytest.fixture(scope="module")
def open_url(slow, start_server):
    """The tiny model served without an API key."""
    from pocketlm.serve.server import create_app
    with start_server(create_app(slow)) as url:
        yield url


def api_answer(url: str, messages: list[dict], max_tokens: int, key: str | None = None) -> str:
    r = httpx.post(f"{url}/v1/chat/completions", timeout=60,
                   headers={"Authorization": f"Bearer {key}"} if key else {},
                   json={"model": "tiny", "messages": messages, "temperature": 0, "max_tokens": max_tokens})
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"]


def ask(page, text: str) -> None:
    """Type `text`, press Enter, wait for the answer (or error) to finish."""
    n = page.locator("#log .msg").count()
    page.fill("#input", text)
    page.press("#input", "Enter")
    page.wait_for_function(f"() => !{BUSY} && document.querySelectorAll('#log .msg').length > {n}")


def texts(page, selector: str) -> list[str]:
    return [t or "" for t in page.locator(selector).evaluate_all("els => els.map(e => e.textContent)")]


def test_streams_the_answer_the_api_gives(page, open_url, slow):
    slow.delay = 0.02
    response = page.goto(f"{open_url}/?temperature=0&max_tokens=20")
    assert "script-src 'sha256-" in response.headers["content-security-policy"]
    expect(page.locator("#model")).to_have_text("tiny")
    page.evaluate("""() => { window.seen = new Set();  // every text the answer showed while it streamed
        new MutationObserver(() => document.querySelectorAll('.streaming .text').forEach(e => seen.add(e.textContent)))
            .observe(document.getElementById('log'), {childList: true, subtree: true}); }""")
    ask(page, QUESTION)
    expected = api_answer(open_url, [{"role": "user", "content": QUESTION}], 20)
    assert texts(page, ".msg.user .text") == [QUESTION]
    assert texts(page, ".msg.assistant .text") == [expected]
    assert page.evaluate("seen.size") > 2  # it arrived in pieces, not all at once
    assert page.locator("#send").is_enabled() and page.locator("#stop").is_hidden()
    assert page.locator(".msg.error").count() == 0


def test_reload_keeps_the_history_and_new_chat_clears_it(page, open_url, slow):
    slow.delay = 0.0
    page.goto(f"{open_url}/?temperature=0&max_tokens=4")
    ask(page, QUESTION)
    before = texts(page, "#log .msg .text")
    assert len(before) == 2
    page.reload()
    expect(page.locator("#model")).to_have_text("tiny")
    assert texts(page, "#log .msg .text") == before
    page.click("#new")
    expect(page.locator("#log .msg")).to_have_count(0)
    page.reload()
    expect(page.locator("#log .msg")).to_have_count(0)
    assert json.loads(page.evaluate("localStorage.getItem('pocketlm-chat')")) == []


def test_asks_for_the_api_key_and_shows_errors_inline(page, server_url):
    page.goto(f"{server_url}/?temperature=0&max_tokens=1000")  # over this server's --max-tokens-limit 64
    expect(page.locator("#keyform")).to_be_visible()
    expect(page.locator("#chat")).to_be_hidden()
    page.fill("#key", "wrong")
    page.press("#key", "Enter")
    expect(page.locator("#model")).to_have_text("wrong API key")
    expect(page.locator("#keyform")).to_be_visible()
    page.fill("#key", "test-key")
    page.click("#keyform button")
    expect(page.locator("#model")).to_have_text("tiny")
    ask(page, "Hello?")
    assert texts(page, ".msg.error") == ["Error 400: max_tokens: at most 64 (got 1000)"]
    page.goto(f"{server_url}/?temperature=0&max_tokens=8")  # the key is remembered
    expect(page.locator("#model")).to_have_text("tiny")
    ask(page, QUESTION)
    # the failed question stays on screen but is not sent again
    expected = api_answer(server_url, [{"role": "user", "content": QUESTION}], 8, key="test-key")
    assert texts(page, "#log .msg .text") == ["Hello?", texts(page, ".msg.error")[0], QUESTION, expected]


def test_stop_keeps_the_partial_answer(page, open_url, slow):
    slow.delay, slow.closed_after = 0.3, None
    page.goto(f"{open_url}/?temperature=0")  # no max_tokens: the rest of the context window
    expect(page.locator("#model")).to_have_text("tiny")
    page.fill("#input", QUESTION)
    page.press("#input", "Enter")
    expect(page.locator("#send")).to_be_disabled()
    page.wait_for_function("() => document.querySelector('.streaming .text')?.textContent.length > 0")
    page.click("#stop")
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#stop")).to_be_hidden()
    partial = texts(page, ".msg.assistant .text")[0]
    assert partial and texts(page, ".msg.assistant .note") == ["Stopped."]
    stored = json.loads(page.evaluate("localStorage.getItem('pocketlm-chat')"))
    assert stored[-1]["content"] == partial
    deadline = time.monotonic() + 5  # the server saw the browser hang up and stopped generating
    while slow.closed_after is None and time.monotonic() < deadline:
        time.sleep(0.05)
    pieces = slow.closed_after
    slow.delay = 0.0
    full = api_answer(open_url, [{"role": "user", "content": QUESTION}], 100)
    assert full.startswith(partial) and len(full) > len(partial)
    assert pieces is not None and pieces < slow.closed_after


def test_a_long_conversation_leaves_out_its_oldest_turns(page, open_url, slow):
    slow.delay = 0.0
    turns = [{"role": r, "content": f"{r} turn {i}: " + "tell me about returns and shipping " * 3}
             for i in range(3) for r in ("user", "assistant")]
    page.goto(f"{open_url}/?temperature=0&max_tokens=8")
    page.evaluate("t => localStorage.setItem('pocketlm-chat', JSON.stringify(t))", turns)
    page.reload()
    expect(page.locator("#log .msg")).to_have_count(6)
    ask(page, QUESTION)
    assert page.locator(".msg.error").count() == 0
    assert texts(page, ".msg.assistant .note")[-1].startswith("Earlier turns were left out")
    assert len(texts(page, ".msg.assistant .text")[-1]) > 0


def fake_stream(*events) -> str:
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"


def test_citations_busy_server_and_safe_text(page, open_url):
    """Answers the server may give (citations, 503 with Retry-After), played by the browser's request routing."""
    answers = [
        {"status": 200, "content_type": "text/event-stream", "body": fake_stream(
            {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
            {"choices": [{"index": 0, "delta": {"content": "<img src=x onerror=alert(1)>\nline two"}}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "citations": ["faq.jsonl#12"]})},
        {"status": 503, "headers": {"Retry-After": "7"}, "content_type": "application/json",
         "body": json.dumps({"error": {"message": "too many requests waiting", "type": "server_error"}})},
    ]
    page.route("**/v1/chat/completions", lambda route: route.fulfill(**answers.pop(0)))
    page.goto(f"{open_url}/")
    expect(page.locator("#model")).to_have_text("tiny")
    ask(page, "Where is that written?")
    assert texts(page, ".msg.assistant .text") == ["<img src=x onerror=alert(1)>\nline two"]
    assert page.locator("#log img").count() == 0
    assert texts(page, ".msg.assistant .source") == ["Source: faq.jsonl#12"]
    ask(page, "And again?")
    assert texts(page, ".msg.error") == ["The server is busy, try again in 7 s (too many requests waiting)."]
