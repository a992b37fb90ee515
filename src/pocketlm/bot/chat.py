"""`pocketlm chat BOT_RUN`: the terminal conversation with a bot; each answer shows its sources.

Each question is answered on its own (a support bot retrieves for the question asked, not for the
conversation so far)."""

from __future__ import annotations

from pocketlm.bot.answer import Bot
from pocketlm.serve.chat import repl


def chat_bot(run_dir: str) -> None:
    bot = Bot(run_dir)
    repl(fit=lambda messages: (messages[-1]["content"].strip(), 0),
         respond=lambda question: iter([bot.answer(question).shown()]),
         context=0, name="bot", greeting=f"Ask {bot.config.what} anything ({len(bot.index.passages):,} entries).")
