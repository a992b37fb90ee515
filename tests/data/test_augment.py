import random

from pocketlm.data.augment import augment, perturb


def _conv(q, a):
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": q},
            {"role": "assistant", "content": a}]


def test_noisy_copies_change_only_the_last_user_turn():
    convs = [("faq.jsonl:1", _conv("What time do you open on a Saturday morning?", "10 am.")),
             ("faq.jsonl:2", _conv("Do you ship to Norway or Sweden?", "Yes, in 5 days."))]
    out = augment(convs, copies=5, seed=1)
    assert out[:2] == convs  # the originals come first, unchanged
    copies = out[2:]
    assert 2 <= len(copies) <= 10
    for where, messages in copies:
        original = dict(convs)[where]
        assert messages[0] == original[0] and messages[2] == original[2]
        assert messages[1]["content"] != original[1]["content"]
        assert messages[1]["content"].strip()
    # copies of one example are distinct from each other
    texts = [m[1]["content"] for w, m in copies if w == "faq.jsonl:1"]
    assert len(texts) == len(set(texts))
    assert augment(convs, copies=5, seed=1) == out  # deterministic for a seed
    assert augment(convs, copies=0) == convs


def test_perturb_keeps_words_from_the_input():
    rng = random.Random(0)
    source = "Where can I park my car near the store"
    vocab = {w.lower() for w in source.split()}
    for _ in range(200):
        text = perturb(source, rng)
        words = text.split()
        assert 1 <= len(words) <= len(source.split())
        # at most one word carries a typo; the rest are words of the input
        assert sum(w.lower() not in vocab for w in words) <= 1
    assert perturb("", rng) == ""
