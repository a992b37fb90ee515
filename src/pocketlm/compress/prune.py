"""`pocketlm prune`: structured pruning of a Llama-family model, by importance measured on calibration text.

Three cuts, any combination, each to a size the user names:
- depth (`--layers N`): keep the N layers that change the hidden state most. A layer's importance is its
  block influence (ShortGPT): 1 - the mean cosine similarity between the hidden state entering it and the one
  leaving it, over the calibration tokens. A layer that barely changes what flows through is the cheapest to drop.
- MLP width (`--ffn-size N`): in every layer, keep the N intermediate channels with the largest mean absolute
  activation (the input of the down projection), as Minitron does. Each layer keeps its own channels; the
  count is the same for all, because a transformers config has one `intermediate_size`.
- hidden size (`--hidden-size N`): keep the N embedding channels with the largest mean absolute value after
  the RMS norms of every layer (Minitron); the embeddings, every projection that reads or writes the residual
  stream and the norms are cut to them. Attention keeps its heads and head size.

Importance is measured on the unpruned model in one pass (the cuts are then applied together). The result is
an ordinary Hugging Face directory of the same architecture with smaller numbers in `config.json`; it loses
quality, which `pocketlm distill --teacher ORIGINAL --student PRUNED` recovers.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pocketlm.errors import UserError

PRUNABLE = {"llama", "mistral", "qwen2", "qwen3"}


@dataclass
class Importance:
    layers: torch.Tensor  # (L,) block influence
    ffn: list[torch.Tensor]  # per layer (intermediate,) mean |activation|
    hidden: torch.Tensor  # (hidden,) mean |normed activation| summed over the norms
    tokens: int


def calibration_tokens(data: str | Path, tokenizer, max_tokens: int) -> np.ndarray:
    """Token ids to measure importance on: a prepared data directory's train split, or a UTF-8 text file."""
    data = Path(data)
    if data.is_dir():
        from pocketlm.data.shards import TOKENIZER_DIR, load_tokens, read_meta
        from pocketlm.data.tokenizer import load_tokenizer
        read_meta(data)
        if load_tokenizer(data / TOKENIZER_DIR).get_vocab() != tokenizer.get_vocab():
            raise UserError(f"{data}: prepared with another tokenizer than the model's; give a text file, or prepare "
                            "the data with --tokenizer MODEL")
        tokens = np.asarray(load_tokens(data, "train")[:max_tokens + 1], dtype=np.int64)
    else:
        from pocketlm.evaluate.perplexity import eval_tokens
        tokens = eval_tokens(data, tokenizer)[0][:max_tokens + 1]
    if len(tokens) < 16:
        raise UserError(f"{data}: only {len(tokens)} tokens; give more calibration text")
    return tokens


@torch.no_grad()
def measure(model, tokens: np.ndarray, context: int = 512, batch_size: int = 4) -> Importance:
    layers = model.model.layers
    n_layers = len(layers)
    ffn = [torch.zeros(layer.mlp.down_proj.in_features, dtype=torch.float64) for layer in layers]
    hidden = torch.zeros(model.config.hidden_size, dtype=torch.float64)
    influence = torch.zeros(n_layers, dtype=torch.float64)
    hooks = []

    def on_down(i):
        def hook(module, args):
            ffn[i].add_(args[0].detach().abs().double().sum(dim=(0, 1)))
        return hook

    def on_norm(module, args, output):
        hidden.add_(output.detach().abs().double().sum(dim=(0, 1)))

    def on_layer(i):
        def hook(module, args, kwargs, output):
            entering = args[0] if args else kwargs["hidden_states"]
            leaving = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(entering.double(), leaving.double(), dim=-1)
            influence[i] += (1.0 - cos).sum()
        return hook

    for i, layer in enumerate(layers):
        hooks.append(layer.register_forward_hook(on_layer(i), with_kwargs=True))
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(on_down(i)))
        hooks.append(layer.input_layernorm.register_forward_hook(on_norm))
        hooks.append(layer.post_attention_layernorm.register_forward_hook(on_norm))
    count = 0
    try:
        toks = torch.from_numpy(tokens)
        windows = [toks[i:i + context] for i in range(0, len(toks) - 1, context)]
        windows = [w for w in windows if len(w) == context] or [toks[:context]]
        for i in range(0, len(windows), batch_size):
            x = torch.stack(windows[i:i + batch_size])
            model(input_ids=x, use_cache=False)
            count += x.numel()
    finally:
        for h in hooks:
            h.remove()
    return Importance(influence / count, [f / count for f in ffn], hidden / count, count)


def _keep(scores: torch.Tensor, n: int) -> torch.Tensor:
    return torch.sort(torch.topk(scores, n).indices).values


