"""torchrun: two gloo processes on the CPU train exactly what one process trains, only rank 0 writes, and a
run killed with SIGKILL resumes to the same weights."""

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

from pocketlm.errors import UserError
from pocketlm.train.finetune import FinetuneConfig, finetune
from pocketlm.train.pretrain import PretrainConfig, pretrain

REPO = Path(__file__).resolve().parents[2]
FLAGS = ["--model", "nano-1m", "--context", "32", "--batch-size", "4", "--grad-accum", "2", "--warmup-steps", "2",
         "--eval-interval", "4", "--eval-batches", "3", "--log-interval", "2", "--dtype", "fp32", "--no-progress",
         "--lr", "3e-3"]


def _cfg(data, out, **kw):
    return PretrainConfig(data=str(data), out=str(out), model="nano-1m", context=32, batch_size=4, grad_accum=2,
                          warmup_steps=2, eval_interval=4, eval_batches=3, log_interval=2, dtype="fp32",
                          progress=False, lr=3e-3, **kw)


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _torchrun(args: list[str], **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
           "-m", "pocketlm", *args]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _run2(args: list[str]) -> str:
    p = _torchrun(args)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    return out


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _weights(run: Path) -> dict:
    return load_file(str(run / "model" / "model.safetensors"))


def _assert_same_weights(a: Path, b: Path, atol: float = 1e-5):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst < atol, worst


@pytest.fixture(scope="module")
def one_process(shop_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    pretrain(_cfg(shop_data, out, max_steps=12))
    return out


@pytest.mark.parametrize("engine", [[], ["--fsdp"]], ids=["ddp", "fsdp"])
def test_two_processes_train_what_one_process_trains(shop_data, one_process, tmp_path, engine):
    out = tmp_path / "two"
    stdout = _run2(["pretrain", "--data", str(shop_data), "--out", str(out), "--max-steps", "12", *FLAGS, *engine])
    assert stdout.count("trained 12 steps") == 1  # rank 0 alone reports
    one, two = _metrics(one_process), _metrics(out)
    assert [r["step"] for r in one] == [r["step"] for r in two]  # one writer: no line twice
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "val_loss"):
            if key in a:
                assert abs(a[key] - b[key]) < 1e-5, (a, b)
    assert two[-1]["tokens"] == one[-1]["tokens"]  # the same global batch
    _assert_same_weights(one_process, out)
    state = torch.load(out / "checkpoint" / "trainer_state.pt", weights_only=False)
    assert state["world_size"] == 2 and state["step"] == 12


@pytest.mark.parametrize("engine", [[], ["--fsdp"]], ids=["ddp", "fsdp"])
def test_a_killed_run_resumes_to_the_same_weights(shop_data, one_process, tmp_path, engine):
    out = tmp_path / "killed"
    args = ["pretrain", "--data", str(shop_data), "--out", str(out), "--max-steps", "12", "--save-interval", "3",
            *FLAGS, *engine]
    p = _torchrun(args, start_new_session=True)
    deadline = time.time() + 300
    while not (out / "checkpoint" / "trainer_state.pt").exists():
        assert p.poll() is None and time.time() < deadline, p.communicate()[1][-3000:]
        time.sleep(0.2)
    workers = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2
    os.kill(int(workers[1]), signal.SIGKILL)  # one rank dies; torchrun takes the other down
    p.communicate(timeout=120)
    assert p.returncode != 0 and not (out / "model").exists()
    state = torch.load(out / "checkpoint" / "trainer_state.pt", weights_only=False)
    assert 3 <= state["step"] < 12  # step 3 (the usual) or 9: a checkpoint inside a logging interval
    if engine:  # an --fsdp checkpoint resumed without --fsdp (here: in one process) is a clear error
        with pytest.raises(UserError, match="written with --fsdp; resume it under torchrun with --fsdp"):
            pretrain(_cfg(shop_data, out, max_steps=12, save_interval=3, resume=True))
    _run2([*args, "--resume"])
    _assert_same_weights(one_process, out)
    one, two = _metrics(one_process), _metrics(out)  # the interrupted logging interval is carried on, not doubled
    assert [r["step"] for r in one] == [r["step"] for r in two]
    for a, b in zip(one, two, strict=True):
        assert all(abs(a[k] - b[k]) < 1e-5 for k in ("loss", "val_loss") if k in a), (a, b)


def test_a_batch_that_does_not_split_is_a_clear_error(shop_data, tmp_path):
    flags = [f for f in FLAGS]
    flags[flags.index("--batch-size") + 1] = "3"
    p = _torchrun(["pretrain", "--data", str(shop_data), "--out", str(tmp_path / "r"), "--max-steps", "2", *flags])
    _, err = p.communicate(timeout=300)
    assert p.returncode != 0
    # said once, by rank 0, with no traceback from pocketlm (torchrun's launcher prints its own summary)
    assert err.count("--batch-size 3 does not split evenly over 2 processes") == 1
    assert "pocketlm/" not in "".join(line for line in err.splitlines() if line.lstrip().startswith("File "))


def test_fsdp_with_lora_is_a_clear_error(tiny_run, tmp_path):
    p = _torchrun(["finetune", "--base", str(tiny_run), "--data", str(REPO / "examples" / "shop" / "faq.jsonl"),
                   "--out", str(tmp_path / "r"), "--max-steps", "2", "--batch-size", "4", "--lora", "--fsdp",
                   "--prompt-field", "question", "--completion-field", "answer", "--no-progress"])
    _, err = p.communicate(timeout=300)
    assert p.returncode != 0
    assert err.count("--fsdp with --lora: LoRA trains a few MB of adapter") == 1


def test_lora_fine_tuning_on_two_processes_matches_one(tiny_run, tmp_path):
    data = REPO / "examples" / "shop" / "faq.jsonl"
    common = dict(base=str(tiny_run), data=[str(data)], max_steps=4, batch_size=4, context=128, lora=True,
                  lora_dropout=0.0, prompt_field="question", completion_field="answer", eval_interval=2,
                  progress=False, dtype="fp32", keep_best=False)
    finetune(FinetuneConfig(out=str(tmp_path / "one"), **common))
    _run2(["finetune", "--base", str(tiny_run), "--data", str(data), "--out", str(tmp_path / "two"),
           "--max-steps", "4", "--batch-size", "4", "--context", "128", "--lora", "--lora-dropout", "0",
           "--prompt-field", "question", "--completion-field", "answer", "--eval-interval", "2", "--no-progress",
           "--dtype", "fp32", "--no-keep-best"])
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two]
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "val_loss"):
            if key in a:
                assert abs(a[key] - b[key]) < 1e-5, (a, b)
    wa = load_file(str(tmp_path / "one" / "model" / "adapter_model.safetensors"))
    wb = load_file(str(tmp_path / "two" / "model" / "adapter_model.safetensors"))
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5


def test_fsdp_in_one_process_says_it_changes_nothing(shop_data, tmp_path, capsys):
    s = pretrain(_cfg(shop_data, tmp_path / "r", max_steps=2, fsdp=True))
    assert s["step"] == 2
    assert "--fsdp shards the model over the processes of a torchrun launch" in capsys.readouterr().err
