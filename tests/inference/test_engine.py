"""Generation on a real trained model: parity with transformers, sampling controls, stop strings, chat."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from pocketlm.data.tokenizer import stop_token_ids
from pocketlm.inference.engine import SamplingConfig, generate_ids, generate_text, stream_text
from pocketlm.model.io import load_model
from pocketlm.serve.chat import fit_conversation

PROMPTS = ["Question: What time do you open on Saturdays?\nAnswer:", "Question: Is shipping free?\nAnswer:",
           "Returns", "The Tidewater kettle", "Harbor & Pine"]


def test_greedy_matches_transformers_generate(tiny_run):
    model, tok = load_model(tiny_run)
    for prompt in PROMPTS:
        ids = tok.encode(prompt)
        ours = list(generate_ids(model, ids, SamplingConfig(max_new_tokens=20, temperature=0)))
        with torch.no_grad():
            ref = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False,
                                 eos_token_id=None, pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
        assert ours == ref[: len(ours)] and len(ours) == 20


def test_sampling_is_seeded_and_top_k_1_is_greedy(tiny_run):
    model, tok = load_model(tiny_run)
    ids = tok.encode("Question: Do you price match?\nAnswer:")
    cfg = SamplingConfig(max_new_tokens=24, temperature=1.2, top_k=0, top_p=1.0, seed=7)
    a = list(generate_ids(model, ids, cfg))
    b = list(generate_ids(model, ids, cfg))
    c = list(generate_ids(model, ids, SamplingConfig(max_new_tokens=24, temperature=1.2, top_k=0, top_p=1.0,
                                                     seed=8)))
    assert a == b and a != c
    greedy = list(generate_ids(model, ids, SamplingConfig(max_new_tokens=24, temperature=0)))
    assert list(generate_ids(model, ids, SamplingConfig(max_new_tokens=24, temperature=1.0, top_k=1, seed=1))) \
        == greedy
    assert list(generate_ids(model, ids, SamplingConfig(max_new_tokens=24, temperature=1.0, top_p=1e-6,
                                                        top_k=0, seed=3))) == greedy


def test_repetition_penalty_reduces_repeats(tiny_run):
    model, tok = load_model(tiny_run)
    ids = tok.encode("Question: What are your opening hours?\nAnswer:")
    plain = list(generate_ids(model, ids, SamplingConfig(max_new_tokens=60, temperature=0)))
    penal = list(generate_ids(model, ids, SamplingConfig(max_new_tokens=60, temperature=0, repetition_penalty=1.5)))
    assert len(set(penal)) / len(penal) >= len(set(plain)) / len(plain)
    assert penal != plain


def test_stop_strings_and_streaming(tiny_run):
    model, tok = load_model(tiny_run)
    cfg = SamplingConfig(max_new_tokens=60, temperature=0)
    full = generate_text(model, tok, PROMPTS[0], cfg, stop_token_ids(tok))
    assert len(full) > 10
    stop = full[5:9]
    cut = generate_text(model, tok, PROMPTS[0], SamplingConfig(max_new_tokens=60, temperature=0, stop=[stop]),
                        stop_token_ids(tok))
    assert cut == full[: full.index(stop)]
    pieces = list(stream_text(model, tok, tok.encode(PROMPTS[0]), cfg, stop_token_ids(tok)))
    assert len(pieces) > 3 and "".join(pieces) == full


def test_chat_keeps_within_context_and_says_what_it_dropped(tiny_run):
    _, tok = load_model(tiny_run)
    messages = [{"role": "system", "content": "Be brief."}]
    for i in range(30):
        messages += [{"role": "user", "content": f"Question number {i} about the returns policy?"},
                     {"role": "assistant", "content": f"Answer number {i}: thirty days."}]
    messages.append({"role": "user", "content": "Last question?"})
    ids, dropped = fit_conversation(tok, messages, context=200, reserve=40)
    assert len(ids) + 40 <= 200 and dropped > 0 and dropped % 2 == 0
    text = tok.decode(ids)
    assert "Be brief." in text and "Last question?" in text and "number 0 " not in text


def test_cli_chat_and_generate(tiny_run):
    out = subprocess.run([sys.executable, "-m", "pocketlm", "chat", str(tiny_run), "--temperature", "0",
                          "--max-new-tokens", "8"], input="When do you open?\n/reset\nHi\n/exit\n",
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("model> ") == 2 and "conversation cleared" in out.stderr
    assert "you> When do you open?\n" in out.stdout  # piped input is echoed into the transcript
    gen = subprocess.run([sys.executable, "-m", "pocketlm", "generate", str(tiny_run), "--prompt", "Returns",
                          "--temperature", "0", "--max-new-tokens", "12"], capture_output=True, text=True, timeout=120)
    assert gen.returncode == 0 and gen.stdout.startswith("Returns") and len(gen.stdout) > 15


def test_cli_eval_json(tiny_run, shop_data):
    out = subprocess.run([sys.executable, "-m", "pocketlm", "eval", str(tiny_run), "--data", str(shop_data), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    meta = json.loads((shop_data / "meta.json").read_text())
    assert r["tokens"] == meta["splits"]["val"]["tokens"] - 1
    import math
    assert math.isclose(r["perplexity"], math.exp(r["loss"]), rel_tol=1e-3)
    assert math.isclose(r["bits_per_byte"], r["loss"] * r["tokens"] / math.log(2) / meta["splits"]["val"]["bytes"],
                        rel_tol=1e-3)
    assert r["parameters"] > 0 and r["file_bytes"] > 0 and r["decode_tokens_per_s"] > 0


def _target(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """The distribution a sampler must draw from, written the slow, obvious way."""
    p = (logits[0] / temperature).softmax(-1)
    if top_k:
        keep = p >= p.topk(top_k).values[-1]
        p = torch.where(keep, p, 0.0) / (p * keep).sum()
    if top_p < 1:
        order = p.argsort(descending=True)
        before = p[order].cumsum(0) - p[order]
        drop = torch.zeros_like(p, dtype=torch.bool)
        drop[order] = before > top_p
        p = torch.where(drop, 0.0, p)
        p = p / p.sum()
    return p


def test_sampler_draws_from_the_top_k_top_p_distribution():
    from pocketlm.inference.engine import pick_token
    logits = torch.linspace(3.0, -3.0, 40)[None] + 0.1 * torch.sin(torch.arange(40.0))[None]
    n = 20000
    for temperature, top_k, top_p in [(1.0, 0, 1.0), (0.7, 8, 1.0), (1.3, 0, 0.8), (1.0, 12, 0.7)]:
        want = _target(logits, temperature, top_k, top_p)
        g = torch.Generator().manual_seed(0)
        cfg = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)
        got = torch.bincount(torch.cat([pick_token(logits, cfg, g) for _ in range(n)]).flatten(), minlength=40) / n
        assert (got[want == 0] == 0).all()  # never a token outside top-k / the nucleus
        sd = (want * (1 - want) / n).sqrt()
        assert ((got - want).abs() <= 5 * sd + 1e-9).all(), (temperature, top_k, top_p)
    # many rows at once draw each row from its own distribution
    rows = torch.stack([logits[0], logits[0].flip(0)])
    g = torch.Generator().manual_seed(1)
    picks = torch.cat([pick_token(rows, SamplingConfig(temperature=0.5, top_k=3), g) for _ in range(200)], dim=1)
    assert set(picks[0].tolist()) <= {0, 1, 2} and set(picks[1].tolist()) <= {37, 38, 39}
