"""Export a Llama-architecture Hugging Face model directory to a single GGUF file.

The file runs in llama.cpp, llama-cpp-python and Ollama. What goes into it:

* hyper-parameters under the ``llama.*`` keys llama.cpp reads (context, widths, heads, RoPE base,
  RMSNorm epsilon, ...);
* tensors under llama.cpp's names (``token_embd``, ``blk.N.attn_q``, ``output_norm``, ...). With tied
  embeddings there is no ``output`` tensor: llama.cpp then reuses ``token_embd``;
* Q and K projections with the rows of every head reordered. Hugging Face's Llama applies RoPE
  "rotate-half" style (dimension i pairs with i + head_dim/2); llama.cpp's ``llama`` architecture
  rotates adjacent pairs (2i, 2i+1). Moving row ``h*head_dim/2 + i`` of each head to ``2i + h``
  makes both compute the same attention scores;
* the byte-level BPE tokenizer (tokens, types, merges, special ids, BOS behaviour, chat template)
  and the name of its pre-tokenizer regex, which llama.cpp must know by name.

Weights are stored as f32, f16 or q8_0 (8-bit blocks of 32 with one f16 scale). Norm weights and
other 1-D tensors always stay f32, as llama.cpp expects.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pocketlm import runs
from pocketlm.errors import UserError
from pocketlm.fsutil import atomic_path
from pocketlm.retrieval.grounding import copy_grounding, sidecar

QUANTS = ("f32", "f16", "q8_0")
Q8_BLOCK = 32

# Pre-tokenizer regexes, spelled as they appear in tokenizer.json files.
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Hugging Face parameter name (within a decoder layer) -> llama.cpp tensor name.
_LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_GLOBAL_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


# --------------------------------------------------------------------------------------------------
# public API


def export_gguf(model_dir: str | Path, out_path: str | Path, quant: str = "f16", *,
                name: str | None = None) -> dict:
    """Convert the Hugging Face Llama model in `model_dir` (or a run directory) to a GGUF file.

    `quant` is one of f32, f16, q8_0. If `out_path` is an existing directory the file is written
    into it as ``NAME-QUANT.gguf``. The file appears atomically. A grounded bot's grounding (see
    pocketlm.retrieval.grounding) is copied beside it as ``NAME.grounding/``, where `pocketlm chat` and
    `pocketlm eval` find it. Returns a summary dict with ``path``, ``bytes``, ``quant``, ``tensors``
    (count), ``parameters``, ``name``, ``tokenizer_pre`` and ``grounding`` (its path or None).
    """
    import gguf  # imported lazily: the CLI should start fast

    from pocketlm.model.io import resolve_model_dir

    quant = quant.lower()
    if quant not in QUANTS:
        raise UserError(f"unknown GGUF quantisation {quant!r}; choose one of: {', '.join(QUANTS)}")
    source = model_dir
    model_dir = resolve_model_dir(model_dir)
    config = _read_config(model_dir)
    hp = _hparams(config, model_dir)
    name = name or _default_name(model_dir)
    out_path = Path(out_path)
    if out_path.is_dir():
        out_path = out_path / f"{name}-{quant}.gguf"

    vocab = read_tokenizer(model_dir, hp["vocab_size"])

    with contextlib.ExitStack() as stack:
        try:
            tmp = stack.enter_context(atomic_path(out_path))  # the file appears whole, or not at all
        except OSError as e:
            raise UserError(f"{out_path}: cannot write there ({e.strerror or e})") from None
        writer = gguf.GGUFWriter(str(tmp), "llama")
        try:
            n_tensors, n_params = _add_everything(writer, gguf, model_dir, config, hp, vocab, quant, name)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    grounding = copy_grounding(source, sidecar(out_path))
    if grounding is None and sidecar(out_path).is_dir():  # left by an earlier export of a grounded model
        shutil.rmtree(sidecar(out_path))
    return {
        "path": str(out_path),
        "bytes": out_path.stat().st_size,
        "quant": quant,
        "tensors": n_tensors,
        "parameters": n_params,
        "name": name,
        "tokenizer_pre": vocab["pre"],
        "grounding": str(grounding) if grounding is not None else None,
    }


def permute_for_llamacpp(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder the output rows of a Q or K projection from HF rotate-half RoPE to llama.cpp's layout.

    Within each head, row ``h * (d/2) + i`` (h in {0, 1}) moves to row ``2i + h``.
    """
    out_dim = weight.shape[0]
    if out_dim % n_heads or (out_dim // n_heads) % 2:
        raise UserError(f"cannot split a projection of {out_dim} rows into {n_heads} heads of even size")
    head_dim = out_dim // n_heads
    w = weight.reshape(n_heads, 2, head_dim // 2, *weight.shape[1:])
    return np.ascontiguousarray(w.swapaxes(1, 2).reshape(weight.shape))


def tensor_storage(name: str, shape: tuple[int, ...], quant: str) -> str:
    """Storage type ('f32', 'f16' or 'q8_0') of one tensor in a file of the given quantisation."""
    if len(shape) < 2 or name.endswith("_norm.weight") or quant == "f32":
        return "f32"
    if quant == "q8_0":
        return "q8_0" if shape[-1] % Q8_BLOCK == 0 else "f16"
    return "f16"


# --------------------------------------------------------------------------------------------------
# config


def _read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{model_dir}: no config.json") from None
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read it ({e})") from None
    arch = config.get("model_type")
    archs = config.get("architectures") or []
    if arch != "llama" or (archs and "LlamaForCausalLM" not in archs):
        shown = ", ".join(archs) if archs else str(arch)
        raise UserError(f"{model_dir}: GGUF export supports Llama-architecture models (LlamaForCausalLM); "
                        f"this one is {shown}")
    return config


def _rope(config: dict, model_dir: Path) -> tuple[float, dict | None]:
    """(rope theta, scaling) from either the transformers 5 `rope_parameters` or the older keys."""
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or None
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    old = scaling or {}
    kind = params.get("rope_type") or old.get("rope_type") or old.get("type") or "default"
    if kind == "default":
        return float(theta), None
    if kind == "linear":
        factor = params.get("factor", old.get("factor"))
        return float(theta), {"type": "linear", "factor": float(factor)}
    raise UserError(f"{model_dir}: RoPE scaling type {kind!r} is not supported by the GGUF export "
                    "(only the default and 'linear')")


def _hparams(config: dict, model_dir: Path) -> dict:
    try:
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        hp = {
            "context": int(config["max_position_embeddings"]),
            "hidden": hidden,
            "layers": int(config["num_hidden_layers"]),
            "ffn": int(config["intermediate_size"]),
            "heads": heads,
            "kv_heads": int(config.get("num_key_value_heads") or heads),
            "head_dim": int(config.get("head_dim") or hidden // heads),
            "rms_eps": float(config.get("rms_norm_eps", 1e-6)),
            "vocab_size": int(config["vocab_size"]),
            "tied": bool(config.get("tie_word_embeddings", False)),
        }
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{model_dir}/config.json: missing or bad Llama setting ({e})") from None
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise UserError(f"{model_dir}: Llama models with attention or MLP biases are not supported by the "
                        "GGUF export")
    if config.get("hidden_act", "silu") != "silu":
        raise UserError(f"{model_dir}: hidden_act {config['hidden_act']!r} is not supported (llama.cpp's "
                        "llama architecture uses SiLU)")
    hp["rope_theta"], hp["rope_scaling"] = _rope(config, model_dir)
    return hp


def _default_name(model_dir: Path) -> str:
    # a run directory keeps its model in RUN/model: name the file after the run
    if model_dir.name in (runs.MODEL, runs.CHECKPOINT) and model_dir.parent.name:
        return model_dir.parent.name
    return model_dir.name or "pocketlm"


# --------------------------------------------------------------------------------------------------
# tokenizer


def _pre_tokenizer_name(pre: dict | None, model: dict, where: Path) -> str:
    """Map a tokenizer.json pre-tokenizer to the name llama.cpp uses for the same regex."""
    def is_bytelevel(p: dict, *, regex: bool) -> bool:
        return (p.get("type") == "ByteLevel" and not p.get("add_prefix_space", False)
                and bool(p.get("use_regex", True)) == regex)

    def split_regex(p: dict) -> str | None:
        if p.get("type") != "Split" or p.get("invert") or p.get("behavior") != "Isolated":
            return None
        return (p.get("pattern") or {}).get("Regex")

    if pre is None:
        raise UserError(f"{where}: the tokenizer has no pre-tokenizer; llama.cpp's BPE needs a byte-level "
                        "one (pocketlm's tokenizers use GPT-2's)")
    if is_bytelevel(pre, regex=True):
        return "gpt-2"
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if steps and len(steps) == 2:
        first, second = steps
        if (first.get("type") == "Digits" and first.get("individual_digits")
                and is_bytelevel(second, regex=True)):
            return "smollm"  # SmolLM/SmolLM2: single digits, then GPT-2's regex
        if is_bytelevel(second, regex=False):
            regex = split_regex(first)
            if regex == LLAMA3_REGEX and model.get("ignore_merges"):
                return "llama-bpe"
            if regex == QWEN2_REGEX and not model.get("ignore_merges"):
                return "qwen2"
    raise UserError(f"{where}: the tokenizer's pre-tokenizer is not one llama.cpp knows "
                    f"({_describe_pre(pre)}); GGUF export supports GPT-2 byte-level (pocketlm's own), "
                    "SmolLM, Llama 3 and Qwen2 pre-tokenizers. Retrain the tokenizer with pocketlm to export")


def _describe_pre(pre: dict) -> str:
    if pre.get("type") == "Sequence":
        return "Sequence[" + ", ".join(_describe_pre(p) for p in pre.get("pretokenizers", [])) + "]"
    if pre.get("type") == "ByteLevel":
        return (f"ByteLevel(add_prefix_space={pre.get('add_prefix_space')}, "
                f"use_regex={pre.get('use_regex', True)})")
    return str(pre.get("type"))


def read_tokenizer(model_dir: str | Path, vocab_size: int | None = None) -> dict:
    """Everything the GGUF needs about the tokenizer in `model_dir` (tokenizer.json + config files).

    Returns a dict with tokens, types, merges, pre, bos/eos/pad/eot ids (or None), add_bos, add_eos,
    chat_template and stop_ids. `vocab_size` pads the token list to the embedding's row count.
    """
    from gguf import TokenType
    from tokenizers import Tokenizer

    from pocketlm.data.tokenizer import IM_END, load_tokenizer

    model_dir = Path(model_dir)
    tj_path = model_dir / "tokenizer.json"
    if not tj_path.exists():
        raise UserError(f"{model_dir}: no tokenizer.json (GGUF export needs a fast byte-level BPE tokenizer "
                        "saved beside the model)")
    try:
        tj = json.loads(tj_path.read_text(encoding="utf-8"))
        raw = Tokenizer.from_file(str(tj_path))
    except Exception as e:  # tokenizers raises its own exception type
        raise UserError(f"{tj_path}: cannot read it ({type(e).__name__}: {e})") from None
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or model.get("continuing_subword_prefix") \
            or model.get("end_of_word_suffix"):
        fallback = " with byte fallback" if model.get("byte_fallback") else ""
        raise UserError(f"{tj_path}: GGUF export supports byte-level BPE tokenizers only (this is a "
                        f"{model.get('type')} model{fallback})")
    if tj.get("normalizer") is not None:
        raise UserError(f"{tj_path}: the tokenizer has a normaliser ({tj['normalizer'].get('type')}); "
                        "llama.cpp's BPE tokenizer applies none, so the export would tokenize differently")
    if (tj.get("decoder") or {}).get("type") != "ByteLevel":
        dec = (tj.get("decoder") or {}).get("type")
        if not (dec == "Sequence" and any(d.get("type") == "ByteLevel"
                                          for d in tj["decoder"].get("decoders", []))):
            raise UserError(f"{tj_path}: GGUF export needs a ByteLevel decoder (found {dec})")
    pre = _pre_tokenizer_name(tj.get("pre_tokenizer"), model, tj_path)

    vocab = raw.get_vocab(with_added_tokens=True)
    n = max(vocab.values()) + 1
    if vocab_size is not None:
        if n > vocab_size:
            raise UserError(f"{model_dir}: the tokenizer has {n} tokens but the model's embedding only "
                            f"{vocab_size} rows")
        n = vocab_size
    tokens: list[str | None] = [None] * n
    for tok, tid in vocab.items():
        tokens[tid] = tok
    types = [int(TokenType.NORMAL)] * n
    added = {a["id"]: a for a in tj.get("added_tokens", [])}
    for tid, a in added.items():
        types[tid] = int(TokenType.CONTROL if a.get("special") else TokenType.USER_DEFINED)
    for i, tok in enumerate(tokens):
        if tok is None:  # embedding rows beyond the tokenizer (padding)
            tokens[i] = f"[PAD{i}]"
            types[i] = int(TokenType.UNUSED)

    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    hf = load_tokenizer(model_dir)
    bos, eos, pad = hf.bos_token_id, hf.eos_token_id, hf.pad_token_id
    plain = hf.encode("a b", add_special_tokens=False)
    full = hf.encode("a b", add_special_tokens=True)
    start = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), None)
    prefix = full[:start] if start is not None else None
    suffix = full[start + len(plain):] if start is not None else None
    if prefix not in ([], [bos]) or suffix not in ([], [eos]):
        raise UserError(f"{model_dir}: the tokenizer adds special tokens other than one BOS/EOS around the "
                        "text, which llama.cpp cannot reproduce")
    add_bos, add_eos = bool(prefix), bool(suffix)
    eot = vocab.get(IM_END)
    stop_ids = [t for t in dict.fromkeys([eos, eot]) if t is not None]
    chat_template = hf.chat_template if isinstance(hf.chat_template, str) else None
    return {"tokens": tokens, "types": types, "merges": merges, "pre": pre, "bos": bos, "eos": eos,
            "pad": pad, "eot": eot, "add_bos": add_bos, "add_eos": add_eos, "chat_template": chat_template,
            "stop_ids": stop_ids}


_PRE_REGEX = {"gpt-2": GPT2_REGEX, "llama-bpe": LLAMA3_REGEX, "qwen2": QWEN2_REGEX}


def _add_tokenizer(writer, vocab: dict) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab["pre"])
    if vocab["pre"] in _PRE_REGEX:
        # Ollama's own Go tokenizer reads the regex itself and otherwise assumes Llama 3's
        writer.add_string("tokenizer.ggml.pretokenizer", _PRE_REGEX[vocab["pre"]])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    if vocab["bos"] is not None:
        writer.add_bos_token_id(vocab["bos"])
    if vocab["eos"] is not None:
        writer.add_eos_token_id(vocab["eos"])
    if vocab["pad"] is not None:
        writer.add_pad_token_id(vocab["pad"])
    if vocab["eot"] is not None:
        writer.add_eot_token_id(vocab["eot"])
        writer.add_eom_token_id(vocab["eot"])
    if vocab["stop_ids"]:
        from gguf import GGUFValueType
        # every stop token, for Ollama (llama.cpp finds them from the eos/eot ids above)
        writer.add_key_value("tokenizer.ggml.eos_token_ids", vocab["stop_ids"], GGUFValueType.ARRAY,
                             sub_type=GGUFValueType.INT32)
    writer.add_add_bos_token(vocab["add_bos"])
    writer.add_add_eos_token(vocab["add_eos"])
    if vocab["chat_template"]:
        writer.add_chat_template(vocab["chat_template"])


