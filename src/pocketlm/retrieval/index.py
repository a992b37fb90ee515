"""The retrieval index: FAQ entries and document passages, found by meaning and by words.

Each passage is embedded under several keys: its title alone (an FAQ question, or a page's heading
path), its title with the start of its text, and its title with each further window of a long text, so a
detail deep in a long answer can still be found. A question's dense score for a passage is the best
cosine similarity over the passage's keys; its lexical score is BM25 over the title and text. The fused
score is the dense one plus a bounded lexical bonus (`LEXICAL_WEIGHT` x BM25 / the query's best BM25), so
a rare word shared with the question breaks near-ties without letting a weak word match outrank a clear
match in meaning. Reciprocal rank fusion was measured and is worse on FAQs: it ranks the best BM25 match
first beside the best dense one, however weak (recall@1 78.5% against 79.5% for dense alone on the Python
FAQ, and a test case in tests/retrieval/test_index.py where it picks the wrong entry).

The dense similarity of the best passage also says how sure retrieval is: below the index's
`threshold` the bot declines instead of answering from a passage that is probably about something
else (`pocketlm bot` chooses the threshold on the user's own data; see :mod:`pocketlm.retrieval.abstain`).

Saved as plain data: `index.json` (passages, keys, settings) and `vectors.safetensors`, no pickle.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pocketlm.errors import UserError
from pocketlm.fsutil import atomic_dir

INDEX_FILE = "index.json"
VECTORS_FILE = "vectors.safetensors"
WINDOW_CHARS = 700  # text per extra key of a long passage (MiniLM reads 256 tokens, ~1,000 characters)
MAX_WINDOWS = 8
LEXICAL_WEIGHT = 0.1  # the most BM25 adds to a cosine similarity (see the module docstring)


@dataclass
class Passage:
    id: str  # the FAQ entry's id, or file#n for a document passage
    title: str  # the FAQ question, or the page title > section path
    text: str  # the answer, or the passage's text
    source: str  # where it came from: file and line, or file and section
    kind: str = "faq"  # faq or doc
    group: str = ""  # entries with the same non-empty group answer the same question (other phrasings)

    def cite(self) -> str:
        """The FAQ entry's id (its file and line when it has none), or the document's file and section."""
        return self.id if self.kind == "faq" else self.source


@dataclass
class Hit:
    passage: int  # index into Index.passages
    score: float  # fused score (higher is better)
    dense: float  # best cosine similarity over the passage's keys
    lexical: float  # BM25 score


def passage_keys(p: Passage) -> list[str]:
    """The texts a passage is embedded under (see the module docstring)."""
    keys = [p.title] if p.title else []
    text = " ".join(p.text.split())
    keys.append(f"{p.title}\n{text[:WINDOW_CHARS]}" if p.title else text[:WINDOW_CHARS])
    for start in range(WINDOW_CHARS, min(len(text), WINDOW_CHARS * MAX_WINDOWS), WINDOW_CHARS):
        keys.append(f"{p.title}\n{text[start:start + WINDOW_CHARS]}")
    return keys


@dataclass
class Index:
    passages: list[Passage]
    keys: list[str]  # the texts embedded
    owner: np.ndarray  # (keys,) the passage each key belongs to
    vectors: np.ndarray  # (keys, dim) unit-length embeddings of `keys`
    embedder: str  # the embedding model directory
    threshold: float = 0.0  # dense similarity below which the bot declines
    settings: dict = field(default_factory=dict)
    _embedder: object = field(default=None, repr=False)
    _lexical: object = field(default=None, repr=False)

    @classmethod
    def build(cls, passages: list[Passage], embedder) -> Index:
        """Embed every passage's keys (:func:`passage_keys`)."""
        if not passages:
            raise UserError("nothing to index: no FAQ entries or passages were read")
        keys, owner = [], []
        for i, p in enumerate(passages):
            for k in passage_keys(p):
                keys.append(k)
                owner.append(i)
        vectors = embedder.encode(keys)
        index = cls(list(passages), keys, np.asarray(owner, dtype=np.int64), vectors, str(embedder.model_dir))
        index._embedder = embedder
        return index

    # ------------------------------------------------------------------------------------- search

    @property
    def embedding_model(self):
        if self._embedder is None:
            from pocketlm.retrieval.embed import Embedder
            self._embedder = Embedder(self.embedder)
        return self._embedder

    @property
    def lexical(self):
        if self._lexical is None:
            from pocketlm.retrieval.lexical import Lexical
            self._lexical = Lexical([f"{p.title}\n{p.text}" for p in self.passages])
        return self._lexical

    def dense_scores(self, query_vectors: np.ndarray, skip: np.ndarray | None = None) -> np.ndarray:
        """(queries, passages): the best cosine similarity of each query over each passage's keys.
        `skip` masks keys out (True = not used), for leave-one-out measurements."""
        sims = query_vectors @ self.vectors.T
        if skip is not None:
            sims[:, skip] = -np.inf
        out = np.full((len(query_vectors), len(self.passages)), -1.0, dtype=np.float32)
        np.maximum.at(out.T, self.owner, sims.T)
        return out

    def search_many(self, queries: list[str], k: int = 5) -> list[list[Hit]]:
        vectors = self.embedding_model.encode(queries)
        dense = self.dense_scores(vectors)
        return [self.fuse(d, self.lexical.scores(q), k) for q, d in zip(queries, dense, strict=True)]

    def search(self, query: str, k: int = 5) -> list[Hit]:
        return self.search_many([query], k)[0]

    def fuse(self, dense: np.ndarray, lexical: np.ndarray, k: int) -> list[Hit]:
        fused = dense + LEXICAL_WEIGHT * lexical / max(float(lexical.max()), 1e-9)
        top = np.argsort(-fused, kind="stable")[:k]
        return [Hit(int(i), float(fused[i]), float(dense[i]), float(lexical[i])) for i in top]

    # ------------------------------------------------------------------------------------- disk

    def save(self, directory: str | Path) -> Path:
        """Write the index into `directory` (replaced whole, atomically)."""
        from safetensors.numpy import save_file
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            meta = {"version": 1, "embedder": self.embedder, "threshold": self.threshold,
                    "settings": self.settings, "passages": [asdict(p) for p in self.passages],
                    "keys": self.keys, "owner": self.owner.tolist()}
            (tmp / INDEX_FILE).write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")
            save_file({"vectors": np.ascontiguousarray(self.vectors, dtype=np.float32)}, str(tmp / VECTORS_FILE))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Index:
        from safetensors.numpy import load_file
        directory = Path(directory)
        try:
            meta = json.loads((directory / INDEX_FILE).read_text(encoding="utf-8"))
            vectors = load_file(str(directory / VECTORS_FILE))["vectors"]
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{directory}: unreadable retrieval index ({e})") from None
        embedder = meta["embedder"]
        if not Path(embedder).exists():
            from pocketlm.retrieval.embed import DEFAULT_PACKAGE, default_model_dir
            if DEFAULT_PACKAGE not in Path(embedder).parts:  # another model's vectors must not be compared
                raise UserError(f"{directory}: the embedding model it was built with is gone ({embedder}); "
                                "put it back or build the bot again")
            embedder = str(default_model_dir())  # the default model, installed somewhere else on this machine
        return cls([Passage(**p) for p in meta["passages"]], list(meta["keys"]),
                   np.asarray(meta["owner"], dtype=np.int64), vectors, embedder, float(meta["threshold"]),
                   dict(meta.get("settings", {})))
