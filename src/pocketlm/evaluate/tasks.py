"""`pocketlm eval MODEL --task TASK --data FILE`: generate an answer for every held-out example and score it.

Each example is a conversation (the same files and options as `finetune`); the last assistant
message is the expected output and everything before it is the prompt. Decoding is greedy; for
`classification` it is constrained to the label set and for `commands` to valid JSON, so the model
cannot emit an invalid label or invalid JSON.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from pocketlm import runs
from pocketlm.data.sft import SftFormat, load_examples
from pocketlm.data.tokenizer import stop_token_ids
from pocketlm.errors import UserError
from pocketlm.evaluate import metrics
from pocketlm.evaluate.options import TaskOptions
from pocketlm.fsutil import atomic_write_json
from pocketlm.inference.constrained import JSONConstraint, LabelConstraint
from pocketlm.inference.engine import SamplingConfig, generate_ids
from pocketlm.retrieval.grounding import find_grounding


def _read_labels(spec: list[str] | None, refs: list[str]) -> list[str]:
    if not spec:
        return sorted(set(refs))
    if len(spec) == 1 and Path(spec[0]).is_file():
        path = Path(spec[0])
        text = path.read_text(encoding="utf-8")
        try:
            labels = json.loads(text) if path.suffix == ".json" else [x.strip() for x in text.splitlines() if x.strip()]
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e.msg})") from None
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise UserError(f"{path}: expected a list of label strings")
        return labels
    return list(spec)


def _read_schema(path: str) -> tuple[list[str], list[str]]:
    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"{path}: cannot read the command schema ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    for name in ("intents", "slots"):
        if not isinstance(schema, dict) or not isinstance(schema.get(name), list) \
                or not all(isinstance(x, str) for x in schema[name]):
            raise UserError(f"{path}: expected {{\"intents\": [...], \"slots\": [...]}} (lists of strings); "
                            f"field {name!r} is missing or not a list of strings")
    return schema["intents"], schema["slots"]


def _group_references(examples: list) -> tuple[list, list]:
    """Examples whose prompts are identical become one, with the list of their answers as references
    (a reference stays a plain string when there is only one)."""
    firsts: dict[str, int] = {}
    kept, refs = [], []
    for ex in examples:
        messages = ex[1]
        key = json.dumps(messages[:-1], ensure_ascii=False)
        if key in firsts:
            i = firsts[key]
            refs[i] = (refs[i] if isinstance(refs[i], list) else [refs[i]]) + [messages[-1]["content"]]
        else:
            firsts[key] = len(kept)
            kept.append(ex)
            refs.append(messages[-1]["content"])
    return kept, refs


def evaluate_task(model, tokenizer, model_path: str, data: list[str] | str, opts: TaskOptions,
                  progress: bool = True) -> dict:
    """Score `model` (a PyTorch model with its tokenizer; or None and None for a GGUF file at `model_path`, run by
    llama.cpp with the chat template stored in the file) on the task's examples."""
    task = opts.task
    if task not in metrics.TASKS:
        raise UserError(f"--task {task!r}: choose one of {', '.join(metrics.TASKS)}")
    if model is not None and not tokenizer.chat_template:
        raise UserError(f"{model_path}: the tokenizer has no chat template; fine-tune the model first")
    if model is None and (opts.copy_slots or opts.schema):
        raise UserError("--copy-slots and --schema need a PyTorch model (a model or run directory); "
                        "a GGUF file is scored with any JSON object allowed")
    paths = [data] if isinstance(data, str) else list(data)
    examples, refs, keys = _examples(paths, opts)
    answer, constrained = (_torch_answerer(model, tokenizer, refs, opts) if model is not None
                           else _gguf_answerer(model_path, refs, opts))
    grounding = find_grounding(model_path) if opts.ground else None
    inputs, preds, n_tokens = [], [], 0
    t0 = time.perf_counter()
    for _, messages, _ in tqdm(examples, desc=f"{task}", disable=not progress, file=sys.stderr, leave=False):
        shown = grounding.ground(messages[:-1]) if grounding is not None else messages[:-1]
        text, n = answer(shown, messages)
        n_tokens += n
        if task == "commands" and opts.constrain:
            text = JSONConstraint.finish(text)
        inputs.append(messages[-2]["content"] if len(messages) > 1 else "")
        preds.append(text)
    seconds = time.perf_counter() - t0
    gold = keys if task == "facts" else refs
    extra = {"answers": refs} if task == "facts" else {}
    scores = metrics.score(task, preds, gold, **extra)
    per = metrics.per_example(task, preds, gold)
    rows = [{"input": i, "expected": r, "got": p, "score": round(s, 4)}
            for i, r, p, s in zip(inputs, gold, preds, per, strict=True)]
    return {
        "task": task, "data": ", ".join(paths), "model": str(model_path), "examples_scored": len(examples),
        "metrics": {k: round(v, 4) for k, v in scores.items()},
        "examples": rows[:10],
        "worst": metrics.worst_examples(inputs, preds, gold, per, k=opts.worst),
        "speed": {"seconds": round(seconds, 2), "tokens_per_s": round(n_tokens / max(seconds, 1e-9), 1),
                  "examples_per_s": round(len(examples) / max(seconds, 1e-9), 2)},
        "constrained": constrained,
        "grounded": grounding is not None,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def _torch_answerer(model, tokenizer, refs: list, opts: TaskOptions):
    """(answer(shown, messages) -> (text, tokens), constrained): greedy through pocketlm's engine; classification
    ranks the labels (or decodes through them), commands decode through valid JSON."""
    stops = stop_token_ids(tokenizer)
    stop_id = stops[-1] if stops else tokenizer.eos_token_id
    intents = slot_names = None
    if opts.schema:
        intents, slot_names = _read_schema(opts.schema)
    constraint = None
    if opts.constrain and opts.task == "classification":
        constraint = LabelConstraint(tokenizer, _read_labels(opts.labels, refs), stop_id)
    elif opts.constrain and opts.task == "commands":
        constraint = JSONConstraint(tokenizer, stop_id, intents=intents, slot_names=slot_names)
    cfg = SamplingConfig(max_new_tokens=opts.max_new_tokens, temperature=0)

    def answer(shown: list[dict], messages: list[dict]) -> tuple[str, int]:
        current = constraint
        if opts.constrain and opts.task == "commands" and opts.copy_slots:
            current = JSONConstraint(tokenizer, stop_id, copy_from=messages[-2]["content"], intents=intents,
                                     slot_names=slot_names)
        prompt = tokenizer.apply_chat_template(shown, add_generation_prompt=True, tokenize=False)
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        if isinstance(current, LabelConstraint) and opts.rank_labels:
            text = current.rank(model, ids)
            return text, len(tokenizer.encode(text, add_special_tokens=False)) + 1
        out = list(generate_ids(model, ids, cfg, stops, constraint=current))
        return tokenizer.decode(out, skip_special_tokens=True).strip(), len(out)

    return answer, constraint is not None


def _gguf_answerer(path: str, refs: list, opts: TaskOptions):
    """(answer, constrained) through llama.cpp: greedy, the file's chat template; classification constrained to
    the labels and commands to a JSON object by llama.cpp grammars (intents, slot names and copied slots are not
    enforced)."""
    from pocketlm.inference.backends import GGUFBackend
    from pocketlm.inference.llamacpp import choice_grammar
    backend = GGUFBackend(path, Path(path).name)
    grammar = None
    if opts.constrain and opts.task == "classification":
        grammar = choice_grammar(_read_labels(opts.labels, refs))
    elif opts.constrain and opts.task == "commands":
        grammar = backend.json_constraint(None)
    cfg = SamplingConfig(max_new_tokens=opts.max_new_tokens, temperature=0)

    def answer(shown: list[dict], messages: list[dict]) -> tuple[str, int]:
        prompt, _ = backend.chat_prompt(shown)
        stats: dict = {}
        text = "".join(backend.stream(prompt, cfg, stats, constraint=grammar)).strip()
        return text, stats["tokens"]

    return answer, grammar is not None


def _examples(paths: list[str], opts: TaskOptions) -> tuple[list, list, list | None]:
    """(examples, expected outputs, fact keys or None) of the task's files, --limit applied."""
    fmt = SftFormat(opts.prompt_field, opts.completion_field, opts.prompt_template, opts.completion_template,
                    opts.system, opts.columns)
    examples = load_examples(paths, fmt)
    if opts.task == "translation":  # one source sentence, several accepted translations: score it once against all
        examples, refs = _group_references(examples)
        examples, refs = examples[: opts.limit or None], refs[: opts.limit or None]
    else:
        examples = examples[: opts.limit or None]
        refs = [messages[-1]["content"] for _, messages, _ in examples]
    keys = None
    if opts.task == "facts":
        missing = [w for w, _, rec in examples if not isinstance(rec, dict) or opts.key_field not in rec]
        if missing:
            raise UserError(f"{missing[0]}: no field {opts.key_field!r} (the string a correct answer must contain)")
        keys = [str(rec[opts.key_field]) for _, _, rec in examples]
    return examples, refs, keys


def default_save_path(model_path: str, task: str, data: list[str] | str) -> Path | None:
    run = Path(model_path)
    if not runs.is_run(run):
        return None
    first = Path(data if isinstance(data, str) else data[0])
    return run / runs.EVALS / f"{task}-{first.stem}.json"


def save_results(result: dict, path: Path) -> Path:
    atomic_write_json(path, result)
    return path


def format_results(r: dict) -> str:
    lines = [f"task {r['task']} on {r['data']} ({r['examples_scored']} examples"
             f"{', constrained decoding' if r['constrained'] else ''})"]
    for k, v in r["metrics"].items():
        lines.append(f"  {k:<16} {v:.4f}")
    lines.append(f"  speed            {r['speed']['tokens_per_s']:.1f} tokens/s, {r['speed']['examples_per_s']:.2f} "
                 "examples/s")
    if r["worst"]:
        lines.append("worst examples (fix them with more examples like these):")
        for w in r["worst"][:5]:
            lines.append(f"  [{w['score']:.2f}] {w['input'][:70]!r}\n         expected {str(w['expected'])[:70]!r}"
                         f"\n         got      {w['got'][:70]!r}")
    return "\n".join(lines)
