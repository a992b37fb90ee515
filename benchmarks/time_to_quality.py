"""Time to quality on TinyStories: pocketlm pretrain vs a plain fp32 transformers + AdamW loop.

Both train the same ~12M Llama (the mini-12m preset) on the same tokens (pocketlm's BPE tokenizer,
vocab 4096), with the same batch (16 x 256) and peak learning rate, and are scored on the same
validation windows. The plain loop runs for --budget seconds of training time; pocketlm then runs with
`--max-time` of the same budget, and we report the validation loss each reaches and the training time
pocketlm needs to reach the plain loop's final loss (first evaluation at or below it; pocketlm is
evaluated every 10 steps, about 14 s of training here, so the crossing is timed to within that).

`--short-budget S` adds a second pocketlm run with `--max-time S`, the way a user in a hurry would run
it (its schedule decays within S): if it ends at or below the plain loop's loss, S / budget is also a
time ratio. One run at a time; evaluation time is excluded from every clock.

    python benchmarks/time_to_quality.py --budget 600 --short-budget 270
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, save_result, shared_data  # noqa: E402

BATCH, CONTEXT, LR, EVAL_BATCHES = 16, 256, 1e-3, 16


def prepare_data(cache: Path) -> Path:
    from pocketlm.data.prepare import PrepareConfig, prepare
    out = cache / "tinystories-full-4096"
    if not (out / "meta.json").exists():
        data = shared_data()
        if data is None:
            sys.exit("TinyStories not found: set POCKETLM_DATA or place the datasets in ../shared/data")
        prepare(PrepareConfig(inputs=[str(data / "tinystories" / "train.txt")], out=str(out), vocab_size=4096),
                progress=False)
    return out


def plain_loop(data: Path, budget: float, eval_every: float) -> list[tuple[float, float]]:
    """The textbook loop: fp32, torch.optim.AdamW, constant learning rate, random windows."""
    from transformers import LlamaForCausalLM

    from pocketlm.data.shards import load_tokens
    from pocketlm.data.tokenizer import load_tokenizer
    from pocketlm.model.presets import get_preset, llama_config
    from pocketlm.train.batches import TokenWindows
    tok = load_tokenizer(data / "tokenizer")
    torch.manual_seed(1337)
    model = LlamaForCausalLM(llama_config(get_preset("mini-12m"), len(tok), context=CONTEXT))
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.1)
    train = TokenWindows(load_tokens(data, "train"), BATCH, CONTEXT, 1337, torch.device("cpu"))
    val = TokenWindows(load_tokens(data, "val"), BATCH, CONTEXT, 1337, torch.device("cpu"))

    def evaluate():
        model.eval()
        with torch.no_grad():
            total = n = 0
            for b in val.eval_batches(EVAL_BATCHES):
                logits = model(input_ids=b["input_ids"]).logits
                total += float(torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)),
                                                                 b["labels"].reshape(-1), reduction="sum"))
                n += b["labels"].numel()
        model.train()
        return total / n

    curve, elapsed, step, next_eval = [(0.0, evaluate())], 0.0, 0, eval_every
    while elapsed < budget:
        t0 = time.perf_counter()
        b = train.batch(step)
        logits = model(input_ids=b["input_ids"]).logits
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), b["labels"].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        elapsed += time.perf_counter() - t0
        if elapsed >= next_eval or elapsed >= budget:
            curve.append((elapsed, evaluate()))
            print(f"plain: {elapsed:.0f}s step {step} val {curve[-1][1]:.4f}", file=sys.stderr, flush=True)
            next_eval += eval_every
    return curve


def pocketlm_run(data: Path, budget: float, compile: bool) -> list[tuple[float, float]]:
    from pocketlm.train.pretrain import PretrainConfig, pretrain
    with tempfile.TemporaryDirectory() as tmp:
        pretrain(PretrainConfig(data=str(data), out=tmp, model="mini-12m", context=CONTEXT, batch_size=BATCH,
                                lr=LR, max_time=str(budget), eval_interval=10, eval_batches=EVAL_BATCHES,
                                progress=False, compile=compile, warmup_steps=50, seed=1337))
        records = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    return [(r["elapsed"], r["val_loss"]) for r in records if "val_loss" in r]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=600.0, help="training seconds for each")
    ap.add_argument("--short-budget", type=float, default=None,
                    help="also run pocketlm with this many seconds and check it reaches the plain loop's loss")
    ap.add_argument("--compile", action="store_true", help="also torch.compile the pocketlm run")
    ap.add_argument("--cache", type=Path, default=REPO / "runs" / "bench")
    args = ap.parse_args()
    data = prepare_data(args.cache)
    plain = plain_loop(data, args.budget, eval_every=args.budget / 10)
    target = plain[-1][1]
    ours = pocketlm_run(data, args.budget, args.compile)
    reached = next((t for t, v in ours if v <= target), math.nan)
    result = {"machine": machine(), "budget_s": args.budget, "compile": args.compile,
              "plain_final_val_loss": round(target, 4), "pocketlm_final_val_loss": round(ours[-1][1], 4),
              "pocketlm_seconds_to_plain_final": round(reached, 1),
              "time_ratio": round(reached / args.budget, 3) if not math.isnan(reached) else None,
              "plain_curve": plain, "pocketlm_curve": ours}
    if args.short_budget:
        short = pocketlm_run(data, args.short_budget, args.compile)
        result.update({"short_budget_s": args.short_budget, "short_final_val_loss": round(short[-1][1], 4),
                       "short_reaches_plain": short[-1][1] <= target,
                       "short_time_ratio": round(args.short_budget / args.budget, 3),
                       "short_curve": short})
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("curve")}))
    save_result("time_to_quality", result)


if __name__ == "__main__":
    main()
