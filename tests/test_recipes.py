"""Recipes: a whole task from one YAML file, parameters, skipping finished steps, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pocketlm.errors import UserError
from pocketlm.recipes import check_steps, load_recipe, parse_sets, run_recipe

REPO = Path(__file__).resolve().parents[1]

TINY = """
description: a tiny end-to-end run on the bundled shop corpus
params:
  out: {out}
  shop: {shop}
  steps: 20
steps:
  - prepare:
      inputs: ["${{shop}}/handbook.md", "${{shop}}/faq.jsonl"]
      out: ${{out}}/data
      vocab_size: 512
      template: "Question: {{question}}\\nAnswer: {{answer}}"
  - pretrain: {{data: "${{out}}/data", out: "${{out}}/pre", model: nano-1m, max_steps: "${{steps}}", context: 64,
               batch_size: 4, eval_interval: 10, eval_batches: 2, progress: false}}
  - split: {{input: "${{shop}}/faq.jsonl", out: "${{out}}/faq", test_fraction: 0.02}}
  - finetune: {{base: "${{out}}/pre", data: "${{out}}/faq/train.jsonl", out: "${{out}}/bot", max_steps: 10,
                prompt_field: question, completion_field: answer, context: 128, progress: false, eval_interval: 5}}
  - eval: {{model: "${{out}}/bot", data: "${{shop}}/faq_heldout.jsonl", task: facts, prompt_field: question,
            completion_field: answer, limit: 3, max_new_tokens: 16}}
  - report: {{run: "${{out}}/bot"}}
"""


def test_shipped_recipes_parse():
    names = sorted(p.stem for p in (REPO / "recipes").glob("*.yaml"))
    assert {"shop-faq", "support-bot", "translate-en-de", "summarize", "assistant-commands",
            "intents-banking77"} <= set(names)
    for name in names:
        _, steps = load_recipe(REPO / "recipes" / f"{name}.yaml", {})
        assert steps and all("${" not in json.dumps(options) for _, options in steps), name
        check_steps(name, steps)  # every key is an option of its verb, every value of the option's type


def test_a_recipe_is_checked_whole_before_its_first_step_runs(tmp_path):
    out = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TINY.format(out=out, shop=REPO / "examples" / "shop").replace("eval_batches: 2", "eval_batchez: 2"))
    with pytest.raises(UserError, match=r"step 2 \(pretrain\): unknown option\(s\) eval_batchez"):
        run_recipe(recipe, {})
    assert not out.exists()  # found before prepare ran
    recipe.write_text(TINY.format(out=out, shop=REPO / "examples" / "shop"))
    with pytest.raises(UserError, match=r"step 2 \(pretrain\): max-steps: 'ten' is not a whole number"):
        run_recipe(recipe, {"steps": "ten"})
    assert not out.exists()


def test_tiny_recipe_runs_end_to_end_and_skips_finished_steps(tmp_path, capsys):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY.format(out=tmp_path / "run", shop=REPO / "examples" / "shop"))
    run_recipe(recipe, parse_sets(["steps=12"]))
    summary = json.loads((tmp_path / "run" / "pre" / "summary.json").read_text())
    assert summary["step"] == 12  # the --set override reached the step
    assert (tmp_path / "run" / "bot" / "evals" / "facts-faq_heldout.json").exists()
    assert (tmp_path / "run" / "bot" / "report.html").exists()
    capsys.readouterr()
    run_recipe(recipe, {})
    assert capsys.readouterr().out.count("already done") == 4  # prepare, pretrain, split, finetune


def test_recipe_errors_are_clear(tmp_path):
    with pytest.raises(UserError, match="no parameter of that name"):
        load_recipe(REPO / "recipes" / "shop-faq.yaml", {"nope": "1"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  - train: {}\n")
    with pytest.raises(UserError, match="unknown verb 'train'"):
        load_recipe(bad, {})
    bad.write_text("steps:\n  - pretrain: {data: x, out: y, max_stepz: 3}\n")
    with pytest.raises(UserError, match="max_stepz"):
        run_recipe(bad, {})
    with pytest.raises(UserError, match="NAME=VALUE"):
        parse_sets(["oops"])
