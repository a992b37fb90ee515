"""Grounded answers: show the model the known answer closest to the question before it replies.

A small model trained from scratch on a few thousand FAQ pairs learns their wording well but maps new
phrasings to the wrong topic: on the bundled shop FAQ it answers 64% of held-out paraphrases with the right
fact. A linear classifier over character and word n-grams, trained on the same questions in seconds,
routes 97% of them to the right topic. Grounding puts the two together, the way retrieval-augmented support
bots work:

1. each training example names its topic (`--ground-field`, e.g. the shop FAQ's `fact`);
2. a TF-IDF + logistic-regression router (scikit-learn) learns question -> topic;
3. the reference for a question is the known answer of its topic that the answers of its most similar known
   questions agree on (:meth:`Grounding.references`), and it goes into the system message
   (`Reference: ...`); the model is fine-tuned to answer with it in view (training examples are left out
   of their own reference, so they look like questions never seen);
4. `pocketlm eval` and `pocketlm chat` find `grounding/` beside the model's weights and do the same.

Saved as plain data (JSON + safetensors, no pickle), so a model directory stays safe to load.
"""

from __future__ import annotations

import json
import random
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pocketlm import runs
from pocketlm.errors import UserError
from pocketlm.fsutil import atomic_dir

GROUNDING_DIR = runs.GROUNDING
REFERENCE = "Reference: "
NEIGHBOURS = 5  # known questions whose answers vote on the reference (see Grounding.references)
_CHAR = {"analyzer": "char_wb", "ngram_range": (3, 5), "sublinear_tf": True}
_WORD = {"analyzer": "word", "sublinear_tf": True}


def _vectorizer(params: dict, vocabulary: dict | None = None, idf=None):
    from sklearn.feature_extraction.text import TfidfVectorizer
    vec = TfidfVectorizer(**params, vocabulary=vocabulary)
    if idf is not None:
        vec.idf_ = np.asarray(idf, dtype=np.float64)
    return vec


def _unit_rows(matrix):
    from sklearn.preprocessing import normalize
    return normalize(matrix.tocsr())


def last_user(messages: list[dict]) -> str:
    users = [m["content"] for m in messages if m["role"] == "user"]
    return users[-1] if users else ""


def with_reference(messages: list[dict], reference: str) -> list[dict]:
    """`messages` with `Reference: ...` in the system message (added first when there is none)."""
    note = REFERENCE + reference
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": f"{messages[0]['content']}\n{note}"}, *messages[1:]]
    return [{"role": "system", "content": note}, *messages]


