"""The retrieval index with the real embedding model: meaning, not words; a faithful round trip on disk."""

from __future__ import annotations

import numpy as np

from pocketlm.retrieval.index import Index, Passage, passage_keys

FAQ = [
    ("How do I reset my password?", "Click 'Forgot password' on the sign-in page; we email a reset link."),
    ("What are your opening hours?", "We are open 9 am to 5 pm, Monday to Friday."),
    ("Can I return an item?", "Returns are accepted within 30 days with the receipt."),
    ("Do you ship abroad?", "We ship to 40 countries; international delivery takes 5-10 working days."),
    ("How do I cancel my subscription?", "Go to Account > Plan and choose Cancel; you keep access until the "
                                         "end of the billing period."),
]


def passages():
    return [Passage(f"e{i}", q, a, f"faq.jsonl:{i + 1}") for i, (q, a) in enumerate(FAQ)]


def test_a_paraphrase_sharing_no_word_finds_its_entry(embedder):
    index = Index.build(passages(), embedder)
    query = "lost access, cannot recall login credentials"
    words = {w.strip("?.,'").lower() for q, a in FAQ[:1] for w in f"{q} {a}".split()}
    assert not words & {w.strip(",") for w in query.split()}  # no word in common with the entry
    assert index.lexical.scores(query)[0] == 0  # so BM25 alone cannot find it
    assert index.search(query)[0].passage == 0
    assert index.search("when do you close on weekdays")[0].passage == 1
    assert index.search("end my membership")[0].passage == 4


def test_save_load_gives_the_same_vectors_and_rankings(embedder, tmp_path):
    index = Index.build(passages(), embedder)
    index.threshold = 0.42
    index.save(tmp_path / "idx")
    again = Index.load(tmp_path / "idx")
    assert again.threshold == 0.42 and again.keys == index.keys
    np.testing.assert_array_equal(again.vectors, index.vectors)
    for q in ["forgot my login credentials", "send a parcel to France", "refund"]:
        assert [(h.passage, round(h.score, 6)) for h in again.search(q)] == \
               [(h.passage, round(h.score, 6)) for h in index.search(q)]
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically, nothing left behind


def test_long_answers_are_embedded_window_by_window(embedder):
    filler = " ".join(f"Paragraph {i} is about general shipping policy and parcels." for i in range(60))
    long = Passage("long", "Shipping policy", filler + " Gift wrapping costs 3 euros per item.", "faq.jsonl:9")
    keys = passage_keys(long)
    assert len(keys) > 3 and any("Gift wrapping" in k for k in keys)
    index = Index.build(passages() + [long], embedder)
    assert index.search("how much is gift wrap")[0].passage == len(FAQ)


def test_embeddings_do_not_depend_on_the_batch(embedder):
    """Mean pooling ignores padding: a text alone and in a batch beside a longer one give one vector."""
    alone = embedder.encode(["short text"])
    batched = embedder.encode(["a much longer text that forces padding of the short one " * 3, "short text"])
    np.testing.assert_allclose(alone[0], batched[1], atol=1e-5)
    assert abs(np.linalg.norm(alone[0]) - 1) < 1e-5


def test_an_index_whose_custom_embedder_is_gone_says_so(embedder, tmp_path):
    import json

    import pytest

    from pocketlm.errors import UserError
    Index.build(passages(), embedder).save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    meta["embedder"] = str(tmp_path / "my-own-embedder")
    (tmp_path / "idx" / "index.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="embedding model it was built with is gone"):
        Index.load(tmp_path / "idx")
