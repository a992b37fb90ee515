"""Keeping a chat within the context window, for every backend (transformers and llama.cpp alike)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

P = TypeVar("P")


def fit_turns(messages: list[dict], measure: Callable[[list[dict]], tuple[P, int]], context: int, reserve: int, *,
              keep_system: bool = True) -> tuple[P, int, int]:
    """Drop the oldest turns of `messages` until the prompt plus `reserve` new tokens fits in `context`.

    `measure(messages) -> (prompt, tokens)` renders the messages with the backend's chat template and
    counts the prompt's tokens (ids and their number for transformers, text and its llama.cpp token
    count for a GGUF file). The system prompt (a first message with role "system", when `keep_system`)
    is never dropped; the oldest turns go first, a user message together with the answer after it; the
    last turn is never dropped. Returns (prompt, tokens, messages dropped); when the last turn alone is
    still too long, the prompt does not fit and the caller decides (cut it or refuse).
    """
    system = messages[:1] if keep_system and messages and messages[0]["role"] == "system" else []
    turns = messages[len(system):]
    dropped = 0
    while True:
        prompt, tokens = measure(system + turns)
        if tokens + reserve <= context or len(turns) <= 1:
            return prompt, tokens, dropped
        cut = 2 if len(turns) > 2 and turns[0]["role"] == "user" else 1  # the oldest user/assistant pair
        turns = turns[cut:]
        dropped += cut
