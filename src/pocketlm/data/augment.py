"""Noisy copies of training conversations, so a small model learns to read past the exact wording.

A model trained from scratch on a few hundred FAQ questions memorises their phrasings; customers
then write "sunday hrs?" or drop half the words. `--augment N` adds N copies of every training
example whose last user turn is perturbed the way people really type: words dropped, neighbours
swapped, lower-cased, punctuation stripped, one typo. The answers are never touched.
"""

from __future__ import annotations

import random
import re

_WORD = re.compile(r"\S+")


def _typo(word: str, rng: random.Random) -> str:
    if len(word) < 4:
        return word
    i = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(3)
    if kind == 0:  # swap two letters
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == 1:  # drop a letter
        return word[:i] + word[i + 1:]
    return word[:i] + word[i] + word[i:]  # double a letter


def perturb(text: str, rng: random.Random, drop: float = 0.15) -> str:
    """One noisy version of `text` (never empty when `text` has a word)."""
    words = _WORD.findall(text)
    if not words:
        return text
    kept = [w for w in words if rng.random() >= drop] or [rng.choice(words)]
    if len(kept) > 2 and rng.random() < 0.3:
        i = rng.randrange(len(kept) - 1)
        kept[i], kept[i + 1] = kept[i + 1], kept[i]
    if rng.random() < 0.3:
        i = rng.randrange(len(kept))
        kept[i] = _typo(kept[i], rng)
    out = " ".join(kept)
    if rng.random() < 0.4:
        out = out.lower()
    if rng.random() < 0.4:
        out = re.sub(r"[?!.,;:]+", "", out).strip() or out
    return out


def augment(convs: list[tuple[str, list[dict]]], copies: int, seed: int = 0) -> list[tuple[str, list[dict]]]:
    """`convs` followed by `copies` perturbed copies of each (last user turn changed, duplicates skipped)."""
    if copies <= 0:
        return list(convs)
    rng = random.Random(seed)
    out = list(convs)
    for where, messages in convs:
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        if not users:
            continue
        u = users[-1]
        seen = {messages[u]["content"]}
        for _ in range(copies):
            text = perturb(messages[u]["content"], rng)
            if text in seen:
                continue
            seen.add(text)
            copy = [dict(m) for m in messages]
            copy[u]["content"] = text
            out.append((where, copy))
    return out
