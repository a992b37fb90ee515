"""The options of `pocketlm prepare` (one field = one flag = one YAML key), apart from the data pipeline,
which imports tokenizers and transformers, so that the CLI's help starts at once."""

from __future__ import annotations

from dataclasses import dataclass

from pocketlm.config import field
from pocketlm.data.clean import NORMALIZE_CHOICES
from pocketlm.data.sources import DOC_BOUNDARIES

MIN_VOCAB = 260  # the 256 byte tokens and the 4 special tokens of pocketlm.data.tokenizer (checked there)


@dataclass
class PrepareConfig:
    inputs: list[str] = field(
        help="files and folders of text to prepare (folders are searched recursively): .txt .md .jsonl .json "
             ".csv .tsv .html; other files in folders are skipped, a file named explicitly is read as text",
        positional=True, metavar="INPUT")
    out: str = field(help="output data directory (created; existing outputs in it are replaced)", metavar="DATA_DIR")
    vocab_size: int = field(4096, help="tokens in the trained tokenizer, special tokens included "
                                       f"(at least {MIN_VOCAB}; ignored with --tokenizer)")
    tokenizer: str | None = field(None, help="reuse this tokenizer instead of training one: a Hugging Face "
                                             "model or tokenizer folder, or a prepared DATA_DIR", metavar="DIR")
    val_fraction: float = field(0.05, help="fraction of documents held out for validation, chosen by a hash of "
                                           "each document (at least one when there are two or more; a single "
                                           "document gives about this fraction of its end)")
    min_chars: int = field(16, help="drop documents shorter than this many characters after cleaning")
    normalize: str = field("NFC", help="Unicode normalisation of the text; NFKC also folds compatibility "
                                       "characters (ligatures, full-width forms)", choices=NORMALIZE_CHOICES)
    dedupe: bool = field(True, help="remove documents whose cleaned text exactly repeats an earlier one")
    near_dedupe: bool = field(True, help="remove near-duplicate documents (MinHash LSH over word 5-grams)")
    near_dup_threshold: float = field(0.8, help="Jaccard similarity of word 5-gram sets at which a document "
                                                "counts as a near duplicate of an earlier one")
    text_field: str = field("text", help="JSON/JSONL field that holds the document text")
    text_column: str = field("text", help="CSV/TSV column (named in the header row) that holds the document text")
    template: str | None = field(None, help="build each document from JSON fields or CSV columns, e.g. "
                                            "'Question: {question}\\nAnswer: {answer}' (\\n and \\t are "
                                            "understood); overrides --text-field/--text-column")
    doc_boundary: str = field("auto", help="how .txt/.md files split into documents: file (whole file), line "
                                           "(each non-empty line), blank (at blank lines), separator (at lines "
                                           "that are exactly <|endoftext|>), auto (separator if the file has such "
                                           "a line, else file)", choices=DOC_BOUNDARIES)
    strict: bool = field(False, help="stop at the first bad file or record instead of warning and skipping it")
    seed: int = field(0, help="seed for the train/validation split and the tokenizer's training sample")
    tokenizer_sample_chars: int = field(200_000_000, help="train the tokenizer on at most this many "
                                                          "characters of train documents (a uniform sample)")
