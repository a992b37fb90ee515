from hypothesis import given, settings
from hypothesis import strategies as st

from pocketlm.data.clean import clean_text


def test_newlines_are_unified():
    assert clean_text("a\r\nb\rc\n") == "a\nb\nc"


def test_control_characters_dropped_but_tab_and_newline_kept():
    assert clean_text("a\x00b\x07c\x1bd\x7f\x85e\tf\ng") == "abcde\tf\ng"


def test_bom_and_lone_surrogates_dropped():
    assert clean_text("\ufeffhello \ud800world") == "hello world"


def test_trailing_whitespace_stripped_per_line():
    assert clean_text("one  \ntwo\t\nthree\u00a0\u3000\nfour") == "one\ntwo\nthree\nfour"


def test_blank_lines_collapse_to_one():
    assert clean_text("a\n\n\n\n\nb\n \n\t\n \nc") == "a\n\nb\n\nc"


def test_document_is_stripped_but_indentation_kept():
    code = "\n\n    def f(x):\n        if x:\n            return 1\n\n\n\n        return 2   \n\n"
    assert clean_text(code) == "    def f(x):\n        if x:\n            return 1\n\n        return 2"


def test_normalisation_forms():
    decomposed = "Cafe\u0301 \ufb01ne \uff21"  # e + combining acute, the "fi" ligature, full-width A
    assert clean_text(decomposed, "NFC") == "Caf\u00e9 \ufb01ne \uff21"
    assert clean_text(decomposed, "NFKC") == "Caf\u00e9 fine A"
    assert clean_text(decomposed, "none") == decomposed


def test_format_characters_are_kept():
    emoji = "family: \U0001f468\u200d\U0001f469\u200d\U0001f467"  # zero-width joiners
    assert clean_text(emoji) == emoji


@settings(max_examples=300, deadline=None)
@given(st.text(), st.sampled_from(["NFC", "NFKC", "none"]))
def test_cleaning_is_idempotent_and_tidy(text, form):
    once = clean_text(text, form)
    assert clean_text(once, form) == once
    assert "\r" not in once and "\n\n\n" not in once
    assert once == once.strip("\n")
    assert all(line == line.rstrip() for line in once.split("\n"))
    once.encode("utf-8")  # no lone surrogates survive
