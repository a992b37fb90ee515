"""Pruning + recovery on CPU: SmolLM2-135M-Instruct cut to about half, recovered by distillation from the
unpruned model, against a model of the same shape trained from scratch for the same total time.

Both start from the same shape (the pruned config.json); the recovered one starts from the pruned weights and
learns from the teacher (`pocketlm distill` defaults), the scratch one starts from a random initialisation and
learns from the data alone (`--alpha 0`) for the pruning time plus the recovery time. Data: TinyStories from
../shared/data tokenized with SmolLM2's tokenizer (the train split for calibration and training, the prepared
validation split for the held-out loss of every model, the teacher's included).

    python benchmarks/prune.py --minutes 15
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import REPO, machine, pocketlm, relative, save_result, shared_data


def held_out(model: Path, data: Path) -> dict:
    r = json.loads(pocketlm("eval", str(model), "--data", str(data), "--json"))
    return {"loss": round(r["loss"], 4), "perplexity": round(r["perplexity"], 2), "parameters": r["parameters"]}


def random_copy(pruned: Path, out: Path) -> None:
    """The pruned model's shape with a fresh random initialisation (what 'from scratch' means here)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from pocketlm.data.tokenizer import load_tokenizer
    from pocketlm.model.io import save_model
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(pruned)), dtype=torch.float32)
    save_model(model, load_tokenizer(pruned), out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=15.0, help="recovery time; scratch gets this plus pruning time")
    ap.add_argument("--teacher", default=str(REPO / "runs" / "bench" / "smollm2-135m-hf"))
    ap.add_argument("--cut", default="--hidden-size 378 --ffn-size 1024", help="the prune flags")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--work", default=str(REPO / "runs" / "bench" / "prune"))
    ap.add_argument("--data", default=str(REPO / "runs" / "bench" / "distill" / "tinystories-smollm2"),
                    help="TinyStories prepared with the teacher's tokenizer (benchmarks/distill.py makes it)")
    ap.add_argument("--name", default="prune")
    args = ap.parse_args(argv)
    root = shared_data()
    work, data, teacher = Path(args.work), Path(args.data), Path(args.teacher)
    if not (data / "meta.json").exists():
        if root is None:
            raise SystemExit("needs ../shared/data (TinyStories)")
        pocketlm("prepare", str(root / "tinystories" / "train.txt"), "--tokenizer", str(teacher), "--out", str(data))
    pruned = work / "pruned"
    t0 = time.time()
    if not (pruned / "config.json").exists():
        print(pocketlm("prune", str(teacher), "--data", str(data), "--out", str(pruned), *args.cut.split()), flush=True)
    prune_s = time.time() - t0
    common = ["--data", str(data), "--max-time", "", "--batch-size", str(args.batch_size), "--context",
              str(args.context), "--warmup-steps", "10", "--eval-interval", "100000", "--eval-batches", "2",
              "--no-eval-at-start", "--no-progress"]
    runs = {"recovered": (["--teacher", str(teacher), "--student", str(pruned)], args.minutes * 60),
            "scratch": (["--teacher", str(teacher), "--student", str(work / "random"), "--alpha", "0"],
                        args.minutes * 60 + prune_s)}
    random_copy(pruned, work / "random")
    rows = {"teacher": held_out(teacher, data), "pruned, before recovery": held_out(pruned, data)}
    print(json.dumps(rows), flush=True)
    for name, (flags, seconds) in runs.items():
        out = work / name
        if not (out / "summary.json").exists():
            opts = list(common)
            opts[opts.index("--max-time") + 1] = f"{seconds:.0f}"
            pocketlm("distill", *flags, "--out", str(out), *opts)
        s = json.loads((out / "summary.json").read_text())
        rows[name] = {**held_out(out / "model", data), "train_s": s["elapsed"], "tokens": s["tokens"],
                      "steps": s["step"], "teacher_s": s.get("teacher_s")}
        print(name, json.dumps(rows[name]), flush=True)
    result = {"machine": machine(), "teacher": relative(teacher), "cut": args.cut, "prune_s": round(prune_s, 1),
              "recovery_minutes": args.minutes, "batch_size": args.batch_size, "context": args.context,
              "data": "tinystories/train.txt (../shared/data), held out: the prepared val split", "rows": rows}
    print(json.dumps(result, indent=1))
    print(f"wrote {save_result(args.name, result)}")


if __name__ == "__main__":
    main()
