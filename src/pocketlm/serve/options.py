"""`pocketlm serve` options (one field = one flag = one YAML key), torch-free so that `pocketlm --help`
stays fast."""

from __future__ import annotations

from dataclasses import dataclass

from pocketlm.config import field


@dataclass(kw_only=True)
class ServeOptions:
    model: str = field(help="model directory, run directory or .gguf file", positional=True)
    host: str = field("127.0.0.1", "address to listen on (127.0.0.1: this machine only; 0.0.0.0: every "
                      "network interface, so set --api-key)")
    port: int = field(8000, "TCP port to listen on")
    api_key: str | None = field(None, "require `Authorization: Bearer KEY` on every request but /health")
    name: str | None = field(None, "the model's name in the API (default: the directory or file name)")
    system: str | None = field(None, "system prompt put before chat requests that bring none")
    device: str = field("auto", "auto, cpu, cuda or mps (PyTorch models)")
    dtype: str = field("fp32", "weights precision for PyTorch models: fp32, bf16, fp16",
                       choices=["fp32", "bf16", "fp16"])
    ground: bool = field(True, "answer chat requests with the model's grounding when it has one")
    max_body_bytes: int = field(1_000_000, "largest request body accepted (bigger: 413)")
    max_tokens_limit: int = field(2048, "largest max_tokens a request may ask for (bigger: 400)")
    parallel: int = field(8, "requests generated at once: continuous batching for PyTorch Llama models, "
                          "that many llama.cpp contexts for a GGUF file (1: one at a time)")
    max_waiting: int = field(64, "requests that may wait for a free slot; more are answered 429 with Retry-After")
