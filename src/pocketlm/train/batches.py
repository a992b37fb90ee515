"""Batches of packed tokens for language-model training.

Each batch is a pure function of (seed, step, micro-step), as in nanoGPT's random windows over
the token stream: resuming at step N reads exactly the batches an uninterrupted run would have
read, with no sampler state to save.
"""

from __future__ import annotations

import numpy as np
import torch

from pocketlm.train import distributed


class TokenWindows:
    def __init__(self, tokens: np.ndarray, batch_size: int, context: int, seed: int, device: torch.device):
        if len(tokens) < context + 2:
            raise ValueError(f"only {len(tokens)} tokens, fewer than one window of {context + 1}")
        self.tokens = tokens
        self.batch_size = batch_size
        self.context = context
        self.seed = seed
        self.device = device

    def offsets(self, step: int, micro: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step, micro])
        return rng.integers(0, len(self.tokens) - self.context - 1, size=self.batch_size)

    def batch(self, step: int, micro: int = 0) -> dict[str, torch.Tensor]:
        """Under torchrun, this process's rows of the global batch: it reads only those windows."""
        return self.at(distributed.my_share(self.offsets(step, micro)))

    def at(self, offsets) -> dict[str, torch.Tensor]:
        t = self.context
        rows = np.stack([np.asarray(self.tokens[o:o + t + 1], dtype=np.int64) for o in offsets])
        xy = torch.from_numpy(rows)
        if self.device.type == "cuda":
            xy = xy.pin_memory().to(self.device, non_blocking=True)
        else:
            xy = xy.to(self.device)
        return {"input_ids": xy[:, :-1], "labels": xy[:, 1:]}

    def eval_batches(self, n_batches: int, seed: int = 1234):
        """A fixed set of windows (the same every call) spread over the split, for validation loss."""
        n_windows = (len(self.tokens) - 1) // self.context
        rng = np.random.default_rng(seed)
        total = n_batches * self.batch_size
        if n_windows <= total:
            starts = np.arange(n_windows) * self.context
        else:
            starts = np.sort(rng.choice(n_windows, size=total, replace=False)) * self.context
        for i in range(0, len(starts), self.batch_size):
            yield self.at(starts[i:i + self.batch_size])
