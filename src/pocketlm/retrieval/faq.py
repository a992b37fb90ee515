"""A user's FAQ file -> passages: JSONL/JSON records or CSV/TSV rows with a question and an answer.

Field (or column) names are the user's to give; an id field is optional (the entry's file and line
stand in for it). Answers may be any length: nothing is cut here, retrieval embeds long answers window
by window and the bot reads the part that matters (:mod:`pocketlm.bot.answer`).
"""

from __future__ import annotations

from pathlib import Path

from pocketlm.data.sft import iter_records
from pocketlm.errors import UserError
from pocketlm.retrieval.index import Passage


def read_faq(paths: list[str | Path], question_field: str = "question", answer_field: str = "answer",
             id_field: str | None = "id", columns: list[str] | None = None,
             group_field: str | None = None) -> list[Passage]:
    out: list[Passage] = []
    seen: dict[str, str] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise UserError(f"{path}: no such FAQ file")
        for line, record in iter_records(path, columns):
            where = f"{path.name}:{line}"
            if not isinstance(record, dict):
                raise UserError(f"{path}:{line}: expected an object with fields {question_field!r} and "
                                f"{answer_field!r}")
            for name in (question_field, answer_field):
                if not isinstance(record.get(name), str) or not record[name].strip():
                    have = ", ".join(map(repr, record)) or "none"
                    raise UserError(f"{path}:{line}: no text in field {name!r} (fields here: {have}); name the "
                                    f"fields with --question-field and --answer-field")
            entry_id = str(record[id_field]) if id_field and record.get(id_field) not in (None, "") else where
            if entry_id in seen:
                raise UserError(f"{path}:{line}: id {entry_id!r} already used at {seen[entry_id]}")
            seen[entry_id] = where
            question, answer = record[question_field].strip(), record[answer_field].strip()
            group = ""
            if group_field:
                if record.get(group_field) in (None, ""):
                    raise UserError(f"{path}:{line}: no value in field {group_field!r} (--group-field)")
                group = str(record[group_field])
            out.append(Passage(entry_id, question, answer, where, "faq", group))
    if not out:
        raise UserError(f"{', '.join(map(str, paths))}: no FAQ entries")
    return out
