"""One training run over several processes, started by PyTorch's own launcher:

    torchrun --nproc-per-node 2 -m pocketlm pretrain --data DATA --out RUN ...

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; :func:`setup` joins the process group (NCCL on GPUs, gloo on
CPUs) and the loop wraps the model in DistributedDataParallel. Every process computes the same global batch
of the one-process run (batches are a pure function of seed, step and micro-step) and trains on its own
rows of it, so the loss curve is the one-process curve; gradients are averaged by DDP, validation batches are
split over the processes and their losses summed, and only rank 0 writes checkpoints, metrics, plots and
the progress bar. Without torchrun (WORLD_SIZE unset or 1) all of this is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from pocketlm.errors import UserError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


_state = Dist()


def current() -> Dist:
    return _state


def setup() -> Dist:
    """Join the process group torchrun describes (once per process); one process: nothing to do."""
    global _state
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _state
    import torch.distributed as dist
    if not dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            if local_rank >= torch.cuda.device_count():
                raise UserError(f"process {local_rank} has no GPU of its own ({torch.cuda.device_count()} visible): "
                                "give torchrun --nproc-per-node at most the number of GPUs")
            torch.cuda.set_device(local_rank)  # "cuda" now means this process's GPU
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        _state = Dist(dist.get_rank(), dist.get_world_size(), local_rank)
    return _state


def teardown() -> None:
    global _state
    if _state.enabled:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
        _state = Dist()


def barrier() -> None:
    if _state.enabled:
        import torch.distributed as dist
        dist.barrier()


def check_batch(batch_size: int) -> None:
    if _state.enabled and batch_size % _state.world:
        raise UserError(f"--batch-size {batch_size} does not split evenly over {_state.world} processes: give a "
                        f"multiple of {_state.world} (it is the global micro-batch, the same as one process's)")


def my_rows(batch: dict) -> dict:
    """This process's rows of a global micro-batch (contiguous, in rank order)."""
    if not _state.enabled:
        return batch
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            rows = value.size(0) // _state.world
            value = value[_state.rank * rows:(_state.rank + 1) * rows]
        out[key] = value
    return out


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """`values` summed over the processes (a new tensor; the input is left as it is)."""
    if not _state.enabled:
        return values
    import torch.distributed as dist
    out = values.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_max(values: torch.Tensor) -> torch.Tensor:
    if not _state.enabled:
        return values
    import torch.distributed as dist
    out = values.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


class LossModule(torch.nn.Module):
    """The model and its objective as one module, so that DDP sees the whole forward pass (an objective that
    calls the decoder and the head itself, computing logits only where there are labels, would otherwise
    bypass DDP's forward and its gradient synchronisation)."""

    def __init__(self, model: torch.nn.Module, loss_fn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: dict):
        return self.loss_fn(self.model, batch)


def wrap(model: torch.nn.Module, loss_fn, device: torch.device):
    """(callable taking a batch -> (loss, n), DDP module or None)."""
    if not _state.enabled:
        return (lambda batch: loss_fn(model, batch)), None
    from torch.nn.parallel import DistributedDataParallel as DDP
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    ddp = DDP(LossModule(model, loss_fn), device_ids=ids)
    return ddp, ddp
