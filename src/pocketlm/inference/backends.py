"""One interface over the two ways pocketlm runs a model: a PyTorch model through inference/engine.py or a
GGUF file through inference/llamacpp.py (prompt building, token counting, streaming). The HTTP server uses
it; the coming batched engine slots in behind it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pocketlm.errors import UserError
from pocketlm.inference.options import SamplingConfig


class TorchBackend:
    """A transformers model and its tokenizer: prompts are token ids, the chat template is the tokenizer's."""

    def __init__(self, model, tokenizer, name: str):
        from pocketlm.data.tokenizer import stop_token_ids
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.context = getattr(model.config, "max_position_embeddings", None) or 2048
        self.stop_ids = stop_token_ids(tokenizer)

    def chat_prompt(self, messages: list[dict]) -> tuple[list[int], int]:
        if not self.tokenizer.chat_template:
            raise UserError("this model's tokenizer has no chat template; use /v1/completions instead")
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids), len(ids)

    def text_prompt(self, text: str) -> tuple[list[int], int]:
        ids = self.tokenizer.encode(text, add_special_tokens=True)
        return ids, len(ids)

    def stream(self, prompt: list[int], cfg: SamplingConfig, stats: dict) -> Iterator[str]:
        from pocketlm.inference.engine import stream_text
        return stream_text(self.model, self.tokenizer, prompt, cfg, self.stop_ids, stats=stats)


class GGUFBackend:
    """A GGUF file run by llama.cpp: prompts are text, the chat template is the one stored in the file."""

    def __init__(self, path: str | Path, name: str, n_ctx: int = 0):
        from pocketlm.inference.llamacpp import load_gguf
        self.path, self.name, self.n_ctx = Path(path), name, n_ctx
        self.llm = load_gguf(self.path, n_ctx=n_ctx)
        self.context = self.llm.n_ctx()

    def _count(self, text: str, bos: bool) -> int:
        from pocketlm.inference.llamacpp import tokenize_gguf
        return len(tokenize_gguf(self.llm, text, add_special=bos))

    def chat_prompt(self, messages: list[dict]) -> tuple[str, int]:
        from pocketlm.inference.llamacpp import render_chat
        prompt = render_chat(self.llm, messages)
        return prompt, self._count(prompt, True)

    def text_prompt(self, text: str) -> tuple[str, int]:
        return text, self._count(text, True)

    def stream(self, prompt: str, cfg: SamplingConfig, stats: dict) -> Iterator[str]:
        from pocketlm.inference.llamacpp import generate_gguf
        stats.update(tokens=0, finish="length")
        pieces = generate_gguf(self.path, prompt, max_new_tokens=cfg.max_new_tokens,
                               temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                               repetition_penalty=cfg.repetition_penalty, seed=cfg.seed, stop=list(cfg.stop),
                               stream=True, n_ctx=self.n_ctx)
        text = ""
        for piece in pieces:
            text += piece
            yield piece
        # llama.cpp's stream does not count tokens: count the text it gave (exact unless a stop string cut it)
        stats["tokens"] = self._count(text, False)
        stats["finish"] = "length" if stats["tokens"] >= cfg.max_new_tokens else "stop"


def load_backend(model: str, *, name: str | None = None, device: str = "auto", dtype: str = "fp32"):
    """The backend for a model directory, run directory or .gguf file."""
    from pocketlm.inference.llamacpp import is_gguf
    path = Path(model)
    if not path.exists():
        raise UserError(f"{model}: no such model directory or GGUF file")
    if is_gguf(path):
        return GGUFBackend(path, name or path.name)
    import torch

    from pocketlm.device import resolve_device
    from pocketlm.model.io import load_model
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    m, tokenizer = load_model(model, dtype=torch_dtype, device=resolve_device(device))
    m.eval()
    return TorchBackend(m, tokenizer, name or path.resolve().name)
