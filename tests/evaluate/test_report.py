"""The HTML run report, built from run directories written by hand (no training needed)."""

from __future__ import annotations

import base64
import json
import math
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from pocketlm.errors import UserError
from pocketlm.evaluate import report
from pocketlm.evaluate.report import build_report, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EVIL = '<script>alert("x")</script> & <img src="http://evil.example/x.png">'
LONG = "word " * 200 + "THE-END"


def write_metrics(run: Path, steps: int = 200, log_every: int = 10, eval_every: int = 50,
                  tokens_per_step: int = 4096) -> None:
    lines = [{"step": 0, "tokens": 0, "elapsed": 0.0, "val_loss": 7.6, "val_bpb": 3.1}]
    for step in range(log_every, steps + 1, log_every):
        tokens = step * tokens_per_step
        lr = 1e-3 * min(1.0, step / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        loss = 2.2 + 5.4 * math.exp(-step / 40)
        lines.append({"step": step, "tokens": tokens, "elapsed": step * 0.05, "loss": round(loss, 5), "lr": lr,
                      "tok_per_s": 81920.0, "grad_norm": round(0.4 + 2 / (1 + step / 10), 4)})
        if step % eval_every == 0:
            val = 2.3456 if step == steps else 2.3 + 5.3 * math.exp(-step / 40) + 0.06
            lines.append({"step": step, "tokens": tokens, "elapsed": step * 0.05, "val_loss": val})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")


def write_model(run: Path, name: str = "model.safetensors") -> None:
    (run / "model").mkdir(parents=True, exist_ok=True)
    save_file({"embed.weight": np.zeros((64, 16), dtype=np.float32),
               "norm.weight": np.ones(16, dtype=np.float32)}, str(run / "model" / name))


def write_eval(run: Path) -> None:
    examples = [
        {"input": "What are your opening hours?", "expected": "9 to 5", "got": "9 to 5", "score": 1.0},
        {"input": EVIL, "expected": "a & b", "got": EVIL, "score": 0.25},
        {"input": LONG, "expected": ["yes", "yep"], "got": "no", "score": 0.0},
    ]
    (run / "evals").mkdir(exist_ok=True)
    (run / "evals" / "qa-test.json").write_text(json.dumps({
        "task": "qa", "data": "examples/shop/faq_heldout.jsonl",
        "metrics": {"exact_match": 0.625, "token_f1": 0.7321},
        "examples": examples, "worst": [{**examples[2], "index": 41}, {**examples[1], "index": 6}],
        "speed": {"tokens_per_s": 1234.5, "seconds": 12.5},
        "model": "runs/shop-sft/model", "date": "2025-01-02T03:04:05",
    }), encoding="utf-8")


@pytest.fixture
def finetune_run(tmp_path) -> Path:
    run = tmp_path / "shop-sft"
    run.mkdir()
    write_metrics(run)
    write_model(run)
    write_eval(run)
    summary = {"step": 200, "tokens": 819200, "elapsed": 10.0, "stopped": "budget", "device": "cpu",
               "dtype": "fp32", "compile": False, "val_loss": 2.3456, "parameters": 1040, "trainable_parameters": 260,
               "tokens_per_s": 81920.0, "model_dir": str(run / "model"), "loss_plot": str(run / "loss.png"),
               "base": "runs/shop-base", "train_examples": 120, "val_examples": 14,
               "config": {"base": "runs/shop-base", "data": "faq.jsonl", "lr": 0.0002, "lora": True,
                          "max_steps": 200, "max_time": None, "note": "<b>bold</b>"}}
    (run / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return run


def png_images(html: str) -> list[bytes]:
    return [base64.b64decode(m, validate=True) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)]


def assert_self_contained(html: str) -> None:
    assert not re.search(r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert "@import" not in html and "url(" not in html
    assert "<script" not in html.lower() and "<link" not in html.lower()


def test_report_of_a_finished_finetune(finetune_run):
    out = write_report(finetune_run)
    assert out == finetune_run / "report.html" and out.is_file()
    html = out.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    # summary figures
    assert "finetune (LoRA)" in html and "runs/shop-base" in html
    assert "1,040" in html and "260" in html and "25.00% of the model" in html
    assert "819,200" in html and "81,920" in html and "cpu / fp32" in html
    assert "final validation loss" in html and "2.3456" in html
    assert "best validation loss" in html and "2.3456 at step 200" in html
    assert "model.safetensors" in html  # weight file and its size
    # configuration, escaped
    assert "max_steps" in html and "0.0002" in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    # the evaluation: metrics, speed, examples
    assert "exact_match" in html and "0.625" in html and "0.7321" in html
    assert "1,234.5" in html and "12.5 s" in html
    assert "What are your opening hours?" in html and "Worst examples" in html
    assert '["yes", "yep"]' in html.replace("&quot;", '"')
    assert "<td class='num'>42</td>" in html and "<td class='num'>7</td>" in html  # worst: 1-based numbers


def test_report_escapes_run_text(finetune_run):
    html = write_report(finetune_run).read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;img src=&quot;http://evil.example" in html
    assert "a &amp; b" in html
    assert_self_contained(html)
    # a long text is cut in the cell, with the whole of it in the title attribute
    cut = re.search(r'<span class="cut" title="([^"]*)">([^<]*)</span>', html)
    assert cut and cut.group(1).endswith("THE-END") and cut.group(1).count("word") == 200
    assert cut.group(2).endswith("…") and "THE-END" not in cut.group(2)


def test_report_images_are_embedded_pngs(finetune_run):
    html = write_report(finetune_run).read_text(encoding="utf-8")
    images = png_images(html)
    assert len(images) == 2  # loss curves; learning rate (+ gradient norm)
    for png in images:
        assert png.startswith(PNG_SIGNATURE) and png[-8:-4] == b"IEND" and len(png) > 5000


def test_report_of_a_run_in_progress(tmp_path):
    run = tmp_path / "pretrain-run"
    run.mkdir()
    write_metrics(run, steps=100)
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 110, "tokens": 45')  # a line being written as we read
    out = write_report(run, tmp_path / "elsewhere" / "r.html")
    assert out == tmp_path / "elsewhere" / "r.html" and not (run / "report.html").exists()
    html = out.read_text(encoding="utf-8")
    assert "No summary.json yet" in html and "No task evaluations" in html
    assert "No configuration recorded" in html and "none yet in" in html
    assert "1 line(s) of metrics.jsonl could not be read" in html
    assert "409,600" in html  # tokens so far, from metrics.jsonl
    assert len(png_images(html)) == 2
    assert_self_contained(html)


def test_report_of_a_pretrain_with_unreadable_eval(tmp_path):
    run = tmp_path / "mini"
    run.mkdir()
    write_metrics(run, steps=50)
    write_model(run)
    (run / "summary.json").write_text(json.dumps({
        "step": 50, "tokens": 204800, "elapsed": 2.5, "stopped": "interrupted", "device": "cuda", "dtype": "bf16",
        "compile": True, "val_loss": 3.5, "val_bpb": 1.25, "parameters": 1040, "context": 128,
        "tokens_per_s": 81920.0, "config": {"model": "nano-1m", "data": "data/shop"}}), encoding="utf-8")
    (run / "evals").mkdir()
    (run / "evals" / "broken.json").write_text("{not json", encoding="utf-8")
    html = write_report(run).read_text(encoding="utf-8")
    assert ">pretrain<" in html and "nano-1m" in html and "interrupted" in html
    assert "3.5000 (1.2500 bits per byte)" in html and "cuda / bf16, torch.compile" in html
    assert "broken.json" in html and "could not be read" in html


def test_report_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(UserError, match="no such run directory"):
        write_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="metrics.jsonl"):
        write_report(tmp_path / "empty")
    assert not (tmp_path / "empty" / "report.html").exists()


def test_report_escapes_script_in_examples_and_paths(tmp_path):
    """The template autoescapes: a <script> in an example's text, a task name or the run's path is shown, not run."""
    run = tmp_path / "run-<script>&x"
    run.mkdir()
    write_metrics(run, steps=20)
    script = "<script>alert('pwned')</script>"
    (run / "evals").mkdir()
    (run / "evals" / "qa.json").write_text(json.dumps({
        "task": f"qa {script}", "metrics": {"exact_match": 0.5},
        "examples": [{"input": f"say {script}", "expected": script, "got": f'"{script}"', "score": 0.0}],
        "worst": [{"input": script + " " + LONG, "got": script, "score": 0.0, "index": 0}],
    }), encoding="utf-8")
    html = build_report(run)
    assert "<script" not in html.lower()
    escaped = "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;"
    assert f"<td>say {escaped}</td><td>{escaped}</td><td>&quot;{escaped}&quot;</td>" in html
    assert f"qa {escaped}" in html  # the task name
    assert html.count("run-&lt;script&gt;&amp;x") >= 4  # title, heading, path, "none yet in" the model folder
    cut = re.search(r'<span class="cut" title="([^"]*)">([^<]*)</span>', html)  # a long text, cut
    assert cut and cut.group(1).startswith(escaped) and cut.group(2).startswith(escaped)
    assert_self_contained(html)


def test_report_template_is_package_data():
    template = resources.files("pocketlm.evaluate") / "templates" / report.TEMPLATE
    assert template.is_file()
    assert report._template().environment.autoescape is True
