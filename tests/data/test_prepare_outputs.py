"""The prepared directory: meta.json, stats.json, the token files, the split and tokenizer reuse."""

import argparse
import hashlib
import json
import random
from collections import Counter

import numpy as np
import pytest
from datahelp import STORIES, decoded_docs, jsonl, meta_of, stats_of, write

from pocketlm.config import add_arguments, from_namespace
from pocketlm.data.clean import clean_text
from pocketlm.data.prepare import PrepareConfig, prepare, summary
from pocketlm.data.shards import load_tokens, read_meta, token_dtype
from pocketlm.data.tokenizer import BOS, encode_document, load_tokenizer


def corpus(n: int, seed: int = 0) -> list[str]:
    """n distinct, varied documents made by remixing the sentences of STORIES."""
    rng = random.Random(seed)
    sentences = [s.strip() for story in STORIES for s in story.replace("\n", " ").split(". ") if s.strip()]
    return [f"Story {i}. " + ". ".join(rng.sample(sentences, 6)) + "." for i in range(n)]


@pytest.fixture
def folder(tmp_path):
    docs = corpus(60)
    write(tmp_path / "in" / "a.txt", "\n<|endoftext|>\n".join(docs[:30]))
    write(tmp_path / "in" / "b.jsonl", jsonl([{"text": d} for d in docs[30:]]))
    return tmp_path / "in", docs


def test_meta_json_is_exactly_the_documented_layout(run_prepare, tmp_path, folder):
    path, docs = folder
    run_prepare(path, vocab_size=400)
    out = tmp_path / "out"
    meta = meta_of(out)
    assert set(meta) == {"format", "version", "dtype", "vocab_size", "doc_separator_id", "tokenizer", "splits"}
    tok = load_tokenizer(out / "tokenizer")
    assert meta["format"] == "pocketlm-tokens" and meta["version"] == 1
    assert meta["vocab_size"] == len(tok) == 400
    assert meta["dtype"] == "<u2" == token_dtype(len(tok)).str
    assert meta["doc_separator_id"] == tok.convert_tokens_to_ids(BOS) == tok.bos_token_id
    assert meta["tokenizer"] == "tokenizer"
    assert read_meta(out) == meta
    for split in ("train", "val"):
        s = meta["splits"][split]
        assert set(s) == {"documents", "tokens", "bytes"}
        ids = load_tokens(out, split)
        assert len(ids) == s["tokens"] == (out / f"{split}.bin").stat().st_size // 2
        assert int(np.count_nonzero(ids == meta["doc_separator_id"])) == s["documents"]
        assert s["bytes"] == sum(len(d.encode()) for d in decoded_docs(out, split))
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == len(docs)
    assert meta["splits"]["val"]["documents"] >= 1
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "stats.json", "tokenizer", "train.bin", "val.bin"]


def test_stats_json(run_prepare, tmp_path, folder):
    path, docs = folder
    write(path / "dup.txt", docs[0])
    write(path / "near.txt", docs[1].replace("Story 1.", "Story one."))
    write(path / "image.png", b"\x89PNG")
    stats = run_prepare(path, vocab_size=400)
    assert stats_of(tmp_path / "out") == stats
    assert stats["files"] == {"found": 4, "read": 4, "skipped": 0, "ignored": 1,
                              "input_bytes": sum(p.stat().st_size for p in path.iterdir() if p.suffix != ".png")}
    d = stats["documents"]
    assert d == {"in": 62, "empty": 0, "too_short": 0, "exact_duplicates": 1, "near_duplicates": 1, "kept": 60,
                 "long_documents_cut": 0}
    s = stats["splits"]
    assert s["train"]["documents"] + s["val"]["documents"] == 60
    assert stats["bytes_per_token"] == round((s["train"]["bytes"] + s["val"]["bytes"])
                                             / (s["train"]["tokens"] + s["val"]["tokens"]), 4)
    assert stats["tokenizer"]["source"] == "trained" and stats["tokenizer"]["vocab_size"] == 400
    assert stats["tokenizer"]["trained_on_documents"] == s["train"]["documents"]
    assert set(stats["seconds"]) == {"read_clean_dedupe", "tokenizer", "encode", "total"}
    assert stats["config"]["vocab_size"] == 400
    text = summary(stats)
    assert "60 documents from 4 file(s)" in text and "1 exact duplicates, 1 near duplicates" in text
    assert "train:" in text and "val:" in text and "trained, 400 tokens" in text


