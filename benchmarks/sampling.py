"""The cost of drawing one token: pocketlm's sampler against the textbook one, same settings, same run.

    python benchmarks/sampling.py
    python benchmarks/sampling.py --repeats 100     # quicker

The textbook sampler (written out below as `multinomial_sampler`) is what pocketlm used before and what most
loops do: temperature, top-k by masking the whole vocabulary, top-p by sorting the whole vocabulary, then
`torch.multinomial`. pocketlm's (`pocketlm.inference.engine.pick_token`) draws from the same distribution
(checked here on 20,000 draws) while it works on the top-k values only, looks for the nucleus in the top 256
first, and inverts the cumulative distribution with one uniform number instead of calling multinomial.
Logits are synthetic, shaped like a trained model's (Gumbel noise over a Zipf profile: a few likely tokens and
a long tail), at the demo model's vocabulary size (2,048) and SmolLM2's (49,152). Reported per vocabulary and setting: microseconds per draw (median of --repeats), the
ratio, and the largest gap (20,000 draws each) between the two samplers' token frequencies on a small vocabulary.
Results go to benchmarks/results/sampling.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, save_result  # noqa: E402

from pocketlm.inference.engine import pick_token  # noqa: E402
from pocketlm.inference.options import SamplingConfig  # noqa: E402


def multinomial_sampler(logits: torch.Tensor, cfg: SamplingConfig, generator) -> torch.Tensor:
    """Temperature, top-k and top-p over the whole vocabulary, then torch.multinomial."""
    if cfg.temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / cfg.temperature
    if cfg.top_k and cfg.top_k < logits.size(-1):
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0 < cfg.top_p < 1:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        sorted_logits = sorted_logits.masked_fill(probs.cumsum(-1) - probs > cfg.top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)


def model_like_logits(vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ranks = torch.randperm(vocab, generator=g).float() + 1
    gumbel = -torch.log(-torch.log(torch.rand(vocab, generator=g).clamp_min(1e-9)))
    return (-1.1 * torch.log(ranks) * 4 + gumbel)[None]  # Zipf-like: a few likely tokens, a long tail


def time_it(fn, logits, cfg, repeats: int) -> float:
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        fn(logits, cfg, g)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(logits, cfg, g)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def max_frequency_gap(cfg: SamplingConfig, draws: int = 20000) -> float:
    logits = model_like_logits(64, seed=1) / 4  # flatter, so that many tokens get drawn
    counts = []
    for fn in (pick_token, multinomial_sampler):
        g = torch.Generator().manual_seed(2)
        c = Counter(int(fn(logits, cfg, g)) for _ in range(draws))
        counts.append(c)
    keys = set(counts[0]) | set(counts[1])
    return max(abs(counts[0][k] - counts[1][k]) / draws for k in keys)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=500)
    ap.add_argument("--name", default="sampling")
    args = ap.parse_args(argv)
    settings = {"defaults (T 0.8, top-k 50, top-p 0.95)": SamplingConfig(),
                "T 0.7, top-p 0.9 only": SamplingConfig(temperature=0.7, top_k=0, top_p=0.9),
                "T 0.7, no top-k/top-p": SamplingConfig(temperature=0.7, top_k=0, top_p=1.0)}
    rows = []
    print(f"{'vocab':>6} {'setting':<40} {'textbook us':>12} {'pocketlm us':>12} {'ratio':>6} {'freq gap':>9}")
    for vocab in (2048, 49152):
        logits = model_like_logits(vocab)
        for label, cfg in settings.items():
            old = time_it(multinomial_sampler, logits, cfg, args.repeats)
            new = time_it(pick_token, logits, cfg, args.repeats)
            gap = max_frequency_gap(cfg) if vocab == 2048 else None
            rows.append({"vocab": vocab, "setting": label, "textbook_us": round(old, 1), "pocketlm_us": round(new, 1),
                         "speedup": round(old / new, 2), "max_frequency_gap": gap})
            print(f"{vocab:>6} {label:<40} {old:>12.0f} {new:>12.0f} {old / new:>5.1f}x "
                  f"{'' if gap is None else f'{gap:.4f}':>9}")
    path = save_result(args.name, {"machine": machine(), "repeats": args.repeats, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
