"""Named model sizes: Llama-architecture shapes from ~1M to ~360M parameters.

Every preset builds transformers' own `LlamaConfig`/`LlamaForCausalLM` (RMSNorm, RoPE, SwiGLU,
grouped-query attention, tied input/output embeddings). The vocabulary comes from the tokenizer, so
parameter counts depend on it; `pocketlm models --vocab-size N` shows them for any N.
Deep-and-thin shapes follow MobileLLM's finding that depth beats width for sub-billion models; the
`smollm2-*` presets reproduce SmolLM2's 135M and 360M shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import LlamaConfig

from pocketlm.errors import UserError


@dataclass(frozen=True)
class Preset:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    context: int = 1024
    rope_theta: float = 10000.0
    note: str = ""
    vocab: int = 8192  # default vocabulary for listing; the tokenizer's size wins when training


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("nano-1m", 128, 4, 4, 2, 384, context=512, note="smoke tests, runs anywhere", vocab=2048),
    Preset("micro-5m", 256, 6, 4, 2, 704, context=512, note="seconds per step on a laptop", vocab=4096),
    Preset("mini-12m", 384, 6, 6, 6, 1024, context=256, note="nanoGPT 'baby GPT' shape (6x384)", vocab=4096),
    Preset("small-30m", 512, 8, 8, 4, 1408, context=1024, note="a good CPU pretraining size"),
    Preset("thin-35m", 384, 20, 6, 2, 1024, context=1024, note="deep and thin (MobileLLM style)"),
    Preset("base-100m", 768, 12, 12, 4, 2048, context=2048, note="GPU-friendly", vocab=32000),
    Preset("smollm2-135m", 576, 30, 9, 3, 1536, context=2048, rope_theta=100000.0,
           note="SmolLM2-135M shape, deep and thin", vocab=49152),
    Preset("smollm2-360m", 960, 32, 15, 5, 2560, context=2048, rope_theta=100000.0,
           note="SmolLM2-360M shape", vocab=49152),
]}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise UserError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)} "
                        "(`pocketlm models` lists them)") from None


def llama_config(preset: Preset, vocab_size: int, *, context: int | None = None, bos_token_id: int | None = None,
                 eos_token_id: int | list[int] | None = None, pad_token_id: int | None = None) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=preset.hidden,
        intermediate_size=preset.ffn,
        num_hidden_layers=preset.layers,
        num_attention_heads=preset.heads,
        num_key_value_heads=preset.kv_heads,
        max_position_embeddings=context or preset.context,
        rope_theta=preset.rope_theta,
        rms_norm_eps=1e-5,
        hidden_act="silu",
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        initializer_range=0.02,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        use_cache=True,
    )


def count_parameters(preset: Preset, vocab_size: int | None = None) -> int:
    """Exact parameter count (tied embeddings counted once), computed without building the model."""
    v = vocab_size or preset.vocab
    h, f = preset.hidden, preset.ffn
    head_dim = h // preset.heads
    attn = h * h * 2 + h * preset.kv_heads * head_dim * 2
    mlp = 3 * h * f
    norms = 2 * h
    return v * h + preset.layers * (attn + mlp + norms) + h


def flops_per_token(config: LlamaConfig, context: int) -> float:
    """Training FLOPs per token (forward + backward), the PaLM/nanoGPT estimate: 6N + 12·L·H·T."""
    h, n_layers = config.hidden_size, config.num_hidden_layers
    head_dim = h // config.num_attention_heads
    attn = h * h * 2 + h * config.num_key_value_heads * head_dim * 2
    non_embedding = n_layers * (attn + 3 * h * config.intermediate_size)
    # the output projection (tied with the embedding) is a real matmul per token
    matmul_params = non_embedding + config.vocab_size * h
    return 6 * matmul_params + 12 * n_layers * h * context
