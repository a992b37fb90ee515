"""One reader of record files (JSONL, JSON, CSV, TSV): `prepare` and fine-tuning see the same records.

`pocketlm prepare` (documents), fine-tuning and task evaluation (conversations), the bot's FAQ and
`pocketlm split` all read records through `pocketlm.data.sources.read_records`; these tests pin the
rules they now share: TSV quoting, `{field}` templates, and errors that name the file and line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datahelp import write

from pocketlm.data.sft import SftFormat, iter_records, load_conversations
from pocketlm.data.sources import InputFile, ReadOptions, Reporter, Template, kind_of, read_file, read_records
from pocketlm.errors import UserError


def records(path: Path, columns=None, strict: bool = True) -> list[tuple[int, dict]]:
    reporter = Reporter(strict=strict, emit=lambda msg: None)
    return [(r.line, r.value) for r in read_records(path, kind_of(path), str(path), reporter, columns=columns)]


def prepared(path: Path, **opts) -> list[str]:
    """What `prepare` reads from one file: its documents, in order."""
    item = InputFile(path, str(path), kind_of(path), path.stat().st_size)
    reporter = Reporter(strict=True)
    return [d.text for d in read_file(item, ReadOptions(**opts), reporter)]


def prompts(path: Path, template: str, **fmt) -> list[str]:
    """What fine-tuning reads from one file: the user turn of each example."""
    convs = load_conversations([path], SftFormat(prompt_template=template, completion_field="de", **fmt))
    return [messages[0]["content"] for _, messages in convs]


# ---------------------------------------------------------------------------------------------- TSV


def test_tsv_reads_spreadsheet_quoting_and_keeps_other_quotes(tmp_path):
    f = write(tmp_path / "pairs.tsv", "en\tde\n"
              'Go.\tGeh.\n'
              '"Who cares? ""I do."""\t„Wen kümmert’s?“\n'  # a quoted cell, as Excel or pandas write it
              'Say "aah."\tSag „aah“.\n'  # a quote inside a cell is a character
              '"Hello," she said.\t„Hallo“, sagte sie.\n'  # raw export: not a quoted cell, read as it is
              '"A tab\there and a\nline break"\tZwei Zeilen\n'  # a quoted cell may hold both
              'Bye.\tTschüss.\n')
    assert records(f) == [
        (2, {"en": "Go.", "de": "Geh."}),
        (3, {"en": 'Who cares? "I do."', "de": "„Wen kümmert’s?“"}),
        (4, {"en": 'Say "aah."', "de": "Sag „aah“."}),
        (5, {"en": '"Hello," she said.', "de": "„Hallo“, sagte sie."}),
        (6, {"en": "A tab\there and a\nline break", "de": "Zwei Zeilen"}),
        (8, {"en": "Bye.", "de": "Tschüss."}),  # line numbers stay right after a two-line row
    ]


def test_tsv_quote_that_never_closes_does_not_swallow_the_file(tmp_path):
    f = write(tmp_path / "pairs.tsv", 'en\tde\n"Unfinished\tUnfertig\nGo.\tGeh.\r\nStop!\tHalt!\n')
    assert records(f) == [(2, {"en": '"Unfinished', "de": "Unfertig"}), (3, {"en": "Go.", "de": "Geh."}),
                          (4, {"en": "Stop!", "de": "Halt!"})]


@pytest.mark.parametrize("suffix", [".tsv", ".csv", ".jsonl", ".json"])
def test_prepare_and_finetune_read_the_same_records(tmp_path, suffix):
    rows = [{"en": '"Quoted," he said.', "de": "Gesagt."}, {"en": 'Say "aah."', "de": "Sag aah."},
            {"en": "Two\nlines", "de": "Zwei"}]
    if suffix == ".tsv":
        text = "en\tde\n" + "".join(f'{r["en"]}\t{r["de"]}\n' for r in rows[:2]) + '"Two\nlines"\tZwei\n'
    elif suffix == ".csv":
        text = 'en,de\n"""Quoted,"" he said.",Gesagt.\nSay "aah.",Sag aah.\n"Two\nlines",Zwei\n'
    elif suffix == ".jsonl":
        text = "".join(json.dumps(r) + "\n" for r in rows)
    else:
        text = json.dumps(rows)
    f = write(tmp_path / f"pairs{suffix}", text)
    template = "EN: {en} ({de})"
    want = [f"EN: {r['en']} ({r['de']})" for r in rows]
    assert prepared(f, template=Template(template)) == want
    assert prompts(f, template) == want
    assert [r for _, r in iter_records(f)] == rows


def test_short_rows_name_the_file_and_the_line_where_the_row_starts(tmp_path):
    f = write(tmp_path / "qa.csv", 'q,a\n"two\nlines",ok\nonly one cell\n')
    with pytest.raises(UserError, match=r"qa.csv:4: row has 1 columns, the header has 2"):
        records(f)
    with pytest.raises(UserError, match=r"qa.csv:4: row has 1 columns, the header has 2"):
        load_conversations([f], SftFormat(prompt_field="q", completion_field="a"))
    kept = load_conversations([f], SftFormat(prompt_field="q", completion_field="a"), strict=False)
    assert [m[0]["content"] for _, m in kept] == ["two\nlines"]
    g = write(tmp_path / "pairs.tsv", "Go.\tGeh.\nHi.\n")
    with pytest.raises(UserError, match=r"pairs.tsv:2: row has 1 columns, expected 2 \(en, de\)"):
        list(iter_records(g, ["en", "de"]))


