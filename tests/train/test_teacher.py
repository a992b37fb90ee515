"""Sequence-level distillation (`pocketlm finetune --teacher`): a teacher with one tokenizer writes the answers,
a student with another learns them; answers are kept and read back; prompts alone are enough."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pocketlm.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def other_student(tmp_path_factory):
    """A nano model with its own, different tokenizer (trained on the shop handbook only, 400 tokens)."""
    from pocketlm.data.prepare import PrepareConfig, prepare
    from pocketlm.train.pretrain import PretrainConfig, pretrain
    root = tmp_path_factory.mktemp("other-student")
    prepare(PrepareConfig(inputs=[str(REPO / "examples" / "shop" / "handbook.md")], out=str(root / "data"),
                          vocab_size=400), progress=False)
    pretrain(PretrainConfig(data=str(root / "data"), out=str(root / "run"), model="nano-1m", context=64, batch_size=4,
                            max_steps=5, warmup_steps=1, eval_interval=5, eval_batches=1, progress=False, dtype="fp32"))
    return root / "run"


def test_a_teacher_with_another_tokenizer_writes_the_answers_the_student_learns(tiny_run, other_student, tmp_path,
                                                                                capsys):
    from pocketlm.data.tokenizer import load_tokenizer
    assert load_tokenizer(tiny_run / "model").get_vocab() != load_tokenizer(other_student / "model").get_vocab()
    prompts = tmp_path / "prompts.jsonl"
    questions = [json.loads(line)["question"] for line in
                 (REPO / "examples" / "shop" / "faq.jsonl").read_text().splitlines()[:12]]
    prompts.write_text("".join(json.dumps({"question": q}) + "\n" for q in questions))  # no answers at all
    out = tmp_path / "student"
    args = ["finetune", "--base", str(other_student), "--teacher", str(tiny_run), "--data", str(prompts),
            "--prompt-field", "question", "--teacher-max-tokens", "16", "--out", str(out), "--max-steps", "4",
            "--batch-size", "4", "--context", "128", "--eval-interval", "2", "--no-progress", "--dtype", "fp32"]
    assert main(args) == 0
    answers = [json.loads(line) for line in (out / "teacher_answers.jsonl").read_text().splitlines()]
    assert len(answers) == 12 and all(a["answer"] for a in answers)
    err = capsys.readouterr().err
    assert "answered 12 examples, 0 read back" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_examples"] + summary["val_examples"] == 12
    assert (out / "model" / "config.json").exists()
    # the student's vocabulary is its own: distillation passed text, not token ids
    assert json.loads((out / "model" / "config.json").read_text())["vocab_size"] == \
        json.loads((other_student / "model" / "config.json").read_text())["vocab_size"]
    # interrupted or run again: answers already written are read back, not asked again
    again = tmp_path / "again"
    (again).mkdir()
    (again / "teacher_answers.jsonl").write_text((out / "teacher_answers.jsonl").read_text()[:-30])  # cut short
    args[args.index("--out") + 1] = str(again)
    assert main(args) == 0
    assert "answered 1 examples, 11 read back" in capsys.readouterr().err


def test_prompts_without_answers_need_a_teacher(other_student, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"question": "Do you ship abroad?"}) + "\n")
    assert main(["finetune", "--base", str(other_student), "--data", str(prompts), "--prompt-field", "question",
                 "--out", str(tmp_path / "x"), "--max-steps", "1", "--no-progress"]) == 2
    assert "no field 'completion'" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["distill", "--teacher", str(other_student), "--data", str(prompts), "--out", str(tmp_path / "y"),
                 "--max-steps", "1"]) == 2
    assert "pocketlm finetune --base STUDENT --teacher TEACHER" in capsys.readouterr().err
