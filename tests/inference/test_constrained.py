"""Constrained decoding cannot emit an invalid label or invalid JSON, whatever the model prefers."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pocketlm.data.tokenizer import stop_token_ids
from pocketlm.inference.constrained import (
    JSONConstraint,
    LabelConstraint,
    close_json,
    command_ok,
    json_prefix_state,
)
from pocketlm.inference.engine import SamplingConfig, generate_ids
from pocketlm.model.io import load_model


@pytest.mark.parametrize("text, state", [
    ("", "partial"), ("{", "partial"), ('{"intent": "Play', "partial"), ('{"a": [1, tr', "partial"),
    ('{"intent": "PlayMusic", "slots": {}}', "complete"), ('{"a": null} ', "complete"),
    ("[1]", "invalid"), ('{"a" 1}', "invalid"), ('{"a": 1}}', "invalid"), ('{"a": 01}', "invalid"),
    ('{"a": tru e}', "invalid"), ('{a: 1}', "invalid"), ('{"a": "x"} x', "invalid"),
])
def test_json_prefix_state(text, state):
    assert json_prefix_state(text) == state


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=6), json_values, max_size=4), st.data())
def test_every_prefix_of_valid_json_is_partial_and_closable(obj, data):
    text = json.dumps(obj, ensure_ascii=data.draw(st.booleans()))
    assert json_prefix_state(text) == "complete"
    cut = data.draw(st.integers(0, len(text) - 1))
    assert json_prefix_state(text[:cut]) == "partial"
    json.loads(close_json(text[:cut]))  # closing a partial object always parses


def test_label_constraint_only_emits_labels(tiny_run):
    model, tok = load_model(tiny_run)
    labels = ["card_arrival", "lost_or_stolen_card", "refund_not_showing_up", "top_up_failed"]
    stops = stop_token_ids(tok)
    constraint = LabelConstraint(tok, labels, stops[-1])
    for prompt in ["Question: Where is my card?\nAnswer:", "Returns", "The kettle", "é€ and so on"]:
        out = list(generate_ids(model, tok.encode(prompt), SamplingConfig(max_new_tokens=30, temperature=0), stops,
                                constraint=constraint))
        assert tok.decode(out) in labels


def test_label_scores_equal_full_sequence_log_probabilities(tiny_run):
    import torch
    model, tok = load_model(tiny_run)
    labels = ["card_arrival", "lost_or_stolen_card", "refund_not_showing_up", "top_up_failed", "x"]
    stop = stop_token_ids(tok)[-1]
    constraint = LabelConstraint(tok, labels, stop)
    prompt = tok.encode("Question: Where is my card?\nAnswer:")
    for batch in (128, 2):  # one batch, and labels split over several
        got = constraint.scores(model, prompt, batch=batch)
        for label, seq, score in zip(labels, constraint.sequences, got, strict=True):
            with torch.no_grad():  # the plain way: the whole sequence through the model, no cache
                logp = model(input_ids=torch.tensor([prompt + seq])).logits[0].float().log_softmax(-1)
            want = sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(seq))
            assert abs(float(score) - want) < 1e-4, label
    for text in ["Question: Where is my card?\nAnswer:", "Returns", "The kettle", "é€ and so on"]:
        ids = tok.encode(text)
        best = labels[int(constraint.scores(model, ids).argmax())]
        for chunk in (1, 2, 16):  # ranking with early stopping finds the same label as scoring them all
            assert constraint.rank(model, ids, chunk=chunk) == best


def test_json_constraint_always_gives_valid_json(tiny_run):
    model, tok = load_model(tiny_run)
    stops = stop_token_ids(tok)
    for prompt, budget in [("Question: Remind me to call mum at 6\nAnswer:", 40), ("Returns", 12), ("{", 25),
                           ("The Tidewater kettle", 60)]:
        out = list(generate_ids(model, tok.encode(prompt), SamplingConfig(max_new_tokens=budget, temperature=0),
                                stops, constraint=JSONConstraint(tok, stops[-1])))
        text = JSONConstraint.finish(tok.decode(out, skip_special_tokens=True))
        assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize("text, ok", [
    ('{"intent": "PlayMusic", "slots": {"genre": "ja', True),
    ('{"intent": "PlayMusic", "slots": {"genre": "jazz", "artist": "Miles Davis"}}', True),
    ('{"intent": "PlayMusic", "slots": {"genre": "rock', False),  # not in the request
    ('{"intent": "PlayMusic", "slots": {"genre": ""', False),  # an empty slot value
    ('{"intent": "NotInTheRequest", "slots": {"music_item": "jazz"', True),  # top-level values are free
    ('{"intent": "PlayMusic", "slots": {"jazzy_key_names_are_free": "by', True),
    ('{"intent": "RateBook", "slots": {"rating_value": 4', False),  # slot values are strings
    ('{"intent": "RateBook", "slots": {"x": {', False),
    ('{"intent": "RateBook", "slots": {"x": "Davis", "y":  "Miles"}}', True),
    ('{"intent": "PlayMusic", "slots": {"artist": "Miles Da', True),  # open: the span goes on
    ('{"intent": "PlayMusic", "slots": {"artist": "Miles Da"}', False),  # closed mid-word
    ('{"intent": "PlayMusic", "slots": {"artist": "iles', False),  # starts mid-word
    ('{"intent": "PlayMusic", "slots": {"artist": " Miles', False),  # starts with a space
    ('{"intent": "PlayMusic", "slots": {"artist": "Miles "', False),  # ends with one
    ('{"intent": "PlayMusic", "slots": {"genre": "jazz", "genre": "', False),  # the same slot twice
    ('{"intent": "PlayMusic", "slots": {"genre": "jazz"}, "genre": "x"}', True),  # top-level keys are free
    ('{"intent": "PlayMusic", "slots": {"artist": "Miles Davis", "x": "Davis"', False),  # overlapping values
    ('{"intent": "PlayMusic", "slots": {"artist": "Miles", "x": "Davis"}}', True),  # touching is fine
    ('{"intent": "PlayMusic", "slots": {"artist": "Miles", "x": "Mi', False),  # "Miles" is taken
])
def test_command_ok_copied_values(text, ok):
    assert command_ok(text, "play jazz by Miles Davis") is ok


@pytest.mark.parametrize("text, ok", [
    ('{"intent": "Play', True),
    ('{"intent": "PlayMusic", "slots": {"gen', True),
    ('{"intent": "PlayMusic", "slots": {"genre": "jazz", "artist": "Miles Davis"}}', True),
    ('{"intent": "PlayMusicNow', False),  # no intent starts so
    ('{"intent": "Play"', False),  # a prefix of an intent, closed
    ('{"intent": "PlayMusic", "slots": {"genre_name', False),
    ('{"intent": "PlayMusic", "slots": {"gen": "jazz"', False),
    ('{"intent": "PlayMusic", "slots": {"genre": "rock"}}', True),  # values are free without a request
    ('{"intent": "GetWeather\\', False),  # an escape no intent needs
    ('{"intent": "PlayMusic", "slots": {"genre\\', False),
    ('{"intent": "PlayMusic", "slots": {"genre": "x\\', True),  # a free value may hold any character
])
def test_command_ok_schema(text, ok):
    assert command_ok(text, intents=["PlayMusic", "GetWeather"], slot_names=["genre", "artist"]) is ok


def test_copy_constraint_slot_values_are_spans_of_the_request(tiny_run):
    model, tok = load_model(tiny_run)
    stops = stop_token_ids(tok)
    request = "bring the Tidewater kettle back to the Wrenfield store on Monday"
    prompt = f"Question: {request}\nAnswer:"
    prefix = tok.encode('{"intent": "Return", "slots": {"item": "', add_special_tokens=False)
    constraint = JSONConstraint(tok, stops[-1], copy_from=request)

    class Forced:  # start the object ourselves, then let the model fill the slot under the constraint
        def choose(self, logits, generated):
            return prefix[len(generated)] if len(generated) < len(prefix) else constraint.choose(logits, generated)

    out = list(generate_ids(model, tok.encode(prompt), SamplingConfig(max_new_tokens=60, temperature=0), stops,
                            constraint=Forced()))
    text = JSONConstraint.finish(tok.decode(out, skip_special_tokens=True))
    slots = json.loads(text)["slots"]
    assert slots and all(isinstance(v, str) and v and v in request for v in slots.values()), text


@pytest.mark.parametrize("start", ['{"intent": "', '{"intent": "PlayMusic", "slots": {"'])
def test_schema_constraint_keeps_intent_and_slot_names_in_the_schema(tiny_run, start):
    model, tok = load_model(tiny_run)  # a model that never saw a command: the constraint alone decides
    stops = stop_token_ids(tok)
    request = "play jazz by Miles Davis"
    intents, names = ["PlayMusic", "GetWeather"], ["genre", "artist"]
    constraint = JSONConstraint(tok, stops[-1], copy_from=request, intents=intents, slot_names=names)
    prefix = tok.encode(start, add_special_tokens=False)

    class Forced:
        def choose(self, logits, generated):
            return prefix[len(generated)] if len(generated) < len(prefix) else constraint.choose(logits, generated)

    out = list(generate_ids(model, tok.encode(f"Question: {request}\nAnswer:"),
                            SamplingConfig(max_new_tokens=40, temperature=0), stops, constraint=Forced()))
    text = tok.decode(out, skip_special_tokens=True)
    assert command_ok(text, request, intents, names), text
    command = json.loads(JSONConstraint.finish(text))
    assert command["intent"] in intents, text  # the model wrote (or was forced to) a whole intent from the schema
    assert all(name in names and value in request for name, value in command.get("slots", {}).items()), text
    assert len(text) > len(start) + 2, text  # and it went on past the forced start
