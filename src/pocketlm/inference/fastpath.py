"""A lean batch-1 forward for Llama models, used by `engine.generate_ids` in place of transformers' forward.

Why: at batch 1 a small model's matmuls are tiny, and much of a decode step through transformers'
`LlamaForCausalLM` is Python: module calls, mask and position bookkeeping, cache objects, output classes.
This path does the same arithmetic with a handful of tensor ops per layer and gives the same logits
(within ~1e-7 in fp32, bit-identical in bf16 in our CPU tests). Measured on a busy 2-core CPU with one torch thread
(another job was running), batch 1, 100 new tokens: mini-12m shape 156-162 tok/s fp32 (transformers'
`generate()` 102-117, the engine's transformers forward 126-134) and 132-176 bf16 (generate 91-107); a
3-layer 64-wide model, where overhead is everything, runs 2.5x faster than through transformers. At
12M parameters the fp32 matmuls alone took ~5 of the ~6 ms per token there (weights stream from memory),
which bounds what removing overhead can gain.

What it does: weights are the model's own tensors, except q/k/v and gate/up, which are concatenated into
one matrix each (4 matmuls per layer instead of 7). Those copies cost memory: about two thirds of the
non-embedding weights (+60% of mini-12m, +50% of SmolLM2-135M). They are made once per model, kept in a
weak-keyed cache and remade when any parameter changes (storage, dtype, device or an in-place update).
The rotary cos/sin come from the model's own `rotary_emb`, so every static rope type transformers
implements (with its attention_scaling) is exact. The KV cache is preallocated per layer as
(1, kv_heads, max_len, head_dim); attention is torch's scaled_dot_product_attention (enable_gqa for
grouped-query attention: measured faster than repeating k/v); logits are for the last position, float32.

Only plain `LlamaForCausalLM` models whose config and modules are exactly what this code assumes are
supported (`unsupported_reason` says why not); anything else uses transformers' forward.
Set the environment variable POCKETLM_FASTPATH=0 to always use transformers' forward.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaForCausalLM
from transformers.models.llama import modeling_llama as hf

ENV = "POCKETLM_FASTPATH"
ROPE_TYPES = {"default", "linear", "llama3", "yarn"}  # "dynamic" and "longrope" change with sequence length
_ENABLE_GQA = tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 5)  # sdpa's enable_gqa argument


def unsupported_reason(model) -> str | None:
    """None when the fast path computes exactly what transformers' forward would, else why not."""
    c = getattr(model, "config", None)
    if type(model) is not LlamaForCausalLM or getattr(c, "model_type", None) != "llama":
        return "not a plain LlamaForCausalLM"
    quantized = getattr(model, "hf_quantizer", None) is not None or getattr(model, "is_quantized", False)
    if c.hidden_act != "silu" or c.attention_bias or c.mlp_bias:
        return "hidden_act is not silu or biases are on"
    if getattr(c, "sliding_window", None) is not None or not isinstance(c.max_position_embeddings, int):
        return "sliding window or no max_position_embeddings"
    if c.num_key_value_heads != c.num_attention_heads and not _ENABLE_GQA:
        return "grouped-query attention needs torch >= 2.5 here"
    if model.training and c.attention_dropout:
        return "attention dropout in training mode"
    m = model.model
    if type(m.rotary_emb) is not hf.LlamaRotaryEmbedding or m.rotary_emb.rope_type not in ROPE_TYPES:
        return f"rope type {m.rotary_emb.rope_type!r}"
    if len(m.layers) < c.num_hidden_layers or type(m.embed_tokens) is not nn.Embedding \
            or m.embed_tokens.max_norm is not None or type(m.norm) is not hf.LlamaRMSNorm:
        return "unexpected layers, embedding or final norm"
    if type(model.lm_head) is not nn.Linear or model.lm_head.bias is not None:
        return "unexpected lm_head"
    for layer in m.layers[: c.num_hidden_layers]:
        a, f = layer.self_attn, layer.mlp
        kinds = [(layer, hf.LlamaDecoderLayer), (a, hf.LlamaAttention), (f, hf.LlamaMLP),
                 (f.act_fn, type(hf.ACT2FN["silu"])), (layer.input_layernorm, hf.LlamaRMSNorm),
                 (layer.post_attention_layernorm, hf.LlamaRMSNorm)]
        if any(type(mod) is not kind for mod, kind in kinds):
            return "unexpected module in a layer"
        projections = (a.q_proj, a.k_proj, a.v_proj, a.o_proj, f.gate_proj, f.up_proj, f.down_proj)
        if any(type(lin) is not nn.Linear or lin.bias is not None for lin in projections):
            return "a projection is not a plain nn.Linear without bias (LoRA, quantized, ...)"
        if quantized and any(int8_parts(lin.weight) is None for lin in projections):
            return "quantized (of quantized models, only int8 weight-only ones run on the fast path)"
        if a.q_proj.out_features != c.num_attention_heads * a.head_dim or \
                a.k_proj.out_features != c.num_key_value_heads * a.head_dim:
            return "head sizes do not match the config"
    params = list(model.parameters())
    if len({(p.dtype, p.device) for p in params}) != 1 or params[0].device.type == "meta" \
            or not params[0].is_floating_point():
        return "parameters are not all of one floating dtype on one device"
    if any(mod._forward_hooks or mod._forward_pre_hooks or hasattr(mod, "_hf_hook") for mod in model.modules()):
        return "the model has forward hooks"
    return None


