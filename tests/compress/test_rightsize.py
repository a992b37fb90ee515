"""`pocketlm rightsize`: every candidate made and measured, the smallest within the budgets recommended."""

from __future__ import annotations

import json

import pytest

from pocketlm.cli import main
from pocketlm.compress.rightsize import pareto

pytest.importorskip("llama_cpp")


def test_pareto_front_against_hand_worked_rows():
    rows = [{"method": "a", "bytes": 10, "perplexity_change_pct": 5.0, "decode_tokens_per_s": 100},
            {"method": "b", "bytes": 20, "perplexity_change_pct": 1.0, "decode_tokens_per_s": 100},
            {"method": "c", "bytes": 30, "perplexity_change_pct": 2.0, "decode_tokens_per_s": 90},  # b beats it
            {"method": "d", "bytes": 40, "perplexity_change_pct": 2.0, "decode_tokens_per_s": 200}]  # fastest
    assert pareto(rows) == ["a", "b", "d"]


def test_rightsize_recommends_the_smallest_candidate_within_budget(tiny_run, shop_data, tmp_path, capsys):
    out = tmp_path / "sizes"
    rc = main(["rightsize", str(tiny_run), "--data", str(shop_data), "--out", str(out), "--max-tokens", "1024",
               "--methods", "q2_k,q4_k_m,q8_0", "--max-loss-increase", "1000%"])
    shown = capsys.readouterr().out
    assert rc == 0 and "recommended: q2_k" in shown
    r = json.loads((out / "rightsize.json").read_text())
    sizes = {c["method"]: c["bytes"] for c in r["candidates"]}
    assert sizes["q2_k"] < sizes["q4_k_m"] < sizes["q8_0"] < r["reference"]["bytes"]
    assert r["recommended"] == "q2_k" and (out / "tiny-run0-q2_k.gguf").exists() or list(out.glob("*-q2_k.gguf"))
    assert not (out / "candidates").exists()  # the others are deleted unless --keep-all
    for c in r["candidates"]:
        assert c["decode_tokens_per_s"] > 0 and c["decode_joules_per_token"] > 0 and c["kl_mean"] >= 0
    assert (out / "rightsize.png").read_bytes()[:4] == b"\x89PNG"
    page = (out / "report.html").read_text()
    assert "Recommended: q2_k" in page and "data:image/png;base64," in page and "<script" not in page
    # a budget only the larger types meet: the smallest of those is chosen
    q8 = next(c for c in r["candidates"] if c["method"] == "q8_0")
    tight = max(q8["perplexity_change_pct"], 0) + 1e-3
    assert main(["rightsize", str(tiny_run), "--data", str(shop_data), "--out", str(tmp_path / "tight"),
                 "--max-tokens", "1024", "--methods", "q2_k,q8_0", "--max-loss-increase", str(tight)]) == 0
    t = json.loads((tmp_path / "tight" / "rightsize.json").read_text())
    assert t["recommended"] == "q8_0"
    assert [c["misses"] != [] for c in t["candidates"]] == [True, False]


def test_rightsize_says_when_nothing_meets_the_budget_and_refuses_gguf(tiny_run, shop_data, tmp_path, capsys):
    rc = main(["rightsize", str(tiny_run), "--data", str(shop_data), "--out", str(tmp_path / "none"),
               "--max-tokens", "512", "--methods", "q2_k", "--max-size", "0.001"])
    out = capsys.readouterr().out
    assert rc == 1 and "no candidate meets the budget" in out
    assert json.loads((tmp_path / "none" / "rightsize.json").read_text())["recommended"] is None
    gguf = next((tmp_path / "none" / "candidates").glob("*.gguf"), None) or tmp_path / "x.gguf"
    gguf.write_bytes(b"GGUF") if not gguf.exists() else None
    assert main(["rightsize", str(gguf), "--data", str(shop_data), "--out", str(tmp_path / "g")]) == 2
    assert "unquantized model" in capsys.readouterr().err
    assert main(["rightsize", str(tiny_run), "--data", str(shop_data), "--out", str(tmp_path / "m"),
                 "--methods", "q4_k_m,q9_z"]) == 2  # refused before anything is made
    assert "unknown q9_z" in capsys.readouterr().err and not (tmp_path / "m" / "candidates").exists()


def test_rightsize_with_a_task_budget(tiny_run, shop_data, tmp_path, capsys):
    """Every candidate also scored on held-out task examples (GGUF through llama.cpp), the drop in points judged."""
    from pathlib import Path

    from pocketlm.train.finetune import FinetuneConfig, finetune
    shop = Path(__file__).resolve().parents[2] / "examples" / "shop"
    bot = tmp_path / "bot"
    finetune(FinetuneConfig(base=str(tiny_run), data=[str(shop / "faq.jsonl")], out=str(bot), max_steps=20,
                            prompt_field="question", completion_field="answer", lr=2e-3, context=192,
                            eval_interval=20, progress=False, dtype="fp32"))
    out = tmp_path / "sizes"
    rc = main(["rightsize", str(bot), "--data", str(shop_data), "--out", str(out), "--max-tokens", "512",
               "--methods", "q2_k,q8_0", "--max-loss-increase", "1000", "--task", "facts", "--task-data",
               str(shop / "faq_heldout.jsonl"), "--prompt-field", "question", "--completion-field", "answer",
               "--limit", "6", "--max-new-tokens", "16", "--max-metric-drop", "-1000"])
    r = json.loads((out / "rightsize.json").read_text())
    assert r["budget"]["task_metric"] == "fact_accuracy" and 0 <= r["reference"]["task_metric"] <= 100
    for c in r["candidates"]:
        assert c["task_drop"] == pytest.approx(r["reference"]["task_metric"] - c["task_metric"])
        assert any("points below" in m for m in c["misses"])  # no candidate can lose -1000 points
    assert rc == 1 and r["recommended"] is None and "task" in (out / "report.html").read_text()
