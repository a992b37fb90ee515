"""Grounding on the bundled shop FAQ, no language model involved: how often the router puts a held-out
paraphrase in the right topic, how often the reference it picks contains the expected fact, against
nearest-neighbour baselines over the same features; plus the time to fit and the time per question.

    python benchmarks/grounding.py

The 116 held-out questions of examples/shop/faq_heldout.jsonl are never fitted on. Writes
benchmarks/results/grounding.json.
"""

from __future__ import annotations

import collections
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, save_result  # noqa: E402

SHOP = REPO / "examples" / "shop"


def neighbours_on_training_questions(train: list[dict], held_out: int = 300, seed: int = 0) -> dict:
    """Choose the number of neighbours without the held-out set: fit on all but `held_out` training
    questions, and score each of those by the token F1 of its reference against its own answer."""
    from pocketlm.evaluate.metrics import token_f1
    from pocketlm.retrieval.grounding import Grounding
    dev = set(np.random.default_rng(seed).permutation(len(train))[:held_out].tolist())
    rest = [t for i, t in enumerate(train) if i not in dev]
    probe = [t for i, t in enumerate(train) if i in dev]
    g = Grounding.fit([t["question"] for t in rest], [t["answer"] for t in rest], [t["fact"] for t in rest])
    out = {}
    for k in (1, 3, 5, 10):
        refs = g.references([t["question"] for t in probe], neighbours=k)
        out[str(k)] = round(float(np.mean([token_f1(r, t["answer"]) for r, t in zip(refs, probe, strict=True)])), 3)
    return out


def main():
    from pocketlm.retrieval.grounding import Grounding
    train = [json.loads(line) for line in (SHOP / "faq.jsonl").open(encoding="utf-8")]
    held = [json.loads(line) for line in (SHOP / "faq_heldout.jsonl").open(encoding="utf-8")]
    questions, facts = [h["question"] for h in held], np.array([h["fact"] for h in held])
    labels = np.array([t["fact"] for t in train])

    t0 = time.perf_counter()
    g = Grounding.fit([t["question"] for t in train], [t["answer"] for t in train], list(labels))
    fit_s = time.perf_counter() - t0

    sims = (g.features(questions) @ g.features(g.prompts).T).toarray()
    order = np.argsort(-sims, axis=1)

    def vote(k: int) -> np.ndarray:
        out = []
        for i, row in enumerate(order):
            score = collections.Counter()
            for j in row[:k]:
                score[labels[j]] += sims[i, j]
            out.append(score.most_common(1)[0][0])
        return np.array(out)

    topics = sorted(set(labels))
    known = g.features(g.prompts)
    centroids = np.stack([np.asarray(known[labels == t].mean(0)).ravel() for t in topics])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    by_centroid = np.array(topics)[np.asarray(g.features(questions) @ centroids.T).argmax(1)]

    t0 = time.perf_counter()
    refs = [g.references([q])[0] for q in questions]  # one at a time, as chat asks them
    per_question_ms = (time.perf_counter() - t0) / len(questions) * 1000

    def contains_key(answers) -> float:
        return float(np.mean([h["key"].lower() in a.lower() for h, a in zip(held, answers, strict=True)]))

    result = {
        "benchmark": "grounding on the shop FAQ: topic routing and references, no language model",
        "command": "python benchmarks/grounding.py",
        "machine": machine(),
        "train_questions": len(train), "held_out_questions": len(held), "topics": len(topics),
        "right_topic": {
            "router (TF-IDF char 3-5-grams + words, logistic regression)": float(np.mean(np.array(g.route(questions)) == facts)),
            "1-nearest question": float(np.mean(labels[order[:, 0]] == facts)),
            "10-nearest questions, similarity-weighted vote": float(np.mean(vote(10) == facts)),
            "topic centroid": float(np.mean(by_centroid == facts)),
        },
        "answer_contains_the_fact": {
            "reference (shipped): router, then the answer its 5 nearest questions of that topic agree on":
                contains_key(refs),
            "router, then nearest question of that topic": contains_key(g.references(questions, neighbours=1)),
            **{f"router, then the answer its {k} nearest questions agree on":
               contains_key(g.references(questions, neighbours=k)) for k in (3, 10)},
            "nearest question of any topic": contains_key([g.answers[j] for j in order[:, 0]]),
        },
        "neighbours_chosen_on_300_training_questions (token F1 of the reference against their own answer)":
            neighbours_on_training_questions(train),
        "fit_seconds": round(fit_s, 2),
        "reference_ms_per_question": round(per_question_ms, 2),
    }
    print(json.dumps(result, indent=2))
    print(f"wrote {save_result('grounding', result)}")


if __name__ == "__main__":
    main()
