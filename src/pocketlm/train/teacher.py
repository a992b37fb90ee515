"""Sequence-level distillation's data: a teacher model writes the answer of every example, and the student is
fine-tuned on those answers (Kim & Rush 2016). It works for any pair of models, whatever their tokenizers: only
text passes between them.

The teacher (a model directory, a run or a GGUF file, run by PyTorch or llama.cpp) answers the conversation up to
each example's last assistant turn, greedily by default. Answers are appended to a JSONL file as they come,
keyed by the conversation they answer, so an interrupted run asks the teacher only for what is missing.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from tqdm import tqdm

from pocketlm.errors import UserError
from pocketlm.inference.options import SamplingConfig

ANSWERS = "teacher_answers.jsonl"


def _key(messages: list[dict]) -> str:
    return hashlib.sha256(json.dumps(messages, ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:24]


def _read(path: Path) -> dict[str, str]:
    known = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                known[record["key"]] = record["answer"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short by a crash: that answer is asked for again
    return known


def teacher_answers(teacher: str, convs: list[tuple[str, list[dict]]], path: str | Path, *,
                    max_new_tokens: int = 256, temperature: float = 0.0, seed: int = 0,
                    progress: bool = True) -> tuple[list[tuple[str, list[dict]]], dict]:
    """`convs` with every last assistant turn replaced by the teacher's answer; and figures (asked, reused,
    empty answers left out)."""
    from pocketlm.inference.backends import load_backend
    path = Path(path)
    known = _read(path)
    prompts = [messages[:-1] for _, messages in convs]
    todo = [i for i, p in enumerate(prompts) if _key(p) not in known]
    if todo:
        backend = load_backend(teacher, name="teacher")
        cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=0, top_p=1.0, seed=seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as out:
            for i in tqdm(todo, desc="teacher answers", unit="example", disable=not progress, file=sys.stderr,
                          dynamic_ncols=True):
                prompt, n = backend.chat_prompt(prompts[i])
                if n + max_new_tokens > backend.context:
                    answer = ""  # too long for the teacher's context: left out, counted below
                else:
                    answer = "".join(backend.stream(prompt, cfg, {})).strip()
                known[_key(prompts[i])] = answer
                out.write(json.dumps({"key": _key(prompts[i]), "where": convs[i][0], "answer": answer},
                                     ensure_ascii=False) + "\n")
                out.flush()
    result, empty = [], 0
    for (where, _), prompt in zip(convs, prompts, strict=True):
        answer = known[_key(prompt)]
        if not answer:
            empty += 1
            continue
        result.append((where, [*prompt, {"role": "assistant", "content": answer}]))
    if not result:
        raise UserError(f"the teacher ({teacher}) gave no usable answer to any of the {len(convs)} examples")
    return result, {"asked": len(todo), "reused": len(convs) - len(todo), "empty": empty}
