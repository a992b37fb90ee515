"""Learning-rate schedules as pure functions of (step, progress), so resuming needs no extra state.

`progress` is the fraction of the budget used (steps, tokens or wall time, whichever is furthest),
which lets a time-budgeted run (`--max-time 10m`) decay on time, as in warmup-stable-decay training.
"""

from __future__ import annotations

import math


def lr_at(step: int, progress: float, *, lr: float, warmup_steps: int, schedule: str = "cosine",
          min_lr_ratio: float = 0.1, decay_fraction: float = 0.2) -> float:
    progress = min(max(progress, 0.0), 1.0)
    min_lr = lr * min_lr_ratio
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)
    if schedule == "wsd":
        start = 1.0 - decay_fraction
        if progress < start:
            return lr
        return lr - (lr - min_lr) * (progress - start) / max(decay_fraction, 1e-9)
    raise ValueError(f"unknown schedule {schedule!r}")
