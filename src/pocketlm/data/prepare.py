"""`pocketlm prepare`: a folder of the user's own text becomes a tokenizer plus token shards.

Three streaming passes keep memory bounded whatever the input size:

1. read -> clean -> drop short documents -> exact and near-duplicate removal -> assign each kept
   document to train or val by a hash of its text -> append it to a spool file in DATA_DIR (a lone
   document is cut in two instead, its end going to val);
2. train a byte-level BPE tokenizer on (a sample of) the train documents, or load `--tokenizer`;
3. encode the spool in batches (the tokenizer's Rust `encode_batch`, parallel) and append the ids,
   each document preceded by the document separator, to `train.bin` / `val.bin`.

The outputs replace the old ones only at the end; `meta.json` is written last, so a directory
without it is visibly incomplete. See docs/data.md for the layout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import os
import re
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from pocketlm.config import to_dict
from pocketlm.data.clean import NORMALIZE_CHOICES, clean_text
from pocketlm.data.dedupe import Deduplicator
from pocketlm.data.options import PrepareConfig
from pocketlm.data.shards import FORMAT, META, STATS, TOKENIZER_DIR, token_dtype
from pocketlm.data.sources import (
    DOC_BOUNDARIES,
    MAX_DOC_CHARS,
    ReadOptions,
    Reporter,
    Template,
    find_files,
    read_file,
)
from pocketlm.data.tokenizer import MIN_VOCAB, doc_separator_id, load_tokenizer, train_tokenizer
from pocketlm.errors import UserError
from pocketlm.fsutil import atomic_dir, atomic_write_json

SPLITS = ("train", "val")
TRAIN, VAL = 0, 1
_BATCH_DOCS = 1024
_BATCH_CHARS = 2 << 20  # bounds the per-batch word lists of near-duplicate detection
_MOVE_CANDIDATES = 8
_ENCODE_DOCS = 2048
_ENCODE_BYTES = 4 << 20  # ~1M ids as Python ints per batch
# A lone document at least this long is cut in two so that validation gets its end (nanoGPT's 90/10 cut).
MIN_TAIL_SPLIT_CHARS = 2_000


# --------------------------------------------------------------------------------------------------
# Spool: the kept documents between passes, as (split, sample key, UTF-8 text) records.

_REC = struct.Struct("<BIQ")


class _Spool:
    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, "wb", buffering=1 << 20)  # noqa: SIM115 - closed in close()

    def write(self, split: int, sample_key: int, data: bytes) -> None:
        self._f.write(_REC.pack(split, len(data), sample_key))
        self._f.write(data)

    def close(self) -> None:
        self._f.close()

    def read(self) -> Iterator[tuple[int, int, int, bytes]]:
        """(index, split, sample key, data) in the order written."""
        with open(self.path, "rb", buffering=1 << 20) as f:
            i = 0
            while head := f.read(_REC.size):
                split, n, key = _REC.unpack(head)
                yield i, split, key, f.read(n)
                i += 1


# --------------------------------------------------------------------------------------------------
# Helpers


def _unescape(template: str) -> str:
    """Understand \\n, \\t and \\\\ typed on a command line."""
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], template)


def _validate(cfg: PrepareConfig) -> PrepareConfig:
    inputs = [cfg.inputs] if isinstance(cfg.inputs, str | os.PathLike) else list(cfg.inputs or [])
    if not inputs:
        raise UserError("no inputs: name files or folders of text to prepare")
    if not cfg.out:
        raise UserError("--out: name the output data directory")
    checks = [
        (cfg.tokenizer is not None or cfg.vocab_size >= MIN_VOCAB,
         f"--vocab-size must be at least {MIN_VOCAB} (256 bytes + special tokens), got {cfg.vocab_size}"),
        (0.0 <= cfg.val_fraction < 1.0, f"--val-fraction must be in [0, 1), got {cfg.val_fraction}"),
        (cfg.min_chars >= 0, f"--min-chars must be 0 or more, got {cfg.min_chars}"),
        (cfg.normalize in NORMALIZE_CHOICES,
         f"--normalize must be one of {', '.join(NORMALIZE_CHOICES)}, got {cfg.normalize!r}"),
        (0.0 < cfg.near_dup_threshold <= 1.0,
         f"--near-dup-threshold must be in (0, 1], got {cfg.near_dup_threshold}"),
        (cfg.doc_boundary in DOC_BOUNDARIES,
         f"--doc-boundary must be one of {', '.join(DOC_BOUNDARIES)}, got {cfg.doc_boundary!r}"),
        (cfg.tokenizer_sample_chars > 0, f"--tokenizer-sample-chars must be positive, got {cfg.tokenizer_sample_chars}"),
        (bool(cfg.text_field), "--text-field must not be empty"),
        (bool(cfg.text_column), "--text-column must not be empty"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    out = Path(cfg.out).resolve()
    for arg in inputs:
        p = Path(arg).resolve()
        if p == out or out in p.parents:
            raise UserError(f"{arg}: an input is inside the output directory {cfg.out}; write --out elsewhere")
    return dataclasses.replace(cfg, inputs=[str(i) for i in inputs])


def _resolve_tokenizer(path: str) -> PreTrainedTokenizerBase:
    p = Path(path)
    if (p / META).exists() and (p / TOKENIZER_DIR).is_dir():  # a prepared data directory
        p = p / TOKENIZER_DIR
    tok = load_tokenizer(p)
    doc_separator_id(tok)  # fails early if the tokenizer cannot separate documents
    return tok


def _fraction(key: bytes) -> float:
    return int.from_bytes(key[:8], "little") / 2.0**64


def _cut_tail(text: str, fraction: float) -> tuple[str, str]:
    """Cut `text` in two so that the second part is about `fraction` of it: at the blank line nearest
    that point, else the line break, else the space, within half the tail's length of it. The
    separator itself is dropped (the document separator token takes its place)."""
    target = min(max(1, round(len(text) * (1 - fraction))), len(text) - 1)
    reach = (len(text) - target) // 2
    for sep in ("\n\n", "\n", " "):
        found = [p for p in (text.rfind(sep, target - reach, target), text.find(sep, target, target + reach)) if p > 0]
        if found:
            p = min(found, key=lambda p: abs(p - target))
            return text[:p], text[p + len(sep):]
    return text[:target], text[target:]


def _emit(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def _bar(progress: bool, total: int, desc: str):
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                disable=not progress, leave=False, dynamic_ncols=True)


def _batch_encoder(tok: PreTrainedTokenizerBase):
    """A function texts -> list of id lists, equal to tok.encode(t, add_special_tokens=False) per text."""
    backend = getattr(tok, "backend_tokenizer", None)
    if isinstance(backend, Tokenizer):
        backend = Tokenizer.from_str(backend.to_str())  # a private copy: no truncation or padding
        backend.no_truncation()
        backend.no_padding()
        return lambda texts: [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return lambda texts: [tok.encode(t, add_special_tokens=False) for t in texts]


# --------------------------------------------------------------------------------------------------
# The stage


def prepare(cfg: PrepareConfig, progress: bool = True) -> dict:
    """Run `pocketlm prepare`; returns the statistics also written to DATA_DIR/stats.json."""
    t_start = time.perf_counter()
    cfg = _validate(cfg)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {cfg.out}: exists and is not a directory")
    reporter = Reporter(strict=cfg.strict, emit=_emit)
    template = Template(_unescape(cfg.template)) if cfg.template else None
    reused = _resolve_tokenizer(cfg.tokenizer) if cfg.tokenizer else None

    files = find_files(cfg.inputs, reporter, exclude=[out])
    if reporter.ignored:
        kinds = ", ".join(f"{ext}: {n}" for ext, n in reporter.ignored.most_common())
        n = sum(reporter.ignored.values())
        reporter.note(f"skipped {n} file{'s' if n != 1 else ''} in folders that are not text inputs ({kinds})")
    if not files:
        raise UserError(f"no input files to read in {', '.join(cfg.inputs)}; supported: .txt .md .jsonl .json "
                        ".csv .tsv .html (a file named explicitly is read as text)")

    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".prepare-", dir=out))
    try:
        stats = _run(cfg, out, work, files, reporter, template, reused, progress, t_start)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return stats


def _run(cfg, out, work, files, reporter, template, reused, progress, t_start) -> dict:
    """The three passes in the scratch directory `work`, then the outputs in `out`; returns the statistics."""
    opts = ReadOptions(doc_boundary=cfg.doc_boundary, text_field=cfg.text_field, text_column=cfg.text_column,
                       template=template, max_doc_chars=MAX_DOC_CHARS)
    spool = _Spool(work / "docs.spool")

    # Pass 1: read, clean, deduplicate, split.
    t0 = time.perf_counter()
    kept = _read_clean_dedupe(cfg, files, opts, reporter, spool, progress)
    t_read = time.perf_counter() - t0
    if kept.docs["kept"] == 0:
        raise UserError(_nothing_left(kept.docs, cfg, kept.files_read, reporter))
    val_is_tail = (kept.docs["kept"] == 1 and cfg.val_fraction > 0
                   and sum(kept.split_chars) >= MIN_TAIL_SPLIT_CHARS)
    if val_is_tail:
        spool = _cut_lone_document(spool, work / "tail.spool", cfg.val_fraction, kept)
    moved = _fill_empty_splits(kept, cfg.val_fraction)

    # Pass 2: the tokenizer.
    t0 = time.perf_counter()
    tok, tok_stats = _tokenizer_pass(cfg, reused, _records(spool, moved), kept, reporter, progress)
    t_tok = time.perf_counter() - t0

    # Pass 3: encode.
    t0 = time.perf_counter()
    bins = [work / "train.bin", work / "val.bin"]
    shards = _encode(tok, _records(spool, moved), sum(kept.split_bytes), bins, progress)
    t_enc = time.perf_counter() - t0
    if shards.unknown:
        reporter.note(f"{shards.unknown} tokens are the tokenizer's unknown token: it cannot represent all of "
                      "the text")

    # Outputs: meta.json goes first (the old directory stops looking complete) and comes back last.
    (out / META).unlink(missing_ok=True)
    with atomic_dir(out / TOKENIZER_DIR) as tmp:
        tok.save_pretrained(str(tmp))
    for split, path in enumerate(bins):
        os.replace(path, out / f"{SPLITS[split]}.bin")
    splits = {name: {"documents": kept.split_docs[i], "tokens": shards.tokens[i], "bytes": kept.split_bytes[i]}
              for i, name in enumerate(SPLITS)}
    seconds = {"read_clean_dedupe": round(t_read, 3), "tokenizer": round(t_tok, 3), "encode": round(t_enc, 3),
               "total": round(time.perf_counter() - t_start, 3)}
    stats = _stats(cfg, out, files, reporter, opts, kept, splits, val_is_tail, shards, tok_stats, seconds)
    _warn_small_val(stats, cfg, reporter)
    atomic_write_json(out / STATS, stats)
    meta = {
        "format": FORMAT,
        "version": 1,
        "dtype": shards.dtype.str,
        "vocab_size": shards.vocab_size,
        "doc_separator_id": shards.doc_separator_id,
        "tokenizer": TOKENIZER_DIR,
        "splits": splits,
    }
    atomic_write_json(out / META, meta)
    return stats


# --------------------------------------------------------------------------------------------------
# Pass 1: read -> clean -> filter -> deduplicate -> train or val -> spool


@dataclasses.dataclass
class _Kept:
    """What pass 1 kept: document counts, and documents, bytes and characters per split (TRAIN, VAL).

    `lowest` and `highest` hold the documents nearest each end of the hash range, as (±fraction,
    index, nbytes, nchars): if a split ends up empty, one of them moves (see `_fill_empty_splits`)."""

    docs: dict[str, int] = dataclasses.field(default_factory=lambda: {
        "in": 0, "empty": 0, "too_short": 0, "exact_duplicates": 0, "near_duplicates": 0, "kept": 0})
    files_read: int = 0
    split_docs: list[int] = dataclasses.field(default_factory=lambda: [0, 0])
    split_bytes: list[int] = dataclasses.field(default_factory=lambda: [0, 0])
    split_chars: list[int] = dataclasses.field(default_factory=lambda: [0, 0])
    lowest: list[tuple[float, int, int, int]] = dataclasses.field(default_factory=list)
    highest: list[tuple[float, int, int, int]] = dataclasses.field(default_factory=list)


def _read_clean_dedupe(cfg: PrepareConfig, files: list, opts: ReadOptions, reporter: Reporter, spool: _Spool,
                       progress: bool) -> _Kept:
    """Pass 1: every document of `files`, cleaned, goes to `spool` unless it is empty, too short or a
    duplicate; closes the spool. The duplicate index is freed on return, before the tokenizer trainer
    needs the memory."""
    dedup = (Deduplicator(exact=cfg.dedupe, near=cfg.near_dedupe, threshold=cfg.near_dup_threshold)
             if cfg.dedupe or cfg.near_dedupe else None)
    seed_key = cfg.seed.to_bytes(8, "little", signed=True)
    kept = _Kept()
    pending: list[str] = []
    pending_chars = 0
    try:
        with _bar(progress, sum(f.size for f in files), "reading") as bar:
            done = 0
            for item in files:
                skipped_before = len(reporter.skipped_files)
                for raw_doc in read_file(item, opts, reporter, on_read=bar.update):
                    kept.docs["in"] += 1
                    text = clean_text(raw_doc.text, cfg.normalize)
                    if not text:
                        kept.docs["empty"] += 1
                        continue
                    if len(text) < cfg.min_chars:
                        kept.docs["too_short"] += 1
                        continue
                    pending.append(text)
                    pending_chars += len(text)
                    if len(pending) >= _BATCH_DOCS or pending_chars >= _BATCH_CHARS:
                        _keep_batch(pending, dedup, seed_key, cfg.val_fraction, spool, kept)
                        pending_chars = 0
                kept.files_read += len(reporter.skipped_files) == skipped_before
                done += item.size
                if bar.n < done:
                    bar.update(done - bar.n)
            _keep_batch(pending, dedup, seed_key, cfg.val_fraction, spool, kept)
    finally:
        spool.close()
    return kept


def _keep_batch(pending: list[str], dedup: Deduplicator | None, seed_key: bytes, val_fraction: float,
                spool: _Spool, kept: _Kept) -> None:
    """Deduplicate a batch of cleaned documents, assign each survivor to train or val by a keyed hash
    of its text, and spool it; empties `pending`."""
    data = [t.encode("utf-8") for t in pending]
    verdicts = dedup.check_batch(pending, data) if dedup else [None] * len(pending)
    for text, raw, verdict in zip(pending, data, verdicts, strict=True):
        if verdict == "exact":
            kept.docs["exact_duplicates"] += 1
            continue
        if verdict == "near":
            kept.docs["near_duplicates"] += 1
            continue
        digest = hashlib.blake2b(raw, digest_size=16, key=seed_key).digest()
        u = _fraction(digest)
        split = VAL if u < val_fraction else TRAIN
        index = kept.docs["kept"]
        for heap, key in ((kept.lowest, -u), (kept.highest, u)):
            heapq.heappush(heap, (key, index, len(raw), len(text)))
            if len(heap) > _MOVE_CANDIDATES:
                heapq.heappop(heap)
        spool.write(split, int.from_bytes(digest[8:], "little"), raw)
        kept.docs["kept"] += 1
        kept.split_docs[split] += 1
        kept.split_bytes[split] += len(raw)
        kept.split_chars[split] += len(text)
    pending.clear()


def _cut_lone_document(spool: _Spool, path: Path, val_fraction: float, kept: _Kept) -> _Spool:
    """One document (a single small file, say) cannot be split by document: its end becomes the
    validation split, as nanoGPT cuts a text 90/10. Returns a new spool, at `path`, with the two parts."""
    [(_, _, key, data)] = spool.read()
    parts = _cut_tail(data.decode("utf-8"), val_fraction)
    spool = _Spool(path)
    for split, text in zip((TRAIN, VAL), parts, strict=True):
        raw = text.encode("utf-8")
        spool.write(split, key, raw)
        kept.split_docs[split], kept.split_bytes[split], kept.split_chars[split] = 1, len(raw), len(text)
    spool.close()
    return spool


def _fill_empty_splits(kept: _Kept, val_fraction: float) -> dict[int, int]:
    """At least one validation document when there are two or more (val_fraction > 0), and always at
    least one training document. If a split is empty, one of the documents whose hash lies nearest
    the cut moves: for validation the one whose size is closest to the requested share of the text,
    for training the largest. Returns {document index: its new split}; updates `kept`'s totals."""
    moved: dict[int, int] = {}

    def move(candidate: tuple[float, int, int, int], new: int) -> None:
        _, index, nbytes, nchars = candidate
        old = 1 - new
        moved[index] = new
        kept.split_docs[old] -= 1
        kept.split_bytes[old] -= nbytes
        kept.split_chars[old] -= nchars
        kept.split_docs[new] += 1
        kept.split_bytes[new] += nbytes
        kept.split_chars[new] += nchars

    if kept.docs["kept"] >= 2 and val_fraction > 0 and kept.split_docs[VAL] == 0:
        target = val_fraction * sum(kept.split_bytes)
        move(min(kept.lowest, key=lambda c: (abs(c[2] - target), -c[0], c[1])), VAL)
    if kept.split_docs[TRAIN] == 0:
        move(max(kept.highest, key=lambda c: (c[2], c[0], -c[1])), TRAIN)
    return moved