def pruned_state(model, imp: Importance, layers: int, ffn_size: int, hidden_size: int):
    """(state dict, config changes, kept layer indices) of the pruned model."""
    cfg = model.config
    kept_layers = _keep(imp.layers, layers).tolist()
    hid = _keep(imp.hidden, hidden_size)
    state = {}
    sd = model.state_dict()

    def put(name, tensor):
        state[name] = tensor.contiguous().clone()

    put("model.embed_tokens.weight", sd["model.embed_tokens.weight"][:, hid])
    put("model.norm.weight", sd["model.norm.weight"][hid])
    if "lm_head.weight" in sd and not cfg.tie_word_embeddings:
        put("lm_head.weight", sd["lm_head.weight"][:, hid])
    for new, old in enumerate(kept_layers):
        src, dst = f"model.layers.{old}.", f"model.layers.{new}."
        ch = _keep(imp.ffn[old], ffn_size)
        for key, value in sd.items():
            if not key.startswith(src):
                continue
            part = key[len(src):]
            if part in ("input_layernorm.weight", "post_attention_layernorm.weight"):
                value = value[hid]
            elif part.startswith("self_attn.") and part.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
                value = value[:, hid]  # reads the residual stream
            elif part in ("self_attn.o_proj.weight",):
                value = value[hid, :]  # writes it
            elif part == "self_attn.o_proj.bias":
                value = value[hid]
            elif part in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
                value = value[ch][:, hid]
            elif part == "mlp.down_proj.weight":
                value = value[hid][:, ch]
            put(dst + part, value)
    changes = {"num_hidden_layers": layers, "intermediate_size": ffn_size, "hidden_size": hidden_size,
               "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads}
    return state, changes, kept_layers


def _target(name: str, value: int | None, have: int) -> int:
    if value is None:
        return have
    if value <= 0:
        raise UserError(f"--{name} {value}: give a positive size")
    if value > have:
        raise UserError(f"--{name} {value}: the model has only {have}; pruning keeps fewer")
    return value


def prune(model_path: str, out: str, *, data: str, layers: int | None = None, ffn_size: int | None = None,
          hidden_size: int | None = None, max_tokens: int = 16384, context: int = 512) -> dict:
    from transformers import AutoModelForCausalLM

    from pocketlm.model.io import save_model
    if layers is None and ffn_size is None and hidden_size is None:
        raise UserError("say what to cut: --layers N, --ffn-size N and/or --hidden-size N "
                        "(see the sizes of the model with `pocketlm eval MODEL --data TEXT`)")
    model, tokenizer = _load(model_path, Path(out))
    cfg = model.config
    if cfg.model_type not in PRUNABLE:
        raise UserError(f"{model_path}: pruning supports {', '.join(sorted(PRUNABLE))} models, not {cfg.model_type}")
    layers = _target("layers", layers, cfg.num_hidden_layers)
    ffn_size = _target("ffn-size", ffn_size, cfg.intermediate_size)
    hidden_size = _target("hidden-size", hidden_size, cfg.hidden_size)
    if layers == cfg.num_hidden_layers and ffn_size == cfg.intermediate_size and hidden_size == cfg.hidden_size:
        raise UserError("nothing to cut: the sizes given are the model's own")
    heads = cfg.num_attention_heads
    if hidden_size % heads:
        below, above = hidden_size // heads * heads, (hidden_size // heads + 1) * heads
        raise UserError(f"--hidden-size {hidden_size}: transformers needs a multiple of the model's {heads} attention "
                        f"heads; give {below} or {above}")
    tokens = calibration_tokens(data, tokenizer, max_tokens)
    context = min(context, cfg.max_position_embeddings)
    print(f"measuring importance on {min(len(tokens), max_tokens):,} tokens of {data}", file=sys.stderr)
    imp = measure(model, tokens, context)
    state, changes, kept = pruned_state(model, imp, layers, ffn_size, hidden_size)
    try:
        new_cfg = type(cfg).from_dict({**cfg.to_dict(), **changes})
    except Exception as e:  # transformers checks an architecture (raised as huggingface_hub's validation error)
        cause = getattr(e, "__cause__", None) or e
        raise UserError(f"transformers refuses the pruned shape: {cause}") from None
    if getattr(new_cfg, "layer_types", None) is not None:
        new_cfg.layer_types = [cfg.layer_types[i] for i in kept]
    pruned = AutoModelForCausalLM.from_config(new_cfg, dtype=torch.float32)
    missing, unexpected = pruned.load_state_dict(state, strict=False)
    if unexpected or any(k != "lm_head.weight" for k in missing):
        raise RuntimeError(f"pruned weights do not fit the pruned model: {missing[:3]} {unexpected[:3]}")
    pruned.tie_weights()
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in pruned.parameters())
    final = save_model(pruned, tokenizer, out)
    dropped = [i for i in range(cfg.num_hidden_layers) if i not in kept]
    return {"path": str(final), "parameters_before": before, "parameters_after": after,
            "layers_dropped": dropped, "layer_importance": [round(float(x), 5) for x in imp.layers],
            "sizes": {"layers": [cfg.num_hidden_layers, layers], "ffn_size": [cfg.intermediate_size, ffn_size],
                      "hidden_size": [cfg.hidden_size, hidden_size]},
            "calibration_tokens": imp.tokens}


def _load(model_path: str, out: Path):
    """(model, tokenizer); a GGUF file is dequantized into a Hugging Face directory beside OUT first (kept: the
    unpruned model is the teacher that recovers the pruned one)."""
    from pocketlm.model.io import gguf_to_hf, load_model
    path = Path(model_path)
    if path.suffix.lower() == ".gguf":
        path = gguf_to_hf(path, out.parent / f"{path.stem}-hf")
    return load_model(path)
