"""ONNX export: how long `export_onnx` takes, and onnxruntime vs PyTorch eager on the same model.

An untrained `mini-12m` (weights are random; speed does not depend on them) with decode_speed.py's
4096-token tokenizer, fp32 on the CPU, PyTorch and onnxruntime given the same number of threads
(--threads, default 1: on two cores shared with other work, PyTorch with two threads waits on its own
second thread and runs 10x slower than with one). Measured:

* the export (load, trace, write, the onnxruntime check) in seconds, and the file size;
* one forward pass, batch 1 x 128 tokens, and batch 4 x 128 (median of --repeat, the engines timed in
  turn so that load from elsewhere on shared cores falls on both);
* greedy decoding of --tokens new tokens after a 96-token prompt, per token. The ONNX graph has no KV
  cache, so each step re-reads the whole sequence; PyTorch is timed the same way (no cache) and, for
  reference, with pocketlm's own KV-cache generation.

    python benchmarks/onnx_export.py [--repeat 20] [--tokens 32] [--threads 1]

Results go to benchmarks/results/onnx_export.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, save_result  # noqa: E402
from decode_speed import tokenizer_for  # noqa: E402

PRESET, VOCAB, SEQ, PROMPT = "mini-12m", 4096, 128, 96


def median_ms(fns: dict, repeat: int) -> dict:
    """Median milliseconds of each function, run in turn (A B C A B C ...) so that a neighbour's load on
    shared cores falls on all of them alike."""
    for fn in fns.values():  # warm-up
        fn()
        fn()
    times: dict = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: round(1000 * statistics.median(t), 2) for name, t in times.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="threads for both PyTorch and onnxruntime")
    ap.add_argument("--cache", type=Path, default=REPO / "runs" / "bench")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import onnxruntime as ort
    from transformers import LlamaForCausalLM

    from pocketlm.export.onnx import export_onnx
    from pocketlm.inference.engine import SamplingConfig, generate_ids
    from pocketlm.model.io import save_model
    from pocketlm.model.presets import get_preset, llama_config

    tok = tokenizer_for(VOCAB, args.cache)
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(get_preset(PRESET), len(tok))).eval()
    threads = args.threads
    result = {"machine": machine(), "model": PRESET, "vocab": len(tok),
              "parameters": sum(p.numel() for p in model.parameters()), "threads": threads,
              "onnxruntime": ort.__version__, "load_average_at_start": round(os.getloadavg()[0], 2)}

    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, tok, Path(tmp) / "model")
        t0 = time.perf_counter()
        info = export_onnx(Path(tmp) / "model", Path(tmp) / "onnx")
        result["export_seconds"] = round(time.perf_counter() - t0, 1)
        result["onnx_mb"] = round(info["bytes"] / 1e6, 1)
        result["max_abs_diff_check"] = info["max_abs_diff"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = threads
        session = ort.InferenceSession(info["model"], opts, providers=["CPUExecutionProvider"])

    gen = np.random.default_rng(0)

    def run_onnx(ids: np.ndarray) -> np.ndarray:
        return session.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]

    def run_torch(ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()

    forward = {}
    for batch in (1, 4):
        ids = gen.integers(0, len(tok), (batch, SEQ), dtype=np.int64)
        diff = float(np.abs(run_onnx(ids) - run_torch(ids)).max())
        ms = median_ms({"pytorch_ms": lambda ids=ids: run_torch(ids),
                        "onnxruntime_ms": lambda ids=ids: run_onnx(ids)}, args.repeat)
        f = forward[f"{batch}x{SEQ}"] = {**ms, "max_abs_diff": diff}
        f["pytorch_over_onnxruntime"] = round(f["pytorch_ms"] / f["onnxruntime_ms"], 2)
    result["forward"] = forward

    prompt = gen.integers(0, len(tok), (PROMPT,)).tolist()

    def greedy(step) -> list[int]:  # no cache: every step runs the whole sequence
        ids = list(prompt)
        for _ in range(args.tokens):
            ids.append(int(step(np.array([ids], dtype=np.int64))[0, -1].argmax()))
        return ids[PROMPT:]

    def cached() -> list[int]:
        return list(generate_ids(model, prompt, SamplingConfig(max_new_tokens=args.tokens, temperature=0)))

    assert greedy(run_onnx) == greedy(run_torch)  # the same tokens both ways
    assert len(cached()) == args.tokens
    repeat = max(3, args.repeat // 4)
    ms = median_ms({"onnxruntime_no_cache": lambda: greedy(run_onnx), "pytorch_no_cache": lambda: greedy(run_torch),
                    "pocketlm_kv_cache": cached}, repeat)
    per_token = {k: v / args.tokens for k, v in ms.items()}
    result["greedy_ms_per_token"] = {k: round(v, 2) for k, v in per_token.items()}
    result["greedy"] = {"prompt_tokens": PROMPT, "new_tokens": args.tokens}
    result["greedy_pytorch_over_onnxruntime"] = round(per_token["pytorch_no_cache"]
                                                      / per_token["onnxruntime_no_cache"], 2)

    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    one = forward[f"1x{SEQ}"]
    print(f"export {result['export_seconds']} s; forward 1x{SEQ}: PyTorch {one['pytorch_ms']} ms, onnxruntime "
          f"{one['onnxruntime_ms']} ms ({one['pytorch_over_onnxruntime']}x); greedy no-cache per token: "
          f"{result['greedy_pytorch_over_onnxruntime']}x")
    print(f"wrote {save_result('onnx_export', result)}")


if __name__ == "__main__":
    main()
