"""Supervised fine-tuning data: chat or prompt/completion records -> token ids with assistant-only labels.

Accepted files:
  .jsonl / .json  {"messages": [{"role": ..., "content": ...}, ...]}  (chat form), or
                  {"prompt": ..., "completion": ...}                   (or the fields named by --prompt-field /
                  --completion-field, or filled by --prompt-template / --completion-template)
  .csv / .tsv     a header row; columns picked the same way (--columns names them when there is no header)

Files are read by the one record reader (`pocketlm.data.sources.read_records`: the TSV quoting rule,
line numbers, UTF-8 checks) and templates filled by `sources.Template`, as `pocketlm prepare` does.

Every record becomes a conversation, rendered with the tokenizer's chat template. Only assistant
turns are trained on: their content and the end-of-turn token that follows (so the model learns to
stop); system and user tokens get the label -100. Bad records are reported with file and line.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pocketlm.data.sources import (
    KINDS,
    RECORD_KINDS,
    BadFile,
    BadRecord,
    Record,
    Reporter,
    Template,
    location,
    read_records,
)
from pocketlm.data.tokenizer import stop_token_ids
from pocketlm.errors import UserError

ROLES = ("system", "user", "assistant")
IGNORE = -100


@dataclass
class SftFormat:
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    prompt_template: str | None = None
    completion_template: str | None = None
    system: str | None = None
    columns: list[str] | None = None
    answers_optional: bool = False  # a teacher writes the answers: records may end at the prompt


def _kind(path: Path) -> str:
    if not path.exists():
        raise UserError(f"{path}: no such file")
    kind = KINDS.get(path.suffix.lower())
    if kind not in RECORD_KINDS:
        raise UserError(f"{path}: unsupported file type {path.suffix or '(none)'}; use .jsonl, .json, .csv or .tsv")
    return kind


def read_file_records(path: str | Path, reporter: Reporter, columns: list[str] | None = None) -> Iterator[Record]:
    """The records of one .jsonl/.json/.csv/.tsv file through the one record reader
    (:func:`pocketlm.data.sources.read_records`). Bad records go to `reporter`; a file that cannot be read
    at all is a `UserError` naming it (and the line)."""
    path = Path(path)
    kind = _kind(path)
    try:
        yield from read_records(path, kind, str(path), reporter, columns=columns)
    except BadFile as e:
        raise UserError(f"{location(str(path), e.line)}: {e.reason}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: invalid UTF-8 (the file changed while it was read)") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None


def iter_records(path: str | Path, columns: list[str] | None = None) -> Iterator[tuple[int, object]]:
    """(line, record) for every record of a .jsonl, .json, .csv or .tsv file (for a .json array the
    item number stands for the line); any bad record is a `UserError` naming the file and line."""
    for record in read_file_records(path, Reporter(strict=True), columns):
        yield record.line, record.value


def iter_table(path: str | Path, columns: list[str] | None) -> Iterator[tuple[int, dict]]:
    """`iter_records` for a .csv or .tsv file (kept for callers that name the table case)."""
    return iter_records(path, columns)  # type: ignore[return-value]


class _Templates:
    def __init__(self, fmt: SftFormat):
        self.prompt = Template(fmt.prompt_template, "--prompt-template") if fmt.prompt_template else None
        self.completion = (Template(fmt.completion_template, "--completion-template")
                           if fmt.completion_template else None)


def _messages(record: object, fmt: SftFormat, templates: _Templates) -> list[dict]:
    """One record as a list of chat messages ending with an assistant turn; `BadRecord` says what is wrong."""
    if not isinstance(record, dict):
        raise BadRecord(f"expected an object, got {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise BadRecord("'messages' must be a non-empty list")
        for i, m in enumerate(messages, 1):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise BadRecord(f"message {i} needs 'role' and 'content'")
            if m["role"] not in ROLES:
                raise BadRecord(f"message {i} has role {m['role']!r}; use system, user or assistant")
            if not isinstance(m["content"], str):
                raise BadRecord(f"message {i} content must be a string")
            if m["role"] == "assistant" and not m["content"].strip():
                raise BadRecord(f"message {i} is an empty assistant answer")
        if fmt.answers_optional and messages[-1]["role"] != "assistant":
            messages = [*messages, {"role": "assistant", "content": "-"}]  # the teacher's answer replaces it
        if not any(m["role"] == "assistant" for m in messages):
            raise BadRecord("no assistant message to learn from")
        if messages[-1]["role"] != "assistant":
            raise BadRecord("the last message must be the assistant's")
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    else:
        prompt = templates.prompt.fill(record) if templates.prompt else record.get(fmt.prompt_field)
        completion = templates.completion.fill(record) if templates.completion else record.get(fmt.completion_field)
        if fmt.answers_optional and not str(completion or "").strip():
            completion = "-"  # the teacher's answer replaces it
        if prompt is None or completion is None:
            missing = fmt.prompt_field if prompt is None else fmt.completion_field
            raise BadRecord(f"no field {missing!r} (fields: {', '.join(map(str, record))}); "
                            "name them with --prompt-field/--completion-field or use templates")
        prompt, completion = str(prompt), str(completion)
        if not prompt.strip():
            raise BadRecord("empty prompt")
        if not completion.strip():
            raise BadRecord("empty answer")
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    if fmt.system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": fmt.system}, *messages]
    return messages


def to_messages(record: object, fmt: SftFormat, where: str) -> list[dict]:
    """Validate one record and return it as a list of chat messages ending with an assistant turn."""
    try:
        return _messages(record, fmt, _Templates(fmt))
    except BadRecord as e:
        raise UserError(f"{where}: {e}") from None


def load_conversations(paths: list[str | Path], fmt: SftFormat, strict: bool = True) -> list[tuple[str, list[dict]]]:
    """[(where, messages)] for every record; with strict=False bad records are skipped with a warning."""
    return [(where, messages) for where, messages, _ in load_examples(paths, fmt, strict)]


def load_examples(paths: list[str | Path], fmt: SftFormat, strict: bool = True) -> list[tuple[str, list[dict], object]]:
    """[(where, messages, raw record)] for every record (see load_conversations).

    A bad record (invalid JSON, a short row, a missing field, an empty answer) is a `UserError` naming the
    file and line; with strict=False it is skipped with a warning instead. A file that cannot be read at
    all is always an error."""
    templates = _Templates(fmt)
    reporter = Reporter(strict=strict, counted_in=None)
    out = []
    for path in map(Path, paths):
        for record in read_file_records(path, reporter, fmt.columns):
            try:
                out.append((record.where(str(path)), _messages(record.value, fmt, templates), record.value))
            except BadRecord as e:
                reporter.bad(str(path), record, str(e))
    if reporter.skipped_records:
        print(f"warning: skipped {reporter.skipped_records} bad record(s)", file=sys.stderr)
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
