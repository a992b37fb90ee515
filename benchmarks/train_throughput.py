"""Pretraining throughput at nanoGPT's "baby GPT" shape (6 layers x 384, context 256, batch 8, vocab 4096).

pocketlm's real `pretrain` path (mini-12m preset, a Llama with SwiGLU and RoPE) against nanoGPT's own
model.py trained by a loop equal to nanoGPT train.py's inner loop (get_batch from a memmap, forward,
backward, clip, AdamW step), in the same run, each configuration in its own process, one at a time.
nanoGPT is not part of pocketlm: pass the path of a local checkout with --nanogpt.

    python benchmarks/train_throughput.py --nanogpt ~/src/nanoGPT
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, matmul_peak_tflops, save_result, shared_data  # noqa: E402

SHAPE = dict(layers=6, hidden=384, heads=6, context=256, batch=8, vocab=4096)


def prepare_data(cache: Path) -> Path:
    from pocketlm.data.prepare import PrepareConfig, prepare
    out = cache / "tinystories-4096"
    if (out / "meta.json").exists():
        return out
    data = shared_data()
    inputs = [str(data / "tinystories" / "train.txt")] if data else [str(REPO / "examples" / "shop" / "handbook.md")]
    prepare(PrepareConfig(inputs=inputs, out=str(out), vocab_size=SHAPE["vocab"]), progress=False)
    return out


def run_pocketlm(data: Path, dtype: str, compile: bool, steps: int, attention: str = "auto", ema: float = 0.0) -> dict:
    from pocketlm.train.pretrain import PretrainConfig, pretrain
    with tempfile.TemporaryDirectory() as tmp:
        s = pretrain(PretrainConfig(data=str(data), out=tmp, model="mini-12m", context=SHAPE["context"],
                                    batch_size=SHAPE["batch"], max_steps=steps, eval_interval=10**9,
                                    eval_batches=1, log_interval=10, save_interval=10**9, dtype=dtype,
                                    compile=compile, progress=False, warmup_steps=10,
                                    attention=attention, ema=ema))
        records = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tok_per_s"] for r in records if "tok_per_s" in r][2:]  # skip warm-up / compile intervals
    return {"tokens_per_s": sum(rates) / len(rates), "parameters": s["parameters"]}


def run_nanogpt(nanogpt: Path, data: Path, dtype: str, compile: bool, steps: int) -> dict:
    import contextlib

    import numpy as np
    import torch
    sys.path.insert(0, str(nanogpt))
    from model import GPT, GPTConfig  # nanoGPT's model.py

    torch.manual_seed(1337)
    cfg = GPTConfig(n_layer=SHAPE["layers"], n_head=SHAPE["heads"], n_embd=SHAPE["hidden"],
                    block_size=SHAPE["context"], vocab_size=SHAPE["vocab"], dropout=0.2)  # config/train_shakespeare_char.py
    model = GPT(cfg)
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    fwd = torch.compile(model) if compile else model
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
    bs, t = SHAPE["batch"], SHAPE["context"]

    def get_batch():  # as train.py does: a fresh memmap per batch, random windows
        d = np.memmap(data / "train.bin", dtype=np.uint16, mode="r")
        ix = torch.randint(len(d) - t, (bs,))
        x = torch.stack([torch.from_numpy(d[i:i + t].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(d[i + 1:i + 1 + t].astype(np.int64)) for i in ix])
        return x, y

    warm = 20 if compile else 5
    for i in range(warm + steps):
        if i == warm:
            t0 = time.perf_counter()
        x, y = get_batch()
        with ctx:
            _, loss = fwd(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    dt = time.perf_counter() - t0
    return {"tokens_per_s": steps * bs * t / dt, "parameters": sum(p.numel() for p in model.parameters())}


CONFIGS = [
    ("nanogpt", "fp32", False), ("nanogpt", "bf16", True),
    ("pocketlm", "fp32", False), ("pocketlm", "bf16", False), ("pocketlm", "bf16", True),
]
# a CPU without native bf16 instructions emulates bf16 matmuls (measured 4.6x slower than fp32): both sides' best is fp32
CONFIGS_NO_BF16 = [
    ("nanogpt", "fp32", False), ("nanogpt", "fp32", True),
    ("pocketlm", "fp32", False), ("pocketlm", "fp32", True),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nanogpt", type=Path, help="path to a nanoGPT checkout (model.py)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--cache", type=Path, default=REPO / "runs" / "bench")
    ap.add_argument("--one", nargs=3, metavar=("WHO", "DTYPE", "COMPILE"), help=argparse.SUPPRESS)
    ap.add_argument("--attention", default="auto", help="pocketlm's --attention for --one (auto, sdpa, eager)")
    ap.add_argument("--ema", type=float, default=0.0, help="pocketlm's --ema for --one (the cost of the weight average)")
    args = ap.parse_args()
    data = prepare_data(args.cache)
    if args.one:
        who, dtype, comp = args.one[0], args.one[1], args.one[2] == "1"
        steps = args.steps + (60 if comp and who == "pocketlm" else 0)
        r = run_nanogpt(args.nanogpt, data, dtype, comp, args.steps) if who == "nanogpt" else \
            run_pocketlm(data, dtype, comp, steps, args.attention, args.ema)
        print("RESULT " + json.dumps(r))
        return
    from pocketlm.device import cpu_has_bf16
    from pocketlm.model.presets import flops_per_token, get_preset, llama_config
    flops = flops_per_token(llama_config(get_preset("mini-12m"), SHAPE["vocab"]), SHAPE["context"])
    peaks = {"fp32": matmul_peak_tflops(__import__("torch").float32),
             "bf16": matmul_peak_tflops(__import__("torch").bfloat16)}
    rows = []
    for who, dtype, comp in (CONFIGS if cpu_has_bf16() else CONFIGS_NO_BF16):
        if who == "nanogpt" and not args.nanogpt:
            continue
        cmd = [sys.executable, __file__, "--one", who, dtype, "1" if comp else "0", "--steps", str(args.steps),
               "--cache", str(args.cache)] + (["--nanogpt", str(args.nanogpt)] if args.nanogpt else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        r = json.loads(out.split("RESULT ", 1)[1])
        tflops = r["tokens_per_s"] * flops / 1e12
        rows.append({"who": who, "dtype": dtype, "compile": comp, "tokens_per_s": round(r["tokens_per_s"]),
                     "parameters": r["parameters"], "tflops": round(tflops, 4),
                     "mfu_vs_measured_peak": round(tflops / peaks[dtype], 3)})
        print(json.dumps(rows[-1]), flush=True)
    ref = {(r["who"], r["dtype"], r["compile"]): r["tokens_per_s"] for r in rows}
    best = max(r["tokens_per_s"] for r in rows if r["who"] == "pocketlm")
    result = {"machine": machine(), "shape": SHAPE, "steps": args.steps, "peak_tflops": peaks, "rows": rows,
              "pocketlm_best": best}
    if ("nanogpt", "fp32", False) in ref:
        result["ratio_vs_nanogpt_default"] = round(best / ref[("nanogpt", "fp32", False)], 2)
        result["ratio_vs_nanogpt_best"] = round(best / max(r["tokens_per_s"] for r in rows if r["who"] == "nanogpt"), 2)
    print(json.dumps({k: v for k, v in result.items() if k.startswith("ratio") or k == "pocketlm_best"}))
    save_result("train_throughput", result)


if __name__ == "__main__":
    main()
