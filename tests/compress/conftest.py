"""Fixtures shared by the shrinking tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def text(shop_data, tmp_path_factory):
    """Held-out text of the shop corpus the tiny model was trained on."""
    from pocketlm.data.shards import TOKENIZER_DIR, load_tokens
    from pocketlm.data.tokenizer import load_tokenizer
    tok = load_tokenizer(shop_data / TOKENIZER_DIR)
    path = tmp_path_factory.mktemp("text") / "val.txt"
    path.write_text(tok.decode(list(load_tokens(shop_data, "val"))[:3000]), encoding="utf-8")
    return path