def _records(spool: _Spool, moved: dict[int, int]) -> Iterator[tuple[int, int, bytes]]:
    """(split, sample key, data) of the spooled documents, with the moves of `_fill_empty_splits`."""
    for index, split, key, data in spool.read():
        yield moved.get(index, split), key, data


# --------------------------------------------------------------------------------------------------
# Pass 2: the tokenizer


def _tokenizer_pass(cfg: PrepareConfig, reused: PreTrainedTokenizerBase | None,
                    records: Iterator[tuple[int, int, bytes]], kept: _Kept, reporter: Reporter,
                    progress: bool) -> tuple[PreTrainedTokenizerBase, dict]:
    """`--tokenizer`'s tokenizer, or one trained on a uniform sample of the train documents of at most
    --tokenizer-sample-chars characters; and its entry in stats.json."""
    if reused is not None:
        return reused, {"source": str(cfg.tokenizer), "vocab_size": len(reused)}
    budget = cfg.tokenizer_sample_chars
    p = min(1.0, budget / max(1, kept.split_chars[TRAIN]))
    sample = {"chars": 0, "documents": 0}
    tok = train_tokenizer(_sample_train_texts(records, p, budget, sample), cfg.vocab_size,
                          length=max(1, round(kept.split_docs[TRAIN] * p)), show_progress=progress)
    tok_stats = {"source": "trained", "vocab_size": len(tok), "requested_vocab_size": cfg.vocab_size,
                 "trained_on_documents": sample["documents"], "trained_on_chars": sample["chars"]}
    if len(tok) < cfg.vocab_size:
        reporter.note(f"the text supports only {len(tok)} tokens (asked for --vocab-size {cfg.vocab_size}); "
                      "the tokenizer is smaller")
    return tok, tok_stats


