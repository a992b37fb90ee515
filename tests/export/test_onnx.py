"""ONNX export: onnxruntime's logits equal PyTorch's for several prompts, batch sizes and lengths (the
batch and sequence axes are really dynamic), from a run directory, a LoRA run and the CLI; bad input is
a one-line error.

Uses the trained nano-1m model of conftest.py. Each export takes 10-30 s on two shared cores (most of
it torch.export tracing), so the tests share one export where they can.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from pocketlm.errors import UserError

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install 'pocketlm[onnx]'")
pytest.importorskip("onnxscript", reason="onnxscript is not installed: pip install 'pocketlm[onnx]'")

TOL = 1e-4  # fp32: the largest |logit difference| allowed between onnxruntime and PyTorch


def _session(path: Path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # tiny model, shared cores
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _pad(rows: list[list[int]], pad_id: int, *, left: bool) -> tuple[np.ndarray, np.ndarray]:
    n = max(len(r) for r in rows)
    ids = np.full((len(rows), n), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), n), dtype=np.int64)
    for i, r in enumerate(rows):
        span = slice(n - len(r), n) if left else slice(0, len(r))
        ids[i, span], mask[i, span] = r, 1
    return ids, mask


def _max_diff(session, model, ids: np.ndarray, mask: np.ndarray) -> float:
    got = session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                    use_cache=False).logits.numpy()
    assert got.shape == ref.shape == (*ids.shape, model.config.vocab_size)
    keep = mask.astype(bool)  # a padded position's logits mean nothing in either
    return float(np.abs(got - ref)[keep].max())


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory) -> dict:
    """The tiny model exported once, from its run directory."""
    from pocketlm.export.onnx import export_onnx

    return export_onnx(tiny_model_dir.parent, tmp_path_factory.mktemp("onnx") / "tiny-onnx")


@pytest.fixture(scope="module")
def torch_model(tiny_model_dir):
    from pocketlm.model.io import load_model

    return load_model(tiny_model_dir)


def test_directory_and_graph(exported, torch_model, tiny_model_dir):
    import onnx

    out = Path(exported["path"])
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json"} <= names
    assert "model.onnx.data" not in names and not exported["external_data"]  # small: one file
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    assert exported["bytes"] == (out / "model.onnx").stat().st_size
    assert exported["parameters"] == sum(p.numel() for p in torch_model[0].parameters())
    assert exported["max_abs_diff"] < TOL and exported["opset"] >= 18
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    assert (out / "tokenizer.json").read_text() == (tiny_model_dir / "tokenizer.json").read_text()

    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*graph.input, *graph.output]}
    vocab = json.loads((out / "config.json").read_text())["vocab_size"]
    assert dims == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"],
                    "logits": ["batch", "sequence", vocab]}


def test_logits_match_pytorch_across_batches_and_lengths(exported, torch_model, corpus_prompts, model_text):
    model, tok = torch_model
    session = _session(Path(exported["model"]))
    diffs = {}
    for i, prompt in enumerate(corpus_prompts[:6]):  # batch 1, each prompt at its own length
        ids = np.array([tok.encode(prompt)], dtype=np.int64)
        diffs[f"prompt {i} (len {ids.shape[1]})"] = _max_diff(session, model, ids, np.ones_like(ids))
    rows = [tok.encode(p) for p in corpus_prompts[6:10]]  # batch 4, different lengths padded both ways
    for left in (False, True):
        ids, mask = _pad(rows, tok.pad_token_id, left=left)
        assert mask.sum(1).min() < ids.shape[1]  # there is padding
        diffs[f"batch 4, {'left' if left else 'right'}-padded"] = _max_diff(session, model, ids, mask)
    short = int(np.argmin([len(r) for r in rows]))  # a left-padded row reads as if unpadded
    alone = np.array([rows[short]], dtype=np.int64)
    logits = session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0][short, -alone.shape[1]:]
    single = session.run(["logits"], {"input_ids": alone, "attention_mask": np.ones_like(alone)})[0][0]
    diffs["left-padded row vs alone"] = float(np.abs(logits - single).max())
    long = np.array(tok.encode(model_text[:2000])[:192], dtype=np.int64)  # two long lengths, batch 2 and 3
    for batch, length in ((2, 128), (3, 192)):
        ids = np.stack([np.roll(long, k)[:length] for k in range(batch)])
        diffs[f"batch {batch} x {length}"] = _max_diff(session, model, ids, np.ones_like(ids))
    ids = np.array([[tok.bos_token_id]], dtype=np.int64)  # a single token
    diffs["1 x 1"] = _max_diff(session, model, ids, np.ones_like(ids))
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] < TOL, f"{worst}: max |diff| {diffs[worst]:.2e}"


def test_runs_with_onnxruntime_and_tokenizers_alone(exported, torch_model, corpus_prompts):
    """What docs/export.md shows: the directory's tokenizer.json + model.onnx give the model's greedy text."""
    from tokenizers import Tokenizer

    model, tok = torch_model
    out = Path(exported["path"])
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    session = _session(out / "model.onnx")
    for prompt in corpus_prompts[:3]:
        ids = tokenizer.encode(prompt).ids
        assert ids == tok.encode(prompt)  # the same ids (BOS included) as transformers' tokenizer
        onnx_ids, torch_ids = list(ids), list(ids)
        for _ in range(12):
            x = np.array([onnx_ids], dtype=np.int64)
            logits = session.run(["logits"], {"input_ids": x, "attention_mask": np.ones_like(x)})[0]
            onnx_ids.append(int(logits[0, -1].argmax()))
            with torch.no_grad():
                torch_ids.append(int(model(torch.tensor([torch_ids])).logits[0, -1].argmax()))
        assert onnx_ids == torch_ids, prompt
        assert tokenizer.decode(onnx_ids[len(ids):]) == tok.decode(torch_ids[len(ids):])


def test_lora_run(tiny_model_dir, tmp_path):
    """A LoRA run (RUN/model holds only the adapter) exports as its base with the adapter merged."""
    from peft import LoraConfig, get_peft_model

    from pocketlm.export.onnx import export_onnx
    from pocketlm.model.io import load_model, save_model

    base, tok = load_model(tiny_model_dir)
    with warnings.catch_warnings():  # peft asks transformers a deprecated question
        warnings.simplefilter("ignore", FutureWarning)
        lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:  # peft starts B at zero (a no-op adapter): make the adapter matter
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    run = tmp_path / "lora-run"
    save_model(lora, tok, run / "model")
    assert (run / "model" / "adapter_config.json").exists() and not (run / "model" / "config.json").exists()

    info = export_onnx(run, tmp_path / "lora-onnx")
    out = Path(info["path"])
    assert (out / "config.json").exists() and (out / "tokenizer.json").exists()
    merged, _ = load_model(run)
    base_model, _ = load_model(tiny_model_dir)
    rows = [tok.encode("Our opening hours are"), tok.encode("Do you ship abroad")]
    ids = np.array([r[:min(map(len, rows))] for r in rows], dtype=np.int64)
    mask = np.ones_like(ids)
    session = _session(out / "model.onnx")
    assert _max_diff(session, merged, ids, mask) < TOL
    assert _max_diff(session, base_model, ids, mask) > 1e-2  # the adapter is in the graph


def test_cli_end_to_end_with_external_data(tiny_model_dir, tmp_path, capfd, monkeypatch):
    """`pocketlm export RUN --format onnx --out DIR`: exit 0, the files, a clean stderr. The threshold for
    external weights is lowered to 0 here, so this also covers model.onnx + model.onnx.data."""
    import pocketlm.export.onnx as mod
    from pocketlm.cli import main
    from pocketlm.model.io import load_model

    monkeypatch.setattr(mod, "EXTERNAL_DATA_BYTES", 0)
    out = tmp_path / "cli-onnx"
    capfd.readouterr()
    assert main(["export", str(tiny_model_dir.parent), "--format", "onnx", "--out", str(out)]) == 0
    captured = capfd.readouterr()
    assert captured.err == ""  # nothing from torch.onnx, onnxscript or onnxruntime
    assert captured.out.startswith(f"wrote {out}/ (") and "docs/export.md" in captured.out
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "model.onnx.data", "config.json", "tokenizer.json"} <= names
    assert (out / "model.onnx").stat().st_size < 200_000  # the weights are in the data file

    moved = tmp_path / "moved"  # the data file is found relative to model.onnx
    shutil.move(out, moved)
    model, tok = load_model(tiny_model_dir)
    ids = np.array([tok.encode("Returns are accepted within")], dtype=np.int64)
    assert _max_diff(_session(moved / "model.onnx"), model, ids, np.ones_like(ids)) < TOL


def test_bad_input_is_a_one_line_error(tiny_model_dir, gguf_files, tmp_path, capfd):
    from pocketlm.cli import main
    from pocketlm.export.onnx import export_onnx

    out = tmp_path / "out"
    with pytest.raises(UserError, match="nope: no such model directory"):
        export_onnx(tmp_path / "nope", out)
    with pytest.raises(UserError, match=r"\.gguf: ONNX export reads a model or run directory, not a GGUF file"):
        export_onnx(gguf_files["f16"]["path"], out)
    with pytest.raises(UserError, match=r"--out .*x\.onnx: give a directory"):
        export_onnx(tiny_model_dir, tmp_path / "x.onnx")
    keep = tmp_path / "notes"
    keep.mkdir()
    (keep / "a.txt").write_text("mine")
    with pytest.raises(UserError, match="--out .*notes: the directory exists and is not an ONNX export"):
        export_onnx(tiny_model_dir, keep)
    assert (keep / "a.txt").read_text() == "mine"

    other = tmp_path / "mistral"  # same weights, another architecture
    shutil.copytree(tiny_model_dir, other)
    config = json.loads((other / "config.json").read_text())
    config.update(model_type="mistral", architectures=["MistralForCausalLM"])
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="Llama-architecture.*MistralForCausalLM"):
        export_onnx(other, out)
    assert not out.exists()

    capfd.readouterr()
    cases = [
        (["--format", "onnx", "--quant", "q8_0"], "error: --quant applies to GGUF only"),
        (["--format", "onnx"], "error: " + str(gguf_files["f16"]["path"]) + ": ONNX export reads"),
    ]
    for i, (flags, expected) in enumerate(cases):
        model = str(tiny_model_dir) if i == 0 else str(gguf_files["f16"]["path"])
        assert main(["export", model, *flags, "--out", str(out)]) == 2
        err = capfd.readouterr().err
        assert err.startswith(expected) and err.count("\n") == 1, err
    assert not out.exists()


def test_an_earlier_export_is_replaced(exported, tmp_path):
    from pocketlm.export.onnx import _check_out

    _check_out(Path(exported["path"]))  # an earlier export may be overwritten ...
    _check_out(tmp_path / "new")  # ... as may a new or empty directory
    (tmp_path / "empty").mkdir()
    _check_out(tmp_path / "empty")
