"""Run GGUF files (from `pocketlm export`) with llama.cpp through llama-cpp-python.

llama-cpp-python is an optional dependency: ``pip install 'pocketlm[llamacpp]'``. Everything here
imports it lazily and turns its absence into a one-line UserError.

Sampling follows pocketlm's transformers path: temperature 0 is greedy, top_k 0 and top_p 1 turn
those filters off, and llama.cpp's extra ``min_p`` filter is disabled. One difference remains:
llama.cpp's repetition penalty looks at the last 64 tokens, transformers' at the whole sequence.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pocketlm.errors import UserError
from pocketlm.inference.window import fit_turns

INSTALL_HINT = "pip install 'pocketlm[llamacpp]'"

# One loaded model is kept, keyed by file identity and load options, so repeated calls are cheap.
_cached: tuple[tuple, Any] | None = None


def import_llama_cpp():
    """The llama_cpp module, or a UserError telling the user how to install it."""
    try:
        import llama_cpp
    except ImportError as e:
        raise UserError(f"running .gguf files needs llama-cpp-python, which is not installed ({e}); "
                        f"install it with: {INSTALL_HINT}") from None
    return llama_cpp


def is_gguf(path: str | Path) -> bool:
    """True for a path that names a GGUF file (by suffix, or by its magic bytes)."""
    path = Path(path)
    if path.suffix.lower() == ".gguf":
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def load_gguf(path: str | Path, *, n_ctx: int = 0, n_threads: int | None = None, **llama_kwargs):
    """Load a GGUF file as a `llama_cpp.Llama` (cached: loading the same file again is free).

    `n_ctx` 0 means the model's own training context. Extra keyword arguments go to `Llama`
    (e.g. ``type_k``/``type_v`` for the KV-cache precision).
    """
    global _cached
    import_llama_cpp()  # a clear error when llama-cpp-python is missing
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such GGUF file")
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size, n_ctx, n_threads,
           tuple(sorted(llama_kwargs.items())))
    if _cached is not None and _cached[0] == key:
        return _cached[1]
    _cached = None  # the previous model is freed once no caller holds it
    llm = new_gguf(path, n_ctx=n_ctx, n_threads=n_threads, **llama_kwargs)
    _cached = (key, llm)
    return llm


def new_gguf(path: str | Path, *, n_ctx: int = 0, n_threads: int | None = None, **llama_kwargs):
    """A new `llama_cpp.Llama` for `path`, not cached: one more context with its own KV cache (the weights are
    memory-mapped, so the page cache holds them once however many contexts there are)."""
    llama_cpp = import_llama_cpp()
    if n_threads is None:
        n_threads = default_threads()
    try:
        return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                               verbose=False, **{"logits_all": False, **llama_kwargs})
    except (ValueError, RuntimeError, OSError) as e:
        raise UserError(f"{path}: llama.cpp cannot load it ({e})") from None


def json_grammar(schema_json: str | None):
    """A llama.cpp grammar for a JSON object (`schema_json` None) or for a JSON schema."""
    import_llama_cpp()
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar
    try:
        if schema_json is None:
            return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
        return LlamaGrammar.from_json_schema(schema_json, verbose=False)
    except (ValueError, RuntimeError) as e:
        raise UserError(f"llama.cpp cannot turn this JSON schema into a grammar: {e}") from None


def choice_grammar(options: list[str]):
    """A llama.cpp grammar whose only sentences are `options` (a classifier's labels)."""
    import_llama_cpp()
    from llama_cpp.llama_grammar import LlamaGrammar
    if not options:
        raise UserError("no labels to constrain the answer to")
    alternatives = " | ".join(json.dumps(o) for o in options)  # GBNF string literals escape as JSON strings do
    return LlamaGrammar.from_string(f"root ::= {alternatives}", verbose=False)


def default_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def set_threads(llm, n: int) -> None:
    """Use `n` threads for llm's next evaluations (contexts running side by side share the cores)."""
    llama_cpp = import_llama_cpp()
    llama_cpp.llama_set_n_threads(llm.ctx, n, n)


def unload() -> None:
    """Free the cached model, if any."""
    global _cached
    if _cached is not None:
        _cached[1].close()
        _cached = None


def _model(path_or_llm, n_ctx: int, n_threads: int | None):
    if isinstance(path_or_llm, (str, os.PathLike)):
        return load_gguf(path_or_llm, n_ctx=n_ctx, n_threads=n_threads)
    return path_or_llm  # an already loaded llama_cpp.Llama


def tokenize_gguf(path_or_llm, text: str, *, add_special: bool = True, parse_special: bool = True,
                  n_ctx: int = 0, n_threads: int | None = None) -> list[int]:
    """Token ids llama.cpp produces for `text` (with BOS when the file says so and `add_special`).

    `parse_special` matches transformers: special-token text such as ``<|im_start|>`` becomes
    its single id.
    """
    llm = _model(path_or_llm, n_ctx, n_threads)
    return list(llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special))


def check_sampling(max_new_tokens: int, temperature: float, top_k: int, top_p: float,
                    repetition_penalty: float) -> None:
    if max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1 (got {max_new_tokens})")
    if temperature < 0:
        raise UserError(f"--temperature must be 0 (greedy) or positive (got {temperature})")
    if top_k < 0:
        raise UserError(f"--top-k must be 0 (off) or positive (got {top_k})")
    if not 0 < top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1] (got {top_p})")
    if repetition_penalty <= 0:
        raise UserError(f"--repetition-penalty must be positive (got {repetition_penalty})")


