"""The tiny model behind a real `pocketlm serve` app (start_server, in tests/conftest.py, runs it)."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

API_KEY = "test-key"


@pytest.fixture(scope="session")
def tiny_backend(tiny_run):
    from pocketlm.inference.backends import load_backend
    return load_backend(str(tiny_run), name="tiny", device="cpu")


@pytest.fixture(scope="session")
def server_url(tiny_backend, start_server):
    """The tiny model served with an API key and small limits."""
    from pocketlm.serve.server import create_app
    app = create_app(tiny_backend, api_key=API_KEY, max_body_bytes=20_000, max_tokens_limit=64)
    with start_server(app) as url:
        yield url