def test_tokens_decode_to_the_cleaned_documents(run_prepare, tmp_path):
    raw = [s.replace(". ", ".  \r\n", 2) + "\n\n\n\n" + "\tindented line   " for s in STORIES]
    f = write(tmp_path / "d.jsonl", jsonl([{"text": r} for r in raw]))
    run_prepare(f, vocab_size=350)
    out = tmp_path / "out"
    expected = [clean_text(r) for r in raw]
    got = decoded_docs(out)
    assert Counter(got) == Counter(expected)
    # The stream is exactly encode_document() of each document, in order, split by split.
    tok = load_tokenizer(out / "tokenizer")
    for split in ("train", "val"):
        ids = load_tokens(out, split).tolist()
        want = [t for doc in decoded_docs(out, split) for t in encode_document(tok, doc)]
        assert ids == want


def test_split_is_by_document_and_deterministic(run_prepare, tmp_path, folder):
    path, docs = folder
    run_prepare(path, vocab_size=300, out=str(tmp_path / "one"))
    run_prepare(path, vocab_size=300, out=str(tmp_path / "two"))
    for split in ("train", "val"):
        assert (tmp_path / "one" / f"{split}.bin").read_bytes() == (tmp_path / "two" / f"{split}.bin").read_bytes()
    val = set(decoded_docs(tmp_path / "one", "val"))
    train = set(decoded_docs(tmp_path / "one", "train"))
    assert val and not val & train and val | train == set(docs)
    # A document's split depends only on its text and the seed: adding files does not move it.
    write(path / "more.txt", "\n<|endoftext|>\n".join(corpus(40, seed=1)[1:]))
    run_prepare(path, vocab_size=300, out=str(tmp_path / "three"))
    val3 = set(decoded_docs(tmp_path / "three", "val"))
    assert val3 & set(docs) == val
    # Another seed gives another split.
    run_prepare(path, vocab_size=300, out=str(tmp_path / "four"), seed=1)
    assert set(decoded_docs(tmp_path / "four", "val")) != val3


def test_validation_fraction(run_prepare, tmp_path):
    docs = corpus(400)
    f = write(tmp_path / "d.jsonl", jsonl([{"text": d} for d in docs]))
    stats = run_prepare(f, val_fraction=0.2, dedupe=False, near_dedupe=False)
    assert 50 <= stats["splits"]["val"]["documents"] <= 110
    stats = run_prepare(f, val_fraction=0.0, dedupe=False, near_dedupe=False)
    assert stats["splits"]["val"] == {"documents": 0, "tokens": 0, "bytes": 0}
    assert (tmp_path / "out" / "val.bin").stat().st_size == 0


def test_two_documents_give_one_validation_document_and_one_gives_none(run_prepare, tmp_path, capsys):
    f = write(tmp_path / "two.txt", f"{STORIES[0]}\n<|endoftext|>\n{STORIES[1]}")
    stats = run_prepare(f, val_fraction=0.01)
    assert stats["splits"]["val"]["documents"] == 1 and stats["splits"]["train"]["documents"] == 1
    g = write(tmp_path / "one.txt", STORIES[0])
    stats = run_prepare(g, val_fraction=0.5)
    assert stats["splits"]["train"]["documents"] == 1 and stats["splits"]["val"]["documents"] == 0
    assert "only one document: the validation split is empty" in capsys.readouterr().err


def test_forced_validation_document_is_the_best_sized_candidate(run_prepare, tmp_path):
    small, large = STORIES[4], "\n\n".join(STORIES[:4]) * 3
    f = write(tmp_path / "two.txt", f"{large}\n<|endoftext|>\n{small}")
    stats = run_prepare(f, val_fraction=0.05)
    assert decoded_docs(tmp_path / "out", "val") == [small]
    assert stats["splits"]["val"]["bytes"] == len(small.encode())


