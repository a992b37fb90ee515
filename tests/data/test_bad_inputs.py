"""Bad input: by default a warning naming the file (and line) and the good data kept; strict mode stops."""

import os

import pytest
from datahelp import STORIES, decoded_docs, jsonl, stats_of, write

from pocketlm.errors import UserError

A, B, C, D, E = STORIES

# name -> (files to create beside a good file, the message expected, whether the whole file is skipped)
CASES = {
    "binary": ({"blob.txt": b"GIF89a\x01\x00\x00\x00" + b"\xff" * 20}, "blob.txt:1: binary file (contains NUL bytes)",
               True),
    "utf16": ({"wide.txt": "hello".encode("utf-16")}, "wide.txt: UTF-16 text; save it as UTF-8", True),
    "invalid_utf8": ({"latin1.txt": f"{A}\n\nCaf\u00e9 line\n".encode("latin-1")},
                     "latin1.txt:3: invalid UTF-8 (byte 0xe9)", True),
    "empty": ({"empty.txt": b""}, "empty.txt: empty file", True),
    "blank": ({"blank.md": b" \n\n\t\n"}, "blank.md: empty file (only whitespace)", True),
    "empty_jsonl": ({"none.jsonl": b"\n\n"}, "none.jsonl: empty file", True),
    "bad_json": ({"d.jsonl": jsonl([{"text": B}]) + "{oops\n" + jsonl([{"text": C}])},
                 "d.jsonl:2: not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2)",
                 False),
    "truncated_json": ({"d.jsonl": jsonl([{"text": B}]) + "\n" + '{"text": "unfinished\n'},
                       "d.jsonl:3: not valid JSON (Unterminated string starting at: line 1 column 10)", False),
    "missing_field": ({"d.jsonl": jsonl([{"text": B}, {"body": "x", "id": 2}])},
                      "d.jsonl:2: no field 'text' (fields: body, id)", False),
    "not_object": ({"d.jsonl": jsonl([["a", "list"], {"text": B}])},
                   "d.jsonl:1: expected a JSON object, got an array", False),
    "not_string": ({"d.jsonl": jsonl([{"text": B}, {"text": 42}])},
                   "d.jsonl:2: field 'text' is a number, not a string", False),
    "jsonl_utf8": ({"d.jsonl": jsonl([{"text": B}]).encode() + b'{"text": "caf\xe9"}\n'},
                   "d.jsonl:2: invalid UTF-8 (byte 0xe9 at column 14)", False),
    "csv_column": ({"t.csv": "title,body\nx,y\n"}, "t.csv:1: no column 'text' (columns: title, body)", True),
    "csv_row": ({"t.csv": f'text,n\n"{B}",1\n"extra, field",2,3\n'}, "t.csv:3: row has 3 columns, the header has 2",
                False),
    "csv_header_only": ({"t.csv": "text,n\n"}, "t.csv: no rows after the header", True),
    "json_not_array": ({"d.json": '{"text": "one object"}'},
                       "d.json: expected a JSON array of objects, got an object", True),
    "json_item": ({"d.json": f'[{{"text": "{B}"}}, {{"nope": 1}}]'}, "d.json: item 2: no field 'text' (fields: nope)",
                  False),
}


def setup_case(tmp_path, name):
    files, message, whole_file = CASES[name]
    folder = tmp_path / "in"
    write(folder / "good.txt", A)
    for fname, content in files.items():
        write(folder / fname, content)
    return folder, str(folder / message), whole_file


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_warns_and_keeps_the_good_data(run_prepare, tmp_path, capsys, name):
    folder, message, whole_file = setup_case(tmp_path, name)
    stats = run_prepare(folder)
    err = capsys.readouterr().err
    expected_line = f"warning: {message}"
    assert expected_line in err, err
    assert A in decoded_docs(tmp_path / "out")
    (line,) = [x for x in err.splitlines() if x.startswith(expected_line)]
    if whole_file:
        assert stats["skipped_files"][0]["reason"].startswith(message)
        assert line.endswith("; skipping the file")
    else:
        assert stats["skipped_records"] == 1 and stats["skipped_files"] == []
        assert B in decoded_docs(tmp_path / "out")  # the good records of the same file are kept
    assert stats["problems"][0].startswith(message)
    assert stats_of(tmp_path / "out")["problems"] == stats["problems"]


@pytest.mark.parametrize("name", ["binary", "invalid_utf8", "bad_json", "missing_field", "csv_column", "empty"])
def test_strict_mode_raises_the_same_message(run_prepare, tmp_path, name):
    folder, message, _ = setup_case(tmp_path, name)
    with pytest.raises(UserError) as e:
        run_prepare(folder, strict=True)
    assert str(e.value).startswith(message)
    assert not (tmp_path / "out" / "meta.json").exists()
    assert not list((tmp_path / "out").glob(".prepare-*")), "the work folder is cleaned up"