def _sample_train_texts(records: Iterator[tuple[int, int, bytes]], p: float, budget: int,
                        sample: dict[str, int]) -> Iterator[str]:
    """The train documents whose sample key falls below `p`, until `budget` characters (at least one
    document); counts what it yields in `sample`."""
    for split, key, data in records:
        if split != TRAIN or key / 2.0**64 >= p:
            continue
        text = data.decode("utf-8")
        if sample["chars"] + len(text) > budget and sample["documents"]:
            return
        sample["chars"] += len(text)
        sample["documents"] += 1
        yield text


# --------------------------------------------------------------------------------------------------
# Pass 3: encode into the token shards


@dataclasses.dataclass
class _Shards:
    """What pass 3 wrote: tokens per split (TRAIN, VAL), how many were the unknown token, and the
    shards' id type and document separator."""

    tokens: list[int]
    unknown: int
    dtype: np.dtype
    vocab_size: int
    doc_separator_id: int


def _encode(tok: PreTrainedTokenizerBase, records: Iterator[tuple[int, int, bytes]], total_bytes: int,
            paths: list[Path], progress: bool) -> _Shards:
    """Pass 3: encode the documents in batches and append their ids, each document preceded by the
    document separator, to paths[TRAIN] or paths[VAL]; the files are synced to disk."""
    vocab = len(tok)
    sep = doc_separator_id(tok)
    dtype = token_dtype(vocab)
    unk = tok.unk_token_id
    encode = _batch_encoder(tok)
    shards = _Shards(tokens=[0, 0], unknown=0, dtype=dtype, vocab_size=vocab, doc_separator_id=sep)
    handles = [open(p, "wb", buffering=1 << 20) for p in paths]  # noqa: SIM115 - closed below
    try:
        with _bar(progress, total_bytes, "encoding") as bar:
            for batch in _encode_batches(records, bar):
                ids_list = encode([t for _, t in batch])
                for split in (TRAIN, VAL):
                    flat: list[int] = []
                    for (s, _), ids in zip(batch, ids_list, strict=True):
                        if s == split:
                            flat.append(sep)
                            flat.extend(ids)
                    if not flat:
                        continue
                    arr = np.array(flat, dtype=np.int64)
                    top = int(arr.max())
                    if top >= vocab or top > np.iinfo(dtype).max:
                        raise UserError(f"the tokenizer produced id {top}, outside its vocabulary of {vocab}; "
                                        "it is inconsistent (check --tokenizer)")
                    if unk is not None:
                        shards.unknown += int(np.count_nonzero(arr == unk))
                    arr.astype(dtype).tofile(handles[split])
                    shards.tokens[split] += len(arr)
        for h in handles:
            h.flush()
            os.fsync(h.fileno())
    finally:
        for h in handles:
            h.close()
    return shards


