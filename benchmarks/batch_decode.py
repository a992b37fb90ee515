"""Aggregate decode speed with many requests at once, inside one process (no HTTP): pocketlm's continuous
batching (inference/batching.py) vs the same requests one after another through pocketlm's batch-1 engine,
vs transformers' own continuous batching (`generate_batch`, paged attention), on the same model.

Every request gets the same --tokens new tokens (greedy; a stop token is disabled by asking for none) after
its own short prompt. Reported: aggregate new tokens per second at each concurrency (the median of --repeats
runs, after a warm-up) and its ratio to one stream. The model is a run's final model (--model) or, by default, a randomly initialised preset (speed does
not depend on the weights).

    python benchmarks/batch_decode.py --preset micro-5m
    python benchmarks/batch_decode.py --model runs/bench/smollm2-135m-hf --levels 1,8 --tokens 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, save_result  # noqa: E402


def load(args):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM
    if args.model:
        return AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    from pocketlm.model.presets import get_preset, llama_config
    preset = get_preset(args.preset)
    torch.manual_seed(0)
    return LlamaForCausalLM(llama_config(preset, preset.vocab)).eval()


class Tok:
    """Just enough tokenizer for the engine's text assembly (the benchmark counts tokens, not text)."""

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def prompts(n: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(5, vocab, (12 + i % 9,), generator=g).tolist() for i in range(n)]


def pocketlm_batched(model, ps, tokens: int, slots: int) -> int:
    import queue

    from pocketlm.inference.batching import BatchEngine
    from pocketlm.inference.engine import SamplingConfig
    engine = BatchEngine(model, Tok(), [], slots=slots, max_waiting=len(ps))
    done: queue.Queue = queue.Queue()
    handles = [engine.submit(p, SamplingConfig(max_new_tokens=tokens, temperature=0),
                             lambda kind, value: kind != "text" and done.put((kind, value))) for p in ps]
    for _ in ps:
        kind, value = done.get(timeout=3600)
        assert kind == "end", value
    engine.close()
    return sum(len(h.generated) for h in handles)


def pocketlm_serial(model, ps, tokens: int) -> int:
    from pocketlm.inference.engine import SamplingConfig, generate_ids
    return sum(len(list(generate_ids(model, p, SamplingConfig(max_new_tokens=tokens, temperature=0)))) for p in ps)


def transformers_batch(model, ps, tokens: int) -> int:
    import warnings

    from transformers import GenerationConfig
    with warnings.catch_warnings():  # transformers 5.x names it "paged|sdpa" and warns that the prefix is going
        warnings.simplefilter("ignore", FutureWarning)
        model.set_attn_implementation("paged|sdpa")
    try:
        cfg = GenerationConfig(max_new_tokens=tokens, do_sample=False, eos_token_id=-1, pad_token_id=0)
        out = model.generate_batch(inputs=ps, generation_config=cfg, progress_bar=False)
        return sum(len(o.generated_tokens) for o in out.values())
    finally:
        model.set_attn_implementation("sdpa")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a model directory (default: a random --preset)")
    ap.add_argument("--preset", default="micro-5m")
    ap.add_argument("--levels", default="1,8,32", help="concurrent requests")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    ap.add_argument("--engines", default="pocketlm,serial,transformers")
    ap.add_argument("--repeats", type=int, default=3, help="runs per figure (the median is reported)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--name", default=None, help="result file name (default: from the model)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load(args)
    vocab = model.config.vocab_size
    params = sum(p.numel() for p in model.parameters())
    engines = args.engines.split(",")
    rows = []
    for level in [int(x) for x in args.levels.split(",")]:
        ps = prompts(level, vocab)
        pocketlm_batched(model, ps[:2], 4, 2)  # warm-up
        row = {"streams": level}
        for name in engines:
            if name == "serial" and level > 8:
                continue  # one after another: the 1- and 8-stream figures say it
            rates = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                if name == "pocketlm":
                    n = pocketlm_batched(model, ps, args.tokens, slots=max(level, 1))
                elif name == "serial":
                    n = pocketlm_serial(model, ps, args.tokens)
                else:
                    try:
                        n = transformers_batch(model, ps, args.tokens)
                    except Exception as e:  # noqa: BLE001 - a peer that fails here is reported, not fatal
                        row[name] = f"failed: {type(e).__name__}: {e}"[:200]
                        break
                rates.append(n / (time.perf_counter() - t0))
            if not rates:
                continue
            row[name] = round(statistics.median(rates), 1)
            print(f"{level:>3} streams  {name:<13} {n:>6} tokens  {row[name]:8.1f} tok/s (median of "
                  f"{len(rates)}: {', '.join(f'{r:.0f}' for r in rates)})", flush=True)
        rows.append(row)
    one = next((r.get("pocketlm") for r in rows if r["streams"] == 1), None)
    for r in rows:
        if isinstance(one, float) and isinstance(r.get("pocketlm"), float):
            r["pocketlm_vs_1_stream"] = round(r["pocketlm"] / one, 2)
    name = args.name or (Path(args.model).name if args.model else args.preset)
    result = {"machine": machine(), "model": args.model or f"random {args.preset}", "params": params,
              "tokens_per_request": args.tokens, "rows": rows}
    print(save_result(f"batch_decode_{name}", result))


if __name__ == "__main__":
    main()
