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

import contextlib
import dataclasses
import os
from dataclasses import dataclass

import torch

from pocketlm.errors import UserError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    sharded: bool = False  # FSDP: every process must run the same forward passes (they gather weights together)

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


def my_share(rows):
    """This process's part of the rows of a global micro-batch (contiguous, in rank order): a task picks the
    rows of the whole batch (row offsets, example indices) and reads only its own."""
    if not _state.enabled:
        return rows
    n = len(rows) // _state.world
    return rows[_state.rank * n:(_state.rank + 1) * n]


def _all_reduce(values: torch.Tensor, op: str) -> torch.Tensor:
    if not _state.enabled:
        return values
    import torch.distributed as dist
    out = values.detach().clone()
    dist.all_reduce(out, op=getattr(dist.ReduceOp, op))
    return out


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """`values` summed over the processes (a new tensor; the input is left as it is)."""
    return _all_reduce(values, "SUM")


def all_max(values: torch.Tensor) -> torch.Tensor:
    return _all_reduce(values, "MAX")


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


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a transformers causal LM (the longest ModuleList: Llama's model.layers)."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def wrap(model: torch.nn.Module, loss_fn, device: torch.device, *, fsdp: bool = False):
    """(callable taking a batch -> (loss, n), the wrapping module or None).

    DDP keeps a full copy of the model in every process. FSDP2 (`fully_shard`) shards the weights, gradients
    and optimizer state over the processes: each decoder layer is its own unit (gathered for its forward and
    backward, then freed) and the rest (embeddings, final norm, head) belongs to the root. The model's own
    parameters become DTensors in place, so the optimizer is made after this."""
    global _state
    if not _state.enabled:
        return (lambda batch: loss_fn(model, batch)), None
    root = LossModule(model, loss_fn)
    if fsdp:
        from torch.distributed.fsdp import fully_shard
        _state = dataclasses.replace(_state, sharded=True)
        for layer in decoder_layers(model):
            fully_shard(layer)
        fully_shard(root)
        return root, root
    from torch.nn.parallel import DistributedDataParallel as DDP
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    ddp = DDP(root, device_ids=ids)
    return ddp, ddp


def is_sharded(wrapper) -> bool:
    return wrapper is not None and not isinstance(wrapper, torch.nn.parallel.DistributedDataParallel)


@contextlib.contextmanager
def gradient_sync(wrapper, sync: bool):
    """Within the block, backward averages gradients over the processes only if `sync` (the last micro-batch
    of a step); the micro-batches before it accumulate locally."""
    if wrapper is None or sync:
        yield
    elif is_sharded(wrapper):
        wrapper.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            wrapper.set_requires_gradient_sync(True)
    else:
        with wrapper.no_sync():
            yield


@contextlib.contextmanager
def gathered(wrapper):
    """Under FSDP: the root's weights (embeddings, norm, head) gathered, so that code calling the model's parts
    directly (validation) can run; the decoder layers gather themselves in their forward."""
    if not is_sharded(wrapper):
        yield
        return
    # FSDP learns which module is the root from the first forward; validation before the first training step
    # would make a decoder layer the root. torch has no public call for this (tests/train/test_distributed.py
    # fails if it goes away)
    wrapper._get_fsdp_state()._lazy_init()
    wrapper.unshard()
    try:
        yield
    finally:
        wrapper.reshard()


def scalar(value) -> float:
    """A Python float from a tensor, a DTensor (FSDP's gradient norm) or a number."""
    if hasattr(value, "full_tensor"):
        value = value.full_tensor()
    return float(value)


def _full_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, **kw)


def unsharded(model: torch.nn.Module):
    """The model to save: itself, or when FSDP has sharded it a full copy gathered to rank 0 (None on the
    other processes). Every process must call it (it is a collective). The verbs call it after training."""
    from torch.distributed.tensor import DTensor
    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return model
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from transformers import AutoModelForCausalLM
    weights = get_model_state_dict(model, options=_full_options(cpu_offload=True))
    if not _state.main:
        return None
    copy = AutoModelForCausalLM.from_config(model.config, dtype=next(iter(weights.values())).dtype)
    missing, unexpected = copy.load_state_dict(weights, strict=False)
    if unexpected or any(k != "lm_head.weight" for k in missing):  # a tied head is stored once
        raise RuntimeError(f"gathering the sharded model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    copy.tie_weights()
    copy.generation_config = model.generation_config
    return copy


def optimizer_state(wrapper, optimizer) -> dict:
    """The optimizer's state to checkpoint (under FSDP, gathered to rank 0 by parameter name). A collective."""
    if not is_sharded(wrapper):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    return {"fsdp_full": get_optimizer_state_dict(wrapper, optimizer, options=_full_options(cpu_offload=True))}


def load_optimizer_state(wrapper, optimizer, saved: dict, where) -> None:
    sharded = is_sharded(wrapper)
    if sharded and "fsdp_full" not in saved:
        raise UserError(f"{where}: this checkpoint was written without --fsdp; resume it without --fsdp")
    if not sharded and "fsdp_full" in saved:
        raise UserError(f"{where}: this checkpoint was written with --fsdp; resume it under torchrun with --fsdp")
    if not sharded:
        optimizer.load_state_dict(saved)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict
    set_optimizer_state_dict(wrapper, optimizer, saved["fsdp_full"], options=_full_options())
