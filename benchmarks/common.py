"""Helpers shared by the benchmarks: machine description, peak matmul rate, real-data location."""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from pathlib import Path

import torch

from pocketlm.device import cpu_has_bf16

REPO = Path(__file__).resolve().parents[1]
# where results go; `run_all.py --quick` points this elsewhere so smoke runs never replace the real figures
RESULTS = Path(os.environ.get("POCKETLM_BENCH_RESULTS") or REPO / "benchmarks" / "results")


def shared_data() -> Path | None:
    env = os.environ.get("POCKETLM_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


TINYSTORIES_VALID = "../shared/data/tinystories/valid.txt (first 400,000 characters)"  # as results name it


def tinystories_valid(dest: Path) -> str | None:
    """The held-out text the 135M quantization figures use: the first 400,000 characters of TinyStories'
    validation split, written to `dest`; None (and a line said) when ../shared/data is absent."""
    root = shared_data()
    if root is None:
        print("skipping 135m: ../shared/data is absent")
        return None
    dest.write_text((root / "tinystories" / "valid.txt").read_text(encoding="utf-8")[:400_000], encoding="utf-8")
    return str(dest)


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "date": datetime.date.today().isoformat()}
    info["cpu_native_bf16"] = cpu_has_bf16()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def matmul_peak_tflops(dtype: torch.dtype, n: int = 1024, seconds: float = 2.0, device: str = "cpu") -> float:
    """Achievable matmul rate on this machine: the denominator for model FLOPs utilisation (MFU)."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
    if device != "cpu":
        torch.cuda.synchronize()
    return 2 * n**3 * count / (time.perf_counter() - t0) / 1e12


def save_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # a crash never leaves half a result file
    return path


def pocketlm(*args: str) -> str:
    """Run the `pocketlm` CLI as a user would, in its own process; its stdout (the run stops on failure)."""
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "pocketlm", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"pocketlm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def relative(path: Path) -> str:
    """A path as results files show it: relative to the repository, never a machine's own path."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return Path(path).name