def generate_gguf(path, prompt: str, *, max_new_tokens: int = 128, temperature: float = 0.8,
                  top_k: int = 50, top_p: float = 0.95, repetition_penalty: float = 1.0,
                  seed: int | None = None, stop: list[str] | None = None, stream: bool = False,
                  n_ctx: int = 0, n_threads: int | None = None, grammar=None) -> Iterator[str] | str:
    """Continue `prompt` with the GGUF model at `path` (or a loaded `Llama`).

    Returns the generated text, or with ``stream=True`` an iterator of text pieces. Generation ends
    after `max_new_tokens`, at an end-of-generation token (EOS, ``<|im_end|>``) or at any `stop`
    string (which is not included). Special-token text in the prompt (ChatML) is parsed as tokens.
    """
    check_sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty)
    llm = _model(path, n_ctx, n_threads)
    kwargs = dict(max_tokens=max_new_tokens, temperature=float(temperature), top_k=int(top_k),
                  top_p=float(top_p), min_p=0.0, typical_p=1.0, repeat_penalty=float(repetition_penalty),
                  seed=seed, stop=list(stop or []), echo=False, grammar=grammar)
    n_prompt = len(tokenize_gguf(llm, prompt))
    if n_prompt + max_new_tokens > llm.n_ctx():
        raise UserError(f"the prompt ({n_prompt} tokens) plus --max-new-tokens {max_new_tokens} exceed the "
                        f"context window of {llm.n_ctx()} tokens")
    if stream:
        return _stream(llm, prompt, kwargs)
    try:
        out = llm.create_completion(prompt, stream=False, **kwargs)
    except ValueError as e:
        raise UserError(f"llama.cpp generation failed: {e}") from None
    return out["choices"][0]["text"]


def _stream(llm, prompt: str, kwargs: dict) -> Iterator[str]:
    try:
        for chunk in llm.create_completion(prompt, stream=True, **kwargs):
            piece = chunk["choices"][0]["text"]
            if piece:
                yield piece
    except ValueError as e:
        raise UserError(f"llama.cpp generation failed: {e}") from None


def greedy_token_ids(path_or_llm, prompt_ids: Iterable[int], max_new_tokens: int, *,
                     stop_ids: Iterable[int] | None = None, n_ctx: int = 0,
                     n_threads: int | None = None) -> list[int]:
    """The token ids llama.cpp picks greedily (argmax) after `prompt_ids` (already including any BOS).

    Generation stops after `max_new_tokens` or once a token in `stop_ids` is produced (included in
    the result). ``stop_ids=None`` stops at llama.cpp's own end-of-generation tokens; pass ``()`` to
    always produce `max_new_tokens` tokens. Used to check exports against transformers.
    """
    llama_cpp = import_llama_cpp()
    llm = _model(path_or_llm, n_ctx, n_threads)
    prompt_ids = [int(t) for t in prompt_ids]
    if not prompt_ids:
        raise UserError("greedy generation needs at least one prompt token")
    if len(prompt_ids) + max_new_tokens > llm.n_ctx():
        raise UserError(f"{len(prompt_ids)} prompt tokens + {max_new_tokens} new ones exceed the context "
                        f"window of {llm.n_ctx()} tokens")
    stops = set(stop_ids) if stop_ids is not None else None
    llm.reset()
    out: list[int] = []
    for tok in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0,
                            reset=True):
        out.append(int(tok))
        done = tok in stops if stops is not None else llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok)
        if done or len(out) >= max_new_tokens:
            break
    return out


# --------------------------------------------------------------------------------------------------
# chat


def render_chat(path_or_llm, messages: list[dict], *, add_generation_prompt: bool = True) -> str:
    """The prompt text for `messages`, from the chat template stored in the GGUF file.

    The BOS token is left out of the text: llama.cpp adds it itself when the file says to.
    """
    llm = _model(path_or_llm, 0, None)
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise UserError("this GGUF file has no chat template; use `pocketlm generate` instead")
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise UserError("rendering the chat template needs jinja2: pip install jinja2") from None

    def raise_exception(message):
        raise UserError(f"the chat template refused the conversation: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(messages=messages, bos_token="", eos_token="",
                                                add_generation_prompt=add_generation_prompt)
    except UserError:
        raise
    except Exception as e:  # jinja2 raises many types for a bad template
        raise UserError(f"cannot render the GGUF file's chat template ({type(e).__name__}: {e})") from None


def fit_chat(llm, messages: list[dict], context: int, reserve: int, *,
             keep_system: bool = True) -> tuple[str, int]:
    """(prompt text, messages dropped): the oldest turns go until prompt + `reserve` fits `context`
    (:func:`pocketlm.inference.window.fit_turns`, measured with the GGUF file's template and tokenizer)."""

    def measure(shown: list[dict]) -> tuple[str, int]:
        prompt = render_chat(llm, shown)
        return prompt, len(tokenize_gguf(llm, prompt))

    prompt, tokens, dropped = fit_turns(messages, measure, context, reserve, keep_system=keep_system)
    if tokens + reserve > context:
        raise UserError(f"the message plus --max-new-tokens {reserve} do not fit in the context window "
                        f"of {context} tokens")
    return prompt, dropped
