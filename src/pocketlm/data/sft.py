"""Supervised fine-tuning data: chat or prompt/completion records -> token ids with assistant-only labels.

Accepted files:
  .jsonl / .json  {"messages": [{"role": ..., "content": ...}, ...]}  (chat form), or
                  {"prompt": ..., "completion": ...}                   (or the fields named by --prompt-field /
                  --completion-field, or filled by --prompt-template / --completion-template)
  .csv / .tsv     a header row; columns picked the same way (--columns names them when there is no header)

Every record becomes a conversation, rendered with the tokenizer's chat template. Only assistant
turns are trained on: their content and the end-of-turn token that follows (so the model learns to
stop); system and user tokens get the label -100. Bad records are reported with file and line.
"""

from __future__ import annotations

import csv
import json
import random
import string
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pocketlm.data.tokenizer import stop_token_ids
from pocketlm.errors import UserError

ROLES = ("system", "user", "assistant")
IGNORE = -100
csv.field_size_limit(1 << 30)


@dataclass
class SftFormat:
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    prompt_template: str | None = None
    completion_template: str | None = None
    system: str | None = None
    columns: list[str] | None = None


def iter_records(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, record) for every record of a .jsonl, .json, .csv or .tsv file."""
    suffix = path.suffix.lower()
    if not path.exists():
        raise UserError(f"{path}: no such file")
    try:
        if suffix in (".jsonl", ".ndjson"):
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        yield n, json.loads(line)
                    except json.JSONDecodeError as e:
                        raise UserError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        elif suffix == ".json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(data, list):
                raise UserError(f"{path}: expected a JSON array of records")
            yield from enumerate(data, 1)
        elif suffix in (".csv", ".tsv"):
            raise AssertionError("use iter_table")
        else:
            raise UserError(f"{path}: unsupported file type {suffix or '(none)'}; use .jsonl, .json, .csv or .tsv")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not valid UTF-8 (byte {e.start})") from None


def iter_table(path: Path, columns: list[str] | None) -> Iterator[tuple[int, dict]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = columns
            for row in reader:
                if header is None:
                    header = [h.strip() for h in row]
                    continue
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise UserError(f"{path}:{reader.line_num}: {len(row)} columns, expected {len(header)} "
                                    f"({', '.join(header)})")
                yield reader.line_num, dict(zip(header, row, strict=True))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not valid UTF-8 (byte {e.start})") from None


def _fill(template: str, record: dict, where: str) -> str:
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    missing = [n for n in names if n not in record]
    if missing:
        raise UserError(f"{where}: no field {missing[0]!r} for the template (fields: {', '.join(map(str, record))})")
    return template.format(**{n: record[n] for n in names})


def to_messages(record: object, fmt: SftFormat, where: str) -> list[dict]:
    """Validate one record and return it as a list of chat messages ending with an assistant turn."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected an object, got {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise UserError(f"{where}: 'messages' must be a non-empty list")
        for i, m in enumerate(messages, 1):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise UserError(f"{where}: message {i} needs 'role' and 'content'")
            if m["role"] not in ROLES:
                raise UserError(f"{where}: message {i} has role {m['role']!r}; use system, user or assistant")
            if not isinstance(m["content"], str):
                raise UserError(f"{where}: message {i} content must be a string")
            if m["role"] == "assistant" and not m["content"].strip():
                raise UserError(f"{where}: message {i} is an empty assistant answer")
        if not any(m["role"] == "assistant" for m in messages):
            raise UserError(f"{where}: no assistant message to learn from")
        if messages[-1]["role"] != "assistant":
            raise UserError(f"{where}: the last message must be the assistant's")
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    else:
        prompt = _fill(fmt.prompt_template, record, where) if fmt.prompt_template else record.get(fmt.prompt_field)
        completion = (_fill(fmt.completion_template, record, where) if fmt.completion_template
                      else record.get(fmt.completion_field))
        if prompt is None or completion is None:
            missing = fmt.prompt_field if prompt is None else fmt.completion_field
            raise UserError(f"{where}: no field {missing!r} (fields: {', '.join(map(str, record))}); "
                            "name them with --prompt-field/--completion-field or use templates")
        prompt, completion = str(prompt), str(completion)
        if not prompt.strip():
            raise UserError(f"{where}: empty prompt")
        if not completion.strip():
            raise UserError(f"{where}: empty answer")
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    if fmt.system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": fmt.system}, *messages]
    return messages


def load_conversations(paths: list[str | Path], fmt: SftFormat, strict: bool = True) -> list[tuple[str, list[dict]]]:
    """[(where, messages)] for every record; with strict=False bad records are skipped with a warning."""
    return [(where, messages) for where, messages, _ in load_examples(paths, fmt, strict)]


def load_examples(paths: list[str | Path], fmt: SftFormat, strict: bool = True) -> list[tuple[str, list[dict], object]]:
    """[(where, messages, raw record)] for every record (see load_conversations)."""
    out = []
    for path in map(Path, paths):
        records = (iter_table(path, fmt.columns) if path.suffix.lower() in (".csv", ".tsv")
                   else iter_records(path))
        for line, record in records:
            where = f"{path}:{line}"
            try:
                out.append((where, to_messages(record, fmt, where), record))
            except UserError as e:
                if strict:
                    raise
                print(f"warning: {e} (skipped)", file=sys.stderr)
    if not out:
        raise UserError(f"{', '.join(map(str, paths))}: no usable examples")
    return out


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def encode_conversation(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one conversation; labels are -100 except on assistant turns."""
    if not tokenizer.chat_template:
        raise UserError("the base model's tokenizer has no chat template")
    full = _render(tokenizer, messages, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = _render(tokenizer, messages[:i], True)
        end = _render(tokenizer, messages[: i + 1], False)
        if not (full.startswith(end) and end.startswith(start)):
            raise UserError("the chat template does not render conversations incrementally; "
                            "assistant-only training needs a template like ChatML")
        spans.append((len(start), len(end)))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE] * len(ids)
    for k, (a, _b) in enumerate(offsets):
        if any(s <= a < e for s, e in spans):
            labels[k] = ids[k]
    stops = set(stop_token_ids(tokenizer))
    trained = [ids[k] for k in range(len(ids)) if labels[k] != IGNORE]
    if stops and not stops & set(trained):  # the template does not end turns with a stop token: add EOS
        ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id)
    return ids, labels


def pack(examples: list[tuple[list[int], list[int]]], context: int, pad_id: int, seed: int = 0,
         shuffle: bool = True) -> list[dict]:
    """Pack examples into rows of `context` tokens. Each example keeps its own position ids (restarting
    at 0), which transformers turns into a block-diagonal mask, so packed examples never see each other."""
    order = list(range(len(examples)))
    if shuffle:
        random.Random(seed).shuffle(order)
    rows, cur_ids, cur_labels, cur_pos = [], [], [], []

    def flush():
        if cur_ids:
            n = context - len(cur_ids)
            rows.append({"input_ids": cur_ids + [pad_id] * n, "labels": cur_labels + [IGNORE] * n,
                         "position_ids": cur_pos + list(range(n))})

    for i in order:
        ids, labels = examples[i]
        if len(ids) > context:
            continue
        if len(cur_ids) + len(ids) > context:
            flush()
            cur_ids, cur_labels, cur_pos = [], [], []
        cur_ids = cur_ids + ids
        cur_labels = cur_labels + labels[1:] + [IGNORE]  # shift: position t predicts token t+1
        cur_pos = cur_pos + list(range(len(ids)))
    flush()
    return rows
