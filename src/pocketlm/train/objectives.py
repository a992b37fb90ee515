"""Training objectives: each takes (model, batch) and returns (mean loss, number of target tokens).

The count is a 0-d tensor, so that `torch.compile` can take an objective whole (no graph break)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# architectures whose logits are exactly lm_head(decoder output): no scaling or soft-capping after the head
PLAIN_HEAD_TYPES = {"llama", "qwen2", "qwen3", "mistral"}


def lm_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy; labels are already shifted, -100 marks positions without a target."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                   position_ids=batch.get("position_ids"), use_cache=False).logits
    labels = batch["labels"]
    loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)
    return loss, (labels != -100).sum()


def _decoder_and_head(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT model's own model
    if getattr(base.config, "model_type", None) not in PLAIN_HEAD_TYPES:
        return None
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    if decoder is None or decoder is base or head is None:
        return None
    return decoder, head


def labelled_lm_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """`lm_loss` computing logits only at labelled positions.

    In fine-tuning only assistant tokens carry labels; the vocabulary projection of every other
    position (49,152-wide for SmolLM2) is wasted work and memory. Same loss as `lm_loss` (tested);
    models whose logits are not a plain projection of the decoder output use `lm_loss`."""
    parts = _decoder_and_head(model)
    if parts is None:
        return lm_loss(model, batch)
    decoder, head = parts
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                     position_ids=batch.get("position_ids"), use_cache=False).last_hidden_state
    labels = batch["labels"]
    keep = labels != -100
    logits = head(hidden[keep])
    return F.cross_entropy(logits.float(), labels[keep]), keep.sum()


def mean_loss(model, batches, loss=lm_loss) -> float:
    """Token-weighted mean `loss` over `batches` (for validation). Under torchrun each process scores every
    world-size-th batch and the sums are added up, so every process gets the one-process figure. Under FSDP
    every process must run as many forward passes as the others (each gathers weights with them): one that
    has fewer batches runs its last one again and does not count it."""
    from pocketlm.train import distributed
    dist = distributed.current()
    total, count, mine, seen, last = 0.0, 0, 0, 0, None
    for i, batch in enumerate(batches):
        seen, last = i + 1, batch
        if i % dist.world != dist.rank:
            continue
        value, n = loss(model, batch)
        total += float(value) * int(n)
        count += int(n)
        mine += 1
    if dist.sharded:
        for _ in range(-(-seen // dist.world) - mine):
            loss(model, last)
    if dist.enabled:
        total, count = distributed.all_sum(torch.tensor([total, count], dtype=torch.float64)).tolist()
    return total / max(count, 1)
