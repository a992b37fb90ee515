"""Reranking by the language model: of the few best passages, the one under which the user's question
is most likely is the one that answers it.

The score of passage p for question q is log P(q | p) per question token, from the bot's own small model
(SmolLM2-135M-Instruct unless the user gives another), added to the embedding similarity with a weight.
A passage that holds the details the question asks about makes the question's rare words likely; a
passage that merely shares its topic does not. On the Python FAQ's user-style questions this lifts
recall@1 from 86.3% (MiniLM + BM25) to 90.7% (docs/benchmarks.md, support bot from a real FAQ). Only
candidates within `MARGIN` of the best are reranked, so most questions cost no model call at all.

Run by llama.cpp (GGUF files), which loads in a fraction of a second; each candidate costs one forward
pass over its excerpt and the question.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PROMPT = "{title}\n{excerpt}\n\nQuestion:"
WEIGHT = 0.2  # retrieval score + WEIGHT x mean log-probability per question token
MARGIN = 0.1  # only passages scoring within this of the best are reranked (a clear winner costs nothing)
N_CTX = 512
EXCERPT_CHARS = 400  # the part of each candidate the model reads (the sentences closest to the question)


class Reranker:
    def __init__(self, gguf_path: str | Path, n_threads: int | None = None):
        import os

        from pocketlm.errors import UserError
        from pocketlm.inference.llamacpp import import_llama_cpp
        llama_cpp = import_llama_cpp()
        n_threads = n_threads or max(1, min(8, os.cpu_count() or 1))
        try:  # its own instance, apart from the generation cache: scoring needs every position's logits
            self.llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=N_CTX, n_threads=n_threads,
                                       n_threads_batch=n_threads, logits_all=True, verbose=False)
        except (ValueError, RuntimeError, OSError) as e:
            raise UserError(f"{gguf_path}: llama.cpp cannot load it for reranking ({e})") from None

    def _tokens(self, text: str) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def logprob(self, context: str, question: str) -> float:
        """Mean log-probability per token of `question` after `context`."""
        q = self._tokens(" " + question.strip())
        ctx = self._tokens(context)[-(N_CTX - len(q) - 1):] if len(q) < N_CTX - 8 else []
        q = q[: N_CTX - len(ctx) - 1]
        ids = ctx + q
        self.llm.reset()
        self.llm.eval(ids)
        logits = np.asarray(self.llm.scores[max(len(ctx) - 1, 0):len(ids) - 1], dtype=np.float64)
        logits -= logits.max(1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        targets = np.asarray(q[1:] if not ctx else q)
        rows = logp[-len(targets):] if len(targets) else logp[:0]
        return float(rows[np.arange(len(targets)), targets].mean()) if len(targets) else 0.0

    def scores(self, question: str, candidates: list[tuple[str, str]]) -> np.ndarray:
        """Mean log P(question | title + excerpt) for each (title, excerpt)."""
        return np.asarray([self.logprob(PROMPT.format(title=t, excerpt=e), question) for t, e in candidates])
