"""`pocketlm finetune`: supervised fine-tuning (full or LoRA) of any causal LM on chat or prompt/completion data.

The base can be a Hugging Face directory, a pocketlm run, a GGUF file (dequantized through
transformers' GGUF loader and kept as `RUN/base/`) or, with network access, a hub id. Training runs
through the same loop as pretraining; only the batches and the loss mask differ.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import shutil
import sys
import warnings
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pocketlm import runs
from pocketlm.data.augment import augment
from pocketlm.data.sft import SftFormat, encode_conversation, load_examples, pack
from pocketlm.data.tokenizer import load_tokenizer
from pocketlm.errors import UserError
from pocketlm.model.io import gguf_to_hf, resolve_model_dir, save_model
from pocketlm.retrieval.grounding import ground_conversations, reference_targets
from pocketlm.train import distributed, session
from pocketlm.train.loop import BEST_INFO, Task, train
from pocketlm.train.objectives import labelled_lm_loss, mean_loss
from pocketlm.train.options import FinetuneConfig


def load_base(base: str, run_dir: Path, local_name: str = "base"):
    """(model, tokenizer, base_dir) where base_dir is a local Hugging Face directory of the base (a GGUF file or
    a hub id is kept as RUN/`local_name`)."""
    path = Path(base)
    if path.suffix.lower() == ".gguf":
        path = gguf_to_hf(path, run_dir / local_name)
    if path.exists():
        model_dir = resolve_model_dir(path.resolve())
        if (model_dir / "adapter_config.json").exists():
            raise UserError(f"{model_dir}: is a LoRA adapter; fold it into its base first with `pocketlm merge`")
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, local_files_only=True,
                                                     attn_implementation="sdpa")
        return model, load_tokenizer(model_dir), model_dir
    if "/" in base and not base.startswith((".", "/")):  # a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct
        try:
            model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="sdpa")
            tok = AutoTokenizer.from_pretrained(base)
        except OSError as e:
            raise UserError(f"{base}: not a local path, and it could not be fetched from the hub ({e}); "
                            "offline, pass a local directory or .gguf file") from None
        local = run_dir / local_name
        save_model(model, tok, local)
        return model, tok, local
    raise UserError(f"{base}: no such model directory or file")


def _budget(cfg) -> str:
    """How long the run goes, in the user's own terms (the first limit reached stops it)."""
    limits = [f"{cfg.max_steps} steps" if cfg.max_steps else "", f"{cfg.max_tokens:,} tokens" if cfg.max_tokens else "",
              f"{cfg.max_time}" if cfg.max_time else ""]
    return "until " + " or ".join(x for x in limits if x) if any(limits) else "no limit"


def _topic(record, name: str, where: str) -> str:
    value = record.get(name) if isinstance(record, dict) else None
    if value is None or not str(value).strip():
        raise UserError(f"{where}: no topic in field {name!r} (--ground-field)")
    return str(value)


