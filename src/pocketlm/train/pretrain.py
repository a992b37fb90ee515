"""`pocketlm pretrain`: train a Llama-family model from scratch (or continue one) on prepared tokens."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from pocketlm import runs
from pocketlm.config import to_dict
from pocketlm.data.shards import TOKENIZER_DIR, load_tokens, read_meta
from pocketlm.data.tokenizer import load_tokenizer, stop_token_ids
from pocketlm.errors import UserError
from pocketlm.model.io import resolve_model_dir, save_model
from pocketlm.model.presets import flops_per_token, get_preset, llama_config
from pocketlm.train import distributed, session
from pocketlm.train.batches import TokenWindows
from pocketlm.train.loop import Task, train
from pocketlm.train.objectives import lm_loss, mean_loss
from pocketlm.train.options import PretrainConfig


def build_model(cfg: PretrainConfig, tokenizer) -> torch.nn.Module:
    torch.manual_seed(cfg.seed)
    if cfg.init:
        model_dir = resolve_model_dir(cfg.init)
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, local_files_only=True,
                                                     attn_implementation="sdpa")
        if len(tokenizer) > model.config.vocab_size:
            raise UserError(f"--init {cfg.init}: its vocabulary ({model.config.vocab_size}) is smaller than the "
                            f"data's tokenizer ({len(tokenizer)}); prepare the data with --tokenizer {cfg.init}")
        return model
    preset = get_preset(cfg.model)
    stops = stop_token_ids(tokenizer)
    config = llama_config(preset, len(tokenizer), context=cfg.context or min(preset.context, 1024),
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=stops[0] if len(stops) == 1 else stops,
                          pad_token_id=tokenizer.pad_token_id)
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config)
    scale_residual_init(model)
    return model


def scale_residual_init(model) -> None:
    """GPT-2's initialisation (as in nanoGPT): the two projections that write into the residual stream —
    attention output and MLP down — start at std 0.02 / sqrt(2 x layers), so that the residual stream's
    variance does not grow with depth at the start of training."""
    std = model.config.initializer_range / math.sqrt(2 * model.config.num_hidden_layers)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.normal_(0.0, std)
            layer.mlp.down_proj.weight.normal_(0.0, std)


def pretrain(cfg: PretrainConfig) -> dict:
    data_dir = Path(cfg.data)
    meta = read_meta(data_dir)
    tokenizer = load_tokenizer(data_dir / TOKENIZER_DIR)
    start = session.begin(cfg, cfg.out)
    if start.checkpoint is not None:  # the model is rebuilt from the checkpoint (its architecture and weights)
        cfg = PretrainConfig(**{**to_dict(cfg), "init": str(start.checkpoint)})
    model = build_model(cfg, tokenizer)
    context = cfg.context or min(model.config.max_position_embeddings, 1024)
    if context > model.config.max_position_embeddings:
        raise UserError(f"--context {context} is longer than the model's maximum "
                        f"({model.config.max_position_embeddings})")
    train_tokens = load_tokens(data_dir, "train")
    val_tokens = load_tokens(data_dir, "val")
    for name, toks in (("train", train_tokens), ("val", val_tokens)):
        if len(toks) < context + 2:
            raise UserError(f"{data_dir}/{name}.bin has only {len(toks)} tokens, fewer than one sequence of "
                            f"--context {context}; use a shorter --context or more data")
    train_windows = TokenWindows(train_tokens, cfg.batch_size, context, cfg.seed, start.device)
    val_windows = TokenWindows(val_tokens, cfg.batch_size, context, cfg.seed, start.device)
    val = meta["splits"]["val"]
    tokens_per_byte = val["tokens"] / max(val["bytes"], 1)

    def evaluate(model) -> dict:
        loss = mean_loss(model, val_windows.eval_batches(cfg.eval_batches))
        return {"val_loss": loss, "val_bpb": loss / math.log(2) * tokens_per_byte}

    task = Task(batch=train_windows.batch, loss=lm_loss, evaluate=evaluate,
                tokens_per_step=cfg.batch_size * context * cfg.grad_accum, context=context)
    n_params = sum(p.numel() for p in model.parameters())
    if start.main:
        print(f"model: {n_params / 1e6:.2f}M parameters, context {context}, vocabulary {len(tokenizer)}; "
              f"data: {len(train_tokens):,} train / {len(val_tokens):,} val tokens", file=sys.stderr)
    t0 = time.time()
    summary = train(model, tokenizer, task, cfg, start.out_dir, start=start,
                    run_info={"kind": "pretrain", "data": str(data_dir)})
    trained = distributed.unsharded(model)  # under --fsdp, the shards gathered on rank 0
    if not start.main:  # under torchrun, rank 0 writes the model, the plot and the summary
        return summary
    final = save_model(trained.float(), tokenizer, start.out_dir / runs.MODEL)
    tps = summary["tokens"] / max(summary["elapsed"], 1e-9)
    return session.finish(start, summary, cfg, title=f"{cfg.model if not cfg.init else Path(cfg.init).name} on {data_dir}",
                          parameters=n_params, context=context,
                          train_tflops=round(flops_per_token(model.config, context) * tps / 1e12, 4),
                          wall_s=round(time.time() - t0, 1), model_dir=str(final))
