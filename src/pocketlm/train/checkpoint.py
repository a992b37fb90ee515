"""Checkpoints: a complete model directory plus the trainer's state, written atomically.

`RUN_DIR/checkpoint/` is a Hugging Face model directory (so even a checkpoint loads in
transformers) with `trainer_state.pt` beside the weights: optimizer, step, tokens, elapsed time and
RNG states. It is written to a temporary directory and renamed into place, so a crash never leaves
a half-written checkpoint.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from pocketlm import runs
from pocketlm.model.io import save_model

STATE = runs.TRAINER_STATE


def save_checkpoint(run_dir: Path, model, tokenizer, optimizer_state: dict, state: dict) -> Path:
    state = dict(state)
    state["optimizer"] = optimizer_state
    state["rng"] = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }

    def write_state(tmp: Path) -> None:
        torch.save(state, tmp / STATE)

    return save_model(model, tokenizer, run_dir / runs.CHECKPOINT, before_commit=write_state)


def load_state(ckpt_dir: Path) -> dict:
    return torch.load(ckpt_dir / STATE, map_location="cpu", weights_only=False)


def restore_rng(state: dict) -> None:
    rng = state.get("rng") or {}
    if rng.get("torch") is not None:
        torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    if rng.get("numpy") is not None:
        np.random.set_state(rng["numpy"])
    if rng.get("python") is not None:
        random.setstate(rng["python"])
