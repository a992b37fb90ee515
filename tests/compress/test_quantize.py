"""`pocketlm quantize` and `pocketlm eval --against` on a real (tiny) trained model, through llama.cpp."""

from __future__ import annotations

import json

import pytest

from pocketlm.cli import main

pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def quantized(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("quantized")
    files = {}
    for method in ("f32", "q8_0", "q4_k_m", "q2_k"):
        files[method] = out / f"tiny-{method}.gguf"
        assert main(["quantize", str(tiny_run), "--method", method, "--out", str(files[method])]) == 0
    return files


def against(capsys, model, reference, data) -> dict:
    capsys.readouterr()
    assert main(["eval", str(model), "--against", str(reference), "--data", str(data), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_quantized_files_load_and_generate_with_pocketlm_tokenizer(quantized, tiny_run, capfd):
    from pocketlm.evaluate.against import gguf_file_type
    from pocketlm.inference.llamacpp import generate_gguf
    sizes = {m: p.stat().st_size for m, p in quantized.items()}
    assert sizes["f32"] > sizes["q8_0"] > sizes["q4_k_m"] > sizes["q2_k"]
    assert gguf_file_type(quantized["q4_k_m"]) == "Q4_K_M"
    capfd.readouterr()
    text = "".join(generate_gguf(quantized["q4_k_m"], "Question: Do you ship abroad?\nAnswer:",
                                 max_new_tokens=12, temperature=0))
    assert text.strip()
    # quantizing again: llama.cpp's per-tensor log never reaches the terminal, one line says what matters
    assert main(["quantize", str(tiny_run), "--method", "q4_k_m", "--out", str(quantized["q4_k_m"])]) == 0
    out, err = capfd.readouterr()
    assert "llama_model" not in out + err and "converting to" not in out + err
    assert "wrote" in out


def test_eval_against_reports_the_cost_of_each_type(quantized, tiny_run, text, capsys):
    exact = against(capsys, quantized["f32"], tiny_run, text)  # the f32 export vs PyTorch: parity
    assert exact["kl_mean"] < 1e-4 and exact["same_top_token_pct"] > 99.5
    assert abs(exact["perplexity_change_pct"]) < 0.1
    q8 = against(capsys, quantized["q8_0"], tiny_run, text)
    q4 = against(capsys, quantized["q4_k_m"], tiny_run, text)
    q2 = against(capsys, quantized["q2_k"], tiny_run, text)
    assert q8["kl_mean"] < q4["kl_mean"] < q2["kl_mean"]
    assert q8["same_top_token_pct"] > 97 and abs(q8["perplexity_change_pct"]) < 1
    assert q2["size_ratio"] > q4["size_ratio"] > q8["size_ratio"] > 1
    for r in (q8, q4, q2):
        assert r["tokens"] > 500 and r["reference"]["runs_on"].startswith("PyTorch")
        assert r["model"]["runs_on"].startswith("llama.cpp") and r["model"]["decode_tokens_per_s"] > 0
    # the text report says the same
    capsys.readouterr()
    assert main(["eval", str(quantized["q4_k_m"]), "--against", str(tiny_run), "--data", str(text)]) == 0
    shown = capsys.readouterr().out
    assert "KL divergence" in shown and "same top token" in shown and "smaller" in shown


def test_smallest_type_within_a_loss_budget(tiny_run, text, tmp_path, capsys):
    out = tmp_path / "auto.gguf"
    assert main(["quantize", str(tiny_run), "--max-loss-increase", "1000%", "--data", str(text),
                 "--out", str(out)]) == 0
    shown = capsys.readouterr().out
    rows = [line.split() for line in shown.splitlines() if line.startswith("  q") or line.startswith("  f16")]
    assert len(rows) == 1 and rows[0][-2] == "within" and out.exists()  # the smallest file is within 1000%
    from pocketlm.evaluate.against import gguf_file_type
    assert gguf_file_type(out) == rows[0][0].upper() and f", {rows[0][0]})" in shown
    # a budget tighter than the smallest rung: the rungs are measured in order up to the first within
    rc = main(["quantize", str(tiny_run), "--max-loss-increase", "0.0001", "--data", str(text),
               "--out", str(tmp_path / "tight.gguf")])
    captured = capsys.readouterr()
    rows = [line.split() for line in captured.out.splitlines() if line.startswith("  q") or line.startswith("  f16")]
    verdicts = [r[-2] for r in rows]
    assert verdicts and verdicts[0] == "over"  # the smallest file costs more than 0.0001% on a tiny model
    sizes = [float(r[1]) for r in rows]
    assert sizes == sorted(sizes)  # measured smallest file first
    if rc == 0:  # measured smallest first, stopped at the first within
        assert verdicts == ["over"] * (len(verdicts) - 1) + ["within"]
        assert (tmp_path / "tight.gguf").exists()
    else:  # none within: a one-line error, and no file
        assert rc == 2 and verdicts == ["over"] * len(verdicts) and "no type keeps perplexity" in captured.err
        assert not (tmp_path / "tight.gguf").exists()


@pytest.mark.parametrize("args, message", [
    (["--method", "q9_z"], "unknown quantization"),
    (["--max-loss-increase", "1%"], "needs --data"),
    (["--max-loss-increase", "lots", "--data", "x.txt"], "give a percentage"),
])
def test_bad_quantize_arguments_are_one_line_errors(tiny_run, tmp_path, capsys, args, message):
    assert main(["quantize", str(tiny_run), *args, "--out", str(tmp_path / "x.gguf")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x.gguf").exists()


def test_against_a_model_with_another_vocabulary_is_refused(tiny_run, quantized, text, tmp_path, capsys):
    from pocketlm.data.prepare import PrepareConfig, prepare
    from pocketlm.train.pretrain import PretrainConfig, pretrain
    data = tmp_path / "other-data"
    prepare(PrepareConfig(inputs=[str(text)], out=str(data), vocab_size=300), progress=False)
    other = tmp_path / "other"
    pretrain(PretrainConfig(data=str(data), out=str(other), model="nano-1m", context=64, batch_size=4,
                            max_steps=2, warmup_steps=1, eval_interval=2, eval_batches=1, progress=False,
                            dtype="fp32"))
    assert main(["eval", str(other), "--against", str(tiny_run), "--data", str(text)]) == 2
    assert "share a tokenizer" in capsys.readouterr().err


def test_kl_and_same_top_against_hand_computed_values():
    import math

    import numpy as np

    from pocketlm.evaluate.against import compare_logits
    ref = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]], dtype=np.float32))
    cand = np.log(np.array([[0.25, 0.5, 0.25], [0.1, 0.2, 0.7]], dtype=np.float32))
    got = compare_logits(ref, cand, np.array([1, 2]))
    want_kl = 0.5 * math.log(0.5 / 0.25) + 0.25 * math.log(0.25 / 0.5)  # row 2: identical, 0
    assert np.allclose(got["kl"], [want_kl, 0.0], atol=1e-6)
    assert np.allclose(got["nll_ref"], [-math.log(0.25), -math.log(0.7)], atol=1e-6)
    assert np.allclose(got["nll_model"], [-math.log(0.5), -math.log(0.7)], atol=1e-6)
    assert got["same_top"].tolist() == [False, True]
