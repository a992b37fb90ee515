"""Shared fixtures: real data the project ships (examples/shop) or finds beside it (../shared/data)."""

from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHOP = REPO / "examples" / "shop"
SHOP_TEMPLATE = "Question: {question}\nAnswer: {answer}"


def shared_data_dir() -> Path | None:
    env = os.environ.get("POCKETLM_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("real datasets not found: set POCKETLM_DATA or place them in ../shared/data")
    return path


@pytest.fixture(scope="session")
def shop_data(tmp_path_factory) -> Path:
    """The bundled shop corpus prepared with a small trained tokenizer."""
    from pocketlm.data.prepare import PrepareConfig, prepare
    out = tmp_path_factory.mktemp("shop-data")
    prepare(PrepareConfig(inputs=[str(SHOP / "handbook.md"), str(SHOP / "faq.jsonl")], out=str(out),
                          vocab_size=768, template=SHOP_TEMPLATE), progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_run(shop_data, tmp_path_factory) -> Path:
    """A nano model trained briefly on the shop corpus: a real run directory with a final model."""
    from pocketlm.train.pretrain import PretrainConfig, pretrain
    out = tmp_path_factory.mktemp("tiny-run")
    pretrain(PretrainConfig(data=str(shop_data), out=str(out), model="nano-1m", context=128, batch_size=8,
                            max_steps=120, warmup_steps=10, lr=3e-3, eval_interval=60, eval_batches=4,
                            progress=False, dtype="fp32"))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(app):
    """Serve `app` on 127.0.0.1:PORT until the block ends; yields the base URL."""
    import uvicorn
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
def start_server():
    """`with start_server(app) as url:` serves an ASGI app on a free loopback port (uvicorn, on a background
    thread) for the length of the block."""
    pytest.importorskip("uvicorn")
    return running
