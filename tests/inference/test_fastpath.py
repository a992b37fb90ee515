"""The Llama fast path computes the same logits as transformers' forward, and anything else falls back."""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from pocketlm.inference import fastpath
from pocketlm.inference.engine import SamplingConfig, generate_ids, with_cache

YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16}
LLAMA3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 16}


def tiny_llama(dtype=torch.float32, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  rms_norm_eps=1e-5, tie_word_embeddings=True, hidden_act="silu")
    model = LlamaForCausalLM(LlamaConfig(**(config | overrides)))
    with torch.no_grad():  # larger than the default init, so that logits differ clearly between tokens
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval().to(dtype)


def reference_and_fast(model, prompt: list[int], steps: int):
    """Logits from transformers' forward and from the fast path, prefill then greedy steps, side by side."""
    ids = torch.tensor([prompt])
    cache, fast = DynamicCache(), fastpath.decoder(model, len(prompt) + steps)
    assert fast is not None, fastpath.unsupported_reason(model)
    pairs = []
    with torch.inference_mode():
        for _ in range(steps + 1):
            ref = model(input_ids=ids, **with_cache(model, cache), use_cache=True).logits[:, -1].float()
            pairs.append((ref, fast(ids)))
            ids = ref.argmax(-1, keepdim=True)
    return pairs


@pytest.mark.parametrize("overrides", [
    {},
    {"tie_word_embeddings": False},
    {"num_key_value_heads": 4},
    {"num_key_value_heads": 1, "head_dim": 32},  # head_dim from the config, not hidden / heads
    {"rope_parameters": LLAMA3},
    {"rope_parameters": YARN},  # attention_scaling != 1
    {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}},
], ids=["tied", "untied", "mha", "mqa-head-dim", "llama3-rope", "yarn-rope", "linear-rope"])
def test_logits_match_transformers(overrides):
    model = tiny_llama(**overrides)
    if overrides.get("rope_parameters") == YARN:
        assert model.model.rotary_emb.attention_scaling != 1.0
    for prompt in ([5, 17, 42, 99, 3, 250, 7], [1]):
        pairs = reference_and_fast(model, prompt, steps=20)
        assert len(pairs) == 21
        for ref, got in pairs:
            assert got.dtype == torch.float32 and got.shape == ref.shape == (1, 300)
            torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


def test_bf16_logits_match_transformers():
    model = tiny_llama(torch.bfloat16)
    for ref, got in reference_and_fast(model, [9, 8, 7, 6, 5, 4], steps=10):
        torch.testing.assert_close(got, ref, rtol=0, atol=0.05)


def test_fused_weights_follow_parameter_changes():
    model = tiny_llama()
    reference_and_fast(model, [1, 2, 3], steps=2)  # builds and caches the fused weights
    with torch.no_grad():
        model.model.layers[1].self_attn.k_proj.weight.mul_(-1.5)
        model.model.layers[0].mlp.up_proj.weight.add_(0.1)
    for ref, got in reference_and_fast(model, [1, 2, 3], steps=5):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    model.to(torch.bfloat16)
    for ref, got in reference_and_fast(model, [1, 2, 3], steps=5):
        torch.testing.assert_close(got, ref, rtol=0, atol=0.05)


@pytest.mark.parametrize("cfg", [
    SamplingConfig(max_new_tokens=30, temperature=0),
    SamplingConfig(max_new_tokens=30, temperature=0, repetition_penalty=1.3),
    SamplingConfig(max_new_tokens=30, temperature=0.9, top_k=20, top_p=0.9, seed=3),
    SamplingConfig(max_new_tokens=100, temperature=0),  # runs into max_position_embeddings
], ids=["greedy", "penalty", "sampled", "context-limit"])
def test_generate_ids_same_with_and_without_fastpath(monkeypatch, cfg):
    model = tiny_llama()
    prompts = [[1, 2, 3], [200, 13, 13, 13, 7], list(range(10, 50)), [5]]
    runs = {}
    for flag in ("0", "1"):
        monkeypatch.setenv(fastpath.ENV, flag)
        assert (fastpath.decoder(model, 8) is None) == (flag == "0")
        runs[flag] = [list(generate_ids(model, p, cfg, stop_ids=[299])) for p in prompts]
    assert runs["0"] == runs["1"]
    if cfg.max_new_tokens == 100:
        assert [len(out) for out in runs["1"]] == [64 - len(p) for p in prompts]
    else:
        assert all(len(out) > 5 for out in runs["1"])


def test_stop_ids_end_generation_on_the_fast_path():
    model = tiny_llama()
    cfg = SamplingConfig(max_new_tokens=20, temperature=0)
    full = list(generate_ids(model, [4, 5, 6], cfg))
    cut = list(generate_ids(model, [4, 5, 6], cfg, stop_ids=[full[6]]))
    assert cut == full[: full.index(full[6])]


def _gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=2)).eval()


def _lora_llama():
    from peft import LoraConfig, get_peft_model
    return get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))


@pytest.mark.parametrize("make", [
    _gpt2,
    lambda: tiny_llama(attention_bias=True),
    lambda: tiny_llama(mlp_bias=True),
    lambda: tiny_llama(hidden_act="gelu"),
    lambda: tiny_llama(rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}),
    _lora_llama,
    lambda: _lora_llama().base_model.model,  # a Llama whose projections are LoRA layers
], ids=["gpt2", "attention-bias", "mlp-bias", "gelu", "dynamic-rope", "peft", "lora-layers"])
def test_unsupported_models_fall_back_and_still_generate(monkeypatch, make):
    model = make()
    assert fastpath.unsupported_reason(model) is not None
    assert fastpath.decoder(model, 16) is None
    cfg = SamplingConfig(max_new_tokens=12, temperature=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # transformers' deprecation warnings never reach a user's terminal
        out = list(generate_ids(model, [1, 2, 3, 4], cfg))
    assert len(out) == 12
    monkeypatch.setenv(fastpath.ENV, "0")
    assert list(generate_ids(model, [1, 2, 3, 4], cfg)) == out


def test_forward_hooks_are_respected():
    model = tiny_llama()
    assert fastpath.unsupported_reason(model) is None
    handle = model.model.layers[0].mlp.register_forward_hook(lambda mod, args, out: out * 0)
    assert fastpath.unsupported_reason(model) is not None
    handle.remove()
    assert fastpath.unsupported_reason(model) is None
