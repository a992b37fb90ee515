"""Exported GGUF files in llama.cpp (llama-cpp-python): tokenization and greedy parity with transformers.

Parity is counted per prompt as the length of the prefix where llama.cpp's greedy tokens equal
transformers' greedy `generate`, over N_NEW new tokens (neither side stops at EOS).
"""

from __future__ import annotations

import sys

import pytest
import torch

from pocketlm.errors import UserError

N_NEW = 24

# Varied text for tokenizer parity: spaces, newlines, digits, punctuation, accents, CJK, emoji, code.
TOKENIZE_PROMPTS = [
    "",
    "A",
    "Hello world",
    " leading space",
    "   three leading spaces",
    "trailing spaces   ",
    "   ",
    "line one\nline two",
    "\n\nblank lines\n\n\nend\n",
    "windows\r\nline endings\r\n",
    "tabs\tand\tmore\t\ttabs",
    "Numbers: 0 1 22 333 4444 55555 3.14159 1,000,000 2024-06-01",
    "Prices: $12.50, €9,99, £3 and 15% off!",
    "It's, we're, they'll, I'd, you've, she's — don't!",
    "ÇA COÛTE CHER: naïve café, résumé, Zürich, São Paulo",
    "日本語のテキストと中文混合",
    "emoji 🙂👍🏽 and ✓ ✗ ★",
    "Привет, мир! Ελληνικά κείμενο.",
    "mixed123abc ABC123 a1b2c3",
    "punctuation!!! ??? ... ,,, ;;; ::: ---",
    "(parentheses) [brackets] {braces} <angles>",
    "email@example.com https://example.com/path?q=1&r=2#frag",
    "snake_case_name camelCaseName kebab-case-name",
    "    indented code\n        more()\n",
    "x = [i**2 for i in range(10)]  # comment",
    "\"double\" 'single' `backtick`",
    "Our store hours are Monday to Friday 9 am – 7 pm.",
    '{"question": "Do you price match?", "answer": "Yes."}',
]

CHATML = "<|im_start|>user\nWhat time do you open?<|im_end|>\n<|im_start|>assistant\n"

# Prompts unlike the training text: the tiny model has near-ties there, which 8-bit rounding flips.
UNSEEN_PROMPTS = ["The kettle", "How do I", "If your lamp", "Email us at", "Shipping",
                  "Ça coûte 12,50 € — vraiment?", "Once upon a time", "1 2 3"]


@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed "
                                                   "(pip install 'pocketlm[llamacpp]')")


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    from pocketlm.model.io import load_model
    return load_model(tiny_model_dir)


@pytest.fixture(scope="module")
def hf_greedy(hf, corpus_prompts):
    """transformers' greedy continuation (N_NEW tokens, no EOS stop) of every prompt."""
    from transformers import GenerationConfig

    model, tok = hf
    cfg = GenerationConfig(do_sample=False, max_new_tokens=N_NEW, eos_token_id=[],
                           pad_token_id=tok.pad_token_id)
    out = {}
    for prompt in corpus_prompts + UNSEEN_PROMPTS:
        ids = tok.encode(prompt)
        with torch.no_grad():
            new = model.generate(torch.tensor([ids]), generation_config=cfg)[0, len(ids):]
        out[prompt] = (ids, new.tolist())
    return out


def _agreement(path, hf_greedy, prompts) -> tuple[int, int, int]:
    """(prompts matching all N_NEW tokens, matching prefix tokens, total tokens)."""
    from pocketlm.inference.llamacpp import greedy_token_ids

    exact = matched = 0
    for prompt in prompts:
        ids, want = hf_greedy[prompt]
        got = greedy_token_ids(path, ids, N_NEW, stop_ids=(), n_ctx=256, n_threads=1)
        assert len(got) == N_NEW
        k = next((i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b), N_NEW)
        matched += k
        exact += k == N_NEW
    return exact, matched, N_NEW * len(prompts)


def test_loads_in_llama_cpp(llama_cpp, gguf_files, hf):
    from pocketlm.inference.llamacpp import load_gguf

    _, tok = hf
    for info in gguf_files.values():
        llm = load_gguf(info["path"], n_ctx=256, n_threads=1)
        assert llm.n_vocab() == len(tok)
        assert llm.token_bos() == tok.bos_token_id and llm.token_eos() == tok.eos_token_id
        assert llm.metadata["general.architecture"] == "llama"


def test_tokenization_matches_transformers(llama_cpp, gguf_files, hf):
    from pocketlm.inference.llamacpp import tokenize_gguf

    _, tok = hf
    path = gguf_files["f32"]["path"]
    assert len(TOKENIZE_PROMPTS) >= 20
    for text in TOKENIZE_PROMPTS + [CHATML]:
        assert tokenize_gguf(path, text, n_ctx=256, n_threads=1) == tok.encode(text), text
        plain = tokenize_gguf(path, text, add_special=False, n_ctx=256, n_threads=1)
        assert plain == tok.encode(text, add_special_tokens=False)
    # without special parsing the markers are plain text, as with transformers' split_special_tokens
    plain = tokenize_gguf(path, CHATML, parse_special=False, n_ctx=256, n_threads=1)
    assert tok.convert_tokens_to_ids("<|im_start|>") not in plain


