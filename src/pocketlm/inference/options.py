"""Sampling options (one field = one flag = one YAML key), apart from the engine so that the CLI's help
does not import torch."""

from __future__ import annotations

from dataclasses import dataclass

from pocketlm.config import field


@dataclass(kw_only=True)
class SamplingConfig:
    max_new_tokens: int = field(128, "most tokens to generate")
    temperature: float = field(0.8, "sampling temperature; 0 = greedy (always the most likely token)")
    top_k: int = field(50, "sample only among the k most likely tokens (0 = off)")
    top_p: float = field(0.95, "sample only among the most likely tokens whose probabilities sum to p (1 = off)")
    repetition_penalty: float = field(1.0, "divide the scores of tokens already present (1 = off; 1.1-1.3 typical)")
    stop: list[str] = field(default_factory=list, help="stop when any of these strings appears", metavar="TEXT")
    seed: int | None = field(None, "random seed for sampling (same seed, same text)")
