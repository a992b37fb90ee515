"""Grounded answers: the router, the references, saving without pickle, and the fine-tune/eval/chat path."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pocketlm.errors import UserError
from pocketlm.retrieval.grounding import (
    GROUNDING_DIR,
    REFERENCE,
    Grounding,
    find_grounding,
    ground_conversations,
    reference_targets,
    with_reference,
)

FAQ = {
    "hours": [("When do you open on weekdays?", "We open at 9 am on weekdays."),
              ("What are your opening hours on Monday?", "On Mondays we are open from 9 am to 7 pm."),
              ("what time does the shop close on friday", "On Fridays we close at 7 pm."),
              ("Are you open on Saturday morning?", "On Saturdays we open at 10 am.")],
    "returns": [("How many days do I have to return an item?", "You can return items within 30 days."),
                ("Can I send back something I bought online?", "Yes, online orders can be returned by mail."),
                ("what is your refund policy", "Refunds go to your original payment within 5 days."),
                ("Do I need a receipt to return a product?", "Yes, returns need proof of purchase.")],
    "shipping": [("How much does delivery cost?", "Delivery is free from $50, otherwise $5."),
                 ("Do you ship to Canada?", "Yes, we ship to Canada for $22."),
                 ("when will my parcel arrive", "Parcels arrive in 2 to 4 business days."),
                 ("Can I track my package?", "Yes, tracking is under My Orders.")],
}


def _fit() -> Grounding:
    rows = [(q, a, topic) for topic, pairs in FAQ.items() for q, a in pairs]
    return Grounding.fit([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])


def test_routes_new_phrasings_and_picks_the_closest_answer_of_the_topic():
    g = _fit()
    assert g.route(["wat time do u open on weekdayz", "is delivery free?", "returning an item bought online"]) == \
        ["hours", "shipping", "returns"]
    # within the routed topic, the answer of the most similar known question
    assert g.references(["Do you deliver to Canada?"]) == ["Yes, we ship to Canada for $22."]
    # a topic given explicitly wins over the router
    assert g.references(["Do you deliver to Canada?"], labels=["returns"])[0] in dict(FAQ["returns"]).values()


def test_the_reference_is_the_answer_the_nearest_questions_agree_on():
    warranty = [("How long is the kettle warranty?", "The kettle has a 2-year warranty."),
                ("kettle warranty length in years", "2 years for the kettle."),
                ("For how many years is the kettle guaranteed?", "The kettle is guaranteed for 2 years."),
                ("Does the kettle warranty cover limescale?", "No, limescale is not covered by the warranty.")]
    rows = [(q, a, t) for t, pairs in {**FAQ, "warranty": warranty}.items() for q, a in pairs]
    g = Grounding.fit([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
    question = ["Does the kettle warranty cover a few years?"]
    # the single most similar question is the limescale one; its neighbours agree on the 2 years
    assert g.references(question, neighbours=1) == ["No, limescale is not covered by the warranty."]
    assert g.references(question) == ["The kettle has a 2-year warranty."]


def test_reference_targets_replace_the_given_fraction_of_grounded_answers():
    grounded = [(f"f:{i}", [{"role": "system", "content": f"Be brief.\n{REFERENCE}ref {i}"},
                            {"role": "user", "content": f"q {i}"}, {"role": "assistant", "content": f"own {i}"}])
                for i in range(400)]
    plain = [("g:1", [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])]
    assert reference_targets(grounded + plain, 0.0) == grounded + plain
    everything = reference_targets(grounded + plain, 1.0)
    assert [m[-1]["content"] for _, m in everything[:-1]] == [f"ref {i}" for i in range(400)]
    assert everything[-1] == plain[0]  # no reference, nothing to copy
    assert all(m[:-1] == o[:-1] for (_, m), (_, o) in zip(everything, grounded, strict=False))  # prompts untouched
    half = reference_targets(grounded, 0.5, seed=3)
    copied = sum(m[-1]["content"].startswith("ref") for _, m in half)
    assert 160 < copied < 240 and half == reference_targets(grounded, 0.5, seed=3)  # seeded
    with pytest.raises(UserError, match="--ground-copy 1.5"):
        reference_targets(grounded, 1.5)


def test_training_examples_never_see_their_own_answer():
    g = _fit()
    refs = g.references(g.prompts, g.labels, exclude=list(range(len(g.prompts))))
    for prompt, answer, label, ref in zip(g.prompts, g.answers, g.labels, refs, strict=True):
        assert ref != answer
        assert ref in dict(FAQ[label]).values(), f"{prompt!r} got an answer of another topic"


def test_reference_goes_into_the_system_message():
    turn = [{"role": "user", "content": "hi"}]
    assert with_reference(turn, "X") == [{"role": "system", "content": REFERENCE + "X"}, *turn]
    with_system = [{"role": "system", "content": "Be brief."}, *turn]
    assert with_reference(with_system, "X")[0] == {"role": "system", "content": f"Be brief.\n{REFERENCE}X"}
    g = _fit()
    shown = g.ground([{"role": "user", "content": "Do you ship to Canada?"}, {"role": "assistant", "content": "Yes"},
                      {"role": "user", "content": "How many days do I have to return an item?"}])
    assert shown[0]["content"] == REFERENCE + "You can return items within 30 days."  # the latest question's


def test_saved_as_plain_data_and_loads_the_same(tmp_path):
    g = _fit()
    where = g.save(tmp_path)
    assert sorted(p.name for p in where.iterdir()) == ["grounding.json", "router.safetensors"]
    h = Grounding.load(where)
    questions = ["can i return it after three weeks", "Shipping to Canada?", "closing time friday", "Hours Sunday?"]
    assert h.route(questions) == g.route(questions)
    assert h.references(questions) == g.references(questions)
    assert (g.features(questions) != h.features(questions)).nnz == 0
    assert (h.coef == g.coef).all() and (h.intercept == g.intercept).all()  # not scrambled by memory order


def test_two_topics_route_both_ways_and_chunks_change_nothing():
    hours, returns = FAQ["hours"], FAQ["returns"]
    g = Grounding.fit([q for q, _ in hours + returns], [a for _, a in hours + returns],
                      ["hours"] * len(hours) + ["returns"] * len(returns))
    assert g.coef.shape[0] == 2  # scikit-learn keeps one row for two classes; both are scored
    assert g.route(["opening hours on monday?", "can i return this item?"]) == ["hours", "returns"]
    n = len(g.prompts)
    assert g.references(g.prompts, g.labels, exclude=list(range(n)), chunk=3) == \
        g.references(g.prompts, g.labels, exclude=list(range(n)))


def test_one_topic_is_an_error_and_unreadable_data_is_named(tmp_path):
    with pytest.raises(UserError, match="at least two topics"):
        Grounding.fit(["a question", "another"], ["x", "y"], ["same", "same"])
    bad = tmp_path / GROUNDING_DIR
    bad.mkdir()
    (bad / "grounding.json").write_text("{not json")
    with pytest.raises(UserError, match=f"{bad}: unreadable grounding data"):
        Grounding.load(bad)


def test_ground_conversations_uses_gold_topics_for_training_and_the_router_for_validation():
    convs = [(f"faq.jsonl:{i}", [{"role": "user", "content": q}, {"role": "assistant", "content": a}])
             for i, (q, a) in enumerate(p for pairs in FAQ.values() for p in pairs)]
    topics = {w: t for (w, _), t in zip(convs, [t for t, pairs in FAQ.items() for _ in pairs], strict=True)}
    val = [("val.jsonl:1", [{"role": "user", "content": "Do you deliver to Canada?"},
                            {"role": "assistant", "content": "Yes."}])]
    train, val, g = ground_conversations(convs, val, topics)
    for (where, messages), (_, original) in zip(train, convs, strict=True):
        assert messages[1:] == original  # the conversation itself is untouched
        ref = messages[0]["content"].removeprefix(REFERENCE)
        assert ref != original[-1]["content"] and ref in dict(FAQ[topics[where]]).values()
    assert val[0][1][0]["content"] == REFERENCE + "Yes, we ship to Canada for $22."
    assert g.classes == sorted(FAQ)


def test_finetune_saves_the_grounding_and_eval_uses_it(tiny_run, tmp_path, monkeypatch):
    from pocketlm.evaluate.tasks import TaskOptions, evaluate_task
    from pocketlm.inference.engine import SamplingConfig
    from pocketlm.model.io import load_model
    from pocketlm.train.finetune import FinetuneConfig, finetune
    data = tmp_path / "faq.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a, "topic": t}) + "\n"
                            for t, pairs in FAQ.items() for q, a in pairs))
    held = tmp_path / "held.jsonl"
    held.write_text(json.dumps({"question": "Do you deliver to Canada?", "answer": "Yes, for $22.", "key": "$22"}) + "\n")
    out = tmp_path / "bot"
    finetune(FinetuneConfig(base=str(tiny_run), data=[str(data)], val_data=[str(held)], out=str(out),
                            prompt_field="question", completion_field="answer", ground_field="topic", max_steps=4,
                            context=192, batch_size=4, progress=False, eval_batches=1, dtype="fp32"))
    for where in (out, out / "model"):
        assert (where / GROUNDING_DIR / "grounding.json").is_file()
    assert find_grounding(out / "checkpoint") is not None  # the raw weights share the run's grounding
    assert find_grounding(tiny_run) is None
    model, tok = load_model(out)
    opts = TaskOptions(task="facts", prompt_field="question", completion_field="answer", max_new_tokens=8)
    assert evaluate_task(model, tok, str(out), [str(held)], opts, progress=False)["grounded"] is True
    opts.ground = False
    assert evaluate_task(model, tok, str(out), [str(held)], opts, progress=False)["grounded"] is False
    # chat grounds each new question the same way (and says so); --no-ground does not
    import pocketlm.serve.chat as chat
    seen = {}
    monkeypatch.setattr(chat, "repl", lambda fit, respond, context, system=None: seen.update(fit=fit))
    chat.chat_loop(model, tok, SamplingConfig(max_new_tokens=4), grounding=find_grounding(out))
    ids, _ = seen["fit"]([{"role": "user", "content": "Do you deliver to Canada?"}])
    assert REFERENCE + "Yes, we ship to Canada for $22." in tok.decode(ids)
    run = [sys.executable, "-m", "pocketlm", "chat", str(out), "--temperature", "0", "--max-new-tokens", "4"]
    said = subprocess.run(run, input="Hi\n/exit\n", capture_output=True, text=True, timeout=120)
    assert said.returncode == 0 and "answers grounded in 12 known answers on 3 topics" in said.stderr
    said = subprocess.run([*run, "--no-ground"], input="Hi\n/exit\n", capture_output=True, text=True, timeout=120)
    assert said.returncode == 0 and "grounded" not in said.stderr


def test_merged_lora_bot_keeps_its_grounding(tiny_run, tmp_path):
    from pocketlm.cli import main
    from pocketlm.train.finetune import FinetuneConfig, finetune
    data = tmp_path / "faq.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a, "topic": t}) + "\n"
                            for t, pairs in FAQ.items() for q, a in pairs))
    finetune(FinetuneConfig(base=str(tiny_run), data=[str(data)], val_data=[str(data)], out=str(tmp_path / "lora"),
                            prompt_field="question", completion_field="answer", ground_field="topic", lora=True,
                            lora_targets=["q_proj", "v_proj"], max_steps=2, context=192, batch_size=4,
                            progress=False, eval_batches=1, dtype="fp32"))
    main(["merge", str(tmp_path / "lora"), "--out", str(tmp_path / "merged")])
    merged = find_grounding(tmp_path / "merged")
    assert merged is not None and merged.route(["Do you ship to Canada?"]) == ["shipping"]


def test_missing_topic_names_file_and_line(tiny_run, tmp_path):
    from pocketlm.train.finetune import FinetuneConfig, finetune
    data = tmp_path / "faq.jsonl"
    data.write_text(json.dumps({"question": "a?", "answer": "b", "topic": "x"}) + "\n"
                    + json.dumps({"question": "c?", "answer": "d"}) + "\n")
    with pytest.raises(UserError, match=rf"{data}:2: no topic in field 'topic'"):
        finetune(FinetuneConfig(base=str(tiny_run), data=[str(data)], out=str(tmp_path / "bot"),
                                prompt_field="question", completion_field="answer", ground_field="topic",
                                max_steps=1, progress=False))


def test_no_grounding_for_paths_that_are_not_directories(tmp_path):
    assert find_grounding(tmp_path / "model.gguf") is None
    assert find_grounding("HuggingFaceTB/SmolLM2-135M-Instruct") is None


def test_exported_gguf_carries_its_grounding_to_chat(tiny_run, tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'pocketlm[llamacpp]')")
    import pocketlm.serve.chat as chat
    from pocketlm.export.gguf import export_gguf
    from pocketlm.inference.engine import SamplingConfig
    from pocketlm.inference.llamacpp import unload
    from pocketlm.serve.chat import chat_gguf
    from pocketlm.train.finetune import FinetuneConfig, finetune
    data = tmp_path / "faq.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a, "topic": t}) + "\n"
                            for t, pairs in FAQ.items() for q, a in pairs))
    finetune(FinetuneConfig(base=str(tiny_run), data=[str(data)], val_data=[str(data)], out=str(tmp_path / "bot"),
                            prompt_field="question", completion_field="answer", ground_field="topic", max_steps=2,
                            context=192, batch_size=4, progress=False, eval_batches=1, dtype="fp32"))
    info = export_gguf(tmp_path / "bot", tmp_path / "bot.gguf", quant="q8_0")
    assert info["grounding"] == str(tmp_path / "bot.grounding")
    g = find_grounding(tmp_path / "bot.gguf")
    assert g is not None and g.route(["Do you ship to Canada?"]) == ["shipping"]
    seen = {}
    monkeypatch.setattr(chat, "repl", lambda fit, respond, context, system=None: seen.update(fit=fit))
    try:
        chat_gguf(info["path"], SamplingConfig(max_new_tokens=4), n_ctx=256, n_threads=1, grounding=g)
        prompt, _ = seen["fit"]([{"role": "user", "content": "Do you deliver to Canada?"}])
    finally:
        unload()
    assert REFERENCE + "Yes, we ship to Canada for $22." in prompt
    # the same name exported again from a model without grounding: no stale grounding left beside it
    assert export_gguf(tiny_run, tmp_path / "bot.gguf", quant="q8_0")["grounding"] is None
    assert not (tmp_path / "bot.grounding").exists() and find_grounding(tmp_path / "bot.gguf") is None


def test_fitting_and_loading_raise_no_library_warnings(tmp_path):
    """A raw scikit-learn warning (with a path inside the installed package) must never reach a user."""
    import warnings

    from pocketlm.retrieval.grounding import Grounding
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # one topic per entry, as a plain FAQ gives: past 20 examples scikit-learn guesses "a regression
        # problem" and warns
        words = ["pay", "hours", "ship", "returns", "gift", "cards", "parking", "wifi", "toilets", "dogs", "repairs",
                 "rental", "lockers", "coffee", "bikes", "kids", "tax", "jobs", "press", "events", "cash", "vouchers"]
        g = Grounding.fit([f"question about {w}" for w in words], [f"Answer on {w}." for w in words], words)
        g.references(["can i pay with visa"])
        g.save(tmp_path)
        assert Grounding.load(tmp_path / "grounding").route(["can i pay with visa"]) == ["pay"]