def test_unreadable_file_is_skipped(run_prepare, tmp_path, capsys):
    folder = tmp_path / "in"
    write(folder / "good.txt", A)
    os.symlink(tmp_path / "gone.txt", folder / "dangling.txt")  # a link to nothing: cannot be read
    stats = run_prepare(folder)
    assert f"warning: {folder / 'dangling.txt'}: cannot read (No such file or directory)" in capsys.readouterr().err
    assert stats["files"] == {"found": 1, "read": 1, "skipped": 1, "ignored": 0, "input_bytes": len(A)}
    if os.geteuid() != 0:  # root reads files whatever their mode
        locked = write(folder / "locked.txt", B)
        locked.chmod(0)
        try:
            run_prepare(folder)
            assert f"{locked}: cannot read (Permission denied)" in capsys.readouterr().err
        finally:
            locked.chmod(0o644)


def test_template_missing_key_names_file_and_line(run_prepare, tmp_path, capsys):
    f = write(tmp_path / "qa.jsonl", jsonl([{"question": "Q1", "answer": A}, {"question": "Q2"},
                                           {"question": "Q3", "answer": None}, {"question": "Q4", "answer": B}]))
    stats = run_prepare(f, template="Question: {question}\nAnswer: {answer}")
    err = capsys.readouterr().err
    assert f"warning: {f}:2: no field 'answer' for the template (fields: question)" in err
    assert f"warning: {f}:3: field 'answer' is empty (null)" in err
    assert stats["documents"]["kept"] == 2
    c = write(tmp_path / "qa.csv", "question,reply\nQ,A\n")
    with pytest.raises(UserError, match=r"qa.csv:1: no column 'answer' for the template \(columns: question, reply\)"):
        run_prepare(c, template="Question: {question}\nAnswer: {answer}", strict=True)


def test_many_bad_lines_are_counted_but_not_all_shown(run_prepare, tmp_path, capsys):
    f = write(tmp_path / "d.jsonl", jsonl([{"text": A}]) + "not json\n" * 50)
    stats = run_prepare(f)
    err = capsys.readouterr().err
    assert err.count("not valid JSON") == 10 and "further problems in this file" in err
    assert stats["skipped_records"] == 50


def test_nothing_left_says_what_was_filtered(run_prepare, tmp_path):
    write(tmp_path / "in" / "a.txt", "short")
    write(tmp_path / "in" / "b.txt", "short")
    write(tmp_path / "in" / "c.txt", "\x01\x02 \x03")
    write(tmp_path / "in" / "d.txt", "   \x00")
    with pytest.raises(UserError) as e:
        run_prepare(tmp_path / "in")
    assert str(e.value) == ("no documents left to prepare: 3 documents read from 3 file(s); 1 empty after cleaning; "
                            "2 shorter than --min-chars 16; 1 file(s) skipped")


def test_no_usable_files_and_missing_paths_are_errors(run_prepare, tmp_path):
    write(tmp_path / "in" / "scan.pdf", b"%PDF")
    with pytest.raises(UserError, match="no input files to read"):
        run_prepare(tmp_path / "in")
    with pytest.raises(UserError, match="nope.txt: no such file or directory"):
        run_prepare(tmp_path / "nope.txt")


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"vocab_size": 100}, "--vocab-size must be at least 260"),
        ({"val_fraction": 1.0}, r"--val-fraction must be in \[0, 1\)"),
        ({"min_chars": -1}, "--min-chars must be 0 or more"),
        ({"near_dup_threshold": 0.0}, r"--near-dup-threshold must be in \(0, 1\]"),
        ({"normalize": "NFD"}, "--normalize must be one of NFC, NFKC, none"),
        ({"doc_boundary": "page"}, "--doc-boundary must be one of"),
        ({"template": "Q: {question"}, "--template: "),
        ({"template": "no fields"}, "has no {field} placeholders"),
        ({"template": "{0} and {}"}, "use named fields"),
        ({"tokenizer": "/no/such/dir"}, "no such tokenizer directory"),
    ],
)
def test_bad_options_fail_before_reading(run_prepare, tmp_path, option, message):
    f = write(tmp_path / "a.txt", A)
    with pytest.raises(UserError, match=message):
        run_prepare(f, **option)
    assert not (tmp_path / "out").exists()


def test_output_must_not_contain_the_inputs(run_prepare, tmp_path):
    f = write(tmp_path / "data" / "a.txt", A)
    with pytest.raises(UserError, match="inside the output directory"):
        run_prepare(f, out=str(tmp_path / "data"))


def test_a_file_where_no_record_has_the_field_gets_a_hint(run_prepare, tmp_path, capsys):
    write(tmp_path / "in" / "good.txt", A)
    f = write(tmp_path / "in" / "qa.jsonl", jsonl([{"question": "q", "answer": B}] * 3))
    run_prepare(tmp_path / "in")
    err = capsys.readouterr().err
    assert f"note: {f}: no record has the field 'text'; name another with --text-field or use --template" in err