@dataclass
class Grounding:
    prompts: list[str]
    answers: list[str]
    labels: list[str]
    char: object  # fitted TfidfVectorizer over character n-grams
    word: object  # fitted TfidfVectorizer over words
    classes: list[str]
    coef: np.ndarray  # (classes, features) logistic-regression weights
    intercept: np.ndarray
    _known: object = field(default=None, repr=False)  # features of `prompts`, computed once
    _by_label: dict = field(default_factory=dict, repr=False)  # topic -> indices of its entries
    _answer_features: object = field(default=None, repr=False)  # unit-length features of `answers`

    @classmethod
    def fit(cls, prompts: list[str], answers: list[str], labels: list[str], seed: int = 0) -> Grounding:
        from sklearn.linear_model import LogisticRegression
        if len(set(labels)) < 2:
            raise UserError("grounding needs examples of at least two topics (--ground-field values)")
        char, word = _vectorizer(_CHAR).fit(prompts), _vectorizer(_WORD).fit(prompts)
        g = cls(list(prompts), list(answers), list(labels), char, word, [], np.zeros(0), np.zeros(0))
        with warnings.catch_warnings():
            # one topic per FAQ entry is how grounding is meant to be used on a plain FAQ; scikit-learn's
            # "more than 50% unique classes, could be regression" guess means nothing here
            warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
            clf = LogisticRegression(C=100.0, max_iter=3000, random_state=seed).fit(g.features(prompts), labels)
        g.classes = [str(c) for c in clf.classes_]
        g.coef = np.ascontiguousarray(clf.coef_, dtype=np.float32)  # sklearn's may be column-major
        g.intercept = np.ascontiguousarray(clf.intercept_, dtype=np.float32)
        if len(g.classes) == 2:  # binary logistic regression keeps one row: score the other class as 0
            g.coef = np.concatenate([np.zeros_like(g.coef), g.coef])
            g.intercept = np.concatenate([np.zeros_like(g.intercept), g.intercept])
        return g

    def features(self, texts: list[str]):
        from scipy.sparse import hstack
        return hstack([self.char.transform(texts), self.word.transform(texts)]).tocsr()

    def route(self, texts: list[str]) -> list[str]:
        """The most likely topic of each text."""
        scores = self.features(texts) @ self.coef.T + self.intercept
        return [self.classes[i] for i in np.asarray(scores).argmax(1)]

    def references(self, texts: list[str], labels: list[str] | None = None,
                   exclude: list[int] | None = None, chunk: int = 512, neighbours: int = NEIGHBOURS) -> list[str]:
        """For each text, the known answer of its topic (`labels`, or the routed topic) that best agrees with
        the answers of its `neighbours` most similar known prompts of that topic: each candidate answer scores
        the sum of its similarity to each neighbour's answer, weighted by that neighbour's similarity to the
        text. One neighbour is plain nearest-neighbour; several pick the answer the close questions agree on,
        which more often holds the detail asked about (on the shop FAQ the reference holds the fact for 97% of
        held-out questions against 91% for the nearest question's answer).
        `exclude[i]` is an entry that text i must not see (itself, when it is a training example); a topic
        with no other entry falls back to the most similar entry of any topic. Similarities are computed
        `chunk` texts at a time, so memory stays at chunk x known prompts."""
        labels = labels if labels is not None else self.route(texts)
        if self._known is None:
            self._known = self.features(self.prompts).T.tocsr()
            self._answer_features = _unit_rows(self.features(self.answers))
            self._by_label = {}
            for i, label in enumerate(self.labels):
                self._by_label.setdefault(label, []).append(i)
            self._by_label = {k: np.asarray(v) for k, v in self._by_label.items()}
        out = []
        for start in range(0, len(texts), chunk):
            sims = (self.features(texts[start:start + chunk]) @ self._known).toarray()
            for row, i in zip(sims, range(start, start + len(sims)), strict=True):
                if exclude is not None and exclude[i] is not None:
                    row[exclude[i]] = -np.inf
                same = self._by_label.get(labels[i], np.zeros(0, dtype=int))
                same = same[np.isfinite(row[same])]
                out.append(self.answers[self._consensus(same, row, neighbours) if len(same) else int(row.argmax())])
        return out

    def _consensus(self, candidates: np.ndarray, sims: np.ndarray, neighbours: int) -> int:
        """The candidate whose answer agrees most with the answers of the `neighbours` candidates most
        similar to the question (`sims`), each weighted by that similarity."""
        near = candidates[np.argsort(-sims[candidates], kind="stable")[:neighbours]]
        if len(near) == 1 or sims[near[0]] <= 0:
            return int(near[0])
        answers = self._answer_features
        agreement = (answers[candidates] @ answers[near].T).toarray() @ sims[near]
        return int(candidates[agreement.argmax()])

    def ground(self, messages: list[dict]) -> list[dict]:
        """`messages` with the reference for the last user turn in view."""
        return with_reference(messages, self.references([last_user(messages)])[0])

    def save(self, directory: str | Path) -> Path:
        """Write `directory`/grounding/ (beside a model's weights); returns its path."""
        return self.save_to(Path(directory) / GROUNDING_DIR)

    def save_to(self, directory: str | Path) -> Path:
        """Write the grounding into `directory` itself (replaced whole, atomically)."""
        from safetensors.numpy import save_file
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            meta = {"version": 1, "classes": self.classes,
                    "entries": [{"prompt": p, "answer": a, "label": t}
                                for p, a, t in zip(self.prompts, self.answers, self.labels, strict=True)],
                    "char_vocabulary": {k: int(v) for k, v in self.char.vocabulary_.items()},
                    "word_vocabulary": {k: int(v) for k, v in self.word.vocabulary_.items()}}
            (tmp / "grounding.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
            arrays = {"coef": self.coef, "intercept": self.intercept, "char_idf": self.char.idf_, "word_idf": self.word.idf_}
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                      str(tmp / "router.safetensors"))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Grounding:
        from safetensors.numpy import load_file
        directory = Path(directory)
        try:
            meta = json.loads((directory / "grounding.json").read_text(encoding="utf-8"))
            arrays = load_file(str(directory / "router.safetensors"))
        except (OSError, ValueError) as e:
            raise UserError(f"{directory}: unreadable grounding data ({e})") from e
        entries = meta["entries"]
        return cls([e["prompt"] for e in entries], [e["answer"] for e in entries], [e["label"] for e in entries],
                   _vectorizer(_CHAR, meta["char_vocabulary"], arrays["char_idf"]),
                   _vectorizer(_WORD, meta["word_vocabulary"], arrays["word_idf"]),
                   list(meta["classes"]), arrays["coef"], arrays["intercept"])


