"""`pocketlm quantize --method int8`: a torchao int8 model directory that transformers loads, run by pocketlm's
decode loop with torch's int8 kernel and giving what transformers' forward gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from pocketlm.cli import main

pytest.importorskip("torchao", reason="the int8 path needs torchao (an install extra of pocketlm)")


@pytest.fixture(scope="module")
def int8_dir(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "tiny-int8"
    assert main(["quantize", str(tiny_run), "--method", "int8", "--out", str(out)]) == 0
    return out


def test_int8_directory_is_a_transformers_model_with_int8_weights(int8_dir, tiny_run):
    from transformers import AutoModelForCausalLM

    from pocketlm.inference.fastpath import int8_parts
    cfg = json.loads((int8_dir / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "torchao"
    for name in ("tokenizer.json", "generation_config.json", "model.safetensors"):
        assert (int8_dir / name).exists()
    model = AutoModelForCausalLM.from_pretrained(str(int8_dir))  # plain transformers, nothing of pocketlm's
    q, s = int8_parts(model.model.layers[0].mlp.down_proj.weight)
    assert q.dtype == torch.int8 and s.numel() == q.shape[0]
    assert int8_parts(model.lm_head.weight) is None  # the output layer keeps its dtype
    before = (tiny_run / "model" / "model.safetensors").stat().st_size
    assert (int8_dir / "model.safetensors").stat().st_size < 0.6 * before


def test_fast_path_computes_what_transformers_forward_computes(tiny_run):
    """The fast path's int8 kernel against torchao's own dequantizing forward, on the same int8 weights, in fp32
    (exact up to summation order) and in bf16; then the serving batch decoder against the fast path."""
    from transformers import AutoModelForCausalLM, TorchAoConfig

    from pocketlm.inference.fastpath import decoder, unsupported_reason
    from pocketlm.inference.slots import SlotDecoder
    from pocketlm.model.io import import_torchao
    import_torchao()
    from torchao.quantization import Int8WeightOnlyConfig
    ids = torch.tensor([[5, 17, 42, 99, 7, 300, 12, 64]])
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 0.1)):
        model = AutoModelForCausalLM.from_pretrained(
            str(tiny_run / "model"), dtype=dtype, quantization_config=TorchAoConfig(Int8WeightOnlyConfig())).eval()
        assert unsupported_reason(model) is None
        with torch.inference_mode():
            want = model(ids).logits[0].float()
        fast = decoder(model, 32)
        got = fast(ids[:, :6])[0]
        torch.testing.assert_close(got, want[5], rtol=tol, atol=tol)
        for i in (6, 7):  # one token at a time, attending to the cache
            torch.testing.assert_close(fast(ids[:, i:i + 1])[0], want[i], rtol=tol, atol=tol)
    slots = SlotDecoder(model, slots=2, max_len=32, initial=8)
    torch.testing.assert_close(slots.prefill(1, ids[0].tolist(), 0)[0], want[-1], rtol=0.1, atol=0.1)


def test_int8_costs_little_against_the_fp32_model(int8_dir, tiny_run, text, capsys):
    capsys.readouterr()
    assert main(["eval", str(int8_dir), "--against", str(tiny_run), "--data", str(text), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert abs(r["perplexity_change_pct"]) < 1.0 and r["kl_mean"] < 0.01 and r["same_top_token_pct"] > 95
    assert r["model"]["bytes"] < r["reference"]["bytes"]


def test_generate_with_the_int8_model_prints_no_library_noise(int8_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "pocketlm", "generate", str(int8_dir), "--prompt", "Do you ship",
                           "--max-new-tokens", "8", "--temperature", "0", "--no-stream"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("Do you ship") and len(proc.stdout.strip()) > len("Do you ship")
    assert proc.stderr.strip() == "", proc.stderr  # torchao's kernel-loading lines and torch's notes kept quiet


@pytest.mark.parametrize("extra, message", [
    (["--out", "{tmp}/x.gguf"], "writes a model directory"),
    (["--out", "{tmp}/x", "--max-loss-increase", "1%", "--data", "x.txt"], "chooses among GGUF types"),
    (["--out", "{tmp}/x", "--method", "int4"], "--method q4_k_m"),
])
def test_bad_int8_arguments_are_one_line_errors(tiny_run, tmp_path, capsys, extra, message):
    args = ["quantize", str(tiny_run), "--method", "int8", *[a.format(tmp=tmp_path) for a in extra]]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.gguf").exists()


def test_an_int8_model_is_not_quantized_again(int8_dir, tmp_path, capsys):
    assert main(["quantize", str(int8_dir), "--method", "int8", "--out", str(tmp_path / "again")]) == 2
    assert "quantized already" in capsys.readouterr().err
