"""Continuous batching: many requests decoded together, each joining or leaving at any step.

One thread owns the model. Each turn of its loop it
1. takes in new requests and drops cancelled ones (a client gone mid-stream frees its slot at once);
2. runs one forward (inference/slots.py `step`) holding a decode token of every running request and at most
   one chunk (`chunk` tokens) of prompts: whole short prompts of waiting requests, or the next chunk of one
   long prompt, so a long prompt does not stall the others for long, and a prompt fed beside the decoding
   costs little (the weights are read once for both);
3. samples each running request's next token with its own settings (temperature, top-p, top-k, seed,
   repetition penalty, a constraint) and ends those that hit a stop token, a stop string, max_new_tokens or the
   context window; a request whose prompt is in samples its first token and joins the running batch.
Running requests stay in slots 0..n-1: when one leaves, the last one moves into its place.
The queue is bounded: `submit` raises `Busy` when `max_waiting` requests already wait. When nothing is in
flight the cache memory beyond its initial size is given back.

Text comes out of the thread through each request's `sink(kind, value)`: ("text", piece) as soon as the piece
is final, then ("end", finish reason) or ("error", exception). Greedy decoding gives the same tokens as the
one-at-a-time engine (tests/inference/test_batching.py).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from pocketlm.inference.engine import TextStream, _apply_penalty, pick_token
from pocketlm.inference.options import SamplingConfig
from pocketlm.inference.slots import SlotDecoder


class Busy(Exception):
    """The waiting queue is full (answer 429 and ask the client to retry later)."""


class Closed(Exception):
    """The engine has stopped (answer 503)."""


@dataclass
class Request:
    prompt: list[int]
    cfg: SamplingConfig
    sink: Callable[[str, object], None]
    constraint: object = None
    generated: list[int] = field(default_factory=list)
    fed: int = 0  # prompt tokens in the cache so far
    cancelled: bool = False
    submitted: float = field(default_factory=time.monotonic)
    text: TextStream | None = None
    generator: torch.Generator | None = None
    seen: torch.Tensor | None = None  # prompt + generated ids, for the repetition penalty

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.generated)


class BatchEngine:
    def __init__(self, model, tokenizer, stop_ids, *, slots: int = 8, max_waiting: int = 64, chunk: int = 256,
                 on_step: Callable[[int, float], None] | None = None):
        self.model, self.tokenizer, self.stop_ids = model, tokenizer, set(stop_ids)
        self.context = getattr(model.config, "max_position_embeddings", None) or 2048
        self.decoder = SlotDecoder(model, slots, self.context)
        self.slots, self.max_waiting, self.chunk, self.on_step = slots, max_waiting, chunk, on_step
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # running[i] is in slot i
        self.admitting: Request | None = None  # in slot len(running) while its prompt is fed
        self.n_waiting = 0  # submitted, not yet admitted (read by other threads)
        self.lock = threading.Lock()
        self.closed = False
        self.error: BaseException | None = None
        self.threads = torch.get_num_threads()
        self.thread = threading.Thread(target=self._loop, name="pocketlm-batch", daemon=True)
        self.thread.start()

    # ---- called from other threads
    def submit(self, prompt: list[int], cfg: SamplingConfig, sink, constraint=None) -> Request:
        if not prompt:
            raise ValueError("the prompt is empty")
        if len(prompt) + 1 > self.context:
            raise ValueError(f"the prompt is {len(prompt)} tokens; the context window is {self.context}")
        with self.lock:
            if self.closed or self.error is not None:
                raise Closed("the model is not running")
            if self.n_waiting >= self.max_waiting:
                raise Busy(f"{self.n_waiting} requests are waiting already")
            self.n_waiting += 1
        req = Request(list(prompt), cfg, sink, constraint)
        self.inbox.put(req)
        return req

    def running_count(self) -> int:
        return len(self.running) + (self.admitting is not None)

    def close(self) -> None:
        with self.lock:
            self.closed = True
        self.inbox.put(None)
        self.thread.join(timeout=10)

    # ---- the engine thread
    def _loop(self) -> None:
        # a thread's first parallel region otherwise runs with a fresh OpenMP team sized by default, not by
        # the process's setting: measured 17 ms against 12 ms a decode step (8 rows, 5M model, 2 cores)
        torch.set_num_threads(self.threads)
        try:
            while True:
                idle = not (self.running or self.admitting or self.waiting)
                if idle:
                    self.decoder.reset()
                if not self._intake(block=idle):
                    break
                self._drop_cancelled()
                self._turn()
        except BaseException as e:  # noqa: BLE001 - every request is told, then the engine stays closed
            self.error = e
        finally:
            with self.lock:
                self.closed = True
            reason = self.error or Closed("the server is shutting down")
            for req in [*self.running, *([self.admitting] if self.admitting else []), *self.waiting]:
                req.sink("error", reason)
            while True:
                try:
                    req = self.inbox.get_nowait()
                except queue.Empty:
                    break
                if req is not None:
                    req.sink("error", reason)

    def _intake(self, block: bool) -> bool:
        try:
            item = self.inbox.get() if block else self.inbox.get_nowait()
            while True:
                if item is None:
                    return False
                self.waiting.append(item)
                item = self.inbox.get_nowait()
        except queue.Empty:
            return True

    def _drop_cancelled(self) -> None:
        for req in [r for r in self.waiting if r.cancelled]:
            self.waiting.remove(req)
            self._left_queue()
        if self.admitting is not None and self.admitting.cancelled:
            self.admitting = None
        for i in reversed(range(len(self.running))):
            if self.running[i].cancelled:
                self._leave(i)

    def _left_queue(self) -> None:
        with self.lock:
            self.n_waiting -= 1

    def _leave(self, i: int) -> None:
        """Take running[i] out; the last running request moves into its slot, and the one being admitted down."""
        last = len(self.running) - 1
        if i != last:
            self.decoder.move(last, i, self.running[last].length)
            self.running[i] = self.running[last]
        self.running.pop()
        if self.admitting is not None:
            self.decoder.move(last + 1, last, self.admitting.fed)

    def _turn(self) -> None:
        """One forward: a decode token for every running request and, in the same forward, up to `chunk`
        prompt tokens of requests being admitted (their weights are read once for all of them)."""
        segments = self._plan()
        if not self.running and not segments:
            return
        t = time.perf_counter()
        running = list(self.running)
        dec, seg = self.decoder.step([r.generated[-1] for r in running], [r.length - 1 for r in running],
                                     [(slot, piece, start) for _, slot, piece, start in segments])
        keep = [self._next(r, dec[i:i + 1]) for i, r in enumerate(running)]
        if running and self.on_step is not None:
            self.on_step(len(running), time.perf_counter() - t)
        for i, (req, _, piece, start) in enumerate(segments):
            req.fed = start + len(piece)
            if req.fed < len(req.prompt):
                continue  # a prompt longer than a chunk: its next chunk next turn
            if req is self.admitting:
                self.admitting = None
            self.running.append(req)  # in the slot it was fed into: its index in running
            keep.append(self._next(req, seg[i:i + 1]))
        for i in reversed(range(len(keep))):
            if not keep[i]:
                self._leave(i)

    def _plan(self) -> list[tuple[Request, int, list[int], int]]:
        """The prompt tokens to feed this turn, as (request, slot, tokens, start): the next chunk of the prompt
        being admitted (one longer than a chunk), or whole short prompts of waiting requests, as many as fit
        in `chunk` tokens and the free slots."""
        rows = len(self.running)
        if self.admitting is not None:
            req = self.admitting
            return [(req, rows, req.prompt[req.fed: req.fed + self.chunk], req.fed)]
        plan: list[tuple[Request, int, list[int], int]] = []
        budget = self.chunk
        while self.waiting and rows + len(plan) < self.slots:
            n = len(self.waiting[0].prompt)
            if n > self.chunk:
                if plan:
                    break
                req = self.admitting = self._take()
                return [(req, rows, req.prompt[: self.chunk], 0)]
            if n > budget:
                break
            req = self._take()
            budget -= n
            plan.append((req, rows + len(plan), req.prompt, 0))
        return plan

    def _take(self) -> Request:
        req = self.waiting.popleft()
        self._left_queue()
        req.text = TextStream(self.tokenizer, req.cfg.stop)
        if req.cfg.temperature > 0:
            req.generator = torch.Generator(device=self.decoder.embed.device)
            req.generator.manual_seed(req.cfg.seed if req.cfg.seed is not None else torch.seed())
        if req.cfg.repetition_penalty != 1.0:
            req.seen = torch.tensor([req.prompt], device=self.decoder.embed.device)
        return req

    def _next(self, req: Request, logits: torch.Tensor) -> bool:
        """Sample and hand out req's next token; False when the request has ended."""
        try:
            return self._sample(req, logits)
        except Exception as e:  # noqa: BLE001 - one request's failure (a constraint, a sink) ends only that one
            req.sink("error", e)
            return False

    def _sample(self, req: Request, logits: torch.Tensor) -> bool:
        cfg = req.cfg
        if cfg.repetition_penalty != 1.0:
            logits = _apply_penalty(logits, req.seen, cfg.repetition_penalty)
        if req.constraint is not None:
            token = req.constraint.choose(logits, req.generated)
        else:
            token = int(pick_token(logits, cfg, req.generator))
        if token in self.stop_ids:
            return self._end(req, "stop")
        req.generated.append(token)
        if req.seen is not None:
            req.seen = torch.cat([req.seen, req.seen.new_tensor([[token]])], dim=1)
        piece, stopped = req.text.push(token)
        if piece:
            req.sink("text", piece)
        if stopped:
            return self._end(req, "stop", flush=False)
        if len(req.generated) >= cfg.max_new_tokens or req.length >= self.context:
            return self._end(req, "length")
        return True

    def _end(self, req: Request, finish: str, flush: bool = True) -> bool:
        piece = req.text.flush() if flush else ""
        if piece:
            req.sink("text", piece)
        req.sink("end", finish)
        return False


def batchable(model) -> bool:
    from pocketlm.inference.fastpath import unsupported_reason
    return unsupported_reason(model) is None
