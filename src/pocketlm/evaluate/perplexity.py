"""`pocketlm eval`: loss, perplexity and bits per byte, plus size, memory and speed figures.

Bits per byte (total nats / ln 2 / UTF-8 bytes of the text) compares models with different
tokenizers; perplexity only compares models that share one.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pocketlm.data.shards import TOKENIZER_DIR, load_tokens, read_meta
from pocketlm.data.tokenizer import encode_document, load_tokenizer
from pocketlm.errors import UserError
from pocketlm.inference.engine import SamplingConfig, generate_ids
from pocketlm.model.io import resolve_model_dir


def _same_tokenizer(a, b) -> bool:
    return a.get_vocab() == b.get_vocab() and len(a) == len(b)


def eval_tokens(data: str | Path, tokenizer) -> tuple[np.ndarray, int, str]:
    """(token ids, UTF-8 bytes they encode, description) for a prepared data dir's val split or a text file."""
    data = Path(data)
    if data.is_dir():
        meta = read_meta(data)
        data_tok = load_tokenizer(data / TOKENIZER_DIR)
        if not _same_tokenizer(data_tok, tokenizer):
            raise UserError(f"{data}: prepared with a different tokenizer than the model's; evaluate on a text "
                            "file instead, or prepare the data with --tokenizer MODEL")
        return np.asarray(load_tokens(data, "val")), meta["splits"]["val"]["bytes"], f"{data} (val split)"
    if not data.exists():
        raise UserError(f"{data}: no such file or directory")
    try:
        text = data.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{data}: not valid UTF-8 text (byte {e.start})") from None
    if not text.strip():
        raise UserError(f"{data}: empty file")
    ids = encode_document(tokenizer, text)
    return np.asarray(ids, dtype=np.int64), len(text.encode("utf-8")), str(data)


@torch.inference_mode()
def sequence_loss(model, tokens: np.ndarray, context: int, batch_size: int = 8,
                  max_tokens: int | None = None) -> tuple[float, int, float]:
    """Sum of next-token losses over non-overlapping windows; returns (total nats, tokens scored, seconds)."""
    device = next(model.parameters()).device
    toks = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    if max_tokens:
        toks = toks[: max_tokens + 1]
    n_windows = max(1, math.ceil((len(toks) - 1) / context))
    total, count = 0.0, 0
    t0 = time.perf_counter()
    windows = [toks[i * context: i * context + context + 1] for i in range(n_windows)]
    windows = [w for w in windows if len(w) >= 2]
    for i in range(0, len(windows), batch_size):
        group = windows[i:i + batch_size]
        width = max(len(w) for w in group)
        x = torch.zeros(len(group), width - 1, dtype=torch.long)
        y = torch.full((len(group), width - 1), -100, dtype=torch.long)
        for j, w in enumerate(group):
            x[j, : len(w) - 1] = w[:-1]
            y[j, : len(w) - 1] = w[1:]
        logits = model(input_ids=x.to(device)).logits.float()
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.to(device).view(-1),
                                                 ignore_index=-100, reduction="sum")
        total += float(loss)
        count += int((y != -100).sum())
    return total, count, time.perf_counter() - t0


def decode_speed(model, tokenizer, n_tokens: int = 64) -> float:
    return decode_measure(model, tokenizer, n_tokens)["decode_tokens_per_s"]


def decode_measure(model, tokenizer, n_tokens: int = 64) -> dict:
    """Greedy decoding of `n_tokens` after "The": tokens/s and energy per token (evaluate/energy.py)."""
    from pocketlm.evaluate.energy import EnergyMeter, per_token
    prompt = tokenizer.encode("The", add_special_tokens=True)
    cfg = SamplingConfig(max_new_tokens=n_tokens, temperature=0.0)
    list(generate_ids(model, prompt, SamplingConfig(max_new_tokens=4, temperature=0.0)))  # warm-up
    with EnergyMeter(next(model.parameters()).device.type) as meter:
        t0 = time.perf_counter()
        n = sum(1 for _ in generate_ids(model, prompt, cfg))
        seconds = time.perf_counter() - t0
    energy = per_token(meter.energy, n)
    return {"decode_tokens_per_s": round(n / max(seconds, 1e-9), 1),
            "decode_joules_per_token": energy["joules_per_token"], "energy_source": energy["energy_source"]}


def evaluate_model(model, tokenizer, model_path: str | Path, data: str | Path, *, context: int | None = None,
                   batch_size: int = 8, max_tokens: int | None = None) -> dict:
    tokens, n_bytes, desc = eval_tokens(data, tokenizer)
    context = context or min(model.config.max_position_embeddings, 1024)
    if max_tokens and max_tokens < len(tokens) - 1:
        n_bytes = int(n_bytes * max_tokens / (len(tokens) - 1))  # proportional share of the bytes
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    nats, count, seconds = sequence_loss(model, tokens, context, batch_size, max_tokens)
    loss = nats / count
    model_dir = resolve_model_dir(model_path)
    file_bytes = sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {
        "model": str(model_dir),
        "data": desc,
        "tokens": count,
        "loss": round(loss, 5),
        "perplexity": round(math.exp(min(loss, 50)), 3),
        "bits_per_byte": round(nats / math.log(2) / max(n_bytes, 1), 5),
        "parameters": sum(p.numel() for p in model.parameters()),
        "file_bytes": file_bytes,
        "peak_memory_bytes": int(peak),
        "eval_tokens_per_s": round(count / max(seconds, 1e-9), 1),
        **decode_measure(model, tokenizer),
        "context": context,
    }


def format_report(r: dict) -> str:
    lines = [
        f"model        {r['model']}",
        f"data         {r['data']} ({r['tokens']:,} tokens)",
        f"loss         {r['loss']:.4f} nats/token",
        f"perplexity   {r['perplexity']:.2f}",
        f"bits/byte    {r['bits_per_byte']:.4f}",
        f"parameters   {r['parameters'] / 1e6:.2f}M ({r['file_bytes'] / 1e6:.1f} MB on disk)",
        f"peak memory  {r['peak_memory_bytes'] / 2**20:.0f} MiB",
        f"speed        {r['eval_tokens_per_s']:,.0f} tokens/s scoring, {r['decode_tokens_per_s']:,.1f} tokens/s decoding",
    ]
    if "decode_joules_per_token" in r:
        lines.append(f"energy       {r['decode_joules_per_token']:.3g} J per decoded token ({r['energy_source']})")
    return "\n".join(lines)


def print_report(r: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(r))
    else:
        print(format_report(r))
    sys.stdout.flush()
