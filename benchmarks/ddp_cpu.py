"""Data-parallel pretraining on one CPU: 2 processes x 1 thread (torchrun, gloo) against 1 process x 2 threads.

    python benchmarks/ddp_cpu.py [--steps 60] [--model mini-12m]

The same run (preset, global batch, context, steps, fp32) in the same session, one after the other, each
in its own process: `pocketlm pretrain` with the machine's two threads, then `torchrun --nproc-per-node 2`
with one thread per process. Reported: training tokens/s (from metrics.jsonl, the first intervals
skipped) and the final losses, which must agree. On two cores this measures the price of the all-reduce
and of two smaller matrix multiplies; the point of the multi-process path is many GPUs and machines.
Results go to benchmarks/results/ddp_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, save_result  # noqa: E402
from train_throughput import prepare_data  # noqa: E402


def run(data: Path, out: Path, processes: int, threads: int, args) -> dict:
    flags = ["pretrain", "--data", str(data), "--out", str(out), "--model", args.model, "--context", "256",
             "--batch-size", str(args.batch), "--max-steps", str(args.steps), "--eval-interval", str(10**9),
             "--eval-batches", "2", "--log-interval", "10", "--save-interval", str(10**9), "--dtype", "fp32",
             "--no-progress", "--warmup-steps", "10", "--no-eval-at-start"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO / "src"))
    if processes == 1:
        cmd = [sys.executable, "-m", "pocketlm", *flags]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               "-m", "pocketlm", *flags]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rates = [r["tok_per_s"] for r in records if "tok_per_s" in r][2:]
    losses = [r["loss"] for r in records if "loss" in r]
    return {"processes": processes, "threads_each": threads, "tokens_per_s": round(sum(rates) / len(rates), 1),
            "final_loss": losses[-1]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--model", default="mini-12m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--cache", default=str(REPO / "runs" / "bench"))
    args = ap.parse_args(argv)
    data = prepare_data(Path(args.cache))
    result = {"machine": machine(), "model": args.model, "steps": args.steps, "global_batch": args.batch,
              "context": 256, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for processes, threads in ((1, 2), (2, 1)):
            r = run(data, Path(tmp) / f"p{processes}", processes, threads, args)
            result["runs"].append(r)
            print(f"{processes} process(es) x {threads} thread(s): {r['tokens_per_s']:,.0f} tokens/s, "
                  f"final loss {r['final_loss']:.4f}")
    one, two = result["runs"]
    result["ratio_2proc_vs_1proc"] = round(two["tokens_per_s"] / one["tokens_per_s"], 3)
    print(f"2 processes / 1 process: {result['ratio_2proc_vs_1proc']:.2f}x")
    print(f"wrote {save_result('ddp_cpu', result)}")


if __name__ == "__main__":
    main()
