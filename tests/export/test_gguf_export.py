"""GGUF export: file contents (read back with gguf.GGUFReader), weight layout and user errors.

These tests need only the `gguf` package; running the files in llama.cpp is test_gguf_llamacpp.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pocketlm.errors import UserError
from pocketlm.export.gguf import export_gguf, permute_for_llamacpp, tensor_storage

LAYER_TENSORS = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                 "ffn_down"]


def _reader(path):
    import gguf
    return gguf.GGUFReader(path)


def _field(reader, key):
    return reader.fields[key].contents()


def _hf_weights(model_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file
    return load_file(str(model_dir / "model.safetensors"))


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    head_dim = w.shape[0] // n_heads
    return w.reshape(n_heads, head_dim // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_summary_and_names(gguf_files, tiny_model_dir):
    for quant, info in gguf_files.items():
        path = Path(info["path"])
        assert path.name == f"tiny-run-{quant}.gguf"  # named after the run directory
        assert path.stat().st_size == info["bytes"]
        assert info["quant"] == quant and info["tensors"] == 2 + 4 * 9 and info["tokenizer_pre"] == "gpt-2"
        assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    sizes = {q: info["bytes"] for q, info in gguf_files.items()}
    assert sizes["q8_0"] < sizes["f16"] < sizes["f32"]
    params = gguf_files["f32"]["parameters"]
    assert sizes["f32"] > 4 * params and sizes["q8_0"] < 1.25 * params + 200_000  # + tokenizer metadata


def test_metadata(gguf_files, tiny_model_dir):
    from pocketlm.data.tokenizer import load_tokenizer

    config = json.loads((tiny_model_dir / "config.json").read_text())
    tok = load_tokenizer(tiny_model_dir)
    r = _reader(gguf_files["f16"]["path"])
    assert _field(r, "general.architecture") == "llama"
    assert _field(r, "general.name") == "tiny-run"
    assert _field(r, "general.file_type") == 1
    expected = {
        "llama.context_length": config["max_position_embeddings"],
        "llama.embedding_length": config["hidden_size"],
        "llama.block_count": config["num_hidden_layers"],
        "llama.feed_forward_length": config["intermediate_size"],
        "llama.attention.head_count": config["num_attention_heads"],
        "llama.attention.head_count_kv": config["num_key_value_heads"],
        "llama.rope.dimension_count": config["hidden_size"] // config["num_attention_heads"],
        "llama.vocab_size": config["vocab_size"],
    }
    for key, value in expected.items():
        assert _field(r, key) == value, key
    assert _field(r, "llama.rope.freq_base") == pytest.approx(config["rope_parameters"]["rope_theta"])
    assert _field(r, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(config["rms_norm_eps"])

    vocab = tok.get_vocab()
    tokens = _field(r, "tokenizer.ggml.tokens")
    assert len(tokens) == len(vocab) == config["vocab_size"]
    assert all(vocab[t] == i for i, t in enumerate(tokens))
    types = _field(r, "tokenizer.ggml.token_type")
    specials = {vocab[t] for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")}
    assert all((types[i] == 3) == (i in specials) for i in range(len(types)))  # 3 control, 1 normal
    assert set(types) == {1, 3}
    merges = _field(r, "tokenizer.ggml.merges")
    tj = json.loads((tiny_model_dir / "tokenizer.json").read_text())
    assert merges == [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    assert _field(r, "tokenizer.ggml.model") == "gpt2"
    assert _field(r, "tokenizer.ggml.pre") == "gpt-2"
    assert _field(r, "tokenizer.ggml.bos_token_id") == tok.bos_token_id == 0
    assert _field(r, "tokenizer.ggml.eos_token_id") == tok.eos_token_id
    assert _field(r, "tokenizer.ggml.padding_token_id") == tok.pad_token_id
    assert _field(r, "tokenizer.ggml.eot_token_id") == vocab["<|im_end|>"]
    assert _field(r, "tokenizer.ggml.eom_token_id") == vocab["<|im_end|>"]
    assert _field(r, "tokenizer.ggml.add_bos_token") is True
    assert _field(r, "tokenizer.ggml.add_eos_token") is False
    assert _field(r, "tokenizer.chat_template") == tok.chat_template


@pytest.mark.parametrize("quant", ["f32", "f16", "q8_0"])
def test_tensor_names_and_types(gguf_files, quant):
    r = _reader(gguf_files[quant]["path"])
    types = {t.name: t.tensor_type.name for t in r.tensors}
    expected = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{t}.weight" for i in range(4) for t in LAYER_TENSORS}
    assert set(types) == expected  # tied embeddings: no output.weight
    for name, kind in types.items():
        if name.endswith("norm.weight") or quant == "f32":
            assert kind == "F32", name
        else:
            assert kind == quant.upper(), name
    assert [t.name for t in r.tensors][0] == "token_embd.weight"


def test_weights_round_trip(gguf_files, tiny_model_dir):
    """Every GGUF tensor is the HF weight (Q/K rows permuted), exact in f32, close in f16/q8_0."""
    import gguf

    hf = _hf_weights(tiny_model_dir)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    hf_name = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
    layer_names = dict(zip(LAYER_TENSORS, ["input_layernorm", "self_attn.q_proj", "self_attn.k_proj",
                                          "self_attn.v_proj", "self_attn.o_proj", "post_attention_layernorm",
                                          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"], strict=True))
    for quant, atol_scale in (("f32", 0.0), ("f16", 1e-3), ("q8_0", 1.0 / 127)):
        for t in _reader(gguf_files[quant]["path"]).tensors:
            if t.name.startswith("blk."):
                _, layer, kind, _ = t.name.split(".")
                src = f"model.layers.{layer}.{layer_names[kind]}.weight"
            else:
                kind, src = None, hf_name[t.name]
            got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(hf[src].shape)
            if kind == "attn_q":
                got = _unpermute(got, config["num_attention_heads"])
            elif kind == "attn_k":
                got = _unpermute(got, config["num_key_value_heads"])
            want = hf[src].astype(np.float32)
            tol = atol_scale * np.abs(want).max() + 1e-12
            assert np.abs(got - want).max() <= tol, (quant, t.name)


def test_permutation_turns_rotate_half_into_adjacent_pairs():
    """HF RoPE (rotate-half) on the original Q/K rows gives the same attention scores as llama.cpp's
    adjacent-pair RoPE on the permuted rows, for every head and position pair."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    torch.manual_seed(0)
    n_heads, head_dim, hidden, theta = 3, 16, 24, 10000.0
    wq = torch.randn(n_heads * head_dim, hidden)
    wk = torch.randn(n_heads * head_dim, hidden)
    x = torch.randn(5, hidden)
    pos = torch.arange(5, dtype=torch.float32)
    inv = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    ang = pos[:, None] * inv[None, :]  # (T, d/2)

    # transformers: cos/sin repeated over the two halves
    emb = torch.cat([ang, ang], dim=-1)
    q = (x @ wq.T).view(5, n_heads, head_dim).transpose(0, 1)[None]
    k = (x @ wk.T).view(5, n_heads, head_dim).transpose(0, 1)[None]
    q_hf, k_hf = apply_rotary_pos_emb(q, k, emb.cos()[None], emb.sin()[None])
    scores_hf = q_hf @ k_hf.transpose(-1, -2)

    # llama.cpp LLAMA_ROPE_TYPE_NORM: rotate pairs (2i, 2i+1) by ang[i]
    def rope_adjacent(v):
        v = v.view(*v.shape[:-1], head_dim // 2, 2)
        c, s = ang.cos()[None, :, :], ang.sin()[None, :, :]
        return torch.stack([v[..., 0] * c - v[..., 1] * s, v[..., 0] * s + v[..., 1] * c], -1).flatten(-2)

    pq = torch.from_numpy(permute_for_llamacpp(wq.numpy(), n_heads))
    pk = torch.from_numpy(permute_for_llamacpp(wk.numpy(), n_heads))
    q2 = rope_adjacent((x @ pq.T).view(5, n_heads, head_dim).transpose(0, 1))
    k2 = rope_adjacent((x @ pk.T).view(5, n_heads, head_dim).transpose(0, 1))
    scores_cpp = q2 @ k2.transpose(-1, -2)
    torch.testing.assert_close(scores_cpp, scores_hf[0], rtol=1e-4, atol=1e-4)
    # and without the permutation the scores differ (the test can tell)
    q3 = rope_adjacent(q[0])
    assert not torch.allclose(q3 @ rope_adjacent(k[0]).transpose(-1, -2), scores_hf[0], atol=1e-2)


def test_tensor_storage_rules():
    assert tensor_storage("blk.0.attn_norm.weight", (128,), "q8_0") == "f32"
    assert tensor_storage("output_norm.weight", (128,), "f16") == "f32"
    assert tensor_storage("blk.0.ffn_up.weight", (384, 128), "q8_0") == "q8_0"
    assert tensor_storage("blk.0.ffn_down.weight", (128, 100), "q8_0") == "f16"  # rows not a multiple of 32
    assert tensor_storage("token_embd.weight", (1024, 128), "f16") == "f16"
    assert tensor_storage("token_embd.weight", (1024, 128), "f32") == "f32"


# ---------------------------------------------------------------------------------------------- errors


@pytest.fixture()
def model_copy(tiny_model_dir, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, dst)
    return dst


def _edit_json(path: Path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_rejects_other_architectures(model_copy, tmp_path):
    _edit_json(model_copy / "config.json", model_type="mistral", architectures=["MistralForCausalLM"])
    with pytest.raises(UserError, match="Llama-architecture.*MistralForCausalLM"):
        export_gguf(model_copy, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_missing_inputs(model_copy, tmp_path):
    with pytest.raises(UserError, match="no such model directory"):
        export_gguf(tmp_path / "nope", tmp_path / "x.gguf")
    with pytest.raises(UserError, match="unknown GGUF quantisation"):
        export_gguf(model_copy, tmp_path / "x.gguf", quant="q4_k")
    (model_copy / "tokenizer.json").rename(tmp_path / "tokenizer.json.bak")
    with pytest.raises(UserError, match="no tokenizer.json"):
        export_gguf(model_copy, tmp_path / "x.gguf")
    (tmp_path / "tokenizer.json.bak").rename(model_copy / "tokenizer.json")
    (model_copy / "model.safetensors").unlink()
    with pytest.raises(UserError, match="missing weights file model.safetensors"):
        export_gguf(model_copy, tmp_path / "x.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]


def test_failed_export_keeps_old_file(model_copy, tmp_path, monkeypatch):
    import pocketlm.export.gguf as mod

    out = tmp_path / "keep.gguf"
    out.write_bytes(b"old")

    def boom(*args, **kwargs):
        raise UserError("simulated failure")

    monkeypatch.setattr(mod, "_collect_tensors", boom)
    with pytest.raises(UserError, match="simulated"):
        export_gguf(model_copy, out)
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "keep.gguf"]  # no temp file left


def test_unwritable_destination_is_a_user_error(model_copy, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(UserError, match=r"a-file/x.gguf: cannot write there"):
        export_gguf(model_copy, tmp_path / "a-file" / "x.gguf")


def test_unsupported_pre_tokenizer_is_a_user_error(model_copy, model_text, retokenize, tmp_path):
    from tokenizers import pre_tokenizers

    retokenize(model_copy, pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                     pre_tokenizers.ByteLevel(use_regex=False)]),
                text=model_text)
    with pytest.raises(UserError, match=r"not one llama.cpp knows \(Sequence\[WhitespaceSplit"):
        export_gguf(model_copy, tmp_path / "x.gguf")
    retokenize(model_copy, pre_tokenizers.ByteLevel(add_prefix_space=True), text=model_text)
    with pytest.raises(UserError, match="add_prefix_space=True"):
        export_gguf(model_copy, tmp_path / "x.gguf")


def test_out_path_in_new_directory(tiny_model_dir, tmp_path):
    info = export_gguf(tiny_model_dir, tmp_path / "a" / "b" / "m.gguf", quant="q8_0", name="shop")
    assert Path(info["path"]).exists() and info["name"] == "shop"
    assert _field(_reader(info["path"]), "general.name") == "shop"
    assert _field(_reader(info["path"]), "general.file_type") == 7