def _encode_batches(records: Iterator[tuple[int, int, bytes]], bar) -> Iterator[list[tuple[int, str]]]:
    """(split, text) batches of at most _ENCODE_DOCS documents or about _ENCODE_BYTES bytes."""
    batch: list[tuple[int, str]] = []
    batch_bytes = 0
    for split, _, data in records:
        batch.append((split, data.decode("utf-8")))
        batch_bytes += len(data)
        bar.update(len(data))
        if len(batch) >= _ENCODE_DOCS or batch_bytes >= _ENCODE_BYTES:
            yield batch
            batch, batch_bytes = [], 0
    if batch:
        yield batch


# --------------------------------------------------------------------------------------------------
# Statistics and messages


def _stats(cfg: PrepareConfig, out: Path, files: list, reporter: Reporter, opts: ReadOptions, kept: _Kept,
           splits: dict, val_is_tail: bool, shards: _Shards, tok_stats: dict, seconds: dict) -> dict:
    """The contents of stats.json."""
    total_tokens = sum(shards.tokens)
    return {
        "out": str(out),
        "inputs": list(cfg.inputs),
        "files": {
            "found": len(files),
            "read": kept.files_read,
            "skipped": len(reporter.skipped_files),
            "ignored": sum(reporter.ignored.values()),
            "input_bytes": sum(f.size for f in files),
        },
        "skipped_files": reporter.skipped_files,
        "ignored_files": dict(reporter.ignored),
        "skipped_records": reporter.skipped_records,
        "problems": reporter.problems,
        "documents": {**kept.docs, "long_documents_cut": opts.cuts},
        "splits": splits,
        "val_is_tail": val_is_tail,
        "bytes_per_token": round(sum(kept.split_bytes) / total_tokens, 4) if total_tokens else None,
        "unknown_tokens": shards.unknown,
        "tokenizer": tok_stats,
        "config": to_dict(cfg),
        "seconds": seconds,
    }


