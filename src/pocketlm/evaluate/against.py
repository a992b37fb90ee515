"""`pocketlm eval MODEL --against REFERENCE`: what shrinking a model cost, measured the way llama.cpp's
perplexity tool measures it.

Both models read the same tokens (the reference's tokenizer on a text file, or a prepared data directory's
val split) in the same windows of `context` tokens, and for every position this compares their next-token
distributions:
- perplexity of each on the actual next tokens, and its change in percent;
- KL divergence KL(reference || model), in nats per token: mean, median, 99th percentile and maximum;
- the share of positions where both put the same token first ("same top token").
Plus what the shrinking bought: file size, and greedy decoding speed of each.

Either side may be a model directory (or run) run by PyTorch, or a GGUF file run by llama.cpp (so a
quantized file is measured with the arithmetic that will run it). The two must share a vocabulary.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from pocketlm.errors import UserError


class TorchSide:
    """A model directory or run, through transformers."""

    def __init__(self, path: str, device: torch.device):
        from pocketlm.model.io import load_model, resolve_model_dir
        self.path = path
        self.model, self.tokenizer = load_model(path, device=device)
        self.model.eval()
        self.vocab = self.model.config.vocab_size
        self.bytes = sum(p.stat().st_size for p in Path(resolve_model_dir(path)).glob("*.safetensors"))
        self.kind = f"PyTorch {str(next(self.model.parameters()).dtype).replace('torch.', '')}"

    def tokens(self, data: str) -> np.ndarray:
        from pocketlm.evaluate.perplexity import eval_tokens
        return eval_tokens(data, self.tokenizer)[0]

    @torch.inference_mode()
    def logits(self, ids: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(ids.astype(np.int64))[None].to(next(self.model.parameters()).device)
        return self.model(input_ids=x).logits[0].float().cpu().numpy()

    def decode_speed(self) -> dict:
        from pocketlm.evaluate.perplexity import decode_measure
        return decode_measure(self.model, self.tokenizer)


class GGUFSide:
    """A GGUF file, through llama.cpp (logits for every position)."""

    def __init__(self, path: str, context: int):
        from pocketlm.inference.llamacpp import new_gguf
        self.path = path
        self.llm = new_gguf(path, n_ctx=context, logits_all=True, n_batch=context)
        self.vocab = self.llm.n_vocab()
        self.bytes = Path(path).stat().st_size
        self.kind = f"llama.cpp {gguf_file_type(path)}"

    def tokens(self, data: str) -> np.ndarray:
        path = Path(data)
        if path.is_dir():  # a prepared directory's val split, if its tokenizer is this file's
            from pocketlm.data.shards import TOKENIZER_DIR, load_tokens
            from pocketlm.data.tokenizer import load_tokenizer
            tok = load_tokenizer(path / TOKENIZER_DIR)
            probe = "Hello there: is this the same tokenizer? 123 times."
            if len(tok) != self.vocab or tok.encode(probe, add_special_tokens=False) != \
                    self.llm.tokenize(probe.encode(), add_bos=False, special=False):
                raise UserError(f"{data} was prepared with another tokenizer than {self.path}'s; give a text file")
            return np.asarray(load_tokens(path, "val"), dtype=np.int64)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"{data}: no such file") from None
        except UnicodeDecodeError as e:
            raise UserError(f"{data}: not valid UTF-8 text (byte {e.start})") from None
        return np.asarray(self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False), dtype=np.int64)

    def logits(self, ids: np.ndarray) -> np.ndarray:
        self.llm.reset()
        self.llm.eval([int(i) for i in ids])
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def decode_speed(self, n_tokens: int = 64) -> dict:
        from pocketlm.evaluate.energy import EnergyMeter, per_token
        from pocketlm.inference.llamacpp import greedy_token_ids, new_gguf
        llm = new_gguf(self.path, n_ctx=n_tokens + 16)  # a plain context: logits for the last position only
        try:
            prompt = llm.tokenize(b"The", add_bos=True)
            greedy_token_ids(llm, prompt, 4, stop_ids=())  # warm-up
            with EnergyMeter("cpu") as meter:  # llama.cpp's threads are this process's: its CPU time counts
                t0 = time.perf_counter()
                n = len(greedy_token_ids(llm, prompt, n_tokens, stop_ids=()))
                seconds = time.perf_counter() - t0
        finally:
            llm.close()
        energy = per_token(meter.energy, n)
        return {"decode_tokens_per_s": round(n / max(seconds, 1e-9), 1),
                "decode_joules_per_token": energy["joules_per_token"], "energy_source": energy["energy_source"]}


def _gguf_field(reader, name: str):
    field = reader.fields.get(name)
    return None if field is None else field.parts[field.data[0]]


def trained_context(path: str | Path) -> int | None:
    """The context length a model was trained for (config.json, or the GGUF header), None if unknown."""
    from pocketlm.inference.llamacpp import is_gguf
    try:
        if is_gguf(path):
            import gguf
            reader = gguf.GGUFReader(str(path))
            arch = bytes(_gguf_field(reader, "general.architecture")).decode()
            value = _gguf_field(reader, f"{arch}.context_length")
            return int(value[0]) if value is not None else None
        from pocketlm.model.io import resolve_model_dir
        config = json.loads((Path(resolve_model_dir(path)) / "config.json").read_text(encoding="utf-8"))
        return config.get("max_position_embeddings")
    except (ValueError, OSError, TypeError, IndexError, UserError):
        return None


def gguf_file_type(path: str | Path) -> str:
    """The quantization a GGUF file says it has (general.file_type), e.g. 'Q4_K_M'."""
    import gguf
    try:
        reader = gguf.GGUFReader(str(path))
        field = reader.fields.get("general.file_type")
        value = int(field.parts[field.data[0]][0]) if field is not None else None
    except (ValueError, OSError, IndexError):
        return "unknown type"
    if value is None:
        return "unknown type"
    try:
        return gguf.LlamaFileType(value).name.replace("MOSTLY_", "").replace("ALL_", "")
    except ValueError:
        return f"type {value}"


def open_side(path: str, context: int, device: torch.device):
    from pocketlm.inference.llamacpp import is_gguf
    if not Path(path).exists():
        raise UserError(f"{path}: no such model directory or GGUF file")
    return GGUFSide(path, context) if is_gguf(path) else TorchSide(path, device)


def compare_logits(ref: np.ndarray, cand: np.ndarray, targets: np.ndarray) -> dict:
    """Per-position figures of two (n, vocab) logit arrays against the actual next tokens (n,). In float32 with
    torch (threaded, in place where it can be): a 135M model's 512 x 49k window is 100 MB an array."""
    lr = torch.log_softmax(torch.from_numpy(ref).float(), dim=-1)
    lc = torch.log_softmax(torch.from_numpy(cand).float(), dim=-1)
    rows, t = torch.arange(len(targets)), torch.from_numpy(np.asarray(targets, dtype=np.int64))
    same_top = lr.argmax(-1) == lc.argmax(-1)
    nll_ref, nll_model = -lr[rows, t], -lc[rows, t]
    lc.neg_().add_(lr)  # lc := lr - lc
    kl = (lr.exp_() * lc).sum(-1).clamp_min_(0.0)  # lr := p_ref
    return {"nll_ref": nll_ref.double().numpy(), "nll_model": nll_model.double().numpy(), "kl": kl.double().numpy(),
            "same_top": same_top.numpy()}


