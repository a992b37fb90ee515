"""Every input format, read through the whole stage and decoded back from the token files."""

import pytest
from datahelp import STORIES, decoded_docs, jsonl, stats_of, write

from pocketlm.data.sources import DocBuilder, InputFile, ReadOptions, Reporter, read_file

A, B, C, D, E = STORIES


def docs(run_prepare, tmp_path, inputs, **kw) -> list[str]:
    run_prepare(inputs, near_dedupe=False, **kw)
    return sorted(decoded_docs(tmp_path / "out"))


@pytest.mark.parametrize(
    ("boundary", "expected"),
    [
        ("file", [f"{A}\n\n{B}\n{C}"]),
        ("blank", [A, f"{B}\n{C}"]),
        ("line", [A, B, C]),
    ],
)
def test_txt_document_boundaries(run_prepare, tmp_path, boundary, expected):
    f = write(tmp_path / "in" / "book.txt", f"{A}\n  \n{B}\n{C}\n\n")
    assert docs(run_prepare, tmp_path, f, doc_boundary=boundary) == sorted(expected)


@pytest.mark.parametrize("boundary", ["separator", "auto"])
def test_txt_separator_lines(run_prepare, tmp_path, boundary):
    f = write(tmp_path / "in" / "stories.txt", f"<|endoftext|>\n{A}\n\n{B}\n  <|endoftext|> \n{C}\n<|endoftext|>\n")
    assert docs(run_prepare, tmp_path, f, doc_boundary=boundary) == sorted([f"{A}\n\n{B}", C])


def test_whole_file_keeps_a_literal_separator_as_the_special_token(run_prepare, tmp_path):
    f = write(tmp_path / "in" / "book.txt", f"{A}\n<|endoftext|>\n{B}\n")
    stats = run_prepare(f, doc_boundary="file")
    assert stats["documents"]["kept"] == 1
    assert docs(run_prepare, tmp_path, f, doc_boundary="file") == sorted([A + "\n", "\n" + B])


def test_auto_without_separator_is_one_document_per_file(run_prepare, tmp_path):
    write(tmp_path / "in" / "a.md", f"# Title\n\n{A}\n\n{B}\n")
    write(tmp_path / "in" / "b.txt", C)
    assert docs(run_prepare, tmp_path, tmp_path / "in") == sorted([f"# Title\n\n{A}\n\n{B}", C])


def test_crlf_text_and_utf8_bom(run_prepare, tmp_path):
    f = write(tmp_path / "win.txt", ("\ufeff" + A.replace(". ", ".\r\n") + "\r\n<|endoftext|>\r\n" + B).encode())
    assert docs(run_prepare, tmp_path, f) == sorted([A.replace(". ", ".\n"), B])


def test_jsonl_text_field(run_prepare, tmp_path):
    f = write(tmp_path / "d.jsonl", jsonl([{"text": A, "id": 1}, {"body": "x", "text": E}]) + "\n\n")
    assert docs(run_prepare, tmp_path, f) == sorted([A, E])
    f2 = write(tmp_path / "d2.jsonl", jsonl([{"content": B}]))
    assert docs(run_prepare, tmp_path, f2, text_field="content") == [B]


def test_jsonl_template(run_prepare, tmp_path):
    rows = [{"question": "What is a fox?", "answer": A, "n": 3}, {"question": "Who is Mara?", "answer": B, "n": 4}]
    f = write(tmp_path / "qa.jsonl", jsonl(rows))
    got = docs(run_prepare, tmp_path, f, template=r"Question: {question}\nAnswer: {answer} ({n})")
    assert got == sorted([f"Question: What is a fox?\nAnswer: {A} (3)", f"Question: Who is Mara?\nAnswer: {B} (4)"])


def test_json_array_of_objects_and_strings(run_prepare, tmp_path):
    import json

    write(tmp_path / "in" / "a.json", json.dumps([{"text": A}, {"text": B}]))
    write(tmp_path / "in" / "b.json", json.dumps([C, D]))
    assert docs(run_prepare, tmp_path, tmp_path / "in") == sorted([A, B, C, D])


def test_csv_column_quoting_and_multiline_cells(run_prepare, tmp_path):
    csv_text = 'id,text,label\n1,"' + A.replace('"', '""') + '",x\n2,"' + D.replace('"', '""') + '",y\n'
    f = write(tmp_path / "t.csv", csv_text)
    assert docs(run_prepare, tmp_path, f) == sorted([A, D])  # D is code with newlines and quotes


def test_csv_template_and_text_column(run_prepare, tmp_path):
    f = write(tmp_path / "qa.csv", f'q,a\nWho?,"{B}"\nWhat?,"{C}"\n')
    assert docs(run_prepare, tmp_path, f, template="Q: {q}\\nA: {a}") == sorted([f"Q: Who?\nA: {B}", f"Q: What?\nA: {C}"])
    f2 = write(tmp_path / "col.csv", f'body,other\n"{B}",1\n')
    assert docs(run_prepare, tmp_path, f2, text_column="body") == [B]


def test_tsv_has_no_quoting(run_prepare, tmp_path):
    quoted = '"Hello," she said. ' + A
    f = write(tmp_path / "t.tsv", f"text\tlang\n{quoted}\ten\n{B}\ten\n")
    assert docs(run_prepare, tmp_path, f) == sorted([quoted, B])


