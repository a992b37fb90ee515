"""Lexical ranking: BM25 (the `bm25s` library) over English words with stop words removed and Snowball
stemming, so "installing" finds "install". It is rebuilt from the texts when an index is loaded
(milliseconds for thousands of passages), so nothing but the texts needs saving."""

from __future__ import annotations

import logging

import numpy as np


def _stemmer():
    import snowballstemmer
    return snowballstemmer.stemmer("english")


class Lexical:
    """`Lexical(texts).scores(query)` -> one BM25 score per text (0 where no word is shared)."""

    def __init__(self, texts: list[str]):
        import bm25s
        logging.getLogger("bm25s").setLevel(logging.ERROR)
        self._bm25s = bm25s
        self._stem = _stemmer()
        self.n = len(texts)
        tokens = bm25s.tokenize(list(texts), stopwords="en", stemmer=self._stem, show_progress=False,
                                return_ids=False)
        self.retriever = bm25s.BM25()
        self.retriever.index(tokens, show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        words = self._bm25s.tokenize([query], stopwords="en", stemmer=self._stem, show_progress=False,
                                     return_ids=False)[0]
        known = [w for w in words if w in self.retriever.vocab_dict]
        if not known:
            return np.zeros(self.n, dtype=np.float32)
        return np.asarray(self.retriever.get_scores(known), dtype=np.float32)
