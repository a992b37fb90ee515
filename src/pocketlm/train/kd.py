"""Knowledge distillation's pieces: divergences between a teacher's and a student's next-token distributions,
the teacher's top-k, and a disk cache of it.

A teacher's distribution over 49,152 tokens is mostly tail. Keeping its k most likely tokens and one bucket
for the rest gives a (k+1)-way distribution that is exact (the bucket holds the tail's true mass), costs
k ids and log-probs a position to store, and is compared with the student's distribution coarsened the same
way: the divergence between two coarsened distributions is never more than between the full ones.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from pocketlm.errors import UserError
from pocketlm.fsutil import atomic_path, atomic_write_json

LOSSES = ("fkl", "rkl", "jsd")
_TINY = 1e-7  # smallest tail mass kept (fp32 resolves 1 - mass to about 6e-8)


def with_tail(logp_top: torch.Tensor) -> torch.Tensor:
    """(..., k) log-probabilities of k tokens -> (..., k+1): the k, then the log of the rest's mass."""
    rest = (1.0 - logp_top.exp().sum(-1, keepdim=True)).clamp(min=_TINY)
    return torch.cat([logp_top, rest.log()], dim=-1)


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dimension, from log-probabilities; a zero-probability term counts zero."""
    p = logp.exp()
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)


def divergence(teacher_logp: torch.Tensor, student_logp: torch.Tensor, kind: str = "fkl",
               beta: float = 0.5) -> torch.Tensor:
    """Per-position divergence between two distributions given as log-probabilities over the last dimension.

    fkl: KL(teacher || student), the student covers everything the teacher finds likely (mean-seeking);
    rkl: KL(student || teacher), the student puts its mass where the teacher does (mode-seeking, MiniLLM);
    jsd: the generalised Jensen-Shannon divergence with weight `beta` on the teacher (GKD), bounded by log 2
    at beta 0.5."""
    if kind == "fkl":
        return _kl(teacher_logp, student_logp)
    if kind == "rkl":
        return _kl(student_logp, teacher_logp)
    if kind == "jsd":
        if not 0.0 < beta < 1.0:
            raise ValueError(f"jsd beta must be between 0 and 1, got {beta}")
        mix = torch.logsumexp(torch.stack([teacher_logp + np.log(beta), student_logp + np.log1p(-beta)]), dim=0)
        return beta * _kl(teacher_logp, mix) + (1.0 - beta) * _kl(student_logp, mix)
    raise ValueError(f"unknown divergence {kind!r}; choose one of {', '.join(LOSSES)}")


def teacher_topk(logits: torch.Tensor, k: int, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids int32, log-probs fp32) of the k most likely tokens at `temperature`, from (..., vocab) logits."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    values, ids = logp.topk(k, dim=-1)
    return ids.to(torch.int32), values


def kd_loss(student_logits: torch.Tensor, teacher_ids: torch.Tensor | None, teacher_logp: torch.Tensor,
            kind: str = "fkl", temperature: float = 1.0, mask: torch.Tensor | None = None,
            student_logp: torch.Tensor | None = None) -> torch.Tensor:
    """Mean divergence over the positions (those where `mask` is true), scaled by temperature² (Hinton et al.,
    so that its gradients keep their size as the temperature changes).

    With `teacher_ids` (..., k): the teacher's top-k log-probs (..., k) against the student's log-probs at those
    ids, each with its tail bucket. Without: `teacher_logp` is the teacher's whole distribution. `student_logp`,
    when the caller has it already (log_softmax of the logits at this temperature), saves computing it again."""
    if student_logp is None:
        student_logp = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    if teacher_ids is not None:
        student_logp = with_tail(student_logp.gather(-1, teacher_ids.long()))
        teacher_logp = with_tail(teacher_logp.float())
    per_position = divergence(teacher_logp.float(), student_logp, kind)
    if mask is not None:
        per_position = per_position[mask]
    return per_position.mean() * temperature ** 2


class TopkCache:
    """The teacher's top-k for fixed chunks of the training tokens, on disk, filled as chunks are first needed.

    Two arrays (ids int32, log-probs fp16) of shape (chunks, context, k), memory-mapped, and a record of which
    chunks are filled, written atomically after the arrays are flushed: a crash loses at most the chunks
    computed since the last save, which are computed again. `meta.json` says which teacher, data, k,
    temperature and context the cache was made for; a cache made for others is refused, never mixed."""

    def __init__(self, directory: str | Path, n_chunks: int, context: int, k: int, meta: dict, rank: int = 0):
        self.dir = Path(directory)
        self.meta = {**meta, "chunks": n_chunks, "context": context, "k": k}
        self.rank = rank
        meta_path = self.dir / "meta.json"
        if meta_path.exists():
            have = json.loads(meta_path.read_text(encoding="utf-8"))
            if have != self.meta:
                differ = sorted(key for key in set(have) | set(self.meta) if have.get(key) != self.meta.get(key))
                raise UserError(f"{self.dir}: a teacher cache made for another {', '.join(differ)}; give another "
                                "--teacher-cache directory, or delete this one")
        self.dir.mkdir(parents=True, exist_ok=True)
        mode = "r+" if (self.dir / "ids.bin").exists() else "w+"
        shape = (n_chunks, context, k)
        self.ids = np.memmap(self.dir / "ids.bin", dtype=np.int32, mode=mode, shape=shape)
        self.logp = np.memmap(self.dir / "logp.bin", dtype=np.float16, mode=mode, shape=shape)
        if not meta_path.exists():
            atomic_write_json(meta_path, self.meta)
        self.filled = np.zeros(n_chunks, dtype=bool)
        for part in self.dir.glob("filled-*.npy"):  # under torchrun each process records its own chunks
            self.filled |= np.load(part)
        self.unsaved = 0
        self.hits = self.misses = 0

    def missing(self, chunks) -> list[int]:
        wanted = [int(c) for c in chunks]
        gaps = [c for c in wanted if not self.filled[c]]
        self.hits += len(wanted) - len(gaps)
        self.misses += len(gaps)
        return gaps

    def put(self, chunks: list[int], ids: torch.Tensor, logp: torch.Tensor) -> None:
        self.ids[chunks] = ids.cpu().numpy()
        self.logp[chunks] = logp.cpu().to(torch.float16).numpy()
        self.filled[chunks] = True
        self.unsaved += len(chunks)
        if self.unsaved >= 64:
            self.save()

    def get(self, chunks) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(chunks)
        return torch.from_numpy(np.ascontiguousarray(self.ids[idx])), torch.from_numpy(
            np.ascontiguousarray(self.logp[idx]))

    def save(self) -> None:
        if not self.unsaved:
            return
        self.ids.flush()
        self.logp.flush()
        with atomic_path(self.dir / f"filled-{self.rank}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, self.filled)
        self.unsaved = 0


def fingerprint(path: str | Path) -> str:
    """A short name for a model directory's contents (its config and the sizes of its weight files)."""
    path = Path(path)
    h = hashlib.sha256((path / "config.json").read_bytes())
    for f in sorted(path.glob("*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]