def test_detokenization_matches_transformers(llama_cpp, gguf_files, hf):
    from pocketlm.inference.llamacpp import load_gguf

    _, tok = hf
    llm = load_gguf(gguf_files["f32"]["path"], n_ctx=256, n_threads=1)
    for text in TOKENIZE_PROMPTS:
        ids = tok.encode(text, add_special_tokens=False)
        assert llm.detokenize(ids).decode("utf-8") == tok.decode(ids) == text


def test_greedy_f32_matches_transformers(llama_cpp, gguf_files, hf_greedy, corpus_prompts):
    path = gguf_files["f32"]["path"]
    exact, matched, total = _agreement(path, hf_greedy, corpus_prompts)
    u_exact, u_matched, u_total = _agreement(path, hf_greedy, UNSEEN_PROMPTS)
    print(f"\n[f32: {exact}/{len(corpus_prompts)} prompts identical, {matched}/{total} tokens; "
          f"unseen prompts: {u_exact}/{len(UNSEEN_PROMPTS)} identical, {u_matched}/{u_total} tokens]")
    assert len(corpus_prompts) >= 20
    assert exact == len(corpus_prompts)
    # unseen text has near-ties (< 0.01 logit apart) that float summation order alone may flip
    assert u_matched >= 0.9 * u_total


def test_greedy_f16_matches_transformers(llama_cpp, gguf_files, hf_greedy, corpus_prompts):
    exact, matched, total = _agreement(gguf_files["f16"]["path"], hf_greedy, corpus_prompts)
    print(f"\n[f16: {exact}/{len(corpus_prompts)} prompts identical, {matched}/{total} tokens]")
    assert matched >= 0.98 * total


def test_greedy_q8_0_matches_transformers(llama_cpp, gguf_files, hf_greedy, corpus_prompts):
    exact, matched, total = _agreement(gguf_files["q8_0"]["path"], hf_greedy, corpus_prompts)
    u_exact, u_matched, u_total = _agreement(gguf_files["q8_0"]["path"], hf_greedy, UNSEEN_PROMPTS)
    print(f"\n[q8_0: {exact}/{len(corpus_prompts)} prompts identical, {matched}/{total} tokens; "
          f"unseen prompts (not asserted): {u_matched}/{u_total} tokens]")
    assert matched >= 0.95 * total


# ------------------------------------------------------------------------------------- generate_gguf


def _hf_greedy_text(hf, prompt: str, n: int) -> str:
    """transformers' greedy continuation, stopped at EOS/<|im_end|> like llama.cpp, as text."""
    from pocketlm.data.tokenizer import stop_token_ids

    model, tok = hf
    ids = tok.encode(prompt)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=n,
                             eos_token_id=stop_token_ids(tok), pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, len(ids):].tolist(), skip_special_tokens=True)


def test_generate_greedy_text(llama_cpp, gguf_files, hf, corpus_prompts):
    from pocketlm.inference.llamacpp import generate_gguf

    path = gguf_files["f32"]["path"]
    for prompt in corpus_prompts[:5]:
        text = generate_gguf(path, prompt, max_new_tokens=N_NEW, temperature=0, n_ctx=256, n_threads=1)
        assert text == _hf_greedy_text(hf, prompt, N_NEW)
        pieces = list(generate_gguf(path, prompt, max_new_tokens=N_NEW, temperature=0, stream=True, n_ctx=256,
                                    n_threads=1))
        assert "".join(pieces) == text


def test_generate_stop_and_seed(llama_cpp, gguf_files, corpus_prompts):
    from pocketlm.inference.llamacpp import generate_gguf

    path = gguf_files["q8_0"]["path"]
    prompt = corpus_prompts[0]
    opts = dict(n_ctx=256, n_threads=1)
    full = generate_gguf(path, prompt, max_new_tokens=N_NEW, temperature=0, **opts)
    stop = full.strip().split()[1]
    cut = generate_gguf(path, prompt, max_new_tokens=N_NEW, temperature=0, stop=[stop], **opts)
    assert full.startswith(cut) and stop not in cut and len(cut) < len(full)
    a = generate_gguf(path, prompt, max_new_tokens=16, temperature=1.0, top_k=0, top_p=1.0, seed=7, **opts)
    b = generate_gguf(path, prompt, max_new_tokens=16, temperature=1.0, top_k=0, top_p=1.0, seed=7, **opts)
    assert a == b