# --------------------------------------------------------------------------------------------------
# tensors


def _safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError) as e:
            raise UserError(f"{index}: cannot read it ({e})") from None
        files = [model_dir / f for f in dict.fromkeys(weight_map.values())]
    else:
        files = [model_dir / "model.safetensors"]
    for f in files:
        if not f.exists():
            found = "pytorch_model.bin" if (model_dir / "pytorch_model.bin").exists() else None
            hint = (" (it has pytorch_model.bin; re-save the model with safetensors, e.g. by loading and "
                    "saving it with pocketlm)") if found else ""
            raise UserError(f"{model_dir}: missing weights file {f.name}{hint}")
    return files


def _iter_weights(model_dir: Path) -> Iterator[tuple[str, np.ndarray]]:
    import torch
    from safetensors import safe_open

    for f in _safetensors_files(model_dir):
        try:
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():
                    yield key, st.get_tensor(key).to(torch.float32).numpy()
        except (OSError, ValueError) as e:
            raise UserError(f"{f}: cannot read weights ({e})") from None


def _gguf_name(key: str, n_layers: int, model_dir: Path) -> str | None:
    if key in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[key]
    if key.endswith("rotary_emb.inv_freq"):
        return None  # recomputed by llama.cpp
    m = _LAYER_RE.match(key)
    if m and int(m.group(1)) < n_layers and m.group(2) in _LAYER_TENSORS:
        return f"blk.{m.group(1)}.{_LAYER_TENSORS[m.group(2)]}"
    raise UserError(f"{model_dir}: unexpected weight {key!r} for a Llama model; cannot export it to GGUF")


