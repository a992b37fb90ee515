"""Energy spent by a block of work: measured where the machine exposes a counter, estimated (and said so) where not.

- **RAPL** (Linux powercap, `/sys/class/powercap/intel-rapl:N/energy_uj`; Intel, and AMD Zen under the same
  driver): the CPU packages' energy counters, read before and after, wraparound handled. The whole package is
  counted, so other programs running at the same time add to it. Reading them needs permission on most
  distributions since 2020 (`sudo chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj`).
- **NVML** (NVIDIA GPUs, through `pynvml` when installed): the GPU's total-energy counter, for work on CUDA.
- Otherwise an **estimate**: the process's CPU time (all its threads, llama.cpp's included) x a typical power
  per busy core, `POCKETLM_WATTS_PER_CORE` (default 7 W, about a laptop core under load; a server core draws
  3-5 W, a desktop core 10-15 W). It puts models measured on the same machine in the right order and ratio;
  it is not a joule meter, and every report that shows it says "estimated".
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

POWERCAP = Path("/sys/class/powercap")
DEFAULT_WATTS_PER_CORE = 7.0


@dataclass
class Energy:
    joules: float
    seconds: float
    source: str  # "RAPL", "NVML" or "estimated: ..."

    @property
    def measured(self) -> bool:
        return not self.source.startswith("estimated")


def watts_per_core() -> float:
    try:
        return float(os.environ.get("POCKETLM_WATTS_PER_CORE", DEFAULT_WATTS_PER_CORE))
    except ValueError:
        return DEFAULT_WATTS_PER_CORE


def _rapl_domains(root: Path) -> list[Path]:
    """The top-level package domains (intel-rapl:0, intel-rapl:1, ...; not their core/uncore subdomains)."""
    if not root.is_dir():
        return []
    return sorted(d for d in root.glob("intel-rapl:*") if d.name.count(":") == 1 and (d / "energy_uj").exists())


def _rapl_read(domains: list[Path]) -> list[int] | None:
    try:
        return [int((d / "energy_uj").read_text()) for d in domains]
    except (OSError, ValueError):  # unreadable without permission: estimate instead
        return None


def _rapl_joules(domains: list[Path], before: list[int], after: list[int]) -> float:
    total = 0
    for d, a, b in zip(domains, before, after, strict=True):
        if b < a:  # the counter wrapped around
            try:
                b += int((d / "max_energy_range_uj").read_text())
            except (OSError, ValueError):
                return float("nan")
        total += b - a
    return total / 1e6


def _nvml_counter():
    """A function returning the GPU's energy counter in joules, or None (no CUDA, no pynvml, no counter)."""
    try:
        import torch
        if not torch.cuda.is_available():
            return None
        import pynvml
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        return lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0
    except Exception:  # any NVML failure means: no counter here
        return None


class EnergyMeter:
    """`with EnergyMeter(device) as m: ...` then `m.energy`: joules spent in the block, and how they were known."""

    def __init__(self, device: str = "cpu", *, powercap: Path = POWERCAP):
        self.device = str(device)
        self.domains = _rapl_domains(powercap)
        self.energy: Energy | None = None

    def __enter__(self) -> EnergyMeter:
        self._gpu = _nvml_counter() if self.device.startswith("cuda") else None
        self._gpu0 = self._gpu() if self._gpu else None
        self._rapl0 = _rapl_read(self.domains) if self.domains and not self._gpu else None
        self._cpu0, self._wall0 = time.process_time(), time.perf_counter()  # CPU time of all threads, ns resolution
        return self

    def __exit__(self, *exc) -> None:
        cpu, wall = time.process_time() - self._cpu0, time.perf_counter() - self._wall0
        if self._gpu is not None:
            self.energy = Energy(self._gpu() - self._gpu0, wall, "NVML")
            return
        after = _rapl_read(self.domains) if self._rapl0 is not None else None
        if after is not None:
            joules = _rapl_joules(self.domains, self._rapl0, after)
            if joules == joules:  # not NaN
                self.energy = Energy(joules, wall, "RAPL")
                return
        w = watts_per_core()
        self.energy = Energy(cpu * w, wall, f"estimated: CPU time x {w:g} W per busy core; no RAPL or NVML counter "
                                            "readable here")


def per_token(energy: Energy, tokens: int) -> dict:
    """The figures reports carry: joules per token and where they came from."""
    return {"joules_per_token": round(energy.joules / max(tokens, 1), 4), "energy_source": energy.source}