def _nothing_left(docs: dict, cfg: PrepareConfig, files_read: int, reporter: Reporter) -> str:
    parts = [f"{docs['in']} documents read from {files_read} file(s)"]
    for key, label in [("empty", "empty after cleaning"),
                       ("too_short", f"shorter than --min-chars {cfg.min_chars}"),
                       ("exact_duplicates", "exact duplicates"), ("near_duplicates", "near duplicates")]:
        if docs[key]:
            parts.append(f"{docs[key]} {label}")
    if reporter.skipped_files:
        parts.append(f"{len(reporter.skipped_files)} file(s) skipped")
    if reporter.skipped_records:
        parts.append(f"{reporter.skipped_records} record(s) skipped")
    return "no documents left to prepare: " + "; ".join(parts)


def _warn_small_val(stats: dict, cfg: PrepareConfig, reporter: Reporter) -> None:
    if cfg.val_fraction <= 0:
        return
    if stats["val_is_tail"]:
        return  # the summary says so
    val, total = stats["splits"]["val"], stats["documents"]["kept"]
    if total == 1:
        reporter.note(f"only one document: the validation split is empty (a lone document is cut for validation "
                      f"only from {MIN_TAIL_SPLIT_CHARS:,} characters). Use --doc-boundary blank or line "
                      "to make more, smaller documents from a single text")
    elif total < 20:
        share = val["bytes"] / max(1, sum(s["bytes"] for s in stats["splits"].values()))
        reporter.note(f"only {total} documents: validation holds {val['documents']} ({share:.0%} of the text). "
                      "--doc-boundary blank or line makes more, smaller documents")


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def summary(stats: dict) -> str:
    """A few human-readable lines for the CLI to print after `prepare`."""
    d, f, s = stats["documents"], stats["files"], stats["splits"]
    removed = [f"{d['empty'] + d['too_short']} empty or too short", f"{d['exact_duplicates']} exact duplicates",
               f"{d['near_duplicates']} near duplicates"]
    skipped = []
    if f["skipped"]:
        skipped.append(f"{f['skipped']} file(s) skipped")
    if stats["skipped_records"]:
        skipped.append(f"{stats['skipped_records']} bad record(s) skipped")
    if f["ignored"]:
        skipped.append(f"{f['ignored']} other file(s) ignored")
    tok = stats["tokenizer"]
    tok_line = (f"trained, {tok['vocab_size']:,} tokens" if tok["source"] == "trained"
                else f"{tok['source']} ({tok['vocab_size']:,} tokens)")
    lines = [
        f"prepared {stats['out']}: {d['kept']:,} documents from {f['read']:,} file(s) "
        f"({_fmt_bytes(f['input_bytes'])} read)",
        f"  removed: {', '.join(removed)}" + (f"; {', '.join(skipped)}" if skipped else ""),
    ]
    for name in SPLITS:
        lines.append(f"  {name + ':':6} {s[name]['documents']:>10,} documents {s[name]['tokens']:>14,} tokens "
                     f"{_fmt_bytes(s[name]['bytes']):>10}")
    if stats.get("val_is_tail"):
        share = s["val"]["bytes"] / max(1, s["train"]["bytes"] + s["val"]["bytes"])
        lines.append(f"  one document: its last {share:.0%} held out for validation")
    bpt = stats["bytes_per_token"]
    lines.append(f"  tokenizer: {tok_line}" + (f", {bpt:.2f} bytes/token" if bpt else "")
                 + f"; {stats['seconds']['total']:.1f} s")
    return "\n".join(lines)
