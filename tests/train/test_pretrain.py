"""Real training runs on the bundled shop corpus: parity with transformers, determinism, resume, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from pocketlm.data.shards import TOKENIZER_DIR
from pocketlm.data.tokenizer import load_tokenizer
from pocketlm.errors import UserError
from pocketlm.model.io import save_model
from pocketlm.train.pretrain import PretrainConfig, build_model, pretrain

COMMON = dict(model="nano-1m", context=64, batch_size=4, warmup_steps=5, eval_interval=1000, eval_batches=2,
              progress=False, dtype="fp32", log_interval=5)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


def test_saved_model_loads_in_transformers_with_identical_logits(shop_data, tmp_path):
    tokenizer = load_tokenizer(shop_data / TOKENIZER_DIR)
    cfg = PretrainConfig(data=str(shop_data), out=str(tmp_path / "run"), **COMMON)
    model = build_model(cfg, tokenizer).eval()
    save_model(model, tokenizer, tmp_path / "saved")
    hf_model = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", local_files_only=True).eval()
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "saved", local_files_only=True)
    text = "Our returns policy: items can be returned within the window — café €5 ✓"
    ids = hf_tok(text, return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == tokenizer.encode(text)
    with torch.no_grad():
        a = model(ids).logits
        b = hf_model(ids).logits
    assert torch.allclose(a, b, atol=1e-5, rtol=0)
    assert hf_model.config.tie_word_embeddings
    assert (tmp_path / "saved" / "generation_config.json").exists()
    assert hf_tok.chat_template


def test_same_seed_same_weights(shop_data, tmp_path):
    for name in ("a", "b"):
        pretrain(PretrainConfig(data=str(shop_data), out=str(tmp_path / name), max_steps=8, **COMMON))
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_training_lowers_validation_loss_and_writes_everything(tiny_run):
    records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    assert vals[-1] < vals[0] - 1.0
    assert any("tok_per_s" in r for r in records)
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["step"] == 120 and summary["stopped"] == "budget"
    png = (tiny_run / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json"):
        assert (tiny_run / "model" / name).exists()
    assert (tiny_run / "checkpoint" / "trainer_state.pt").exists()


def _cli(*args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "pocketlm", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_ctrl_c_saves_and_resume_matches_uninterrupted_run(shop_data, tmp_path):
    flags = ["--data", str(shop_data), "--model", "nano-1m", "--context", "64", "--batch-size", "4",
             "--max-steps", "60", "--warmup-steps", "5", "--eval-interval", "20", "--eval-batches", "2",
             "--log-interval", "5", "--save-interval", "1000", "--dtype", "fp32", "--no-progress"]
    straight = _cli("pretrain", *flags, "--out", str(tmp_path / "straight"))
    assert straight.wait(timeout=300) == 0, straight.stdout.read()

    run = tmp_path / "interrupted"
    proc = _cli("pretrain", *flags, "--out", str(run))
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until training is under way, then press Ctrl-C
        if metrics.exists() and any('"loss"' in line and json.loads(line)["step"] >= 15
                                    for line in metrics.read_text().splitlines()):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out
    assert "interrupted" in out
    state = torch.load(run / "checkpoint" / "trainer_state.pt", weights_only=False)
    assert 15 <= state["step"] < 60

    resumed = _cli("pretrain", *flags, "--out", str(run), "--resume")
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out
    assert "resumed from" in out

    wa, wb = _weights(tmp_path / "straight"), _weights(run)
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "resumed weights differ from the uninterrupted run"
    curve = lambda p: [(r["step"], r.get("loss"), r.get("val_loss"))  # noqa: E731
                       for r in map(json.loads, (p / "metrics.jsonl").read_text().splitlines())]
    assert curve(tmp_path / "straight") == curve(run)


def test_residual_projections_start_small(shop_data, tmp_path):
    # GPT-2 / nanoGPT initialisation: the layers that write into the residual stream start at 0.02/sqrt(2L)
    tokenizer = load_tokenizer(shop_data / TOKENIZER_DIR)
    model = build_model(PretrainConfig(data=str(shop_data), out=str(tmp_path / "r"), **{**COMMON, "model": "mini-12m"}),
                        tokenizer)
    want = 0.02 / (2 * model.config.num_hidden_layers) ** 0.5
    for layer in model.model.layers:
        for w in (layer.self_attn.o_proj.weight, layer.mlp.down_proj.weight):
            assert abs(float(w.detach().std()) - want) < 0.1 * want
        assert abs(float(layer.self_attn.q_proj.weight.detach().std()) - 0.02) < 0.002  # the others keep transformers' 0.02


def test_starting_validation_pass_can_be_skipped(shop_data, tmp_path):
    pretrain(PretrainConfig(data=str(shop_data), out=str(tmp_path / "run"), max_steps=3, eval_at_start=False,
                            **COMMON))
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_loss" in r] == [3]


def test_attention_kernels_and_compile_train_alike(shop_data, tmp_path):
    # on CPU at context 64 "auto" trains with plain matmul attention; SDPA, and torch.compile of the model and
    # the loss together, must train the same model
    runs = {}
    for name, extra in (("auto", {}), ("sdpa", {"attention": "sdpa"}), ("compiled", {"compile": True})):
        s = pretrain(PretrainConfig(data=str(shop_data), out=str(tmp_path / name), max_steps=4, **COMMON, **extra))
        runs[name] = s, _weights(tmp_path / name)
    assert runs["auto"][0]["attention"] == "eager" and runs["sdpa"][0]["attention"] == "sdpa"
    ref_summary, ref = runs["auto"]
    for name in ("sdpa", "compiled"):
        summary, weights = runs[name]
        assert abs(summary["val_loss"] - ref_summary["val_loss"]) < 1e-4, name
        assert all(torch.allclose(weights[k], ref[k], atol=1e-4) for k in ref), name
    config = json.loads((tmp_path / "auto" / "model" / "config.json").read_text())
    assert not any("attn_implementation" in k for k in config)  # the training kernel is not saved


def test_time_and_token_budgets(shop_data, tmp_path):
    s = pretrain(PretrainConfig(data=str(shop_data), out=str(tmp_path / "tok"), max_tokens=4 * 64 * 7, **COMMON))
    assert s["step"] == 7
    s = pretrain(PretrainConfig(data=str(shop_data), out=str(tmp_path / "time"), max_time="2s", **COMMON))
    assert 2.0 <= s["elapsed"] < 4.0


def test_refuses_to_overwrite_a_run_and_to_resume_nothing(shop_data, tmp_path):
    cfg = dict(data=str(shop_data), out=str(tmp_path / "r"), max_steps=2, **COMMON)
    pretrain(PretrainConfig(**cfg))
    with pytest.raises(UserError, match="--resume"):
        pretrain(PretrainConfig(**cfg))
    with pytest.raises(UserError, match="no checkpoint"):
        pretrain(PretrainConfig(**{**cfg, "out": str(tmp_path / "empty")}, resume=True))


def test_cli_reports_bad_data_dir_in_one_line(tmp_path):
    proc = _cli("pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--max-steps", "1")
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 2
    assert out.strip().startswith("error:") and "pocketlm prepare" in out and "Traceback" not in out
