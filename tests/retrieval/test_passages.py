"""Documents and FAQ files -> passages: headings kept, code blocks whole, clear errors for bad FAQs."""

from __future__ import annotations

import json

import pytest

from pocketlm.errors import UserError
from pocketlm.retrieval.faq import read_faq
from pocketlm.retrieval.passages import chunk, read_document, read_documents

MANUAL_MD = """# Widget manual

Intro paragraph about widgets.

## Installing

### On Linux

Run the installer:

```
sudo apt install widget
widget --init
```

Then restart.

## Configuration

Set `colour = blue` in widget.conf.
"""

MANUAL_HTML = """<html><head><title>Widget FAQ</title><style>p {color: red}</style></head><body>
<nav>Home | Docs</nav>
<div class="related" role="navigation"><ul><li>index</li><li>next |</li></ul></div>
<div class="sphinxsidebar"><div><h3>Table of Contents</h3><ul><li>Billing</li><li>Phone</li></ul></div></div>
<h1>Widget FAQ</h1>
<h2><a class="toc-backref" href="#b">Billing</a></h2><p>Invoices are sent on the 1st of each month.</p>
<h2>Support</h2><h3>Phone</h3><p>Call us on 555-0100 between 9 and 5.</p>
<pre>widget --support
  --verbose</pre>
</body></html>"""


def test_markdown_headings_and_code_blocks(tmp_path):
    f = tmp_path / "manual.md"
    f.write_text(MANUAL_MD, encoding="utf-8")
    passages = read_document(f, tmp_path)
    titles = [p.title for p in passages]
    assert "Widget manual > Installing > On Linux" in titles
    linux = passages[titles.index("Widget manual > Installing > On Linux")]
    assert "sudo apt install widget\nwidget --init" in linux.text  # the code block whole, lines kept
    assert linux.source == "manual.md > Installing > On Linux"
    assert passages[titles.index("Widget manual > Configuration")].text == "Set `colour = blue` in widget.conf."
    assert all(p.kind == "doc" and p.id.startswith("manual.md#") for p in passages)


def test_html_title_sections_and_skipped_markup(tmp_path):
    f = tmp_path / "faq.html"
    f.write_text(MANUAL_HTML, encoding="utf-8")
    passages = {p.title: p for p in read_document(f, tmp_path)}
    assert passages["Widget FAQ > Billing"].text == "Invoices are sent on the 1st of each month."
    phone = passages["Widget FAQ > Support > Phone"]
    assert "555-0100" in phone.text and "widget --support\n  --verbose" in phone.text
    assert not any("color: red" in p.text or "Home | Docs" in p.text or "next |" in p.text
                   or "Table of Contents" in p.title for p in passages.values())  # navigation left out
    assert len(passages) == 2


def test_long_sections_are_cut_into_passages_at_block_ends():
    blocks = [(["A"], f"Paragraph {i} " + "word " * 40) for i in range(10)]
    out = chunk(blocks, max_chars=500)
    assert len(out) > 1 and all(len(text) <= 500 for _, text in out)
    assert "".join(text for _, text in out).count("Paragraph") == 10  # nothing lost, nothing cut in two


def test_folder_of_documents(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.md").write_text(MANUAL_MD, encoding="utf-8")
    (tmp_path / "notes.txt").write_text("First note.\n\nSecond note.", encoding="utf-8")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    passages = read_documents([tmp_path])
    assert {p.source.split(" > ")[0] for p in passages} == {"sub/a.md", "notes.txt"}


def test_faq_fields_ids_and_errors(tmp_path):
    f = tmp_path / "faq.jsonl"
    f.write_text(json.dumps({"q": "How do I pay?", "a": "By card.\n\nOr cash."}) + "\n"
                 + json.dumps({"q": "Refunds?", "a": "Within 30 days.", "id": "refunds"}) + "\n", encoding="utf-8")
    entries = read_faq([f], "q", "a")
    assert [e.id for e in entries] == ["faq.jsonl:1", "refunds"]
    assert entries[0].text == "By card.\n\nOr cash."  # answers of any length, kept whole
    with pytest.raises(UserError, match=r"faq.jsonl:1: no text in field 'question'.*--question-field"):
        read_faq([f])
    csv = tmp_path / "faq.csv"
    csv.write_text("Title,Body\nOpening hours?,9 to 5\n", encoding="utf-8")
    assert read_faq([csv], "Title", "Body")[0].text == "9 to 5"
