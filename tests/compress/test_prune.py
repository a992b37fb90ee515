"""`pocketlm prune` on a real (tiny) trained model: importance finds what does nothing, the pruned directory loads
in transformers with the expected shapes, and its logits equal the unpruned model's where the cut removed
nothing that mattered."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from pocketlm.cli import main
from pocketlm.model.io import load_model, save_model


@pytest.fixture(scope="module")
def doctored(tiny_run, tmp_path_factory):
    """The tiny model with layer 2 made a no-op (its attention and MLP write nothing into the residual stream)
    and MLP channels 0-19 of every layer silenced (their gate rows zero, so SiLU(0) x up = 0)."""
    model, tok = load_model(tiny_run)
    with torch.no_grad():
        layer = model.model.layers[2]
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
        for layer in model.model.layers:
            layer.mlp.gate_proj.weight[:20].zero_()
    out = tmp_path_factory.mktemp("doctored") / "model"
    save_model(model, tok, out)
    return out


def _logits(model_dir, ids):
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_depth_and_mlp_pruning_drop_exactly_what_does_nothing(doctored, shop_data, tmp_path, capsys):
    before = json.loads((doctored / "config.json").read_text())
    out = tmp_path / "pruned"
    ffn = before["intermediate_size"] - 20
    assert main(["prune", str(doctored), "--data", str(shop_data), "--layers", str(before["num_hidden_layers"] - 1),
                 "--ffn-size", str(ffn), "--out", str(out), "--max-tokens", "2048"]) == 0
    printed = capsys.readouterr().out
    assert "layers dropped (least block influence): 2" in printed
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.config.num_hidden_layers == before["num_hidden_layers"] - 1
    assert all(layer.mlp.gate_proj.weight.shape == (ffn, before["hidden_size"]) for layer in model.model.layers)
    assert all(layer.mlp.down_proj.weight.shape == (before["hidden_size"], ffn) for layer in model.model.layers)
    ids = torch.randint(0, before["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(_logits(out, ids), _logits(doctored, ids), atol=1e-4)


def test_hidden_size_pruning_keeps_heads_and_loads_everywhere(tiny_run, shop_data, tmp_path, capsys):
    out = tmp_path / "narrow"
    before = json.loads((tiny_run / "model" / "config.json").read_text())
    assert main(["prune", str(tiny_run), "--data", str(shop_data), "--hidden-size", "96", "--out", str(out),
                 "--max-tokens", "2048"]) == 0
    assert "hidden size 128 -> 96" in capsys.readouterr().out
    model, tok = load_model(out)
    cfg = model.config
    assert cfg.hidden_size == 96 and cfg.num_attention_heads == before["num_attention_heads"]
    assert cfg.head_dim == before["hidden_size"] // before["num_attention_heads"]
    assert model.model.embed_tokens.weight.shape == (before["vocab_size"], 96)
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (before["hidden_size"], 96)
    assert model.model.layers[0].self_attn.o_proj.weight.shape == (96, before["hidden_size"])
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    ids = tok("Question: Do you ship abroad?\nAnswer:", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()
    # and a pruned model is a student like any other: distillation from the unpruned model recovers it
    run = tmp_path / "recovered"
    assert main(["distill", "--teacher", str(tiny_run), "--student", str(out), "--data", str(shop_data), "--out",
                 str(run), "--max-steps", "30", "--batch-size", "8", "--context", "64", "--lr", "2e-3",
                 "--warmup-steps", "3", "--eval-batches", "4", "--eval-interval", "30", "--no-progress"]) == 0
    curve = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_loss"] for r in curve if "val_loss" in r]
    assert vals[-1] < vals[0] - 0.15  # measured: 3.90 -> 3.63, the teacher at 3.45


def test_bad_prune_arguments_get_one_line_errors(tiny_run, shop_data, tmp_path, capsys):
    base = ["prune", str(tiny_run), "--data", str(shop_data), "--out", str(tmp_path / "x")]
    for extra, message in [([], "say what to cut"), (["--layers", "99"], "--layers 99: the model has only 4"),
                           (["--hidden-size", "0"], "--hidden-size 0"),
                           (["--hidden-size", "98"], "multiple of the model's 4 attention heads; give 96 or 100"), (["--ffn-size", "384"], "nothing to cut")]:
        capsys.readouterr()
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
