import numpy as np
from datahelp import STORIES
from datasketch import MinHash
from hypothesis import given, settings
from hypothesis import strategies as st

from pocketlm.data.dedupe import (
    MINHASH_SEED,
    Deduplicator,
    _SortedRuns,
    batch_shingles,
    lsh_params,
    shingle_hashes,
)

LONG = " ".join(STORIES[:3])  # ~270 words


def change_words(text: str, positions: list[int], word: str = "zebra") -> str:
    words = text.split(" ")
    for p in positions:
        words[p] = word
    return " ".join(words)


def test_exact_duplicates_within_and_across_batches():
    d = Deduplicator(near=False)
    assert d.check_batch(["a b c", "x y z", "a b c"]) == [None, None, "exact"]
    assert d.check_batch(["x y z", "new text", "a b c"]) == ["exact", None, "exact"]
    assert d.exact_removed == 3


def test_near_duplicate_with_a_couple_of_words_changed():
    near = change_words(LONG, [10, 150])
    assert near != LONG
    d = Deduplicator(exact=False)
    assert d.check_batch([LONG]) == [None]
    assert d.check_batch([near, STORIES[3], STORIES[4]]) == ["near", None, None]
    assert d.near_removed == 1


def test_near_duplicates_inside_one_batch_and_case_and_spacing():
    variant = change_words(LONG, [40]).upper().replace(" ", "  ")
    d = Deduplicator(exact=False)
    assert d.check_batch([LONG, STORIES[1], variant]) == [None, None, "near"]


def test_distinct_documents_are_kept():
    d = Deduplicator()
    assert d.check_batch(STORIES) == [None] * len(STORIES)
    # Half of a document is not a near duplicate of it at the default threshold (Jaccard ~0.5).
    half = " ".join(LONG.split(" ")[: len(LONG.split(" ")) // 2])
    assert d.check_batch([LONG, half]) == [None, None]


def test_threshold_controls_what_counts_as_near():
    heavily_edited = change_words(LONG, list(range(0, 270, 12)))  # ~23 words changed: Jaccard ~0.4
    strict = Deduplicator(exact=False, threshold=0.8)
    strict.check_batch([LONG])
    assert strict.check_batch([heavily_edited]) == [None]
    loose = Deduplicator(exact=False, threshold=0.3)
    loose.check_batch([LONG])
    assert loose.check_batch([heavily_edited]) == ["near"]


def test_disabled_deduplication_keeps_everything():
    d = Deduplicator(exact=False, near=False)
    assert d.check_batch([LONG, LONG]) == [None, None]


def test_shingles_are_deterministic_and_short_texts_have_one():
    assert len(shingle_hashes("one two three")) == 1
    assert len(shingle_hashes("")) == 0
    a = shingle_hashes(LONG)
    assert len(a) == len(LONG.split()) - 4
    assert np.array_equal(a, shingle_hashes(LONG))
    assert a.max() < 2**32


def test_lsh_params_reach_the_recall_target():
    for threshold in (0.5, 0.8, 0.95):
        bands, rows = lsh_params(threshold, 64)
        assert bands * rows <= 64
        assert 1 - (1 - threshold**rows) ** bands >= 0.97


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 50), max_size=30), max_size=8), st.lists(st.integers(0, 60), max_size=40))
def test_sorted_runs_match_a_dictionary(batches, queries):
    runs, reference = _SortedRuns(), {}
    next_id = 0
    for batch in batches:
        ids = np.arange(next_id, next_id + len(batch), dtype=np.uint32)
        next_id += len(batch)
        runs.add(np.array(batch, dtype=np.uint64), ids)
        for k, v in zip(batch, ids.tolist(), strict=True):
            reference.setdefault(k, set()).add(v)
    found: dict[int, set] = {}
    for i, vals in runs.lookup(np.array(queries, dtype=np.uint64)):
        found.setdefault(i, set()).update(vals.tolist())
    expected = {i: reference[q] for i, q in enumerate(queries) if q in reference}
    assert found == expected
    assert len(runs) == sum(len(b) for b in batches)


def test_batch_shingles_match_per_text_shingles():
    texts = [*STORIES, "a", "one two three four", "", "exactly five words here now", "x y", LONG]
    hashes, counts = batch_shingles(texts)
    assert counts.tolist() == [max(len(t.split()) - 4, 1) if t.split() else 0 for t in texts]
    per_text = np.split(hashes, np.cumsum(counts)[:-1])
    for text, part in zip(texts, per_text, strict=True):
        assert np.array_equal(part, shingle_hashes(text))


def test_vectorized_signatures_equal_datasketch_minhash():
    d = Deduplicator()
    texts = [*STORIES, "a", "x y", LONG]
    fast = d.signatures(texts)
    for text, sig in zip(texts, fast, strict=True):
        m = MinHash(num_perm=d.num_perm, seed=MINHASH_SEED, hashfunc=int)
        m.update_batch(shingle_hashes(text).tolist())
        assert np.array_equal(sig, np.asarray(m.hashvalues, dtype=np.uint64))
    assert d._vectorized  # datasketch >= 2 (affine32): the batch path is in use
    # Signatures do not depend on how documents are batched.
    assert np.array_equal(d.signatures(texts[:3]), fast[:3])
    assert np.array_equal(d._batch_minhash(*batch_shingles(texts), chunk=7), fast)
