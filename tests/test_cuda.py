"""The CUDA paths: bf16 autocast, fused AdamW, SDPA, torch.compile, on a GPU. Skipped without one.

`pytest tests/test_cuda.py` on a machine with an NVIDIA GPU is the whole check: pretraining and
LoRA fine-tuning on the GPU, compiled and not, against the same runs on the CPU in fp32."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pocketlm.model.io import load_model
from pocketlm.train.finetune import FinetuneConfig, finetune
from pocketlm.train.pretrain import PretrainConfig, pretrain

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")

SHOP = Path(__file__).resolve().parent.parent / "examples" / "shop"
COMMON = dict(model="nano-1m", context=128, batch_size=8, warmup_steps=5, eval_interval=1000, eval_batches=2,
              progress=False, log_interval=5, lr=3e-3)


def test_pretraining_on_the_gpu_matches_the_cpu(shop_data, tmp_path):
    cpu = pretrain(PretrainConfig(data=str(shop_data), out=str(tmp_path / "cpu"), max_steps=30, dtype="fp32",
                                  device="cpu", **COMMON))
    gpu = pretrain(PretrainConfig(data=str(shop_data), out=str(tmp_path / "gpu"), max_steps=30, dtype="fp32",
                                  device="cuda", **COMMON))
    assert gpu["device"].startswith("cuda") and gpu["attention"] == "sdpa"
    # TF32 matmuls and other kernels: close, not equal
    assert gpu["val_loss"] == pytest.approx(cpu["val_loss"], abs=0.05)
    a = load_file(str(tmp_path / "cpu" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "gpu" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=2e-2) for k in a)  # the same training, up to TF32 rounding


@pytest.mark.parametrize("compile", [False, True])
def test_bf16_pretraining_learns_and_saves_fp32(shop_data, tmp_path, compile):
    s = pretrain(PretrainConfig(data=str(shop_data), out=str(tmp_path / "r"), max_steps=60, dtype="auto",
                                device="cuda", compile=compile, **{**COMMON, "eval_interval": 30}))
    assert s["dtype"] == "bf16" and s["compile"] == compile
    vals = [json.loads(x)["val_loss"] for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
            if "val_loss" in x]
    assert vals[-1] < vals[0] - 1.0, vals
    config = json.loads((tmp_path / "r" / "model" / "config.json").read_text())
    assert config["torch_dtype" if "torch_dtype" in config else "dtype"] == "float32"
    model, _ = load_model(tmp_path / "r", device="cuda")
    assert next(model.parameters()).is_cuda


def test_fused_adamw_on_the_gpu():
    from pocketlm.train.loop import LoopConfig, make_optimizer
    model = torch.nn.Linear(4, 4).cuda()
    opt = make_optimizer(model, LoopConfig(), torch.device("cuda"))
    assert opt.defaults["fused"]


def test_lora_fine_tuning_on_the_gpu(tiny_run, tmp_path):
    s = finetune(FinetuneConfig(base=str(tiny_run), data=[str(SHOP / "faq.jsonl")], out=str(tmp_path / "lora"),
                                prompt_field="question", completion_field="answer", lora=True, max_steps=30,
                                eval_interval=15, context=192, batch_size=8, progress=False, eval_batches=2,
                                device="cuda", compile=True))
    vals = [json.loads(x)["val_loss"] for x in (tmp_path / "lora" / "metrics.jsonl").read_text().splitlines()
            if "val_loss" in x]
    assert s["dtype"] == "bf16" and min(vals[1:]) < vals[0] - 0.2, vals
