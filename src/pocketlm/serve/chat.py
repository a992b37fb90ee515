"""`pocketlm chat`: a terminal conversation that keeps within the model's context window."""

from __future__ import annotations

import sys
from pathlib import Path

from pocketlm.data.tokenizer import stop_token_ids
from pocketlm.errors import UserError
from pocketlm.inference.engine import SamplingConfig, stream_text
from pocketlm.inference.llamacpp import check_sampling, fit_chat, generate_gguf, load_gguf, render_chat
from pocketlm.inference.window import fit_turns


def fit_conversation(tokenizer, messages: list[dict], context: int, reserve: int) -> tuple[list[int], int]:
    """Token ids of the chat prompt, dropping the oldest turns (never the system prompt) until the
    prompt plus `reserve` new tokens fit in `context` (:func:`pocketlm.inference.window.fit_turns`); a
    last turn still too long keeps its end. Returns (ids, number of messages dropped)."""
    if not tokenizer.chat_template:
        raise UserError("this model's tokenizer has no chat template; use `pocketlm generate` instead")

    def measure(shown: list[dict]) -> tuple[list[int], int]:
        ids = tokenizer.apply_chat_template(shown, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids), len(ids)

    ids, _, dropped = fit_turns(messages, measure, context, reserve)
    if len(ids) + reserve > context:
        keep = context - reserve
        if keep <= 0:
            raise UserError(f"--max-new-tokens {reserve} leaves no room in the context window of {context}")
        ids = ids[-keep:]
    return ids, dropped


def repl(fit, respond, context: int, system: str | None = None, name: str = "model",
         greeting: str = "Chat with the model.") -> None:
    """The terminal conversation shared by every engine (and `pocketlm chat BOT_RUN`).

    `fit(messages) -> (prompt, messages dropped)` keeps the conversation within the context window;
    `respond(prompt) -> iterator of text pieces` streams the reply."""
    messages: list[dict] = [{"role": "system", "content": system}] if system else []
    print(f"{greeting} Commands: /reset clears the conversation, /exit (or Ctrl-D) quits.", file=sys.stderr)
    while True:
        try:
            user = input("\nyou> ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return
        if not sys.stdin.isatty():  # piped in: show what was asked, so the transcript reads as a conversation
            print(user)
        if user.strip() in ("/exit", "/quit"):
            return
        if user.strip() == "/reset":
            messages = messages[:1] if system else []
            print("(conversation cleared)", file=sys.stderr)
            continue
        if not user.strip():
            continue
        messages.append({"role": "user", "content": user})
        prompt, dropped = fit(messages)
        if dropped:
            start = 1 if system else 0
            del messages[start:start + dropped]
            print(f"(the conversation is longer than the {context}-token context window: "
                  f"dropped the {dropped} oldest message(s))", file=sys.stderr)
        print(f"{name}> ", end="", flush=True)
        reply = []
        try:
            for piece in respond(prompt):
                reply.append(piece)
                print(piece, end="", flush=True)
        except KeyboardInterrupt:
            print(" [stopped]", end="")
        print()
        messages.append({"role": "assistant", "content": "".join(reply).strip()})


def announce(grounding) -> None:
    if grounding is not None:
        print(f"(answers grounded in {len(grounding.answers):,} known answers on {len(grounding.classes)} topics)",
              file=sys.stderr)


def chat_loop(model, tokenizer, cfg: SamplingConfig, system: str | None = None, grounding=None) -> None:
    """`grounding` (pocketlm.retrieval.grounding.Grounding): each reply is made with the closest known answer
    to the latest question in view, as in fine-tuning with --ground-field."""
    context = getattr(model.config, "max_position_embeddings", 2048)
    stops = stop_token_ids(tokenizer)
    announce(grounding)

    def fit(messages):
        shown = grounding.ground(messages) if grounding is not None else messages
        return fit_conversation(tokenizer, shown, context, cfg.max_new_tokens)

    repl(fit=fit,
         respond=lambda ids: stream_text(model, tokenizer, ids, cfg, stops), context=context, system=system)


def chat_gguf(path: str | Path, cfg, system: str | None = None, *, n_ctx: int = 0,
              n_threads: int | None = None, grounding=None) -> None:
    """`pocketlm chat FILE.gguf`: a terminal conversation run by llama.cpp.

    `cfg` is a SamplingConfig. The oldest turns are dropped when the conversation outgrows the
    context window; /reset clears it, /exit or Ctrl-D quits. `grounding` (the `FILE.grounding/`
    exported beside a grounded bot) puts the known answer for each new question in view.
    """
    check_sampling(cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, cfg.repetition_penalty)
    llm = load_gguf(path, n_ctx=n_ctx, n_threads=n_threads)
    context = llm.n_ctx()
    first = [{"role": "system", "content": system}] if system else []
    render_chat(llm, first + [{"role": "user", "content": "hi"}])  # fail early without a template

    def respond(prompt: str):
        return generate_gguf(path, prompt, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                             top_k=cfg.top_k, top_p=cfg.top_p, repetition_penalty=cfg.repetition_penalty,
                             seed=cfg.seed, stop=list(cfg.stop), stream=True, n_ctx=n_ctx, n_threads=n_threads)

    announce(grounding)

    def fit(messages):
        shown = grounding.ground(messages) if grounding is not None else messages
        return fit_chat(llm, shown, context, cfg.max_new_tokens, keep_system=bool(system) or grounding is not None)

    repl(fit=fit, respond=respond, context=context, system=system)
