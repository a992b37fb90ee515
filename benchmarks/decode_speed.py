"""Decode speed at batch 1: pocketlm generate (PyTorch) vs transformers generate() vs llama.cpp on the
exported GGUF (f16, q8_0), for a ~12M and a ~100M model, all in one run on the same machine.

Weights are random (speed does not depend on them); every engine produces exactly --tokens new tokens
after the same 16-token prompt, greedy, end-of-sequence ignored. pocketlm runs twice per precision: with
its lean Llama forward (inference/fastpath.py, the default) and with transformers' forward in the same loop
(POCKETLM_FASTPATH=0), so the gain of each part shows.

    python benchmarks/decode_speed.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, save_result, shared_data  # noqa: E402

MODELS = [("mini-12m", 4096), ("base-100m", 32000)]


def tokenizer_for(vocab: int, cache: Path):
    from pocketlm.data.tokenizer import load_tokenizer, train_tokenizer
    path = cache / f"tok-{vocab}"
    if (path / "tokenizer.json").exists():
        return load_tokenizer(path)
    data = shared_data()
    src = data / "python_docs" / "python311_docs.txt" if data else REPO / "examples" / "shop" / "handbook.md"
    text = src.read_text(encoding="utf-8")[:12_000_000]
    tok = train_tokenizer((text[i:i + 4000] for i in range(0, len(text), 4000)), vocab)
    tok.save_pretrained(path)
    return tok


def timed(fn, n_expected: int) -> float:
    fn(8)  # warm-up
    t0 = time.perf_counter()
    n = fn(n_expected)
    dt = time.perf_counter() - t0
    assert n == n_expected, (n, n_expected)
    return n / dt


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--cache", type=Path, default=REPO / "runs" / "bench")
    args = ap.parse_args()
    from transformers import LlamaForCausalLM

    from pocketlm.export.gguf import export_gguf
    from pocketlm.inference.engine import SamplingConfig, generate_ids
    from pocketlm.model.io import save_model
    from pocketlm.model.presets import get_preset, llama_config
    rows = []
    for preset, vocab in MODELS:
        tok = tokenizer_for(vocab, args.cache)
        torch.manual_seed(0)
        model = LlamaForCausalLM(llama_config(get_preset(preset), len(tok), context=1024)).eval()
        n_params = sum(p.numel() for p in model.parameters())
        prompt = tok.encode("def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number")[:16]
        result = {"model": preset, "parameters": n_params}

        def ours(n, m=model, prompt=prompt, fast=True):
            os.environ["POCKETLM_FASTPATH"] = "1" if fast else "0"
            try:
                return sum(1 for _ in generate_ids(m, prompt, SamplingConfig(max_new_tokens=n, temperature=0)))
            finally:
                os.environ.pop("POCKETLM_FASTPATH")

        def hf(n, m=model, prompt=prompt):
            with torch.inference_mode():
                out = m.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)
            return out.shape[1] - len(prompt)

        result["transformers_generate_fp32"] = timed(hf, args.tokens)
        result["pocketlm_fp32"] = timed(ours, args.tokens)
        result["pocketlm_fp32_hf_forward"] = timed(lambda n: ours(n, fast=False), args.tokens)
        bf16 = LlamaForCausalLM(model.config).eval()
        bf16.load_state_dict(model.state_dict())
        bf16 = bf16.to(torch.bfloat16)
        result["pocketlm_bf16"] = timed(lambda n, m=bf16: ours(n, m), args.tokens)
        result["pocketlm_bf16_hf_forward"] = timed(lambda n, m=bf16: ours(n, m, fast=False), args.tokens)
        result["transformers_generate_bf16"] = timed(lambda n, m=bf16: hf(n, m), args.tokens)
        try:
            from llama_cpp import Llama
        except ImportError:
            Llama = None
        if Llama is not None:
            with tempfile.TemporaryDirectory() as tmp:
                save_model(model, tok, Path(tmp) / "model")
                for quant in ("f16", "q8_0"):
                    gguf = Path(tmp) / f"m-{quant}.gguf"
                    export_gguf(Path(tmp) / "model", gguf, quant=quant)
                    llm = Llama(model_path=str(gguf), n_ctx=512, n_threads=torch.get_num_threads(), verbose=False)

                    def cpp(n, llm=llm, prompt=prompt):
                        llm.reset()
                        count = 0
                        for _ in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
                            count += 1
                            if count == n:
                                break
                        return count

                    result[f"llamacpp_{quant}"] = timed(cpp, args.tokens)
                    del llm
        result = {k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}
        best = max(result["pocketlm_fp32"], result["pocketlm_bf16"])
        result["pocketlm_best_vs_transformers"] = round(best / result["transformers_generate_fp32"], 2)
        print(json.dumps(result), flush=True)
        rows.append(result)
    save_result("decode_speed", {"machine": machine(), "new_tokens": args.tokens, "rows": rows})


if __name__ == "__main__":
    main()