def _collect_tensors(model_dir: Path, hp: dict) -> dict[str, np.ndarray]:
    tensors: dict[str, np.ndarray] = {}
    for key, arr in _iter_weights(model_dir):
        name = _gguf_name(key, hp["layers"], model_dir)
        if name is None or (name == "output.weight" and hp["tied"]):
            continue
        if name.endswith("attn_q.weight"):
            arr = permute_for_llamacpp(arr, hp["heads"])
        elif name.endswith("attn_k.weight"):
            arr = permute_for_llamacpp(arr, hp["kv_heads"])
        tensors[name] = arr
    expected = ["token_embd.weight"]
    expected += [f"blk.{i}.{t}" for i in range(hp["layers"]) for t in _LAYER_TENSORS.values()]
    expected += ["output_norm.weight"] + (["output.weight"] if not hp["tied"] else [])
    missing = [t for t in expected if t not in tensors]
    if missing:
        raise UserError(f"{model_dir}: the weights lack {len(missing)} tensor(s) a Llama model needs "
                        f"(first: {missing[0]})")
    if tensors["token_embd.weight"].shape != (hp["vocab_size"], hp["hidden"]):
        raise UserError(f"{model_dir}: embedding shape {tensors['token_embd.weight'].shape} does not match "
                        f"config.json (vocab {hp['vocab_size']}, hidden {hp['hidden']})")
    return {t: tensors[t] for t in expected}  # a canonical order: embeddings, blocks, output