def evaluate_against(model: str, reference: str, data: str, *, context: int = 512, max_tokens: int = 16384,
                     device: torch.device | None = None, speed: bool = True) -> dict:
    device = device or torch.device("cpu")
    limits = [c for c in (trained_context(reference), trained_context(model)) if c]
    context = min([context, *limits])  # windows no longer than either model was trained for
    ref = open_side(reference, context, device)
    cand = open_side(model, context, device)
    if ref.vocab != cand.vocab:
        raise UserError(f"{model} has a vocabulary of {cand.vocab} tokens and {reference} of {ref.vocab}: "
                        "--against compares models that share a tokenizer")
    tokens = ref.tokens(data)[: max_tokens + 1]
    if len(tokens) < 2:
        raise UserError(f"{data}: too little text to score (fewer than 2 tokens)")
    parts: dict[str, list] = {"nll_ref": [], "nll_model": [], "kl": [], "same_top": []}
    t0 = time.perf_counter()
    for start in range(0, len(tokens) - 1, context):
        window = tokens[start: start + context + 1]
        if len(window) < 2:
            break
        got = compare_logits(ref.logits(window[:-1]), cand.logits(window[:-1]), window[1:])
        for k, v in got.items():
            parts[k].append(v)
    seconds = time.perf_counter() - t0
    a = {k: np.concatenate(v) for k, v in parts.items()}
    ppl_ref, ppl_model = math.exp(float(a["nll_ref"].mean())), math.exp(float(a["nll_model"].mean()))
    result = {
        "model": {"path": str(model), "runs_on": cand.kind, "bytes": cand.bytes, "perplexity": round(ppl_model, 4)},
        "reference": {"path": str(reference), "runs_on": ref.kind, "bytes": ref.bytes,
                      "perplexity": round(ppl_ref, 4)},
        "data": str(data), "tokens": int(len(a["kl"])), "context": context,
        "perplexity_change_pct": round(100 * (ppl_model / ppl_ref - 1), 3),
        "kl_mean": round(float(a["kl"].mean()), 6), "kl_median": round(float(np.median(a["kl"])), 6),
        "kl_p99": round(float(np.quantile(a["kl"], 0.99)), 6), "kl_max": round(float(a["kl"].max()), 6),
        "same_top_token_pct": round(100 * float(a["same_top"].mean()), 2),
        "size_ratio": round(ref.bytes / max(cand.bytes, 1), 2),
        "seconds": round(seconds, 1),
    }
    if speed:
        for side, measured in (("reference", ref.decode_speed()), ("model", cand.decode_speed())):
            result["energy_source"] = measured.pop("energy_source")
            result[side].update(measured)
    return result