def test_html_text_extraction(run_prepare, tmp_path):
    page = f"""<!DOCTYPE html><html><head><title>The Fox</title>
    <style>body {{ color: red; }}</style><script>var x = "<p>not text</p>";</script></head>
    <body><h1>A   story</h1>
    <p>{A[:60]}
       continues &amp; ends&nbsp;here.</p><ul><li>one</li><li>two</li></ul>
    <pre>def f():
    return 1</pre><table><tr><td>a</td><td>b</td></tr><tr><td>c</td><td>d</td></tr></table>
    <!-- a comment --></body></html>"""
    f = write(tmp_path / "page.html", page)
    (got,) = docs(run_prepare, tmp_path, f)
    assert got == (f"The Fox\n\nA story\n\n{A[:60]} continues & ends\u00a0here.\n\none\ntwo\n\n"
                   "def f():\n    return 1\n\na\tb\nc\td")


def test_folders_are_recursed_unsupported_and_hidden_files_skipped(run_prepare, tmp_path, capsys):
    write(tmp_path / "in" / "a.txt", A)
    write(tmp_path / "in" / "sub" / "deeper" / "b.md", B)
    write(tmp_path / "in" / "image.png", b"\x89PNG\r\n\x1a\n\0\0")
    write(tmp_path / "in" / "notes.pdf", b"%PDF-1.4")
    write(tmp_path / "in" / ".hidden.txt", C)
    write(tmp_path / "in" / ".git" / "config.txt", D)
    assert docs(run_prepare, tmp_path, tmp_path / "in") == sorted([A, B])
    err = capsys.readouterr().err
    assert "note: skipped 3 files" in err and ".png: 1" in err and ".pdf: 1" in err
    stats = stats_of(tmp_path / "out")
    assert stats["files"]["read"] == 2 and stats["files"]["ignored"] == 3
    assert stats["ignored_files"] == {".png": 1, ".pdf": 1, "hidden": 1}


def test_explicit_file_with_unknown_extension_is_text(run_prepare, tmp_path):
    f = write(tmp_path / "README", A)
    g = write(tmp_path / "notes.log", B)
    assert docs(run_prepare, tmp_path, [f, g]) == sorted([A, B])


def test_a_file_named_twice_is_read_once(run_prepare, tmp_path):
    f = write(tmp_path / "in" / "a.txt", A)
    write(tmp_path / "in" / "b.txt", B)
    stats = run_prepare([f, tmp_path / "in"], dedupe=False, near_dedupe=False)
    assert stats["files"]["read"] == 2 and stats["documents"]["in"] == 2


def test_output_folder_inside_an_input_folder_is_not_read(run_prepare, tmp_path):
    write(tmp_path / "in" / "a.txt", A)
    write(tmp_path / "in" / "b.txt", B)
    out = tmp_path / "in" / "prepared"
    for _ in range(2):  # the second run sees the first run's outputs in the input folder
        stats = run_prepare(tmp_path / "in", out=str(out))
        assert stats["files"]["read"] == 2 and stats["documents"]["in"] == 2


def test_long_documents_are_cut_at_paragraphs():
    builder = DocBuilder("x", max_chars=100)
    paragraphs = [f"paragraph {i} " + "word " * 8 for i in range(10)]  # ~55 chars each
    out = []
    for i, p in enumerate(paragraphs):
        out += list(builder.add(p.strip() + "\n", 2 * i + 1))
        out += list(builder.add("\n", 2 * i + 2))
    out += list(builder.flush())
    assert all(len(d.text) <= 100 for d in out)
    assert "".join(d.text for d in out) == "".join(p.strip() + "\n\n" for p in paragraphs)
    assert all(d.text.endswith("\n\n") for d in out[:-1])  # cut at blank lines
    assert [d.line for d in out][:3] == [1, 3, 5]


def test_a_huge_single_line_is_cut_without_reading_it_whole(tmp_path):
    f = write(tmp_path / "one-line.txt", ("word " * 50_000).strip())  # 250k chars, no newline
    item = InputFile(f, "one-line.txt", "text", f.stat().st_size)
    got = list(read_file(item, ReadOptions(max_doc_chars=20_000), Reporter()))
    assert len(got) >= 12 and all(len(d.text) <= 20_000 for d in got)
    assert "".join(d.text for d in got) == f.read_text()


def test_documents_over_a_million_characters_are_cut(run_prepare, tmp_path):
    paragraph = " ".join(STORIES[:3])
    n = 2_200_000 // (len(paragraph) + 2) + 1
    f = write(tmp_path / "book.txt", "\n\n".join(f"{i}: {paragraph}" for i in range(n)))
    stats = run_prepare(f, near_dedupe=False, dedupe=False, val_fraction=0.0, tokenizer_sample_chars=50_000)
    assert stats["documents"]["long_documents_cut"] == 2 and stats["documents"]["kept"] == 3
    got = decoded_docs(tmp_path / "out")
    assert all(500_000 <= len(d) <= 1_000_000 for d in got[:2])
    assert "\n\n".join(got) == f.read_text()  # cut at blank lines: nothing lost
