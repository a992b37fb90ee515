"""`pocketlm run RECIPE`: one YAML file runs a task end to end (data -> base or pretrain -> fine-tune ->
evaluate -> report).

A recipe has `params` (overridable with `--set name=value`), and `steps`, each a mapping of one
verb to its options — the same options, with the same names, as the verb's command-line flags.
`${name}` in any string is replaced by a parameter; `${recipe_dir}` and `${data_root}` (the real
datasets: $POCKETLM_DATA, else ../shared/data beside the project) are always defined. A step whose
output is already complete is skipped, and an interrupted training step resumes, so running a
recipe again continues where it stopped.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import yaml

from pocketlm import runs
from pocketlm.config import make
from pocketlm.errors import UserError
from pocketlm.model.bundled import smollm2_gguf_path

VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
BUILTIN = ("recipe_dir", "data_root", "smollm2_gguf")
STEPS = ("split", "snips", "prepare", "pretrain", "finetune", "eval", "report")


def load_recipe(path: str | Path, overrides: dict[str, str]) -> tuple[dict, list[tuple[str, dict]]]:
    path = Path(path)
    if not path.exists():
        candidate = Path(__file__).resolve().parents[2] / "recipes" / f"{path.name.removesuffix('.yaml')}.yaml"
        if not candidate.exists():
            raise UserError(f"{path}: no such recipe")
        path = candidate
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(recipe, dict) or not isinstance(recipe.get("steps"), list):
        raise UserError(f"{path}: a recipe needs a 'steps' list")
    repo_data = path.resolve().parent.parent.parent / "shared" / "data"
    params = {"recipe_dir": str(path.resolve().parent),
              "data_root": os.environ.get("POCKETLM_DATA") or str(repo_data),
              "smollm2_gguf": smollm2_gguf_path(),
              **{k: str(v) for k, v in (recipe.get("params") or {}).items()}}
    unknown = sorted(set(overrides) - set(params))
    if unknown:
        raise UserError(f"--set {unknown[0]}: the recipe has no parameter of that name "
                        f"(it has: {', '.join(k for k in params if k not in BUILTIN)})")
    params.update(overrides)

    def sub(value):
        if isinstance(value, str):
            def repl(m):
                if m.group(1) not in params:
                    raise UserError(f"{path}: unknown parameter ${{{m.group(1)}}}")
                return params[m.group(1)]
            for _ in range(5):  # parameters may refer to parameters
                value = VAR.sub(repl, value)
            return value
        if isinstance(value, list):
            return [sub(v) for v in value]
        if isinstance(value, dict):
            return {k.replace("-", "_"): sub(v) for k, v in value.items()}
        return value

    steps = []
    for i, step in enumerate(recipe["steps"], 1):
        if not isinstance(step, dict) or len(step) != 1:
            raise UserError(f"{path}: step {i} must be a mapping of one verb to its options")
        (verb, options), = step.items()
        if verb not in STEPS:
            raise UserError(f"{path}: step {i} has unknown verb {verb!r}; known: {', '.join(STEPS)}")
        steps.append((verb, sub(options or {})))
    return {**recipe, "path": str(path), "params": params}, steps


def _typed(options: dict) -> dict:
    """YAML gives strings after substitution; turn numeric-looking and boolean values back into numbers."""
    out = {}
    for k, v in options.items():
        if isinstance(v, str) and re.fullmatch(r"-?\d+", v):
            v = int(v)
        elif isinstance(v, str) and re.fullmatch(r"-?\d*\.\d+(e-?\d+)?|-?\d+e-?\d+", v):
            v = float(v)
        elif isinstance(v, str) and v.lower() in ("true", "false"):
            v = v.lower() == "true"
        out[k] = v
    return out


def run_step(verb: str, options: dict, where: str) -> str:
    options = _typed(options)
    if verb == "split":
        from pocketlm.data.tasks import split_file
        if (Path(options["out"]) / "test.jsonl").exists():
            return "already done"
        counts = split_file(options["input"], options["out"], options.get("test_fraction", 0.1),
                            options.get("seed", 0), options.get("limit"), options.get("columns"),
                            options.get("group_by"))
        return f"{counts['train']} train / {counts['test']} test examples"
    if verb == "snips":
        from pocketlm.data.tasks import snips_commands
        if (Path(options["out"]) / "test.jsonl").exists():
            return "already done"
        counts = snips_commands(options["input"], options["out"], options.get("test_fraction", 0.1),
                                options.get("seed", 0), options.get("augment", 0))
        return f"{counts['train']} train / {counts['test']} test commands, {counts['intents']} intents"
    if verb == "prepare":
        from pocketlm.data.prepare import PrepareConfig, prepare, summary
        if (Path(options["out"]) / "meta.json").exists():
            return "already done"
        return summary(prepare(make(PrepareConfig, options, where)))
    if verb in ("pretrain", "finetune"):
        out = Path(options["out"])
        if runs.is_finished(out):
            return "already done"
        resume = (out / runs.CHECKPOINT).exists()
        if verb == "pretrain":
            from pocketlm.train.pretrain import PretrainConfig, pretrain
            s = pretrain(make(PretrainConfig, {**options, "resume": resume}, where))
        else:
            from pocketlm.train.finetune import FinetuneConfig, finetune
            if isinstance(options.get("data"), str):
                options["data"] = [options["data"]]
            s = finetune(make(FinetuneConfig, {**options, "resume": resume}, where))
        if s["stopped"] == "interrupted":  # Ctrl-C or SIGTERM: the checkpoint is saved; stop the recipe here
            print("interrupted: run the recipe again to resume this step", file=sys.stderr)
            raise KeyboardInterrupt
        return f"{s['step']} steps, validation loss {s.get('val_loss', float('nan')):.4f}, {s['tokens_per_s']:,.0f} tokens/s"
    if verb == "eval":
        from pocketlm.device import resolve_device
        from pocketlm.evaluate.tasks import (
            TaskOptions,
            default_save_path,
            evaluate_task,
            format_results,
            save_results,
        )
        from pocketlm.model.io import load_model
        model_path, data = options.pop("model"), options.pop("data")
        device = options.pop("device", "auto")
        opts = make(TaskOptions, options, where)
        model, tok = load_model(model_path, device=resolve_device(device))
        result = evaluate_task(model, tok, model_path, data, opts)
        path = Path(opts.save) if opts.save else default_save_path(model_path, opts.task, data)
        if path:
            save_results(result, path)
        return format_results(result)
    if verb == "report":
        from pocketlm.evaluate.report import write_report
        return f"wrote {write_report(options['run'])}"
    raise AssertionError(verb)


# the steps that have no config class of their own: their keys
PLAIN_STEPS = {"split": {"input", "out", "test_fraction", "seed", "limit", "columns", "group_by"},
               "snips": {"input", "out", "test_fraction", "seed", "augment"},
               "report": {"run"}}


def check_steps(recipe_path: str, steps: list[tuple[str, dict]]) -> None:
    """Every step's options checked against its verb's config (names and types) before the first step runs,
    so a misspelt key or a wrong value in step 5 is found now, not after an hour of pretraining."""
    for i, (verb, options) in enumerate(steps, 1):
        where = f"{recipe_path} step {i} ({verb})"
        options = _typed(options)
        if verb in PLAIN_STEPS:
            unknown = sorted(set(options) - PLAIN_STEPS[verb])
            if unknown:
                raise UserError(f"{where}: unknown option(s) {', '.join(unknown)}; known: "
                                f"{', '.join(sorted(PLAIN_STEPS[verb]))}")
        elif verb == "prepare":
            from pocketlm.data.options import PrepareConfig
            make(PrepareConfig, options, where)
        elif verb == "pretrain":
            from pocketlm.train.options import PretrainConfig
            make(PretrainConfig, options, where)
        elif verb == "finetune":
            from pocketlm.train.options import FinetuneConfig
            make(FinetuneConfig, options, where)
        elif verb == "eval":
            from pocketlm.evaluate.options import TaskOptions
            for key in ("model", "data"):
                if key not in options:
                    raise UserError(f"{where}: missing required option {key}")
            make(TaskOptions, {k: v for k, v in options.items() if k not in ("model", "data", "device")}, where)


def run_recipe(path: str | Path, overrides: dict[str, str]) -> None:
    recipe, steps = load_recipe(path, overrides)
    check_steps(recipe["path"], steps)
    print(f"recipe {recipe['path']}: {recipe.get('description', '').strip()}", file=sys.stderr)
    t0 = time.time()
    for i, (verb, options) in enumerate(steps, 1):
        where = f"{recipe['path']} step {i} ({verb})"
        print(f"\n== step {i}/{len(steps)}: {verb}", file=sys.stderr)
        print(run_step(verb, dict(options), where))
    print(f"\nrecipe done in {time.time() - t0:.0f} s")


def parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set {item!r}: use NAME=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out


__all__ = ["load_recipe", "run_recipe", "parse_sets"]
