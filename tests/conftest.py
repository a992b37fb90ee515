"""Shared fixtures: real data the project ships (examples/shop) or finds beside it (../shared/data)."""

from __future__ import annotations

import os
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
