"""Token shards: flat little-endian token ids (`train.bin`, `val.bin`) plus `meta.json`.

The layout is the one nanoGPT and llm.c read: a raw array of uint16 ids when the vocabulary fits in
16 bits, uint32 otherwise, with no header. `meta.json` records the dtype, vocabulary size, the
document-separator token and per-split counts; the tokenizer lives in `DATA_DIR/tokenizer/`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pocketlm.errors import UserError

META = "meta.json"
STATS = "stats.json"
TOKENIZER_DIR = "tokenizer"
FORMAT = "pocketlm-tokens"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


def read_meta(data_dir: str | Path) -> dict:
    data_dir = Path(data_dir)
    path = data_dir / META
    if not path.exists():
        raise UserError(f"{data_dir}: not a prepared data directory (no {META}); run `pocketlm prepare` first")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: not a pocketlm token directory (format={meta.get('format')!r})")
    return meta


def load_tokens(data_dir: str | Path, split: str) -> np.memmap:
    """Memory-map one split's token ids (read-only; nothing is loaded until used)."""
    data_dir = Path(data_dir)
    meta = read_meta(data_dir)
    path = data_dir / f"{split}.bin"
    if not path.exists():
        raise UserError(f"{path}: missing; the data directory has no '{split}' split")
    dtype = np.dtype(meta["dtype"])
    if path.stat().st_size % dtype.itemsize:
        raise UserError(f"{path}: size is not a multiple of {dtype.itemsize} bytes; the file is damaged")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the '{split}' split is empty (the input had too few documents to split); "
                        "prepare again with more files or --doc-boundary blank / line")
    return np.memmap(path, dtype=dtype, mode="r")