def test_generate_errors(llama_cpp, gguf_files, tmp_path):
    from pocketlm.inference.llamacpp import generate_gguf

    path = gguf_files["q8_0"]["path"]
    with pytest.raises(UserError, match="temperature"):
        generate_gguf(path, "hi", temperature=-1)
    with pytest.raises(UserError, match="no such GGUF file"):
        generate_gguf(tmp_path / "missing.gguf", "hi")
    with pytest.raises(UserError, match="context window of 256"):
        generate_gguf(path, "hi", max_new_tokens=400, n_ctx=256, n_threads=1)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(UserError, match="cannot load it"):
        generate_gguf(bad, "hi")


def test_chat_template_renders_like_transformers(llama_cpp, gguf_files, hf):
    from pocketlm.inference.llamacpp import render_chat, tokenize_gguf

    _, tok = hf
    path = gguf_files["f16"]["path"]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Opening hours?"}]
    prompt = render_chat(path, messages)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    want = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    want = want["input_ids"] if hasattr(want, "keys") else want
    assert tokenize_gguf(path, prompt, n_ctx=256, n_threads=1) == list(want)  # one BOS, added by llama.cpp


def test_llama_cpp_and_transformers_chats_drop_the_same_turns(llama_cpp, gguf_files, hf):
    """fit_chat (llama.cpp) and fit_conversation (transformers) share one rule (inference/window.py)."""
    from pocketlm.inference.llamacpp import fit_chat, load_gguf, tokenize_gguf
    from pocketlm.serve.chat import fit_conversation

    _, tok = hf
    llm = load_gguf(gguf_files["f16"]["path"], n_ctx=256, n_threads=1)
    messages = [{"role": "system", "content": "Be brief."}]
    for i in range(12):
        messages += [{"role": "user", "content": f"Question number {i} about the returns policy?"},
                     {"role": "assistant", "content": f"Answer number {i}: thirty days."}]
    messages.append({"role": "user", "content": "Last question?"})
    prompt, dropped = fit_chat(llm, messages, context=160, reserve=40)
    ids, dropped_hf = fit_conversation(tok, messages, context=160, reserve=40)
    assert dropped == dropped_hf > 0 and dropped % 2 == 0
    assert tokenize_gguf(llm, prompt) == ids and len(ids) + 40 <= 160
    assert "Be brief." in prompt and "Last question?" in prompt and "number 0 " not in prompt
    huge = [{"role": "user", "content": "word " * 400}]
    with pytest.raises(UserError, match="do not fit in the context window of 160"):
        fit_chat(llm, huge, context=160, reserve=40)
    assert len(fit_conversation(tok, huge, context=160, reserve=40)[0]) == 120  # transformers keeps the end


def test_chat_loop(llama_cpp, gguf_files, monkeypatch, capsys):
    from pocketlm.inference.engine import SamplingConfig
    from pocketlm.serve.chat import chat_gguf

    answers = iter(["What time do you open?", "/reset", "", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    cfg = SamplingConfig(max_new_tokens=12, temperature=0)
    chat_gguf(gguf_files["q8_0"]["path"], cfg, system="Be brief.", n_ctx=256, n_threads=1)
    out = capsys.readouterr()
    assert out.out.count("model> ") == 1 and "(conversation cleared)" in out.err


# ------------------------------------------------------------------------- other pre-tokenizers


@pytest.mark.parametrize("kind", ["smollm", "llama-bpe", "qwen2"])
def test_foreign_pre_tokenizers(llama_cpp, kind, tiny_model_dir, model_text, retokenize, tmp_path):
    """SmolLM's (digits split, then GPT-2), Llama 3's and Qwen2's pre-tokenizers export under llama.cpp's
    names and tokenize the same in llama.cpp as in transformers."""
    import shutil

    from tokenizers import Regex, pre_tokenizers

    from pocketlm.data.tokenizer import load_tokenizer
    from pocketlm.export.gguf import LLAMA3_REGEX, QWEN2_REGEX, export_gguf
    from pocketlm.inference.llamacpp import tokenize_gguf, unload

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    if kind == "smollm":
        pre = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                       pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
        retokenize(model_dir, pre, text=model_text)
    else:
        regex = LLAMA3_REGEX if kind == "llama-bpe" else QWEN2_REGEX
        pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), behavior="isolated"),
                                       pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        retokenize(model_dir, pre, ignore_merges=kind == "llama-bpe", text=model_text)
    info = export_gguf(model_dir, tmp_path / "m.gguf", quant="q8_0")
    assert info["tokenizer_pre"] == kind
    tok = load_tokenizer(model_dir)
    try:
        for text in TOKENIZE_PROMPTS:
            assert tokenize_gguf(info["path"], text, n_ctx=256, n_threads=1) == tok.encode(text), text
    finally:
        unload()


def test_missing_llama_cpp_is_a_user_error(monkeypatch, tmp_path):
    from pocketlm.inference import llamacpp

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` fail
    with pytest.raises(UserError, match=r"pip install 'pocketlm\[llamacpp\]'"):
        llamacpp.generate_gguf(tmp_path / "m.gguf", "hi", temperature=0)
