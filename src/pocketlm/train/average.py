"""An exponential moving average of the trained weights (`--ema DECAY`).

The average of the last few hundred steps' weights usually generalises better than the last step's
weights alone; it costs one extra copy of the trainable weights and one fused lerp per step. While
training, the model holds the raw weights (they are what the optimizer steps); for validation, for
the best-checkpoint copy and for the final model the average is swapped in.

Not `torch.optim.swa_utils.AveragedModel`: that deep-copies the whole module, which for a LoRA run
means a second copy of the frozen base (0.5 GB for SmolLM2-135M in fp32) to average a few MB of
adapter, and it has no warm-up of the decay. The update is the same fused `_foreach_lerp_` it uses.
"""

from __future__ import annotations

import contextlib

import torch


class WeightAverage:
    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be between 0 and 1, got {decay}")
        self.decay = decay
        # detached views share the parameters' storage: built once, they follow every optimizer step
        self.params = [p.detach() for p in model.parameters() if p.requires_grad]
        self.average = [p.clone() for p in self.params]

    def decay_at(self, step: int) -> float:
        """Warm-up: early steps average over fewer steps, so the random initialisation fades out quickly."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        torch._foreach_lerp_(self.average, self.params, 1.0 - self.decay_at(step))

    @contextlib.contextmanager
    def swapped_in(self):
        """Within the block the model holds the averaged weights; after it, the raw ones again."""
        with torch.no_grad():
            raw = [p.clone() for p in self.params]
            torch._foreach_copy_(self.params, self.average)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, raw)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        torch._foreach_copy_(self.params, self.average)

    def state_dict(self) -> list[torch.Tensor]:
        return [a.detach().cpu() for a in self.average]

    @torch.no_grad()
    def load_state_dict(self, tensors: list[torch.Tensor]) -> None:
        if len(tensors) != len(self.average) or any(a.shape != t.shape for a, t in zip(self.average, tensors, strict=True)):
            raise ValueError("the checkpoint's weight average does not match the model")
        torch._foreach_copy_(self.average, [t.to(a.device) for a, t in zip(self.average, tensors, strict=True)])
