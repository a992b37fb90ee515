"""A small real model for the GGUF export tests: a pocketlm tokenizer and a briefly trained nano-1m.

Built once per session (250 AdamW steps, ~20 s on two idle CPU cores). The tokenizer learns from the
whole shop corpus; the model trains on its first 10,000 characters, which it nearly memorises, so
its greedy continuations of those sentences are confident enough to compare transformers and
llama.cpp token for token (an under-trained model has near-ties that q8_0 rounding flips).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VOCAB = 1024
SEQ = 64
BATCH = 16
STEPS = 250
LR = 3e-3
MODEL_CHARS = 10_000


def _corpus() -> str | None:
    shop = REPO / "examples" / "shop"
    files = (sorted(shop.glob("*.md")) + sorted(shop.glob("*.jsonl"))) if shop.is_dir() else []
    if files:
        return "\n\n".join(f.read_text(encoding="utf-8") for f in files)
    stories = REPO.parent / "shared" / "data" / "tinystories" / "train.txt"
    if stories.exists():
        with open(stories, encoding="utf-8", errors="ignore") as f:
            return f.read(300_000)
    return None


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """These models are tiny: one thread is as fast, and on shared cores a second one mostly spins."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def corpus() -> str:
    text = _corpus()
    if not text:
        pytest.skip("no training text (examples/shop/*.md|*.jsonl or ../shared/data/tinystories/train.txt)")
    return text


@pytest.fixture(scope="session")
def model_text(corpus) -> str:
    """The part of the corpus the model trains on."""
    return corpus[:MODEL_CHARS]


def build_tiny_model(out_dir: Path, tokenizer_text: str, model_text: str, *, steps: int = STEPS,
                     batch: int = BATCH, seq: int = SEQ, lr: float = LR) -> tuple[Path, float]:
    """Train a pocketlm tokenizer and a nano-1m Llama; save them to `out_dir`. Returns (dir, last loss)."""
    import torch

    from pocketlm.data.tokenizer import encode_document, train_tokenizer

    tok = train_tokenizer([d for d in tokenizer_text.split("\n\n") if d.strip()], VOCAB)
    ids: list[int] = []
    for doc in model_text.split("\n\n"):
        if doc.strip():
            ids += encode_document(tok, doc)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on shared cores, a second thread mostly spins waiting for the first
    try:
        return _train(tok, torch.tensor(ids, dtype=torch.long), out_dir, steps, batch, seq, lr)
    finally:
        torch.set_num_threads(threads)


def _train(tok, data, out_dir: Path, steps: int, batch: int, seq: int, lr: float) -> tuple[Path, float]:
    import torch
    from transformers import LlamaForCausalLM

    from pocketlm.data.tokenizer import stop_token_ids
    from pocketlm.model.io import save_model
    from pocketlm.model.presets import get_preset, llama_config

    torch.manual_seed(0)
    config = llama_config(get_preset("nano-1m"), len(tok), context=256, bos_token_id=tok.bos_token_id,
                          eos_token_id=stop_token_ids(tok), pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(config)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(0)
    for step in range(steps):
        for g in opt.param_groups:  # 20 warm-up steps, then linear decay to 10%
            g["lr"] = lr * min(1.0, (step + 1) / 20) * (0.1 + 0.9 * (1 - step / steps))
        starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=gen)
        x = torch.stack([data[s:s + seq] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    return save_model(model, tok, out_dir), float(loss.item())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, corpus, model_text) -> Path:
    """RUN/model: a trained model directory inside a run directory named 'tiny-run'."""
    t0 = time.perf_counter()
    out, loss = build_tiny_model(tmp_path_factory.mktemp("gguf") / "tiny-run" / "model", corpus, model_text)
    print(f"\n[tiny model: {STEPS} steps, last loss {loss:.3f}, built in {time.perf_counter() - t0:.1f}s]")
    return out


@pytest.fixture(scope="session")
def gguf_files(tiny_model_dir, tmp_path_factory) -> dict[str, dict]:
    """The tiny model exported once per quantisation (from its run directory): {quant: summary}."""
    from pocketlm.export.gguf import export_gguf

    out = tmp_path_factory.mktemp("gguf-files")
    files = {q: export_gguf(tiny_model_dir.parent, out, q) for q in ("f32", "f16", "q8_0")}
    sizes = ", ".join(f"{q} {info['bytes'] / 1e6:.2f} MB" for q, info in files.items())
    print(f"\n[gguf sizes: {sizes}]")
    return files


@pytest.fixture(scope="session")
def corpus_prompts(model_text) -> list[str]:
    """30 prompts: the first 8 words of lines spread over the model's training text."""
    lines = [ln.strip() for ln in model_text.split("\n") if len(ln.split()) >= 10]
    step = max(1, len(lines) // 30)
    return [" ".join(ln.split()[:8]) for ln in lines[::step]][:30]


@pytest.fixture(scope="session")
def retokenize():
    """A function replacing a model directory's tokenizer by one with another pre-tokenizer."""
    return _retokenize


def _retokenize(model_dir: Path, pre_tokenizer, *, ignore_merges: bool = False, text: str) -> None:
    """Replace the model's tokenizer by one with another pre-tokenizer (same size and specials)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from pocketlm.data.tokenizer import BOS, SPECIAL_TOKENS, wrap

    old = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=old.get_vocab_size(), special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([text], trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, 0)])
    assert tok.get_vocab_size() <= old.get_vocab_size()
    wrap(tok).save_pretrained(str(model_dir))
