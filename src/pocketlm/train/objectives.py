"""Training objectives: each takes (model, batch) and returns (mean loss, number of target tokens)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lm_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Next-token cross-entropy; labels are already shifted, -100 marks positions without a target."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                   position_ids=batch.get("position_ids"), use_cache=False).logits
    labels = batch["labels"]
    loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)
    return loss, int((labels != -100).sum())


def mean_loss(model, batches) -> float:
    """Token-weighted mean `lm_loss` over `batches` (for validation)."""
    total, count = 0.0, 0
    for batch in batches:
        loss, n = lm_loss(model, batch)
        total += float(loss) * n
        count += n
    return total / max(count, 1)
