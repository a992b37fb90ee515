"""A single small text file still gets a validation split: one document gives its end to validation."""

import json
import random

import pytest
from datahelp import decoded_docs, stats_of, write

from pocketlm.data.clean import clean_text
from pocketlm.data.prepare import MIN_TAIL_SPLIT_CHARS, _cut_tail, summary


def story(n_chars: int, seed: int = 0) -> str:
    """Varied prose: paragraphs of sentences drawn from a seeded list of made-up words."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnoprstuvwy") for _ in range(rng.randint(2, 9))) for _ in range(3000)]
    paragraphs, size = [], 0
    while size < n_chars:
        sentences = [" ".join(rng.choices(words, k=rng.randint(4, 12))).capitalize() + "."
                     for _ in range(rng.randint(1, 4))]
        paragraphs.append(" ".join(sentences))
        size += len(paragraphs[-1]) + 2
    return "\n\n".join(paragraphs) + "\n"


def check_tail_split(out, text: str, fraction: float) -> tuple[str, str]:
    """train.bin and val.bin each hold one part; the parts are the text cut at a blank line near the end."""
    assert (out / "train.bin").stat().st_size > 0 and (out / "val.bin").stat().st_size > 0
    [head], [tail] = decoded_docs(out, "train"), decoded_docs(out, "val")
    clean = clean_text(text)
    assert head + "\n\n" + tail == clean  # cut at a paragraph break: nothing else lost
    assert abs(len(tail) / len(clean) - fraction) <= fraction * 0.6
    return head, tail


def test_a_single_400kb_file_without_separators_gets_a_validation_split(run_prepare, tmp_path, capsys):
    text = story(400_000)
    f = write(tmp_path / "story.txt", text)
    stats = run_prepare(f, tokenizer_sample_chars=100_000)
    out = tmp_path / "out"
    assert stats["documents"]["kept"] == 1 and stats["val_is_tail"] is True
    assert stats["splits"]["train"]["documents"] == 1 and stats["splits"]["val"]["documents"] == 1
    assert stats_of(out)["splits"] == json.loads((out / "meta.json").read_text())["splits"] == stats["splits"]
    check_tail_split(out, text, 0.05)
    assert "one document: its last 5% held out for validation" in summary(stats)
    assert "validation split is empty" not in capsys.readouterr().err


def test_a_5kb_file_gets_a_validation_split(run_prepare, tmp_path):
    text = story(5_000, seed=1)
    f = write(tmp_path / "tiny.md", text)
    stats = run_prepare(f, val_fraction=0.1)
    assert stats["val_is_tail"] and stats["splits"]["val"]["tokens"] > 0
    check_tail_split(tmp_path / "out", text, 0.1)
    share = stats["splits"]["val"]["bytes"] / (stats["splits"]["val"]["bytes"] + stats["splits"]["train"]["bytes"])
    assert f"one document: its last {share:.0%} held out for validation" in summary(stats)


def test_whole_file_boundary_and_other_seeds_cut_the_same_way(run_prepare, tmp_path):
    f = write(tmp_path / "story.txt", story(20_000, seed=2))
    a = run_prepare(f, doc_boundary="file", out=str(tmp_path / "a"))
    b = run_prepare(f, seed=7, out=str(tmp_path / "b"))
    assert a["val_is_tail"] and b["val_is_tail"]
    assert decoded_docs(tmp_path / "a", "val") == decoded_docs(tmp_path / "b", "val")


def test_no_validation_asked_or_too_short_to_cut_keeps_one_document(run_prepare, tmp_path, capsys):
    f = write(tmp_path / "story.txt", story(20_000, seed=3))
    stats = run_prepare(f, val_fraction=0.0)
    assert not stats["val_is_tail"] and stats["splits"]["val"]["documents"] == 0
    assert "held out" not in summary(stats)
    short = write(tmp_path / "short.txt", story(MIN_TAIL_SPLIT_CHARS - 200, seed=4))
    stats = run_prepare(short)
    assert not stats["val_is_tail"] and stats["splits"]["val"]["documents"] == 0
    assert "only one document: the validation split is empty" in capsys.readouterr().err


def test_several_documents_still_split_by_document(run_prepare, tmp_path):
    # Separator lines: whole documents go to validation by hash, none is cut.
    docs = [clean_text(story(3_000, seed=10 + i)) for i in range(30)]
    f = write(tmp_path / "stories.txt", "\n<|endoftext|>\n".join(docs))
    stats = run_prepare(f, val_fraction=0.2, out=str(tmp_path / "sep"))
    assert not stats["val_is_tail"] and stats["documents"]["kept"] == 30
    val, train = decoded_docs(tmp_path / "sep", "val"), decoded_docs(tmp_path / "sep", "train")
    assert 1 <= len(val) < 30 and sorted(val + train) == sorted(docs)
    # Two files: two documents, one of them (whole) in validation, as before.
    write(tmp_path / "in" / "a.txt", docs[0])
    write(tmp_path / "in" / "b.txt", docs[1])
    stats = run_prepare(tmp_path / "in", out=str(tmp_path / "two"))
    assert not stats["val_is_tail"]
    assert stats["splits"]["train"]["documents"] == 1 and stats["splits"]["val"]["documents"] == 1
    assert sorted(decoded_docs(tmp_path / "two")) == sorted(docs[:2])


def test_cut_tail_prefers_a_blank_line_then_a_line_break_then_a_space():
    para = "word " * 19 + "end."  # 99 characters
    text = "\n\n".join([para] * 10)  # 1,008 characters, blank lines every 101
    head, tail = _cut_tail(text, 0.1)
    assert head + "\n\n" + tail == text and tail == para
    lines = "\n".join([para] * 10)
    head, tail = _cut_tail(lines, 0.25)
    assert head + "\n" + tail == lines and 200 <= len(tail) <= 300
    words = " ".join(["abc"] * 250)
    head, tail = _cut_tail(words, 0.05)
    assert head + " " + tail == words and 30 <= len(tail) <= 70
    solid = "x" * 1000
    assert _cut_tail(solid, 0.05) == ("x" * 950, "x" * 50)
    assert _cut_tail(solid, 0.0001) == ("x" * 999, "x")


def test_prepare_then_pretrain_on_one_small_file(tmp_path, capsys):
    pytest.importorskip("torch")
    from pocketlm.cli import main

    f = write(tmp_path / "story.txt", story(60_000, seed=5))
    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["prepare", str(f), "--out", str(data), "--vocab-size", "300"]) == 0
    assert "one document: its last 5% held out for validation" in capsys.readouterr().out
    assert main(["pretrain", "--data", str(data), "--out", str(run), "--model", "nano-1m", "--context", "64",
                 "--batch-size", "4", "--max-steps", "3", "--warmup-steps", "1", "--eval-interval", "3",
                 "--eval-batches", "1", "--dtype", "fp32", "--no-progress"]) == 0, capsys.readouterr().err
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in r for r in records)