def test_finetune_skips_invalid_json_when_not_strict(tmp_path, capsys):
    f = write(tmp_path / "d.jsonl", '{"prompt": "a", "completion": "b"}\n{oops\n{"prompt": "c", "completion": "d"}\n')
    with pytest.raises(UserError, match=r"d.jsonl:2: not valid JSON"):
        load_conversations([f], SftFormat())
    assert len(load_conversations([f], SftFormat(), strict=False)) == 2
    assert f"warning: {f}:2: not valid JSON" in capsys.readouterr().err


def test_a_utf8_bom_does_not_rename_the_first_column(tmp_path):
    f = write(tmp_path / "excel.csv", "\ufeffprompt,completion\nhi,hello\n".encode())
    assert load_conversations([f], SftFormat())[0][1][1]["content"] == "hello"


# ---------------------------------------------------------------------------------------------- templates


def test_templates_mean_the_same_in_prepare_and_finetune(tmp_path):
    f = write(tmp_path / "d.jsonl", "".join(json.dumps(r) + "\n" for r in [
        {"q": "Open?", "tags": ["hours"], "meta": {"lang": "en"}},
        {"q": None, "tags": ["x"], "meta": {"lang": "en"}},
        {"tags": ["x"], "meta": {"lang": "en"}},
    ]))
    template = "{q} [{tags[0]}/{meta[lang]}] {{literal}}"
    want = "Open? [hours/en] {literal}"
    problems: list[str] = []
    item = InputFile(f, str(f), "jsonl", f.stat().st_size)
    docs = [d.text for d in read_file(item, ReadOptions(template=Template(template)), Reporter(emit=problems.append))]
    assert docs == [want]
    assert problems == [f"warning: {f}:2: field 'q' is empty (null)",
                        f"warning: {f}:3: no field 'q' for the template (fields: tags, meta)"]
    fmt = SftFormat(prompt_template=template, completion_template="{meta[lang]}")
    assert load_conversations([f], fmt, strict=False)[0][1][0]["content"] == want
    with pytest.raises(UserError, match=rf"{f.name}:2: field 'q' is empty \(null\)"):
        load_conversations([f], fmt)
    with pytest.raises(UserError, match=r"--prompt-template: use named fields like \{question\}, not \{0\}"):
        load_conversations([f], SftFormat(prompt_template="{0}", completion_field="q"))


# ---------------------------------------------------------------------------------------------- real files


def test_tatoeba_tsv_is_read_the_same_by_prepare_and_finetune(shared_data, tmp_path):
    src = shared_data / "translation" / "en_de.tsv"
    rows = records(src, columns=["en", "de"])  # strict: every row has its two cells
    assert len(rows) == sum(1 for line in src.read_text(encoding="utf-8").splitlines() if line.strip())
    by_line = dict(rows)
    # the file writes a cell holding quotes spreadsheet-style: "Sein Vater nennt ihn ""Tom""."
    assert by_line[38140] == {"en": "His dad calls him Tom.", "de": 'Sein Vater nennt ihn "Tom".'}
    assert by_line[25768]["en"] == 'Who cares? "I do."'
    assert not any('""' in r["en"] + r["de"] for r in by_line.values())
    # prepare needs a header row: the same pairs under one read as fine-tuning reads them with --columns
    with_header = write(tmp_path / "en_de.tsv", "en\tde\n" + src.read_text(encoding="utf-8"))
    template = "{en} => {de}"
    docs = prepared(with_header, template=Template(template))
    assert docs == prompts(src, template, columns=["en", "de"])
    assert docs == [f"{r['en']} => {r['de']}" for _, r in rows]


def test_tatoeba_tsv_with_attribution_column(shared_data):
    src = shared_data / "translation" / "en_fr.tsv"
    rows = records(src, columns=["en", "fr", "attribution"])
    assert len(rows) == 3990 and all(r["attribution"].startswith("CC-BY 2.0 (France)") for _, r in rows)
    assert {r["en"] for _, r in rows if '"' in r["en"]} == {'Say "aah."'}  # quotes inside a cell are kept


def test_support_csv_with_multiline_answers(shared_data):
    src = shared_data / "customer_support" / "bitext_customer_support.csv"
    rows = records(src)
    assert len(rows) == 4514
    assert rows[0][0] == 2 and rows[1][0] > 3  # the first answer spans lines; the next row starts after it
    assert "\n" in rows[0][1]["response"]
    convs = load_conversations([src], SftFormat(prompt_field="instruction", completion_field="response"))
    assert [m[1]["content"] for _, m in convs] == [r["response"] for _, r in rows]
