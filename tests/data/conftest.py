"""Fixtures for the data-stage tests."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

# The tests import shared helpers from datahelp.py beside this file; with --import-mode=importlib
# pytest does not put test folders on sys.path, so do it here (conftest.py is loaded first).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pocketlm.data.prepare import PrepareConfig, prepare


@pytest.fixture
def run_prepare(tmp_path) -> Callable[..., dict]:
    """run_prepare(inputs, **config) -> stats; output goes to tmp_path/'out' unless `out` is given."""

    def run(inputs, **kw) -> dict:
        kw.setdefault("out", str(tmp_path / "out"))
        kw.setdefault("vocab_size", 300)
        inputs = [str(i) for i in (inputs if isinstance(inputs, list | tuple) else [inputs])]
        return prepare(PrepareConfig(inputs=inputs, **kw), progress=False)

    return run
