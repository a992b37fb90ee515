"""Task metrics against values worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import pytest

from pocketlm.errors import UserError
from pocketlm.evaluate.metrics import (
    TASKS,
    accuracy,
    bleu,
    chrf,
    command_score,
    contains_key,
    exact_match,
    fact_accuracy,
    intent_accuracy,
    json_validity,
    lcs_length,
    macro_f1,
    normalize_answer,
    parse_command,
    per_example,
    rouge_l,
    rouge_l_corpus,
    score,
    slot_f1,
    token_f1,
    worst_examples,
)

approx = pytest.approx

# ----------------------------------------------------------------------------- QA


def test_normalize_answer():
    # lower -> "the  cat's hat!", drop punctuation -> "the  cats hat", drop "the", collapse spaces
    assert normalize_answer("The  Cat's hat!") == "cats hat"
    # articles only as whole words: "another", "theme" and "an" inside words survive
    assert normalize_answer("An apple, another theme.") == "apple another theme"
    assert normalize_answer("  \n ") == ""


def test_exact_match():
    assert exact_match("The Cat!", "cat") == 1.0
    assert exact_match("a cat", "cats") == 0.0
    assert exact_match("", "") == 1.0


def test_token_f1_worked_examples():
    # pred -> [cat, sat], ref -> [cat, sat, down]; overlap 2: P = 2/2, R = 2/3, F1 = 2*(2/3)/(5/3) = 0.8
    assert token_f1("the cat sat", "a cat sat down") == approx(0.8)
    # overlap counts multiplicity: {cat:2, dog:1} & {cat:1, dog:2} = 2 tokens; P = R = 2/3 -> F1 = 2/3
    assert token_f1("cat cat dog", "cat dog dog") == approx(2 / 3)


def test_token_f1_edges():
    assert token_f1("Paris", "paris.") == 1.0  # identical after normalisation
    assert token_f1("red fox", "blue whale") == 0.0  # disjoint
    assert token_f1("", "") == 1.0  # both empty
    assert token_f1("the", "a") == 1.0  # both empty after dropping articles
    assert token_f1("", "cat") == 0.0
    assert token_f1("cat", "") == 0.0


# ----------------------------------------------------------------------------- ROUGE-L


def test_lcs_length():
    # CLRS example: LCS("ABCBDAB", "BDCABA") = 4 (e.g. "BCBA"); symmetric
    assert lcs_length("ABCBDAB", "BDCABA") == 4
    assert lcs_length("BDCABA", "ABCBDAB") == 4
    assert lcs_length("", "abc") == 0


def test_rouge_l_worked_example():
    # Lin (2004): reference "police killed the gunman"
    # "police kill the gunman": LCS = police, the, gunman = 3; P = R = 3/4 -> F = 0.75
    assert rouge_l("police kill the gunman", "police killed the gunman") == approx(0.75)
    # "the gunman kill police": LCS = the, gunman = 2; P = R = 2/4 -> F = 0.5
    assert rouge_l("the gunman kill police", "police killed the gunman") == approx(0.5)
    # 7 pred tokens, 6 ref tokens, LCS = all 6 ref tokens: P = 6/7, R = 1, F = 2*(6/7)/(13/7) = 12/13
    assert rouge_l("the cat was found under the bed", "the cat was under the bed") == approx(12 / 13)
    # corpus = mean(0.75, 0.5)
    assert rouge_l_corpus(["police kill the gunman", "the gunman kill police"],
                          ["police killed the gunman"] * 2) == approx(0.625)


def test_rouge_l_edges():
    assert rouge_l("The CAT.", "the cat") == 1.0  # lowercased, punctuation is not a token
    assert rouge_l("dog", "cat") == 0.0
    assert rouge_l("", "") == 1.0
    assert rouge_l("", "cat") == 0.0
    with pytest.raises(UserError, match="2 predictions but 1"):
        rouge_l_corpus(["a", "b"], ["a"])
    with pytest.raises(UserError, match="no examples"):
        rouge_l_corpus([], [])


# ----------------------------------------------------------------------------- chrF / BLEU

REF = "the quick brown fox jumps over the lazy dog"


def test_chrf_bleu_sanity():
    assert chrf([REF], [REF]) == approx(100.0)
    assert bleu([REF], [REF]) == approx(100.0)
    assert chrf(["xyz"], ["abc"]) == approx(0.0)
    assert bleu(["zebra yak wombat vole"], [REF]) == approx(0.0)
    near = "the quick brown fox jumped over the lazy dog"
    far = "a fast brown animal leapt over a dog"
    assert 0 < chrf([far], [REF]) < chrf([near], [REF]) < 100
    assert bleu([far], [REF]) < bleu([near], [REF]) < 100


def test_chrf_bleu_with_several_references():
    from pocketlm.evaluate.metrics import sentence_chrf
    # "Go away." has several accepted translations: matching any one of them is a perfect score
    assert chrf(["Geh weg!"], [["Hau ab!", "Geh weg!"]]) == approx(100.0)
    assert bleu([REF], [["a dog", REF]]) == approx(100.0)
    assert sentence_chrf("Geh weg!", ["Hau ab!", "Geh weg!"]) == approx(100.0)
    # per sentence the best-matching reference counts
    near = "the quick brown fox jumped over the lazy dog"
    assert sentence_chrf(near, ["xyz", REF]) == approx(sentence_chrf(near, REF))
    # one reference in a list is the same as the bare string; examples may have different numbers of them
    assert chrf([near], [[REF]]) == approx(chrf([near], [REF]))
    assert chrf([near, "Hau ab!"], [REF, ["Geh weg!", "Hau ab!"]]) > chrf([near, "Hau ab!"], [REF, "Geh weg!"])
    with pytest.raises(UserError, match="empty list of references"):
        chrf([near], [[]])


# ----------------------------------------------------------------------------- classification

# refs  a a a b b c
# preds a a b b c c
# a: TP 2, FP 0, FN 1 -> F1 = 4/5
# b: TP 1, FP 1 (pred b, true a), FN 1 (true b, pred c) -> 2/4 = 1/2
# c: TP 1, FP 1 (pred c, true b), FN 0 -> 2/3
# macro = (4/5 + 1/2 + 2/3) / 3 = (24 + 15 + 20) / 90 = 59/90
CLS_REFS = ["a", "a", "a", "b", "b", "c"]
CLS_PREDS = ["a", "a", "b", "b", "c", "c"]


def test_accuracy():
    assert accuracy(CLS_PREDS, CLS_REFS) == approx(4 / 6)
    assert accuracy([" yes\n", "No"], ["yes", "no"]) == approx(0.5)  # whitespace stripped, case kept


def test_macro_f1_confusion():
    assert macro_f1(CLS_PREDS, CLS_REFS) == approx(59 / 90)
    # "d" is never true and never predicted: excluded, same result
    assert macro_f1(CLS_PREDS, CLS_REFS, labels=["a", "b", "c", "d"]) == approx(59 / 90)
    # restricted to a and b: (4/5 + 1/2) / 2
    assert macro_f1(CLS_PREDS, CLS_REFS, labels=["a", "b"]) == approx(0.65)


def test_macro_f1_out_of_set_prediction():
    # refs a b, preds a x: a -> 1; b -> TP 0, FN 1 -> 0; x -> FP 1 -> 0
    assert macro_f1(["a", "x"], ["a", "b"]) == approx(1 / 3)
    # with labels {a, b} the stray "x" is no class of its own but still costs b: (1 + 0) / 2
    assert macro_f1(["a", "x"], ["a", "b"], labels=["a", "b"]) == approx(0.5)
    assert macro_f1(["a", "a"], ["a", "a"]) == 1.0
    with pytest.raises(UserError, match="none of the labels"):
        macro_f1(["a"], ["a"], labels=["z"])


def _macro_f1_by_definition(preds, refs, labels=None):
    """The documented definition, written out: mean over the classes that occur of 2TP / (2TP + FP + FN)."""
    p, r = [x.strip() for x in preds], [x.strip() for x in refs]
    classes = set(labels) if labels is not None else set(p) | set(r)
    scores = []
    for c in sorted(classes):
        tp = sum(a == b == c for a, b in zip(p, r, strict=True))
        fp = sum(a == c != b for a, b in zip(p, r, strict=True))
        fn = sum(b == c != a for a, b in zip(p, r, strict=True))
        if 2 * tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


@pytest.mark.parametrize("seed", range(20))
def test_macro_f1_is_sklearn_with_the_documented_classes(seed):
    import random
    import warnings

    rng = random.Random(seed)
    refs = [rng.choice("abcd") for _ in range(rng.randint(1, 30))]
    preds = [rng.choice(["a", "b", "c", "e", " a "]) for _ in refs]  # e: only ever predicted; d: only true
    labels = rng.choice([None, ["a", "b", "z"], ["a", "b", "c", "d", "e"]])  # z: never seen, left out
    if labels is not None and not set(labels) & set(refs + [p.strip() for p in preds]):
        labels = None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scikit-learn's zero-division warnings never fire
        got = macro_f1(preds, refs, labels=labels)
    assert got == approx(_macro_f1_by_definition(preds, refs, labels))
    assert accuracy(preds, refs) == approx(sum(p.strip() == r for p, r in zip(preds, refs, strict=True)) / len(refs))


# ----------------------------------------------------------------------------- commands


def test_parse_command_valid_and_surrounding_text():
    obj = {"intent": "PlayMusic", "slots": {"artist": "Queen"}}
    assert parse_command('{"intent": "PlayMusic", "slots": {"artist": "Queen"}}') == obj
    assert parse_command('{"intent": "PlayMusic", "slots": {"artist": "Queen"}} Enjoy! {x') == obj
    assert parse_command('```json\n{"intent": "PlayMusic", "slots": {"artist": "Queen"}}\n```') == obj
    assert parse_command('{"intent": "Stop", "slots": {}, "confidence": 0.9}')["intent"] == "Stop"


@pytest.mark.parametrize("text", [
    "",
    "no json here",
    '{"intent": "PlayMusic", "slots": {"artist": "Queen"}',  # unterminated
    "{'intent': 'PlayMusic', 'slots': {}}",  # single quotes
    '{"intent": "PlayMusic", "slots": {},}',  # trailing comma
    '{"intent": "Play\nMusic", "slots": {}}',  # raw newline inside a string (strict JSON)
    'oops {bad} {"intent": "PlayMusic", "slots": {}}',  # the first object is broken
])
def test_parse_command_invalid_json(text):
    assert parse_command(text) is None


@pytest.mark.parametrize("text", [
    '{"slots": {}}',  # no intent
    '{"intent": "PlayMusic"}',  # no slots
    '{"intent": 3, "slots": {}}',
    '{"intent": "PlayMusic", "slots": []}',
    '{"intent": "PlayMusic", "slots": {"count": 2}}',
    '{"intent": "PlayMusic", "slots": {"artist": null}}',
    '{"intent": ["PlayMusic"], "slots": {}}',
    '["PlayMusic", {}]',  # not an object (its inner "{}" lacks intent and slots)
])
def test_parse_command_wrong_types(text):
    assert parse_command(text) is None


# SNIPS-style worked example
CMD_REFS = [
    {"intent": "PlayMusic", "slots": {"artist": "Queen", "service": "Spotify"}},
    {"intent": "GetWeather", "slots": {"city": "Paris", "date": "tomorrow"}},
    '{"intent": "BookRestaurant", "slots": {"party_size": "2"}}',  # references may be JSON text
    {"intent": "PlayMusic", "slots": {}},
]
CMD_PREDS = [
    # intent right; (artist, queen) matches after normalisation, (service, youtube) does not
    '{"intent": "PlayMusic", "slots": {"artist": "the Queen!", "service": "YouTube"}}',
    "It will be sunny in Paris.",  # invalid: predicts nothing
    # intent right; (party_size, 2) matches, (cuisine, thai) is extra
    '{"intent": "BookRestaurant", "slots": {"party_size": "2", "cuisine": "Thai"}}',
    '{"intent": "GetWeather", "slots": {}}',  # valid, wrong intent
]


def test_command_metrics_worked_example():
    assert json_validity(CMD_PREDS) == approx(3 / 4)
    assert intent_accuracy(CMD_PREDS, CMD_REFS) == approx(2 / 4)
    # TP = 1 + 0 + 1 + 0 = 2; predicted pairs = 2 + 0 + 2 + 0 = 4; reference pairs = 2 + 2 + 1 + 0 = 5
    # P = 2/4, R = 2/5, F1 = 2 * (1/5) / (9/10) = 4/9
    assert slot_f1(CMD_PREDS, CMD_REFS) == approx(4 / 9)


def test_command_metrics_edges():
    # nothing expected and nothing predicted: perfect
    assert slot_f1(['{"intent": "Stop", "slots": {}}'], [{"intent": "Stop", "slots": {}}]) == 1.0
    # all invalid with slots expected: 0
    assert slot_f1(["nope"], [{"intent": "Stop", "slots": {"x": "y"}}]) == 0.0
    with pytest.raises(UserError, match="invalid reference command"):
        intent_accuracy(['{"intent": "Stop", "slots": {}}'], [{"intent": "Stop"}])
    with pytest.raises(UserError, match="invalid reference command"):  # checked even when the prediction is invalid
        intent_accuracy(["nope"], ['{"intent": "Stop", "slots": {"n": 2}}'])


def test_command_score_per_example():
    # ex 1: slot P = R = 1/2 -> 0.5; ex 2: invalid -> 0; ex 3: P = 1/2, R = 1 -> 2/3; ex 4: wrong intent -> 0
    assert [command_score(p, r) for p, r in zip(CMD_PREDS, CMD_REFS, strict=True)] == approx([0.5, 0.0, 2 / 3, 0.0])
    assert per_example("commands", CMD_PREDS, CMD_REFS) == approx([0.5, 0.0, 2 / 3, 0.0])


# ----------------------------------------------------------------------------- facts


def test_contains_key_and_fact_accuracy():
    assert contains_key("Returns are accepted within 30 days.", "30 DAYS")
    assert contains_key("within 30\n  days", "30 days")  # whitespace runs collapse
    assert not contains_key("within thirty days", "30 days")
    with pytest.raises(UserError, match="empty fact key"):
        contains_key("anything", "  ")
    preds = ["Within 30 days.", "We ship worldwide.", "Thirty days."]
    # hits: yes, no, yes (second alternative) -> 2/3
    assert fact_accuracy(preds, ["30 days", "free shipping", ["30 days", "thirty days"]]) == approx(2 / 3)


# ----------------------------------------------------------------------------- dispatch


def test_score_dispatch():
    qa = score("qa", ["the cat sat", "Paris"], ["a cat sat down", ["London", "paris"]])
    # EM: 0 and 1 (best of the alternatives) -> 0.5; F1: 0.8 and 1 -> 0.9
    assert qa == approx({"exact_match": 0.5, "token_f1": 0.9})
    assert score("summarization", ["police kill the gunman"], ["police killed the gunman"]) == approx(
        {"rouge_l": 0.75})
    assert score("translation", [REF], [REF]) == approx({"chrf": 100.0, "bleu": 100.0})
    assert score("classification", CLS_PREDS, CLS_REFS) == approx({"accuracy": 4 / 6, "macro_f1": 59 / 90})
    assert score("commands", CMD_PREDS, CMD_REFS) == approx(
        {"json_validity": 0.75, "intent_accuracy": 0.5, "slot_f1": 4 / 9})
    assert score("facts", ["Within 30 days."], ["30 days"]) == {"fact_accuracy": 1.0}
    # with full answers: token F1 "within 30 days" vs "returns within 30 days" -> P 1, R 3/4 -> 6/7
    facts = score("facts", ["Within 30 days."], ["30 days"], answers=["Returns within 30 days."])
    assert facts == approx({"fact_accuracy": 1.0, "token_f1": 6 / 7})
    assert set(TASKS) == {"qa", "summarization", "translation", "classification", "commands", "facts"}


def test_score_errors():
    with pytest.raises(UserError) as err:
        score("poetry", ["x"], ["y"])
    for task in TASKS:
        assert task in str(err.value)
    with pytest.raises(UserError, match="unknown task"):
        per_example("poetry", ["x"], ["y"])
    with pytest.raises(UserError, match="unknown option"):
        score("qa", ["x"], ["y"], labels=["a"])


def test_per_example():
    assert per_example("qa", ["the cat sat", "x"], ["a cat sat down", "y"]) == approx([0.8, 0.0])
    assert per_example("summarization", ["the gunman kill police"], ["police killed the gunman"]) == approx([0.5])
    assert per_example("classification", CLS_PREDS[:3], CLS_REFS[:3]) == [1.0, 1.0, 0.0]
    assert per_example("facts", ["30 days", "no"], ["30 DAYS", "yes"]) == [1.0, 0.0]
    near, far = per_example("translation", ["the quick brown fox jumped over the lazy dog", "a dog"], [REF, REF])
    assert 0 < far < near < 100


def test_worst_examples_ordering():
    inputs, preds, refs = ["q0", "q1", "q2", "q3"], ["p0", "p1", "p2", "p3"], ["r0", "r1", "r2", "r3"]
    rows = worst_examples(inputs, preds, refs, [0.5, 0.1, 0.9, 0.1], k=3)
    # lowest first; the tie between 1 and 3 keeps input order
    assert [r["index"] for r in rows] == [1, 3, 0]
    assert rows[0] == {"index": 1, "input": "q1", "expected": "r1", "got": "p1", "score": 0.1}
    assert len(worst_examples(inputs, preds, refs, [0.5, 0.1, 0.9, 0.1])) == 4  # k > n
    assert worst_examples(inputs, preds, refs, [0.5, 0.1, 0.9, 0.1], k=0) == []
    with pytest.raises(UserError, match="same length"):
        worst_examples(inputs, preds, refs, [0.5], k=1)
