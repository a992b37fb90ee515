"""End to end on real text: a slice of TinyStories (../shared/data or $POCKETLM_DATA)."""

import csv
from collections import Counter

import numpy as np
import pytest
from datahelp import decoded_docs, meta_of

from pocketlm.data.clean import clean_text
from pocketlm.data.shards import load_tokens

SLICE_BYTES = 300_000


@pytest.fixture
def tinystories(shared_data, tmp_path):
    source = shared_data / "tinystories" / "train.txt"
    if not source.exists():
        pytest.skip(f"{source} not found")
    with open(source, encoding="utf-8") as f:
        text = f.read(SLICE_BYTES)
    text = text[: text.rindex("<|endoftext|>")]  # whole stories only
    path = tmp_path / "tinystories.txt"
    path.write_text(text, encoding="utf-8")
    stories = [clean_text(s) for s in text.split("<|endoftext|>")]
    return path, [s for s in stories if len(s) >= 16]


def test_prepare_tinystories_slice(run_prepare, tmp_path, tinystories):
    path, stories = tinystories
    stats = run_prepare(path, vocab_size=1024)
    out = tmp_path / "out"
    d = stats["documents"]
    assert d["in"] == len(stories)
    assert d["kept"] == len(stories) - d["exact_duplicates"] - d["near_duplicates"]
    assert d["kept"] >= 0.95 * len(stories)
    meta = meta_of(out)
    assert meta["vocab_size"] == 1024 and meta["dtype"] == "<u2"
    val = meta["splits"]["val"]["documents"]
    assert 0.02 * d["kept"] <= val <= 0.10 * d["kept"]
    # A 1k-token BPE on simple English compresses to about 3 bytes per token.
    assert 2.5 < stats["bytes_per_token"] < 4.5
    got = decoded_docs(out)
    assert len(got) == d["kept"] and set(got) <= set(stories)
    if d["exact_duplicates"] + d["near_duplicates"] == 0:
        assert Counter(got) == Counter(stories)
    ids = np.concatenate([load_tokens(out, "train"), load_tokens(out, "val")])
    assert int(ids.max()) < 1024


def test_prepare_real_csv_with_a_template(run_prepare, tmp_path, shared_data):
    source = shared_data / "customer_support" / "bitext_customer_support.csv"
    if not source.exists():
        pytest.skip(f"{source} not found")
    with open(source, encoding="utf-8", newline="") as f:
        rows = [row for _, row in zip(range(301), csv.reader(f), strict=False)]
    path = tmp_path / "support.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    stats = run_prepare(path, template="User: {instruction}\nAgent: {response}", vocab_size=512)
    assert stats["skipped_records"] == 0 and stats["documents"]["in"] == 300
    got = decoded_docs(tmp_path / "out")
    assert all(doc.startswith("User: ") and "\nAgent: " in doc for doc in got)
    # Paraphrased requests with templated answers share phrases but are not near duplicates at 0.8.
    assert stats["documents"]["kept"] >= 290