_fused: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (key, [(qkv, gate_up) per layer])


def _fused_weights(model, layers) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, q/k/v and gate/up concatenated, made once per model and remade when any parameter changes."""
    try:  # storage, dtype, device and in-place version of every parameter: stale copies are never used
        key = tuple((_storage(p).data_ptr(), _storage(p)._version, p.dtype, p.device) for p in model.parameters())
    except RuntimeError:  # inference tensors have no version counter: do not cache
        key = None
    cached = _fused.pop(model, None)  # drop old copies before making new ones
    if key is not None and cached is not None and cached[0] == key:
        fused = cached[1]
    else:
        fused = [(_cat([layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight, layer.self_attn.v_proj.weight]),
                  _cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight])) for layer in layers]
    if key is not None:
        _fused[model] = (key, fused)
    return fused


@dataclass(frozen=True)
class Int8Weight:
    """An int8 weight-only matrix with one scale per output row (`pocketlm quantize --method int8`)."""
    q: torch.Tensor  # (out, in) int8
    s: torch.Tensor  # (out,), in the activations' dtype


def int8_parts(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(int8 values, per-row scales) of a torchao int8 weight-only tensor, else None (also for a plain tensor)."""
    if not type(w).__module__.startswith("torchao") or not hasattr(w, "qdata") or not hasattr(w, "scale"):
        return None
    if w.qdata.dtype != torch.int8 or getattr(w, "act_quant_kwargs", None) is not None \
            or getattr(w, "act_pre_scale", None) is not None or list(getattr(w, "block_size", ())) != [1, w.shape[-1]]:
        return None  # int8 activations too, pre-scaled activations, or per-group scales
    return w.qdata, w.scale.reshape(-1)


def _storage(p: torch.Tensor) -> torch.Tensor:
    parts = int8_parts(p)
    return p if parts is None else parts[0]


def _cat(weights: list[torch.Tensor]) -> torch.Tensor | Int8Weight:
    parts = [int8_parts(w) for w in weights]
    if parts[0] is None:
        return torch.cat(weights).detach()
    return Int8Weight(torch.cat([q for q, _ in parts]).contiguous(), torch.cat([s for _, s in parts]).to(weights[0].dtype))


def _matrix(w: torch.Tensor) -> torch.Tensor | Int8Weight:
    parts = int8_parts(w)
    return w if parts is None else Int8Weight(parts[0].contiguous(), parts[1].to(w.dtype))


def _linear(x: torch.Tensor, w: torch.Tensor | Int8Weight) -> torch.Tensor:
    """x @ w.T; int8 weights through torch's int8 weight-only kernel on CPU (2.3x torchao's dequantizing path on
    SmolLM2-135M, level with bf16 on a CPU without VNNI: benchmarks/quantize_torch.py), elsewhere dequantized per
    call."""
    if not isinstance(w, Int8Weight):
        return F.linear(x, w)
    if x.device.type != "cpu":
        return F.linear(x, w.q.to(x.dtype)) * w.s
    out = torch._weight_int8pack_mm(x.reshape(-1, x.size(-1)).contiguous(), w.q, w.s)
    return out.view(*x.shape[:-1], -1)


def _norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm: normalise in float32, round to the model's dtype, then scale (same rounding in bf16)."""
    return F.rms_norm(x, (x.size(-1),), None, eps) * weight


