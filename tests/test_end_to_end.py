"""The whole foundation path on real text: TinyStories -> prepare -> pretrain -> eval -> generate -> reload."""

from __future__ import annotations

import json
import subprocess
import sys

from transformers import AutoModelForCausalLM, AutoTokenizer


def _cli(*args, timeout=300):
    out = subprocess.run([sys.executable, "-m", "pocketlm", *map(str, args)], capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_tinystories_end_to_end(shared_data, tmp_path):
    text = (shared_data / "tinystories" / "train.txt").read_text(encoding="utf-8")[:600_000]
    (tmp_path / "stories.txt").write_text(text, encoding="utf-8")
    data, run = tmp_path / "data", tmp_path / "run"
    _cli("prepare", tmp_path / "stories.txt", "--out", data, "--vocab-size", 1024)
    meta = json.loads((data / "meta.json").read_text())
    assert meta["splits"]["train"]["documents"] > 100 and meta["splits"]["val"]["documents"] > 2
    _cli("pretrain", "--data", data, "--out", run, "--model", "nano-1m", "--max-steps", 150, "--context", 128,
         "--batch-size", 16, "--lr", "3e-3", "--eval-interval", 75, "--no-progress")
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    assert vals[-1] < vals[0] - 2.0  # from ~ln(1024) = 6.9 to well below
    valid = shared_data / "tinystories" / "valid.txt"
    r = json.loads(_cli("eval", run, "--data", valid, "--max-tokens", 20000, "--json"))
    assert 0.5 < r["bits_per_byte"] < 3.0 and r["tokens"] == 20000
    story = _cli("generate", run, "--prompt", "Once upon a time", "--temperature", 0, "--max-new-tokens", 30)
    assert story.startswith("Once upon a time") and len(story.split()) > 10
    model = AutoModelForCausalLM.from_pretrained(run / "model")
    tok = AutoTokenizer.from_pretrained(run / "model")
    assert model.num_parameters() > 500_000 and tok.decode(tok("Lily and Tom")["input_ids"][1:]) == "Lily and Tom"
