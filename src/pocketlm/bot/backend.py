"""A bot run behind `pocketlm serve`: the same backend interface as a model (inference/backends.py), answering
each chat request's latest question as `pocketlm chat RUN` does, with its sources as citations."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pocketlm.errors import UserError
from pocketlm.inference.options import SamplingConfig


class BotBackend:
    """Prompts are the question; usage counts words (a bot that answers with excerpts has no tokens to count).
    Questions are answered one at a time (the embedding model and the reranker run in one thread)."""

    context = 1_000_000
    parallel = 1

    def __init__(self, run_dir: str | Path, name: str):
        from pocketlm.bot.answer import Bot
        self.bot, self.name = Bot(run_dir), name

    def chat_prompt(self, messages: list[dict]) -> tuple[str, int]:
        question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "").strip()
        if not question:
            raise UserError("messages: a bot needs a user message with a question")
        return question, len(question.split())

    def text_prompt(self, text: str) -> tuple[str, int]:
        return text.strip(), len(text.split())

    def json_constraint(self, schema):
        raise UserError("response_format: a bot answers in text (json_object and json_schema need a model)")

    def stream(self, question: str, cfg: SamplingConfig, stats: dict, constraint=None) -> Iterator[str]:
        answer = self.bot.answer(question)
        stats.update(tokens=len(answer.text.split()), finish="stop", citations=answer.citations,
                     declined=answer.declined)
        yield answer.text
