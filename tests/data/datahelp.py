"""Helpers for the data-stage tests: files made in tmp_path and prepared directories read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pocketlm.data.shards import META, STATS, load_tokens, read_meta
from pocketlm.data.tokenizer import load_tokenizer

# Long enough for near-duplicate detection (word 5-grams) and distinct from each other.
STORIES = [
    "Once upon a time there was a little fox who lived at the edge of a quiet forest. Every morning the fox "
    "walked down to the river to drink, and every evening it climbed the hill to watch the sun go down. One "
    "day a heron landed beside the river and asked the fox why it always walked alone. The fox did not know "
    "what to say, so it shared its breakfast of berries with the heron, and from that day on they walked "
    "together, talking about the weather, the fish in the river and the colours of the sky at dusk.",
    "Mara kept a small garden behind the bakery. She grew tomatoes, beans and a row of tall sunflowers that "
    "leaned over the fence toward the street. Children on their way to school would stop to count the "
    "sunflower seeds, and Mara would hand them warm rolls through the gate. When a storm knocked the "
    "sunflowers flat one autumn night, the children came back after school with string and sticks, and "
    "together they tied every stem upright again before the bread came out of the oven.",
    "The lighthouse keeper wrote a letter every week to his sister in the city. He described the ships that "
    "passed, the seals on the rocks and the gulls that stole his sandwiches. His sister never wrote back, "
    "but each spring a parcel arrived with new socks, a tin of tea and a book of puzzles. Years later he "
    "learned that she had kept every letter in a box under her bed, and that she read them aloud to her "
    "neighbours on Sunday afternoons, who all felt they knew the sea as well as he did.",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    a, b = 0, 1\n    for _ in range(n):\n"
    "        a, b = b, a + b\n    return a\n\nif __name__ == \"__main__\":\n    for i in range(10):\n"
    "        print(i, fibonacci(i))",
    "Grüße aus München! Der Bäcker verkauft Brezeln, Semmeln und Apfelstrudel. Naïve café owners serve "
    "crème brûlée on Fridays. 東京の天気は晴れです。Emoji too: 👩‍💻 🚀 and a tab\tinside a line.",
]


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path


def jsonl(records: list) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def decoded_docs(out: Path, split: str | None = None) -> list[str]:
    """The documents of a prepared directory, decoded from the token files (train then val)."""
    meta = read_meta(out)
    tok = load_tokenizer(out / meta["tokenizer"])
    sep = meta["doc_separator_id"]
    docs: list[str] = []
    for name in [split] if split else ["train", "val"]:
        if meta["splits"][name]["tokens"] == 0:
            continue
        ids = np.asarray(load_tokens(out, name))
        assert ids[0] == sep, "every split starts with the document separator"
        starts = np.flatnonzero(ids == sep).tolist() + [len(ids)]
        docs += [tok.decode(ids[a + 1:b].tolist()) for a, b in zip(starts, starts[1:], strict=False)]
    return docs


def stats_of(out: Path) -> dict:
    return json.loads((out / STATS).read_text(encoding="utf-8"))


def meta_of(out: Path) -> dict:
    return json.loads((out / META).read_text(encoding="utf-8"))
