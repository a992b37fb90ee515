"""Pick the device and the autocast precision: CUDA when present, bf16 where the hardware has it."""

from __future__ import annotations

import contextlib
import functools
import os

import torch

from pocketlm.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r}: not a device name (try auto, cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return dev


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX), where bf16 pays off."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The compute precision for autocast: float32 means no autocast."""
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and cpu_has_bf16():
            return torch.bfloat16
        return torch.float32
    if name not in table:
        raise UserError(f"--dtype {name!r}: choose auto, fp32, bf16 or fp16")
    dtype = table[name]
    if dtype == torch.float16 and device.type == "cpu":
        raise UserError("--dtype fp16 is for GPUs; on a CPU use bf16 or fp32")
    return dtype


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, os.cpu_count() or 1))


# Longest context for which plain matmul attention ("eager") trained faster than PyTorch's SDPA kernel on
# CPU: 12M model, bf16, 2 cores — 1.1-1.3x at 256 and 512 tokens, 0.5-0.9x at 1024 (docs/benchmarks.md).
CPU_EAGER_MAX_CONTEXT = 512


def training_attention(name: str, device: torch.device, context: int | None) -> str:
    """The attention kernel to train with: `auto` picks "eager" on CPU for short contexts, "sdpa" elsewhere."""
    if name != "auto":
        return name
    if device.type == "cpu" and context is not None and context <= CPU_EAGER_MAX_CONTEXT:
        return "eager"
    return "sdpa"
