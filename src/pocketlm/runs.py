"""The run directory. Every verb that writes or reads a run finds its parts through this module:

    RUN/
      checkpoint/     the latest checkpoint: a Hugging Face model directory + trainer_state.pt
      best/           (fine-tuning) the weights with the lowest validation loss so far
      model/          the final Hugging Face model directory
      grounding/      (grounded fine-tuning) the router that picks a reference for each question
      metrics.jsonl   one JSON line per logging interval and per validation
      loss.png        the loss curves
      summary.json    the final figures and the configuration
      evals/          `pocketlm eval` results
      report.html     `pocketlm report`

Torch-free, so that the CLI and recipes can look at a run without importing the training stack.
"""

from __future__ import annotations

import json
from pathlib import Path

from pocketlm.errors import UserError
from pocketlm.fsutil import recover_dir

MODEL = "model"
CHECKPOINT = "checkpoint"
BEST = "best"
GROUNDING = "grounding"
METRICS = "metrics.jsonl"
LOSS_PLOT = "loss.png"
SUMMARY = "summary.json"
EVALS = "evals"
REPORT = "report.html"
TRAINER_STATE = "trainer_state.pt"  # inside checkpoint/: optimizer, step, tokens, clock, RNG states


def latest_checkpoint(run: str | Path) -> Path | None:
    """RUN/checkpoint when it is complete (a checkpoint interrupted while being replaced is recovered first)."""
    path = recover_dir(Path(run) / CHECKPOINT)
    if path is None or not (path / TRAINER_STATE).exists():
        return None
    return path


def check_start(run: str | Path, resume: bool) -> Path | None:
    """Before a training verb starts: the checkpoint to resume from (None for a new run), or a clear error
    when --resume has nothing to resume or a new run would overwrite an old one."""
    run = Path(run)
    if resume:
        ckpt = latest_checkpoint(run)
        if ckpt is None:
            raise UserError(f"{run}: --resume given but there is no checkpoint to resume from")
        return ckpt
    if (run / CHECKPOINT).exists():
        raise UserError(f"{run}: already holds a run; use --resume to continue it or choose another --out")
    return None


def read_summary(run: str | Path) -> dict | None:
    path = Path(run) / SUMMARY
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e}); it is written by a training run") from None


def is_finished(run: str | Path) -> bool:
    """A training run that ended by its budget (not one interrupted, crashed or never started)."""
    summary = read_summary(run)
    return summary is not None and summary.get("stopped") != "interrupted"


def is_run(path: str | Path) -> bool:
    return (Path(path) / METRICS).is_file()