@dataclass
class _Layer:
    ln1: torch.Tensor
    eps1: float
    qkv: torch.Tensor | Int8Weight  # (q + k + v) x hidden
    o: torch.Tensor | Int8Weight
    ln2: torch.Tensor
    eps2: float
    gate_up: torch.Tensor | Int8Weight  # (gate + up) x hidden
    down: torch.Tensor | Int8Weight
    k_cache: torch.Tensor  # (1, kv_heads, max_len, head_dim)
    v_cache: torch.Tensor


def take_shape_and_tables(decoder, model, max_len: int) -> list:
    """Set on `decoder` what every fast decoder reads from `model`: head counts and sizes, the attention scale,
    embedding, final norm, lm_head, and the rotary cos/sin for `max_len` positions; returns the decoder layers."""
    m, c = model.model, model.config
    hf_layers = m.layers[: c.num_hidden_layers]
    attn = hf_layers[0].self_attn
    decoder.heads, decoder.kv_heads, decoder.head_dim, decoder.scale = \
        c.num_attention_heads, c.num_key_value_heads, attn.head_dim, attn.scaling
    decoder.embed, decoder.norm, decoder.eps = m.embed_tokens.weight, m.norm.weight, m.norm.variance_epsilon
    decoder.lm_head = model.lm_head.weight  # the embedding itself when tied
    x = decoder.embed[:1]
    cos, sin = m.rotary_emb(x, torch.arange(max_len, device=x.device)[None])  # includes attention_scaling
    decoder.cos, decoder.sin = cos[0, :, None], sin[0, :, None]  # (max_len, 1, head_dim): broadcast over heads
    return hf_layers


class LlamaDecoder:
    """Feed the prompt once, then one token per call; each call returns the next-token logits (1, vocab) fp32."""

    def __init__(self, model, max_len: int):
        hf_layers = take_shape_and_tables(self, model, max_len)
        x = self.embed[:1]
        shape = (1, self.kv_heads, max_len, self.head_dim)
        self.layers = [
            _Layer(layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon, qkv,
                   _matrix(layer.self_attn.o_proj.weight), layer.post_attention_layernorm.weight,
                   layer.post_attention_layernorm.variance_epsilon, gate_up, _matrix(layer.mlp.down_proj.weight),
                   x.new_empty(shape), x.new_empty(shape))
            for layer, (qkv, gate_up) in zip(hf_layers, _fused_weights(model, hf_layers), strict=True)]
        self.gqa = {"enable_gqa": True} if self.kv_heads != self.heads else {}  # faster than repeating k/v
        self.pos = 0

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        n, start = ids.size(1), self.pos
        end = start + n
        if n > 1 and start:
            raise ValueError("several tokens at once only for the prompt")
        half, nh, nqk = self.head_dim // 2, self.heads, self.heads + self.kv_heads
        cos, sin = self.cos[start:end], self.sin[start:end]
        h = F.embedding(ids, self.embed)
        for w in self.layers:
            qkv = _linear(_norm(h, w.ln1, w.eps1), w.qkv).view(1, n, -1, self.head_dim)
            qk = qkv[:, :, :nqk]
            qk = qk * cos + torch.cat([-qk[..., half:], qk[..., :half]], dim=-1) * sin  # rope on q and k at once
            w.k_cache[:, :, start:end] = qk[:, :, nh:].transpose(1, 2)
            w.v_cache[:, :, start:end] = qkv[:, :, nqk:].transpose(1, 2)
            att = F.scaled_dot_product_attention(qk[:, :, :nh].transpose(1, 2), w.k_cache[:, :, :end],
                                                 w.v_cache[:, :, :end], is_causal=n > 1, scale=self.scale,
                                                 **self.gqa)
            h = h + _linear(att.transpose(1, 2).reshape(1, n, -1), w.o)
            gate, up = _linear(_norm(h, w.ln2, w.eps2), w.gate_up).chunk(2, dim=-1)
            h = h + _linear(F.silu(gate) * up, w.down)
        self.pos = end
        return F.linear(_norm(h[:, -1], self.norm, self.eps), self.lm_head).float()


def decoder(model, max_len: int) -> LlamaDecoder | None:
    """A fast decoder for `model` with room for `max_len` positions, or None (unsupported or POCKETLM_FASTPATH=0)."""
    if os.environ.get(ENV, "1").strip() == "0" or unsupported_reason(model) is not None:
        return None
    return LlamaDecoder(model, max_len)
