"""Answering with a bot: retrieve, decide whether the data answers the question, then answer from it.

1. The retrieval index (:mod:`pocketlm.retrieval.index`) ranks the FAQ entries and passages.
2. When the best passage's dense similarity is below the index's threshold, the bot declines in one
   sentence and names the nearest topics it does cover, instead of inventing an answer.
3. Otherwise it answers with the passage's sentences most related to the question (the excerpt: a long
   answer holds many details, and the whole of it buries the one asked about); with `answer: generate`
   the language model phrases the answer from the excerpt instead. Every answer carries its citation
   (the FAQ entry, or the file and section).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pocketlm.errors import UserError

BOT_FILE = "bot.json"
RETRIEVAL_DIR = "retrieval"
DECLINE = "I don't know: {what} does not answer that."
SYSTEM = ("You are a helpful support assistant. Answer the user's question in one or two sentences, using only "
          "the reference below. Quote the exact command, name or number from it.\nReference: {excerpt}")
EXCERPT_CHARS = 800  # holds the fact for 93% of right passages on the Python FAQ (500: 85%, 300: 68%)
_SENTENCE = re.compile(r"(?<=[.!?:])\s+(?=[A-Z0-9>\"'(`])|\n\s*\n")


@dataclass
class Answer:
    text: str
    declined: bool
    citations: list[str] = field(default_factory=list)
    excerpt: str = ""
    confidence: float = 0.0  # dense similarity of the best passage
    passage: int | None = None  # the index of the passage answered from

    def shown(self) -> str:
        """The answer as a user sees it, with its sources."""
        if not self.citations:
            return self.text
        return f"{self.text}\n(source: {'; '.join(self.citations)})"


def split_sentences(text: str) -> list[str]:
    """Sentences and blocks (code and list lines stay with their paragraph)."""
    return [s.strip() for s in _SENTENCE.split(text) if s and s.strip()]


def excerpt(question_vector: np.ndarray, passage, embedder, max_chars: int = EXCERPT_CHARS) -> str:
    """The sentences of `passage` most similar to the question, in their original order, up to
    `max_chars` (the best one always, however long)."""
    sentences = split_sentences(passage.text)
    if sum(len(s) + 1 for s in sentences) <= max_chars:
        return " ".join(passage.text.split())
    vectors = embedder.encode([f"{passage.title}\n{s}" for s in sentences])
    order = np.argsort(-(vectors @ question_vector), kind="stable")
    chosen, size = [], 0
    for i in order:
        if chosen and size + len(sentences[i]) + 1 > max_chars:
            continue
        chosen.append(int(i))
        size += len(sentences[i]) + 1
    return " ".join(sentences[i] for i in sorted(chosen))


@dataclass
class BotConfig:
    """What `pocketlm bot` decided, saved as RUN/bot.json."""
    model: str | None  # a .gguf file or a model directory; None answers with the excerpt itself
    answer: str = "extract"  # extract (the excerpt is the answer) or generate (the model phrases it)
    max_new_tokens: int = 96
    excerpt_chars: int = EXCERPT_CHARS
    what: str = "the FAQ"  # how the decline names the data
    topics_in_decline: int = 3
    rerank: int = 3  # the best passages reranked by the model's likelihood of the question (0: off)
    rerank_model: str | None = None  # a .gguf file that reranks (default: `model` when it is one)


class Bot:
    def __init__(self, run_dir: str | Path):
        from pocketlm.retrieval.index import Index
        self.run_dir = Path(run_dir)
        try:
            cfg = json.loads((self.run_dir / BOT_FILE).read_text(encoding="utf-8"))
        except OSError as e:
            raise UserError(f"{self.run_dir}: not a bot run ({BOT_FILE} unreadable: {e.strerror})") from None
        self.config = BotConfig(**cfg["bot"])
        self.index = Index.load(self.run_dir / RETRIEVAL_DIR)
        self._model = None
        self._reranker = None

    @property
    def reranker(self):
        if self._reranker is None and self.config.rerank > 1:
            path = self.config.rerank_model or self.config.model
            if path and str(path).lower().endswith(".gguf"):
                from pocketlm.bot.rerank import Reranker
                self._reranker = Reranker(path)
        return self._reranker

    @property
    def model_path(self) -> Path | None:
        if self.config.model is None:
            return None
        path = Path(self.config.model)
        return path if path.is_absolute() else self.run_dir / path

    def decline(self, hits) -> Answer:
        topics = [self.index.passages[h.passage].title for h in hits[: self.config.topics_in_decline]]
        text = DECLINE.format(what=self.config.what)
        if topics:
            text += " Topics I can help with: " + "; ".join(topics) + "."
        return Answer(text, True, [], "", hits[0].dense if hits else 0.0)


    def retrieve(self, question: str, rerank: bool = True):
        """(question vector, hits best first)."""
        embedder = self.index.embedding_model
        vector = embedder.encode([question])[0]
        dense = self.index.dense_scores(vector[None])[0]
        hits, seen = [], set()
        for h in self.index.fuse(dense, self.index.lexical.scores(question), 25):
            text = self.index.passages[h.passage].text  # an FAQ that repeats an answer under many phrasings
            if text not in seen:                         # offers it once: to rerank and as a topic
                seen.add(text)
                hits.append(h)
        hits = hits[:5]
        k = self.config.rerank
        if rerank and k > 1 and self.reranker is not None and hits[0].dense >= self.index.threshold:
            from pocketlm.bot.rerank import EXCERPT_CHARS, MARGIN, WEIGHT
            top = [h for h in hits[:k] if h.score >= hits[0].score - MARGIN]  # a clear winner needs no model
            if len(top) > 1:
                shown = [(self.index.passages[h.passage].title,
                          excerpt(vector, self.index.passages[h.passage], embedder, EXCERPT_CHARS)) for h in top]
                lm = self.reranker.scores(question, shown)
                order = np.argsort(-(np.asarray([h.score for h in top]) + WEIGHT * lm), kind="stable")
                hits = [top[i] for i in order] + hits[len(top):]
        return vector, hits

    def answer(self, question: str) -> Answer:
        vector, hits = self.retrieve(question)
        best_dense = float(max(h.dense for h in hits))
        if best_dense < self.index.threshold:
            return self.decline(hits)
        passage = self.index.passages[hits[0].passage]
        text = excerpt(vector, passage, self.index.embedding_model, self.config.excerpt_chars)
        citations = [passage.cite()]
        if self.config.answer == "extract" or self.model_path is None:
            return Answer(text, False, citations, text, best_dense, hits[0].passage)
        messages = [{"role": "system", "content": SYSTEM.format(excerpt=text)}, {"role": "user", "content": question}]
        reply = self.generate(messages).strip()
        return Answer(reply or text, False, citations, text, best_dense, hits[0].passage)

    def generate(self, messages: list[dict]) -> str:
        path = self.model_path
        if path.suffix.lower() == ".gguf":
            from pocketlm.inference.llamacpp import generate_gguf, load_gguf, render_chat
            llm = load_gguf(path, n_ctx=2048)
            prompt = render_chat(llm, messages)
            return generate_gguf(path, prompt, max_new_tokens=self.config.max_new_tokens, temperature=0,
                                 n_ctx=2048)
        from pocketlm.data.tokenizer import stop_token_ids
        from pocketlm.inference.engine import SamplingConfig, generate_ids
        if self._model is None:
            from pocketlm.model.io import load_model
            self._model = load_model(path)
        model, tokenizer = self._model
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer.encode(ids, add_special_tokens=False)
        out = list(generate_ids(model, ids, SamplingConfig(max_new_tokens=self.config.max_new_tokens,
                                                           temperature=0), stop_token_ids(tokenizer)))
        return tokenizer.decode(out, skip_special_tokens=True)


def is_bot(path: str | Path) -> bool:
    return (Path(path) / BOT_FILE).is_file()
