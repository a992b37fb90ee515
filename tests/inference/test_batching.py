"""Continuous batching gives each request what the one-at-a-time engine gives it, whoever else is running."""

from __future__ import annotations

import queue
import time

import pytest
import torch

from pocketlm.inference.batching import BatchEngine, Busy, Closed
from pocketlm.inference.engine import SamplingConfig, generate_ids, stream_text
from pocketlm.inference.slots import SlotDecoder


@pytest.fixture(scope="module")
def tiny(tiny_run):
    from pocketlm.data.tokenizer import stop_token_ids
    from pocketlm.model.io import load_model
    model, tokenizer = load_model(str(tiny_run), dtype=torch.float32, device=torch.device("cpu"))
    return model.eval(), tokenizer, stop_token_ids(tokenizer)


class Collect:
    """A request's sink: the pieces of text, then how it ended."""

    def __init__(self):
        self.items: queue.Queue = queue.Queue()

    def __call__(self, kind, value):
        self.items.put((kind, value))

    def result(self, timeout: float = 60) -> tuple[str, str]:
        text = ""
        while True:
            kind, value = self.items.get(timeout=timeout)
            if kind == "text":
                text += value
            elif kind == "end":
                return text, value
            else:
                raise value


def prompts(tokenizer) -> list[list[int]]:
    texts = ["Do you price match?", "Where is my order", "How do I return a jacket that does not fit me at all?",
             "hi", "Can I pay with PayPal or a gift card, and when is it charged?"]
    return [tokenizer.encode(t) for t in texts]


def one_at_a_time(model, tokenizer, stop_ids, prompt, cfg) -> tuple[str, str]:
    stats: dict = {}
    text = "".join(stream_text(model, tokenizer, prompt, cfg, stop_ids, stats=stats))
    return text, stats["finish"]


def test_slot_decoder_matches_the_batch_one_engine(tiny):
    model, tokenizer, _ = tiny
    ps = prompts(tokenizer)
    want = [list(generate_ids(model, p, SamplingConfig(max_new_tokens=12, temperature=0))) for p in ps]
    d = SlotDecoder(model, slots=len(ps), max_len=model.config.max_position_embeddings, initial=8)
    tokens, positions = [], []
    for slot, p in enumerate(ps):  # prompts fed in chunks of 3: later chunks attend to the cached prefix
        for start in range(0, len(p), 3):
            logits = d.prefill(slot, p[start:start + 3], start)
        tokens.append([int(logits.argmax())])
        positions.append(len(p))
    for _ in range(11):
        logits = d.decode([t[-1] for t in tokens], positions)
        for t, nxt in zip(tokens, logits.argmax(-1).tolist(), strict=True):
            t.append(nxt)
        positions = [p + 1 for p in positions]
    for got, ref in zip(tokens, want, strict=True):
        assert got[:len(ref)] == ref  # the engine stops early at a stop token; the raw decoder does not
    assert d.capacity >= max(positions)
    d.reset()
    assert d.capacity == 8