def test_split_fraction_uses_a_seeded_document_hash(run_prepare, tmp_path, folder):
    path, docs = folder
    run_prepare(path, vocab_size=300, seed=7, val_fraction=0.3)
    val = set(decoded_docs(tmp_path / "out", "val"))
    key = (7).to_bytes(8, "little", signed=True)
    expected = {d for d in docs if int.from_bytes(hashlib.blake2b(d.encode(), digest_size=16, key=key).digest()[:8],
                                                  "little") / 2**64 < 0.3}
    assert val == expected


def test_reusing_a_tokenizer(run_prepare, tmp_path, folder):
    path, docs = folder
    run_prepare(path, vocab_size=333, out=str(tmp_path / "first"))
    f = write(tmp_path / "other.txt", "\n<|endoftext|>\n".join(STORIES))
    for source in (tmp_path / "first" / "tokenizer", tmp_path / "first"):  # a tokenizer folder or a DATA_DIR
        out = tmp_path / "second"
        stats = run_prepare(f, out=str(out), tokenizer=str(source), vocab_size=9999)
        assert stats["tokenizer"] == {"source": str(source), "vocab_size": 333}
        assert meta_of(out)["vocab_size"] == 333
        assert json.loads((out / "tokenizer" / "tokenizer.json").read_text()) == json.loads(
            (tmp_path / "first" / "tokenizer" / "tokenizer.json").read_text())
        assert Counter(decoded_docs(out)) == Counter(STORIES)


def test_rerun_replaces_outputs_and_leaves_no_temporary_files(run_prepare, tmp_path, folder):
    path, docs = folder
    run_prepare(path, vocab_size=300)
    first = meta_of(tmp_path / "out")
    f = write(tmp_path / "small.txt", "\n<|endoftext|>\n".join(STORIES))
    run_prepare(f, vocab_size=280)
    second = meta_of(tmp_path / "out")
    assert second["vocab_size"] == 280 and second["splits"] != first["splits"]
    assert Counter(decoded_docs(tmp_path / "out")) == Counter(STORIES)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "meta.json", "stats.json", "tokenizer", "train.bin", "val.bin"]


def test_progress_bar_goes_to_stderr(tmp_path, capsys):
    f = write(tmp_path / "a.txt", "\n<|endoftext|>\n".join(STORIES))
    prepare(PrepareConfig(inputs=[str(f)], out=str(tmp_path / "out"), vocab_size=280), progress=True)
    captured = capsys.readouterr()
    assert "reading" in captured.err and captured.out == ""


def test_every_option_is_a_cli_flag(tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser, PrepareConfig)
    ns = parser.parse_args(["a.txt", "docs/", "--out", "data", "--vocab-size", "8000", "--no-near-dedupe",
                            "--template", "Q: {q}\\nA: {a}", "--doc-boundary", "blank", "--strict",
                            "--normalize", "NFKC", "--tokenizer-sample-chars", "1000"])
    cfg = from_namespace(PrepareConfig, ns)
    assert cfg.inputs == ["a.txt", "docs/"] and cfg.out == "data" and cfg.vocab_size == 8000
    assert cfg.near_dedupe is False and cfg.dedupe is True and cfg.strict is True
    assert cfg.doc_boundary == "blank" and cfg.normalize == "NFKC" and cfg.tokenizer_sample_chars == 1000
    assert cfg.val_fraction == 0.05 and cfg.min_chars == 16 and cfg.tokenizer is None
    help_text = parser.format_help()
    for flag in ("--vocab-size", "--tokenizer", "--val-fraction", "--min-chars", "--normalize", "--dedupe",
                 "--near-dedupe", "--near-dup-threshold", "--text-field", "--text-column", "--template",
                 "--doc-boundary", "--strict", "--seed", "--tokenizer-sample-chars"):
        assert flag in help_text


def test_tokenizer_sample_limit(run_prepare, tmp_path):
    docs = corpus(300)
    f = write(tmp_path / "d.jsonl", jsonl([{"text": d} for d in docs]))
    stats = run_prepare(f, tokenizer_sample_chars=5000, val_fraction=0.1)
    t = stats["tokenizer"]
    assert 0 < t["trained_on_chars"] <= 5000
    assert t["trained_on_documents"] < stats["splits"]["train"]["documents"]
