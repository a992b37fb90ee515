"""A real `pocketlm serve` app on a free loopback port, run by uvicorn on a background thread."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

API_KEY = "test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(app):
    """Serve `app` on 127.0.0.1:PORT until the block ends; yields the base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def tiny_backend(tiny_run):
    from pocketlm.inference.backends import load_backend
    return load_backend(str(tiny_run), name="tiny", device="cpu")


@pytest.fixture(scope="session")
def server_url(tiny_backend):
    """The tiny model served with an API key and small limits."""
    from pocketlm.serve.server import create_app
    app = create_app(tiny_backend, api_key=API_KEY, max_body_bytes=20_000, max_tokens_limit=64)
    with running(app) as url:
        yield url


@pytest.fixture(scope="session")
def start_server():
    """`with start_server(app) as url:` serves another app for the length of the block."""
    return running
