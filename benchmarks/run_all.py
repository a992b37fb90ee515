"""Run the benchmarks one after the other (never two at once: they time the machine), as `make bench` does.

    python benchmarks/run_all.py                 # all of them, with the arguments docs/benchmarks.md uses
    python benchmarks/run_all.py --quick         # smaller sizes, minutes; results in runs/bench/quick-results
    python benchmarks/run_all.py --only grounding decode_speed
    python benchmarks/run_all.py --nanogpt ~/src/nanoGPT   # adds the pretraining throughput comparison

Each benchmark writes its figures to benchmarks/results/NAME.json; a failed one is reported at the end and
the rest still run. The exit status is 1 when any failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> (full arguments, quick arguments); the figures in docs/benchmarks.md come from the full ones
BENCHMARKS = {
    "grounding": ([], []),
    "sft_encode": (["--examples", "2000"], ["--examples", "300"]),
    "decode_speed": ([], ["--tokens", "32"]),
    "prepare_memory": (["--mb", "200"], ["--mb", "20"]),
    "lora_throughput": (["--examples", "256"], ["--examples", "32"]),
    "time_to_quality": (["--budget", "600"], ["--budget", "60"]),
    "bot_faq": (["--modes", "extract"], ["--modes", "extract", "--limit", "5", "--name", "quick"]),
    "cli_startup": ([], ["--repeat", "1"]),
    "ddp_cpu": ([], ["--steps", "20"]),
    "batch_decode": ([],
                     ["--preset", "nano-1m", "--levels", "1,4", "--tokens", "16", "--repeats", "1", "--name", "quick"]),
    "sampling": ([], ["--repeats", "50", "--name", "quick"]),
    "quantize": ([], ["--models", "small", "--tokens", "1024", "--types", "q8_0,q4_k_m"]),
    "quantize_torch": ([], ["--models", "small", "--tokens", "512"]),
    "distill": (["--parts", "alone,kd,kd-warm"],
                ["--parts", "alone,kd", "--minutes", "1", "--work", str(HERE.parent / "runs" / "bench" / "distill-quick")]),
    "serve_load": ([], ["--models", "small", "--requests", "50", "--levels", "1,4", "--rounds", "1",
                        "--max-tokens", "32", "--parts", "scaling,load"]),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run; not the documented figures)")
    ap.add_argument("--only", nargs="+", choices=sorted([*BENCHMARKS, "train_throughput"]), metavar="NAME",
                    help=f"run only these: {', '.join(sorted([*BENCHMARKS, 'train_throughput']))}")
    ap.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout: adds train_throughput (pocketlm vs nanoGPT)")
    args = ap.parse_args(argv)
    plan = {name: argv_pair[1 if args.quick else 0] for name, argv_pair in BENCHMARKS.items()}
    if args.nanogpt:
        plan["train_throughput"] = ["--nanogpt", str(args.nanogpt)] + (["--steps", "20"] if args.quick else [])
    if args.only:
        missing = [n for n in args.only if n not in plan]
        if missing:
            ap.error(f"{', '.join(missing)} needs --nanogpt PATH")
        plan = {n: plan[n] for n in args.only}
    env = dict(os.environ)
    results = HERE / "results"
    if args.quick:  # smoke-run figures must not replace the documented ones
        results = HERE.parent / "runs" / "bench" / "quick-results"
        env["POCKETLM_BENCH_RESULTS"] = str(results)
    outcome = {}
    for name, extra in plan.items():
        cmd = [sys.executable, str(HERE / f"{name}.py"), *extra]
        print(f"\n== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, env=env)
        outcome[name] = (rc, time.perf_counter() - t0)
    print("\nbenchmark          status  seconds")
    for name, (rc, seconds) in outcome.items():
        print(f"{name:<18} {'ok' if rc == 0 else f'rc {rc}':<7} {seconds:7.0f}")
    print(f"results: {results}")
    return int(any(rc for rc, _ in outcome.values()))


if __name__ == "__main__":
    sys.exit(main())
