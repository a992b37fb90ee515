"""How long `pocketlm` takes to start: `--help` for the command and for each verb, in a fresh process each.

    python benchmarks/cli_startup.py [--repeat 5]

The CLI imports a verb's code (torch, transformers, the data pipeline) only when that verb runs; its
options live in torch-free modules, so help and option errors come at once. The median of `--repeat`
runs per command, beside `python -c pass` (the interpreter's own start-up) on the same machine.
Results go to benchmarks/results/cli_startup.json.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, save_result  # noqa: E402

COMMANDS = {"python -c pass": [sys.executable, "-c", "pass"],
            "pocketlm --help": [sys.executable, "-m", "pocketlm", "--help"]}
for verb in ["prepare", "pretrain", "finetune", "eval", "bot", "chat", "export"]:
    COMMANDS[f"pocketlm {verb} --help"] = [sys.executable, "-m", "pocketlm", verb, "--help"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    result = {"machine": machine(), "repeat": args.repeat, "seconds": {}}
    for name, cmd in COMMANDS.items():
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - t0)
        result["seconds"][name] = round(statistics.median(times), 3)
        print(f"{name:<28} {result['seconds'][name]:.2f} s")
    print(f"wrote {save_result('cli_startup', result)}")


if __name__ == "__main__":
    main()