def test_prompts_fed_beside_decoding_match_separate_forwards(tiny):
    """`step`: decode tokens of running sequences and prompt chunks of others in one forward give the logits
    and the cache of separate decode and prefill calls."""
    model, tokenizer, _ = tiny
    ps = prompts(tokenizer)
    max_len = model.config.max_position_embeddings

    def running_pair():  # two sequences decoding, in slots 0 and 1
        d = SlotDecoder(model, slots=len(ps) + 2, max_len=max_len, initial=8)
        firsts = [int(d.prefill(slot, p, 0).argmax()) for slot, p in enumerate(ps[:2])]
        return d, firsts, [len(p) for p in ps[:2]]

    ref, firsts, positions = running_pair()
    want_dec = ref.decode(firsts, positions)
    want_seg = [ref.prefill(2, ps[2], 0), ref.prefill(3, ps[3], 0), ref.prefill(4, ps[4][:3], 0)]
    want_seg.append(ref.prefill(4, ps[4][3:], 3))  # a later chunk of a long prompt attends to its prefix

    got, firsts, positions = running_pair()
    dec, seg = got.step(firsts, positions, [(2, ps[2], 0), (3, ps[3], 0), (4, ps[4][:3], 0)])
    _, last = got.step([], [], [(4, ps[4][3:], 3)])
    torch.testing.assert_close(dec, want_dec, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.cat([seg, last]), torch.cat(want_seg), rtol=1e-4, atol=1e-4)
    for k, ref_k in zip(got.k, ref.k, strict=True):
        for slot, length in [(0, positions[0] + 1), (1, positions[1] + 1), (2, len(ps[2])), (3, len(ps[3])),
                             (4, len(ps[4]))]:
            torch.testing.assert_close(k[slot, :, :length], ref_k[slot, :, :length], rtol=1e-4, atol=1e-4)
    # with nothing running, several prompts go in one forward too
    alone = SlotDecoder(model, slots=len(ps), max_len=max_len, initial=8)
    none, many = alone.step([], [], [(slot, p, 0) for slot, p in enumerate(ps)])
    assert none is None
    torch.testing.assert_close(many, torch.cat([ref.prefill(0, p, 0) for p in ps]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("chunk", [4, 256], ids=["long-prompts-in-chunks", "short-prompts-together"])
def test_batched_greedy_equals_one_at_a_time(tiny, chunk):
    model, tokenizer, stop_ids = tiny
    engine = BatchEngine(model, tokenizer, stop_ids, slots=3, chunk=chunk)  # more requests than slots: some wait
    try:
        cfgs = [SamplingConfig(max_new_tokens=n, temperature=0) for n in (20, 7, 30, 1, 15)]
        sinks = [Collect() for _ in cfgs]
        for p, cfg, sink in zip(prompts(tokenizer), cfgs, sinks, strict=True):
            engine.submit(p, cfg, sink)
        for p, cfg, sink in zip(prompts(tokenizer), cfgs, sinks, strict=True):
            assert sink.result() == one_at_a_time(model, tokenizer, stop_ids, p, cfg)
        # a request that joins while another is halfway gives the same text too
        long, late = Collect(), Collect()
        p0, p1 = prompts(tokenizer)[2], prompts(tokenizer)[0]
        c0, c1 = SamplingConfig(max_new_tokens=40, temperature=0), SamplingConfig(max_new_tokens=25, temperature=0)
        engine.submit(p0, c0, long)
        long.items.put(long.items.get(timeout=60))  # wait for its first piece, then put it back
        engine.submit(p1, c1, late)
        assert late.result() == one_at_a_time(model, tokenizer, stop_ids, p1, c1)
        assert long.result() == one_at_a_time(model, tokenizer, stop_ids, p0, c0)
        deadline = time.monotonic() + 10
        while engine.running_count() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.decoder.capacity == engine.decoder.initial  # idle: the cache memory is given back
    finally:
        engine.close()


def test_sampling_with_a_seed_and_stop_strings_match_the_engine(tiny):
    model, tokenizer, stop_ids = tiny
    engine = BatchEngine(model, tokenizer, stop_ids, slots=4)
    try:
        cfgs = [SamplingConfig(max_new_tokens=30, temperature=0.9, top_p=0.9, seed=s) for s in (1, 2, 3)]
        cfgs.append(SamplingConfig(max_new_tokens=30, temperature=0, stop=("e",)))
        sinks = [Collect() for _ in cfgs]
        p = prompts(tokenizer)[0]
        for cfg, sink in zip(cfgs, sinks, strict=True):
            engine.submit(p, cfg, sink)
        results = [sink.result() for sink in sinks]
        assert results == [one_at_a_time(model, tokenizer, stop_ids, p, cfg) for cfg in cfgs]
        assert len({text for text, _ in results[:3]}) > 1  # different seeds, different samples
        assert "e" not in results[3][0]
    finally:
        engine.close()


def test_cancel_frees_the_slot_and_a_full_queue_is_refused(tiny):
    model, tokenizer, stop_ids = tiny
    engine = BatchEngine(model, tokenizer, stop_ids, slots=1, max_waiting=1)
    try:
        p = prompts(tokenizer)[0]
        first, second = Collect(), Collect()
        running = engine.submit(p, SamplingConfig(max_new_tokens=100, temperature=0), first)
        first.items.get(timeout=60)  # it runs
        engine.submit(p, SamplingConfig(max_new_tokens=5, temperature=0), second)  # it waits
        with pytest.raises(Busy):
            engine.submit(p, SamplingConfig(max_new_tokens=5), Collect())
        with pytest.raises(ValueError, match="empty"):  # refused at the door, never reaching the model thread
            engine.submit([], SamplingConfig(max_new_tokens=5), Collect())
        running.cancel()  # the client went away: the waiting request gets the slot
        assert second.result(timeout=30) == one_at_a_time(model, tokenizer, stop_ids, p,
                                                          SamplingConfig(max_new_tokens=5, temperature=0))
    finally:
        engine.close()
    with pytest.raises(Closed):
        engine.submit(p, SamplingConfig(max_new_tokens=5), Collect())


def test_a_failing_request_ends_alone(tiny):
    model, tokenizer, stop_ids = tiny

    class Broken:
        def choose(self, logits, generated):
            raise RuntimeError("broken constraint")

    engine = BatchEngine(model, tokenizer, stop_ids, slots=2)
    try:
        p = prompts(tokenizer)[0]
        bad, good = Collect(), Collect()
        engine.submit(p, SamplingConfig(max_new_tokens=10, temperature=0), bad, constraint=Broken())
        engine.submit(p, SamplingConfig(max_new_tokens=10, temperature=0), good)
        with pytest.raises(RuntimeError, match="broken constraint"):
            bad.result()
        assert good.result() == one_at_a_time(model, tokenizer, stop_ids, p,
                                              SamplingConfig(max_new_tokens=10, temperature=0))
    finally:
        engine.close()
