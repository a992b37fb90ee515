"""Plots people would rather look at than read: loss curves from a run's metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pocketlm.fsutil import atomic_file  # noqa: E402


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_losses(metrics_path: str | Path, out_png: str | Path, title: str = "") -> Path:
    records = read_metrics(metrics_path)
    train = [(r["tokens"], r["loss"]) for r in records if "loss" in r]
    val = [(r["tokens"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", color="#4C72B0", alpha=0.8, linewidth=1.2)
    if val:
        ax.plot(*zip(*val, strict=True), label="validation loss", color="#DD8452", marker="o", markersize=3)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title or "pocketlm training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_file(out_png) as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return out_png