def sidecar(gguf_path: str | Path) -> Path:
    """Where a GGUF file's grounding lives: `bot.gguf` -> `bot.grounding/` beside it (GGUF files carry
    the weights and tokenizer only)."""
    return Path(gguf_path).with_suffix(".grounding")


def grounding_dir(model_path: str | Path) -> Path | None:
    """The directory holding the grounding saved with a model: in the model's directory, in the run
    directory above it (a run's `checkpoint/` shares the run's grounding), or beside a GGUF file
    (:func:`sidecar`). None for a model fine-tuned without it, or a hub id."""
    from pocketlm.model.io import resolve_model_dir
    path = Path(model_path)
    if path.is_file():
        where = sidecar(path)
        return where if (where / "grounding.json").is_file() else None
    if not path.is_dir():
        return None
    path = resolve_model_dir(path)
    for where in (path, path.parent):
        if (where / GROUNDING_DIR / "grounding.json").is_file():
            return where / GROUNDING_DIR
    return None


def copy_grounding(model_path: str | Path, dest: str | Path) -> Path | None:
    """Copy the grounding saved with a model (see :func:`grounding_dir`) into `dest` (replaced whole,
    atomically): a merged model's grounding/, an exported GGUF file's :func:`sidecar`. None when the
    model has none."""
    source = grounding_dir(model_path)
    if source is None:
        return None
    with atomic_dir(dest) as tmp:
        for f in source.iterdir():
            shutil.copy2(f, tmp / f.name)
    return Path(dest)


def find_grounding(model_path: str | Path) -> Grounding | None:
    """The grounding saved with a model (see :func:`grounding_dir`), loaded; None when there is none."""
    where = grounding_dir(model_path)
    return Grounding.load(where) if where is not None else None


def ground_conversations(train: list[tuple[str, list[dict]]], val: list[tuple[str, list[dict]]],
                         topics: dict[str, str], seed: int = 0):
    """Fit the grounding on the training conversations (`topics` maps each one's `where` to its topic) and
    add references: a training example gets the closest *other* example's answer of its own topic (it must
    not see its own answer); a validation example gets what a new question would (its routed topic)."""
    prompts = [last_user(m) for _, m in train]
    labels = [topics[where] for where, _ in train]
    g = Grounding.fit(prompts, [m[-1]["content"] for _, m in train], labels, seed)
    refs = g.references(prompts, labels, exclude=list(range(len(train))))
    val_refs = g.references([last_user(m) for _, m in val]) if val else []
    return ([(w, with_reference(m, r)) for (w, m), r in zip(train, refs, strict=True)],
            [(w, with_reference(m, r)) for (w, m), r in zip(val, val_refs, strict=True)], g)


def reference_targets(convs: list[tuple[str, list[dict]]], fraction: float, seed: int = 0):
    """Replace the answer of about `fraction` of the grounded conversations by their reference, so the model
    learns that the reference is the answer to trust. Fine-tuned only on their own answers, which it can
    recall from the question, small models learn to answer from memory and pass over the reference; on the
    shop FAQ half the examples answering with their reference took the bot from 84% to 89-91% of held-out
    questions with the right fact (docs/benchmarks.md)."""
    if not 0 <= fraction <= 1:
        raise UserError(f"--ground-copy {fraction}: give a fraction from 0 to 1")
    rng = random.Random(seed + 1)
    out = []
    for where, messages in convs:
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
        at = system.rfind(REFERENCE)
        if at >= 0 and messages[-1]["role"] == "assistant" and rng.random() < fraction:
            messages = [*messages[:-1], {**messages[-1], "content": system[at + len(REFERENCE):]}]
        out.append((where, messages))
    return out