def _split(convs: list, fraction: float, seed: int) -> tuple[list, list]:
    order = list(range(len(convs)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(round(len(convs) * fraction))) if len(convs) > 1 and fraction > 0 else 0
    val = set(order[:n_val])
    return [c for i, c in enumerate(convs) if i not in val], [c for i, c in enumerate(convs) if i in val]


def add_lora(model, cfg: FinetuneConfig):
    from peft import LoraConfig, get_peft_model
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = [t for t in cfg.lora_targets if t in names]
    if not targets:
        raise UserError(f"--lora-targets {' '.join(cfg.lora_targets)}: none of these modules are in the model "
                        f"(it has e.g. {', '.join(sorted(names)[:12])})")
    config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                        target_modules=targets, task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft asks transformers a deprecated question; it means nothing to a user
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        return get_peft_model(model, config)


class RowBatches:
    """Batches of packed rows: every epoch visits every row once, in an order fixed by (seed, epoch)."""

    def __init__(self, rows: list[dict], batch_size: int, grad_accum: int, seed: int, device: torch.device):
        self.rows = {k: torch.tensor([r[k] for r in rows], dtype=torch.long) for k in rows[0]}
        self.n = len(rows)
        self.batch_size, self.grad_accum, self.seed, self.device = batch_size, grad_accum, seed, device
        self._perm: dict[int, torch.Tensor] = {}

    def perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perm:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = {epoch: torch.randperm(self.n, generator=g)}
        return self._perm[epoch]

    def batch(self, step: int, micro: int) -> dict:
        start = (step * self.grad_accum + micro) * self.batch_size
        idx = [int(self.perm((start + i) // self.n)[(start + i) % self.n]) for i in range(self.batch_size)]
        idx = distributed.my_share(idx)  # under torchrun, this process's rows of the global batch
        return {k: v[idx].to(self.device) for k, v in self.rows.items()}

    def all(self, batch_size: int):
        for i in range(0, self.n, batch_size):
            yield {k: v[i:i + batch_size].to(self.device) for k, v in self.rows.items()}


def build_rows(tokenizer, convs, context: int, pad_id: int, seed: int, label: str) -> list[dict]:
    examples = [encode_conversation(tokenizer, messages) for _, messages in convs]
    lengths = [len(ids) for ids, _ in examples]
    too_long = sum(1 for n in lengths if n > context)
    if too_long:
        print(f"warning: {too_long} of {len(examples)} {label} examples are longer than --context {context} tokens "
              f"(the longest has {max(lengths)}) and were left out; --context {max(lengths)} keeps them all",
              file=sys.stderr)
    rows = pack(examples, context, pad_id, seed=seed)
    if not rows:
        raise UserError(f"no {label} example fits in --context {context}")
    return rows


def _taught(cfg: FinetuneConfig, start, convs, val_convs):
    """Sequence-level distillation: the examples with the teacher's answers (rank 0 asks, the others read)."""
    from pocketlm.train.teacher import ANSWERS, teacher_answers
    path = Path(cfg.out) / ANSWERS
    dist = start.dist
    if dist.enabled and not dist.main:
        distributed.barrier()
    everything = convs + (val_convs or [])
    taught, figures = teacher_answers(cfg.teacher, everything, path, max_new_tokens=cfg.teacher_max_tokens,
                                      temperature=cfg.teacher_temperature, seed=cfg.seed,
                                      progress=cfg.progress and dist.main)
    if dist.enabled and dist.main:
        distributed.barrier()
    if dist.main:
        empty = f"; {figures['empty']} left out (no answer, or the prompt too long for it)" if figures["empty"] else ""
        print(f"teacher {cfg.teacher}: answered {figures['asked']} examples, {figures['reused']} read back from "
              f"{path}{empty}", file=sys.stderr)
    by_where = dict(taught)
    convs_t = [(w, by_where[w]) for w, _ in convs if w in by_where]
    val_t = [(w, by_where[w]) for w, _ in val_convs if w in by_where] if val_convs is not None else None
    return convs_t, val_t


def finetune(cfg: FinetuneConfig) -> dict:
    out_dir = Path(cfg.out)
    if cfg.lr is None:
        cfg = dataclasses.replace(cfg, lr=1e-3 if cfg.lora else 5e-5)
    start = session.begin(cfg, out_dir)
    if cfg.teacher and cfg.ground_field:
        raise UserError("--teacher with --ground-field: grounded answers copy the data's own answers; use one of them")
    fmt = SftFormat(cfg.prompt_field, cfg.completion_field, cfg.prompt_template, cfg.completion_template,
                    cfg.system, cfg.columns, answers_optional=bool(cfg.teacher))
    records = load_examples(cfg.data, fmt, strict=cfg.strict)
    convs = [(where, messages) for where, messages, _ in records]
    val_convs = [(where, messages) for where, messages, _ in load_examples(cfg.val_data, fmt, strict=cfg.strict)] \
        if cfg.val_data else None
    if cfg.teacher:
        convs, val_convs = _taught(cfg, start, convs, val_convs)
    if val_convs is not None:
        train_convs = convs
    else:
        train_convs, val_convs = _split(convs, cfg.val_fraction, cfg.seed)
    grounding = None
    if cfg.ground_field:
        topics = {where: _topic(record, cfg.ground_field, where) for where, _, record in records}
        train_convs, val_convs, grounding = ground_conversations(train_convs, val_convs, topics, cfg.seed)
    n_examples = len(train_convs)
    train_convs = augment(train_convs, cfg.augment, cfg.seed)
    if grounding is not None:
        train_convs = reference_targets(train_convs, cfg.ground_copy, cfg.seed)
    if not val_convs:
        raise UserError("no validation examples: give --val-data or a --val-fraction above 0 with 2+ examples")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    dist = start.dist
    if dist.enabled and not dist.main:  # a GGUF base is converted once, by rank 0, before the others read it
        distributed.barrier()
    model, tokenizer, base_dir = load_base(cfg.base, out_dir)
    if dist.enabled and dist.main:
        distributed.barrier()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train_rows = build_rows(tokenizer, train_convs, cfg.context, pad_id, cfg.seed, "training")
    val_rows = build_rows(tokenizer, val_convs, cfg.context, pad_id, cfg.seed, "validation")
    if cfg.lora:
        model = add_lora(model, cfg)
    batches = RowBatches(train_rows, cfg.batch_size, cfg.grad_accum, cfg.seed, start.device)
    val_batches = RowBatches(val_rows, cfg.batch_size, 1, cfg.seed, start.device)
    if not (cfg.max_steps or cfg.max_tokens or cfg.max_time):
        steps = math.ceil(cfg.epochs * len(train_rows) / (cfg.batch_size * cfg.grad_accum))
        cfg = dataclasses.replace(cfg, max_steps=max(1, steps))

    def evaluate(model) -> dict:
        return {"val_loss": mean_loss(model, val_batches.all(cfg.batch_size), labelled_lm_loss)}

    task = Task(batch=batches.batch, loss=labelled_lm_loss, evaluate=evaluate, context=cfg.context)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if dist.main:
        print(f"fine-tuning {'LoRA ' if cfg.lora else ''}{trainable / 1e6:.2f}M of {total / 1e6:.1f}M parameters on "
          f"{n_examples} examples{f' + {len(train_convs) - n_examples} noisy copies' if cfg.augment else ''} "
          f"({len(train_rows)} packed rows of {cfg.context}), "
          f"{len(val_convs)} for validation; {_budget(cfg)}", file=sys.stderr)
    best_dir = out_dir / runs.BEST if cfg.keep_best else None
    summary = train(model, tokenizer, task, cfg, out_dir, best_dir=best_dir, start=start,
                    run_info={"kind": "finetune", "base": str(base_dir), "lora": cfg.lora})
    model = distributed.unsharded(model)  # under --fsdp, the shards gathered on rank 0
    if not dist.main:  # under torchrun, rank 0 writes the model, the plot and the summary
        return summary
    final = out_dir / runs.MODEL
    if best_dir is not None and (best_dir / BEST_INFO).exists():
        if final.exists():
            shutil.rmtree(final)
        os.replace(best_dir, final)
    else:
        save_model(model, tokenizer, final)
    if grounding is not None:  # beside the run (its checkpoint/ uses it) and inside the model directory
        grounding.save(out_dir)
        grounding.save(final)
    return session.finish(start, summary, cfg, title=f"fine-tuning {Path(cfg.base).name}",
                          trainable_parameters=trainable, parameters=total, model_dir=str(final),
                          base=str(base_dir), train_examples=n_examples, val_examples=len(val_convs))
