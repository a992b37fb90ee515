"""One interface over the two ways pocketlm runs a model: a PyTorch model through inference/engine.py or a
GGUF file through inference/llamacpp.py (prompt building, token counting, streaming). The HTTP server uses
it. A PyTorch Llama model served with parallel > 1 decodes its requests together (inference/batching.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

from pocketlm.errors import UserError
from pocketlm.inference.options import SamplingConfig


class TorchBackend:
    """A transformers model and its tokenizer: prompts are token ids, the chat template is the tokenizer's."""

    def __init__(self, model, tokenizer, name: str, parallel: int = 1, max_waiting: int = 64):
        from pocketlm.data.tokenizer import stop_token_ids
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.context = getattr(model.config, "max_position_embeddings", None) or 2048
        self.stop_ids = stop_token_ids(tokenizer)
        self.engine = None  # continuous batching (inference/batching.py) where the model allows it
        if parallel > 1:
            from pocketlm.inference.batching import BatchEngine, batchable
            if batchable(model):
                self.engine = BatchEngine(model, tokenizer, self.stop_ids, slots=parallel, max_waiting=max_waiting)

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

    def stream(self, prompt: list[int], cfg: SamplingConfig, stats: dict, constraint=None) -> Iterator[str]:
        from pocketlm.inference.engine import stream_text
        return stream_text(self.model, self.tokenizer, prompt, cfg, self.stop_ids, stats=stats, constraint=constraint)

    def json_constraint(self, schema: dict | None):
        """Valid JSON, token by token (inference/constrained.py); a schema's structure is not enforced here."""
        from pocketlm.inference.constrained import JSONConstraint
        stop = self.stop_ids[0] if self.stop_ids else self.tokenizer.eos_token_id
        if stop is None:
            raise UserError("response_format needs a model with an end-of-text token")
        return JSONConstraint(self.tokenizer, stop, max_space=2)


class GGUFBackend:
    """A GGUF file run by llama.cpp: prompts are text, the chat template is the one stored in the file.

    With parallel > 1, up to that many requests run side by side, each in its own llama.cpp context (made
    when first needed, then reused; the weights are memory-mapped once). The running contexts share the CPU
    threads between them."""

    def __init__(self, path: str | Path, name: str, n_ctx: int = 0, parallel: int = 1):
        from pocketlm.inference.llamacpp import load_gguf
        self.path, self.name, self.n_ctx = Path(path), name, n_ctx
        self.llm = load_gguf(self.path, n_ctx=n_ctx)
        self.context = self.llm.n_ctx()
        self.parallel = max(1, parallel)
        self._free, self._made, self._busy, self._running = [self.llm], 1, 0, set()
        self._cond = threading.Condition()

    def _count(self, text: str, bos: bool) -> int:
        from pocketlm.inference.llamacpp import tokenize_gguf
        return len(tokenize_gguf(self.llm, text, add_special=bos))

    def chat_prompt(self, messages: list[dict]) -> tuple[str, int]:
        from pocketlm.inference.llamacpp import render_chat
        prompt = render_chat(self.llm, messages)
        return prompt, self._count(prompt, True)

    def text_prompt(self, text: str) -> tuple[str, int]:
        return text, self._count(text, True)

    def _acquire(self):
        from pocketlm.inference.llamacpp import new_gguf
        with self._cond:
            while not self._free and self._made >= self.parallel:
                self._cond.wait()
            llm = self._free.pop() if self._free else None
            if llm is None:
                self._made += 1
            self._busy += 1
        if llm is None:
            try:
                llm = new_gguf(self.path, n_ctx=self.context)
            except BaseException:
                with self._cond:
                    self._made -= 1
                    self._busy -= 1
                    self._cond.notify()
                raise
        with self._cond:
            self._running.add(llm)
            self._share_threads()
        return llm

    def _release(self, llm) -> None:
        with self._cond:
            self._running.discard(llm)
            self._free.append(llm)
            self._busy -= 1
            self._share_threads()
            self._cond.notify()

    def _share_threads(self) -> None:
        """The running contexts split the CPU threads: more threads than cores make llama.cpp's spinning
        worker threads wait on each other, and every context crawls."""
        if self.parallel > 1 and self._running:
            from pocketlm.inference.llamacpp import default_threads, set_threads
            share = max(1, default_threads() // len(self._running))
            for llm in self._running:
                set_threads(llm, share)

    def json_constraint(self, schema: dict | None):
        """llama.cpp's grammar: any JSON object for None, else the schema's own grammar."""
        import json

        from pocketlm.inference.llamacpp import json_grammar
        return json_grammar(json.dumps(schema) if schema is not None else None)

    def stream(self, prompt: str, cfg: SamplingConfig, stats: dict, constraint=None) -> Iterator[str]:
        from pocketlm.inference.llamacpp import generate_gguf
        stats.update(tokens=0, finish="length")
        llm = self._acquire()
        try:
            pieces = generate_gguf(llm, prompt, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                   top_k=cfg.top_k, top_p=cfg.top_p, repetition_penalty=cfg.repetition_penalty,
                                   seed=cfg.seed, stop=list(cfg.stop), stream=True, grammar=constraint)
            text = ""
            for piece in pieces:
                text += piece
                yield piece
        finally:
            self._release(llm)
        # llama.cpp's stream does not count tokens: count the text it gave (exact unless a stop string cut it)
        stats["tokens"] = self._count(text, False)
        stats["finish"] = "length" if stats["tokens"] >= cfg.max_new_tokens else "stop"


def load_backend(model: str, *, name: str | None = None, device: str = "auto", dtype: str = "fp32",
                 parallel: int = 1, max_waiting: int = 64):
    """The backend for a model directory, run directory or .gguf file."""
    from pocketlm.inference.llamacpp import is_gguf
    path = Path(model)
    if not path.exists():
        raise UserError(f"{model}: no such model directory or GGUF file")
    if is_gguf(path):
        return GGUFBackend(path, name or path.name, parallel=parallel)
    import torch

    from pocketlm.device import resolve_device
    from pocketlm.model.io import load_model
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    m, tokenizer = load_model(model, dtype=torch_dtype, device=resolve_device(device))
    m.eval()
    return TorchBackend(m, tokenizer, name or path.resolve().name, parallel=parallel, max_waiting=max_waiting)