def _add_everything(writer, gguf, model_dir: Path, config: dict, hp: dict, vocab: dict, quant: str,
                    name: str) -> tuple[int, int]:
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant]
    writer.add_type("model")
    writer.add_name(name)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(int(file_type))
    writer.add_vocab_size(hp["vocab_size"])
    writer.add_context_length(hp["context"])
    writer.add_embedding_length(hp["hidden"])
    writer.add_block_count(hp["layers"])
    writer.add_feed_forward_length(hp["ffn"])
    writer.add_head_count(hp["heads"])
    writer.add_head_count_kv(hp["kv_heads"])
    writer.add_key_length(hp["head_dim"])
    writer.add_value_length(hp["head_dim"])
    writer.add_rope_dimension_count(hp["head_dim"])
    writer.add_rope_freq_base(hp["rope_theta"])
    if hp["rope_scaling"]:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(hp["rope_scaling"]["factor"])
    writer.add_layer_norm_rms_eps(hp["rms_eps"])
    _add_tokenizer(writer, vocab)

    tensors = _collect_tensors(model_dir, hp)
    n_params = 0
    for tname, arr in tensors.items():
        n_params += arr.size
        kind = tensor_storage(tname, arr.shape, quant)
        if kind == "f32":
            writer.add_tensor(tname, arr.astype(np.float32))
        elif kind == "f16":
            writer.add_tensor(tname, arr.astype(np.float16))
        else:
            q = gguf.quants.quantize(arr.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(tname, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    return len(tensors), n_params
