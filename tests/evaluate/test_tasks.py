"""Task evaluation end to end on a model fine-tuned on the bundled shop FAQ."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pocketlm.errors import UserError
from pocketlm.evaluate.tasks import TaskOptions, evaluate_task
from pocketlm.model.io import load_model
from pocketlm.train.finetune import FinetuneConfig, finetune

SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop"


@pytest.fixture(scope="module")
def faq_bot(tiny_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faq-bot")
    finetune(FinetuneConfig(base=str(tiny_run), data=[str(SHOP / "faq.jsonl")], out=str(out), max_steps=40,
                            prompt_field="question", completion_field="answer", lr=2e-3, context=192,
                            eval_interval=20, progress=False, dtype="fp32"))
    return out


def test_facts_task_scores_saves_and_lists_worst(faq_bot):
    out = subprocess.run([sys.executable, "-m", "pocketlm", "eval", str(faq_bot), "--task", "facts",
                          "--data", str(SHOP / "faq_heldout.jsonl"), "--prompt-field", "question",
                          "--completion-field", "answer", "--limit", "6", "--max-new-tokens", "24", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["examples_scored"] == 6 and set(r["metrics"]) == {"fact_accuracy", "token_f1"}
    assert 0 <= r["metrics"]["fact_accuracy"] <= 1 and len(r["worst"]) == 6
    assert r["worst"][0]["score"] <= r["worst"][-1]["score"]
    saved = json.loads((faq_bot / "evals" / "facts-faq_heldout.json").read_text())
    assert saved["metrics"] == r["metrics"]


def test_classification_is_constrained_to_labels(faq_bot, tmp_path):
    data = tmp_path / "intents.csv"
    data.write_text("text,label\nwhere is my parcel,shipping\ncan I send it back,returns\nwhen do you open,hours\n")
    model, tok = load_model(faq_bot)
    opts = TaskOptions(task="classification", prompt_field="text", completion_field="label", max_new_tokens=16)
    r = evaluate_task(model, tok, str(faq_bot), str(data), opts, progress=False)
    assert all(row["got"] in {"shipping", "returns", "hours"} for row in r["examples"])
    assert set(r["metrics"]) == {"accuracy", "macro_f1"}


def test_facts_task_needs_the_key_field(faq_bot):
    model, tok = load_model(faq_bot)
    with pytest.raises(UserError, match="no field 'key'"):
        evaluate_task(model, tok, str(faq_bot), str(SHOP / "faq.jsonl"),
                      TaskOptions(task="facts", prompt_field="question", completion_field="answer", limit=2),
                      progress=False)


def test_translation_scores_each_source_once_against_all_its_translations(faq_bot, tmp_path):
    data = tmp_path / "pairs.tsv"
    data.write_text("en\tde\nGo away.\tHau ab!\nGo away.\tGeh weg!\nThank you.\tDanke.\nGo away.\tTroll dich!\n")
    model, tok = load_model(faq_bot)
    opts = TaskOptions(task="translation", prompt_template="Translate to German: {en}", completion_template="{de}",
                       max_new_tokens=8, worst=5)
    r = evaluate_task(model, tok, str(faq_bot), str(data), opts, progress=False)
    assert r["examples_scored"] == 2
    by_input = {w["input"]: w["expected"] for w in r["worst"]}
    assert by_input == {"Translate to German: Go away.": ["Hau ab!", "Geh weg!", "Troll dich!"],
                        "Translate to German: Thank you.": "Danke."}
    assert set(r["metrics"]) == {"chrf", "bleu"}


def test_commands_take_a_schema_file(faq_bot, tmp_path):
    data = tmp_path / "commands.jsonl"
    command = {"intent": "PlayMusic", "slots": {"genre": "jazz", "artist": "Miles Davis"}}
    data.write_text(json.dumps({"prompt": "play jazz by Miles Davis", "completion": json.dumps(command)}) + "\n")
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"intents": ["PlayMusic", "GetWeather"], "slots": ["genre", "artist"]}))
    model, tok = load_model(faq_bot)
    opts = TaskOptions(task="commands", schema=str(schema), copy_slots=True, max_new_tokens=48)
    r = evaluate_task(model, tok, str(faq_bot), str(data), opts, progress=False)
    assert isinstance(json.loads(r["examples"][0]["got"]), dict)  # one JSON object (what is in it: test_constrained)
    schema.write_text(json.dumps({"intents": ["PlayMusic"]}))
    with pytest.raises(UserError, match="'slots' is missing"):
        evaluate_task(model, tok, str(faq_bot), str(data), opts, progress=False)
    schema.write_text("{oops")
    with pytest.raises(UserError, match="schema.json:1: not valid JSON"):
        evaluate_task(model, tok, str(faq_bot), str(data), opts, progress=False)


@pytest.fixture(scope="module")
def faq_bot_gguf(faq_bot, tmp_path_factory) -> Path:
    pytest.importorskip("llama_cpp")
    from pocketlm.export.gguf import export_gguf
    out = tmp_path_factory.mktemp("faq-bot-gguf") / "bot-f32.gguf"
    export_gguf(str(faq_bot), out, quant="f32")
    return out


def test_a_gguf_file_is_scored_through_llama_cpp_like_its_model(faq_bot, faq_bot_gguf):
    """The f32 export answers what the PyTorch model answers (greedy, same chat template), so the scores match."""
    opts = TaskOptions(task="facts", prompt_field="question", completion_field="answer", limit=8, max_new_tokens=24)
    model, tok = load_model(faq_bot)
    want = evaluate_task(model, tok, str(faq_bot), str(SHOP / "faq_heldout.jsonl"), opts, progress=False)
    got = evaluate_task(None, None, str(faq_bot_gguf), str(SHOP / "faq_heldout.jsonl"), opts, progress=False)
    same = sum(a["got"] == b["got"] for a, b in zip(want["examples"], got["examples"], strict=True))
    assert same >= 7, (want["examples"], got["examples"])  # one greedy tie may break the other way in f32
    assert got["examples_scored"] == 8 and set(got["metrics"]) == {"fact_accuracy", "token_f1"}


def test_gguf_classification_is_constrained_to_labels_by_a_grammar(faq_bot_gguf, tmp_path, capsys):
    from pocketlm.cli import main
    data = tmp_path / "intents.csv"
    data.write_text("text,label\nwhere is my parcel,shipping\ncan I send it back,returns\nwhen do you open,hours\n")
    assert main(["eval", str(faq_bot_gguf), "--task", "classification", "--data", str(data), "--prompt-field",
                 "text", "--completion-field", "label", "--max-new-tokens", "16", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert all(row["got"] in {"shipping", "returns", "hours"} for row in r["examples"]) and r["constrained"]
    assert main(["eval", str(faq_bot_gguf), "--task", "commands", "--copy-slots", "--data", str(data)]) == 2
    assert "need a PyTorch model" in capsys.readouterr().err
