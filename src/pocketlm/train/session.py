"""What every training verb (pretrain, finetune, distill) does around the one loop.

Before: check the run directory (a new run must not overwrite an old one; --resume needs a checkpoint),
join the torchrun process group when there is one, check that the batch splits over its processes, pick
this process's device. After (rank 0 only): the loss plot and summary.json, written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pocketlm import runs
from pocketlm.config import to_dict
from pocketlm.device import resolve_device
from pocketlm.fsutil import atomic_write_json
from pocketlm.train import distributed
from pocketlm.train.options import LoopConfig


@dataclass(frozen=True)
class Start:
    out_dir: Path
    checkpoint: Path | None  # the checkpoint to resume from; None for a new run
    device: torch.device  # this process's device (under torchrun: its own GPU)
    dist: distributed.Dist

    @property
    def main(self) -> bool:  # the process that writes (always, without torchrun)
        return self.dist.main


def begin(cfg: LoopConfig, out_dir: str | Path) -> Start:
    out_dir = Path(out_dir)
    ckpt = runs.check_start(out_dir, cfg.resume)
    dist = distributed.setup()
    distributed.check_batch(cfg.batch_size)
    device = resolve_device(cfg.device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    return Start(out_dir, ckpt, device, dist)


def finish(start: Start, summary: dict, cfg, *, title: str, **figures) -> dict:
    """Add the loss plot, the configuration, tokens/s and `figures` to the loop's summary and write
    RUN/summary.json (rank 0; the other processes get the summary back unchanged)."""
    if not start.main:
        return summary
    from pocketlm.train.plots import plot_losses
    plot = plot_losses(start.out_dir / runs.METRICS, start.out_dir / runs.LOSS_PLOT, title=title)
    summary.update({"tokens_per_s": round(summary["tokens"] / max(summary["elapsed"], 1e-9), 1), **figures,
                    "loss_plot": str(plot), "config": to_dict(cfg)})
    atomic_write_json(start.out_dir / runs.SUMMARY, summary)
    return summary