def format_against(r: dict) -> str:
    m, ref = r["model"], r["reference"]
    lines = [f"{'':<16}{'reference':>22}{'model':>22}",
             f"{'file':<16}{ref['path'][-22:]:>22}{m['path'][-22:]:>22}",
             f"{'runs on':<16}{ref['runs_on']:>22}{m['runs_on']:>22}",
             f"{'size':<16}{ref['bytes'] / 1e6:>19.1f} MB{m['bytes'] / 1e6:>19.1f} MB   ({r['size_ratio']}x smaller)",
             f"{'perplexity':<16}{ref['perplexity']:>22.3f}{m['perplexity']:>22.3f}   "
             f"({r['perplexity_change_pct']:+.2f}%)"]
    if "decode_tokens_per_s" in m:
        lines.append(f"{'decode tokens/s':<16}{ref['decode_tokens_per_s']:>22.1f}{m['decode_tokens_per_s']:>22.1f}")
        lines.append(f"{'J per token':<16}{ref['decode_joules_per_token']:>22.3g}{m['decode_joules_per_token']:>22.3g}"
                     f"   (decoding; {r['energy_source']})")
    lines += [f"KL divergence   mean {r['kl_mean']:.5f}, median {r['kl_median']:.5f}, 99th percentile "
              f"{r['kl_p99']:.5f}, max {r['kl_max']:.4f} nats/token",
              f"same top token  {r['same_top_token_pct']:.2f}% of {r['tokens']:,} positions ({r['data']})"]
    return "\n".join(lines)


def print_against(r: dict, as_json: bool) -> None:
    print(json.dumps(r) if as_json else format_against(r))
