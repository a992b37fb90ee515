"""`pocketlm distill`: train a small student on a bigger teacher's next-token distributions (logit distillation).

The student sees the data in fixed chunks of `context` tokens; at each position it is pulled towards the
teacher's distribution (its top-k plus one bucket for the rest, `train/kd.py`) and, with weight 1 - alpha,
towards the token that actually comes next. The teacher's top-k of a chunk is computed the first time the
chunk is drawn and kept on disk, so later epochs, a resumed run and other students on the same data read it
back instead of running the teacher again. Everything else (optimizer, schedule, budgets, checkpoints,
resume) is the one training loop's.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from pocketlm import runs
from pocketlm.data.shards import META, TOKENIZER_DIR, load_tokens, read_meta
from pocketlm.data.tokenizer import load_tokenizer
from pocketlm.device import autocast, resolve_dtype
from pocketlm.errors import UserError
from pocketlm.model.io import resolve_model_dir, save_model
from pocketlm.model.presets import PRESETS
from pocketlm.train import distributed, session
from pocketlm.train.batches import TokenWindows
from pocketlm.train.kd import TopkCache, fingerprint, kd_loss, teacher_topk
from pocketlm.train.loop import Task, train
from pocketlm.train.objectives import mean_loss
from pocketlm.train.options import DistillConfig, PretrainConfig

TEACHER_DIR = "teacher"  # a GGUF teacher, dequantized into a Hugging Face directory once
CACHE_DIR = "teacher_topk"


class Chunks:
    """Fixed, non-overlapping chunks of the token stream; every epoch visits each once, in an order fixed by
    (seed, epoch), so a batch is a pure function of (step, micro) and the teacher's view of a chunk can be kept."""

    def __init__(self, tokens: np.ndarray, context: int, batch_size: int, grad_accum: int, seed: int,
                 device: torch.device):
        self.tokens, self.context, self.device = tokens, context, device
        self.n = (len(tokens) - 1) // context
        self.batch_size, self.grad_accum, self.seed = batch_size, grad_accum, seed
        self._perm: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n))
        return self._perm[1]

    def chunks(self, step: int, micro: int) -> list[int]:
        first = (step * self.grad_accum + micro) * self.batch_size
        picked = [int(self.order(i // self.n)[i % self.n]) for i in range(first, first + self.batch_size)]
        return distributed.my_share(picked)

    def at(self, chunks: list[int]) -> dict[str, torch.Tensor]:
        t = self.context
        rows = np.stack([np.asarray(self.tokens[c * t:c * t + t + 1], dtype=np.int64) for c in chunks])
        xy = torch.from_numpy(rows).to(self.device)
        return {"input_ids": xy[:, :-1], "labels": xy[:, 1:]}


class TeacherView:
    """The teacher's top-k (or whole distribution, k = 0) for chunks, from the cache or computed now."""

    def __init__(self, teacher, k: int, temperature: float, cache: TopkCache | None, device, amp_dtype):
        self.teacher, self.k, self.temperature, self.cache = teacher, k, temperature, cache
        self.device, self.amp_dtype = device, amp_dtype
        self.seconds = 0.0

    @torch.no_grad()
    def _run(self, input_ids: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        with autocast(self.device, self.amp_dtype):
            logits = self.teacher(input_ids=input_ids, use_cache=False).logits
        self.seconds += time.perf_counter() - t0
        return logits

    def __call__(self, chunks: list[int], input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.k == 0:
            logits = self._run(input_ids)
            return {"teacher_logp": torch.log_softmax(logits.float() / self.temperature, dim=-1)}
        if self.cache is None:
            ids, logp = teacher_topk(self._run(input_ids), self.k, self.temperature)
            return {"teacher_ids": ids, "teacher_logp": logp}
        gaps = self.cache.missing(chunks)
        if gaps:
            rows = [chunks.index(c) for c in gaps]
            ids, logp = teacher_topk(self._run(input_ids[rows]), self.k, self.temperature)
            self.cache.put(gaps, ids, logp)
        ids, logp = self.cache.get(chunks)
        return {"teacher_ids": ids.to(self.device), "teacher_logp": logp.to(self.device)}


def distill_loss(alpha: float, kind: str, temperature: float):
    """The objective: alpha x divergence from the teacher + (1 - alpha) x next-token cross-entropy."""

    def loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(input_ids=batch["input_ids"], use_cache=False).logits
        labels = batch["labels"]
        count = torch.tensor(labels.numel(), device=labels.device)
        # one log-softmax over the vocabulary serves both terms at temperature 1 (the usual case)
        logp = torch.log_softmax(logits.float(), dim=-1)
        ce = F.nll_loss(logp.view(-1, logp.size(-1)), labels.reshape(-1))
        if alpha == 0.0:
            return ce, count
        kd = kd_loss(logits, batch.get("teacher_ids"), batch["teacher_logp"], kind, temperature,
                     student_logp=logp if temperature == 1.0 else None)
        return alpha * kd + (1.0 - alpha) * ce, count

    return loss


def inherit_embeddings(student, teacher) -> str:
    """Start the student's token embeddings (and an untied output head) from the teacher's: a copy at the same
    width; at a narrower one, their projection onto the top principal directions of the teacher's embedding
    matrix (the projection that keeps their dot products best). Returns what was done, for the log."""
    src = teacher.get_input_embeddings().weight.detach().float()
    dst = student.get_input_embeddings().weight
    if src.shape[0] != dst.shape[0]:
        return "not inherited (vocabularies differ)"
    if dst.shape[1] > src.shape[1]:
        return f"not inherited (the student is wider than the teacher: {dst.shape[1]} > {src.shape[1]})"
    if dst.shape[1] == src.shape[1]:
        proj, how = torch.eye(src.shape[1]), "copied from the teacher"
    else:
        _, s, vh = torch.linalg.svd(src - src.mean(0), full_matrices=False)
        proj = vh[:dst.shape[1]].T
        kept = float((s[:dst.shape[1]] ** 2).sum() / (s ** 2).sum())
        how = f"the teacher's, projected {src.shape[1]} -> {dst.shape[1]} by PCA ({kept:.0%} of their variance)"
    # at the student's initial scale: the geometry is what carries over; the teacher's own scale, met by a
    # student's untrained final norm, would start it at logits tens of nats off
    std = getattr(student.config, "initializer_range", 0.02)
    with torch.no_grad():
        new = src @ proj
        dst.copy_(new * (std / new.std()))
        head, teacher_head = student.get_output_embeddings(), teacher.get_output_embeddings()
        if head is not None and head.weight is not dst and teacher_head is not None:
            out = teacher_head.weight.detach().float() @ proj
            head.weight.copy_(out * (std / out.std()))
    return how


def _load_teacher(cfg: DistillConfig, out_dir: Path):
    from pocketlm.train.finetune import load_base
    teacher, tokenizer, teacher_dir = load_base(cfg.teacher, out_dir, local_name=TEACHER_DIR)
    teacher.eval().requires_grad_(False)
    return teacher, tokenizer, teacher_dir


def _check_tokenizers(teacher_tok, data_tok, cfg: DistillConfig) -> None:
    if teacher_tok.get_vocab() != data_tok.get_vocab():
        raise UserError(f"{cfg.data} was tokenized with another tokenizer than the teacher's ({cfg.teacher}); "
                        "logit distillation compares distributions over the same tokens: prepare the data with "
                        f"`pocketlm prepare TEXT --tokenizer {cfg.teacher} --out DATA`")


def _student(cfg: DistillConfig, start, vocab: int, tokenizer):
    """(model, how it was made): a new model of a preset, the checkpoint on --resume, or a model directory."""
    if start.checkpoint is not None:
        source = str(start.checkpoint)
    elif cfg.student in PRESETS:
        from pocketlm.train.pretrain import build_model
        pre = PretrainConfig(data=cfg.data, out=cfg.out, model=cfg.student, context=cfg.context, seed=cfg.seed)
        model = build_model(pre, tokenizer)
        if model.config.vocab_size != vocab:
            model.resize_token_embeddings(vocab)
        return model, f"new {cfg.student}"
    else:
        source = str(resolve_model_dir(cfg.student))
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, local_files_only=True,
                                                 attn_implementation="sdpa")
    if model.config.vocab_size != vocab:
        raise UserError(f"--student {cfg.student}: its vocabulary ({model.config.vocab_size}) differs from the "
                        f"teacher's ({vocab}); logit distillation needs the same tokens")
    return model, ("resumed" if start.checkpoint is not None else f"from {cfg.student}")


def check_options(cfg: DistillConfig) -> None:
    if not 0.0 <= cfg.alpha <= 1.0:
        raise UserError(f"--alpha {cfg.alpha}: give a weight between 0 (no teacher) and 1 (teacher only)")
    if cfg.temperature <= 0:
        raise UserError(f"--temperature {cfg.temperature}: give a positive number (1 = the distributions as they are)")
    if cfg.top_k < 0:
        raise UserError(f"--top-k {cfg.top_k}: give a count of tokens, or 0 for the teacher's whole distribution")


def distill(cfg: DistillConfig) -> dict:
    check_options(cfg)
    data_dir = Path(cfg.data)
    if data_dir.is_file():
        raise UserError(f"{data_dir}: logit distillation reads prepared token data (`pocketlm prepare TEXT --tokenizer "
                        "TEACHER --out DATA`); for chat or prompt/completion examples, or a teacher with another "
                        "tokenizer, the teacher writes the answers: pocketlm finetune --base STUDENT --teacher "
                        f"TEACHER --data {data_dir} --out RUN")
    meta = read_meta(data_dir)
    tokenizer = load_tokenizer(data_dir / TOKENIZER_DIR)
    start = session.begin(cfg, cfg.out)
    out_dir = start.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher, teacher_tok, teacher_dir = _load_teacher(cfg, out_dir)
    _check_tokenizers(teacher_tok, tokenizer, cfg)
    vocab = teacher.config.vocab_size
    model, made = _student(cfg, start, vocab, tokenizer)
    if cfg.top_k >= vocab:
        raise UserError(f"--top-k {cfg.top_k}: the vocabulary has {vocab} tokens; give fewer, or 0 for all of them")
    if start.checkpoint is None and cfg.student in PRESETS and cfg.inherit_embeddings:
        made += f"; embeddings: {inherit_embeddings(model, teacher)}"
    context = cfg.context or min(model.config.max_position_embeddings, 1024)
    for who, m in (("student", model), ("teacher", teacher)):
        if context > m.config.max_position_embeddings:
            raise UserError(f"--context {context} is longer than the {who}'s maximum ({m.config.max_position_embeddings})")
    train_tokens, val_tokens = load_tokens(data_dir, "train"), load_tokens(data_dir, "val")
    for name, toks in (("train", train_tokens), ("val", val_tokens)):
        if len(toks) < context + 2:
            raise UserError(f"{data_dir}/{name}.bin has only {len(toks)} tokens, fewer than one sequence of "
                            f"--context {context}; use a shorter --context or more data")
    chunks = Chunks(train_tokens, context, cfg.batch_size, cfg.grad_accum, cfg.seed, start.device)
    val_windows = TokenWindows(val_tokens, cfg.batch_size, context, cfg.seed, start.device)
    tokens_per_byte = meta["splits"]["val"]["tokens"] / max(meta["splits"]["val"]["bytes"], 1)

    cache = None
    use_teacher = cfg.alpha > 0
    if use_teacher and cfg.top_k > 0 and (cfg.teacher_cache or "").lower() != "none":
        cache_dir = Path(cfg.teacher_cache) if cfg.teacher_cache else out_dir / CACHE_DIR
        cache_meta = {"teacher": fingerprint(teacher_dir), "temperature": cfg.temperature,
                      "data": fingerprint_data(data_dir)}
        cache = TopkCache(cache_dir, chunks.n, context, cfg.top_k, cache_meta, rank=start.dist.rank)
    teacher.to(start.device)
    view = TeacherView(teacher, cfg.top_k, cfg.temperature, cache, start.device,
                       resolve_dtype(cfg.dtype, start.device)) if use_teacher else None

    if cfg.cache_only:
        return fill_cache(cfg, chunks, view, cache, context, start.main)

    def batch(step: int, micro: int) -> dict:
        picked = chunks.chunks(step, micro)
        b = chunks.at(picked)
        if view is not None:
            b.update(view(picked, b["input_ids"]))
        return b

    def evaluate(model) -> dict:
        loss = mean_loss(model, val_windows.eval_batches(cfg.eval_batches))
        return {"val_loss": loss, "val_bpb": loss / math.log(2) * tokens_per_byte}

    task = Task(batch=batch, loss=distill_loss(cfg.alpha, cfg.loss, cfg.temperature), evaluate=evaluate,
                tokens_per_step=cfg.batch_size * context * cfg.grad_accum, context=context)
    n_student = sum(p.numel() for p in model.parameters())
    n_teacher = sum(p.numel() for p in teacher.parameters())
    if start.main:
        teacher_part = (f"{cfg.loss} x {cfg.alpha:g} + cross-entropy x {1 - cfg.alpha:g}, "
                        f"{'whole distribution' if cfg.top_k == 0 else f'top-{cfg.top_k}'}, T={cfg.temperature:g}"
                        if use_teacher else "alpha 0: cross-entropy only, the teacher is not run")
        print(f"teacher: {n_teacher / 1e6:.1f}M parameters ({cfg.teacher}); student: {n_student / 1e6:.1f}M "
              f"({n_teacher / n_student:.1f}x smaller; {made}); loss: {teacher_part}\n"
              f"data: {len(train_tokens):,} train tokens in {chunks.n:,} chunks of {context}; "
              f"{len(val_tokens):,} val tokens" + (f"; teacher cache: {cache.dir} ({int(cache.filled.sum()):,} "
                                                   "chunks filled)" if cache else ""), file=sys.stderr)
    t0 = time.time()
    try:
        summary = train(model, tokenizer, task, cfg, out_dir, start=start,
                        run_info={"kind": "distill", "data": str(data_dir), "teacher": cfg.teacher})
    finally:
        if cache is not None:
            cache.save()
    trained = distributed.unsharded(model)
    if not start.main:
        return summary
    final = save_model(trained.float(), tokenizer, out_dir / runs.MODEL)
    teacher_figures = {}
    if view is not None:
        teacher_figures["teacher_s"] = round(view.seconds, 1)
    if cache is not None:
        teacher_figures.update(cache_hits=cache.hits, cache_misses=cache.misses, cache_dir=str(cache.dir))
    return session.finish(start, summary, cfg, title=f"{cfg.student} distilled from {Path(cfg.teacher).name}",
                          parameters=n_student, teacher_parameters=n_teacher,
                          compression=round(n_teacher / n_student, 2), context=context,
                          wall_s=round(time.time() - t0, 1), model_dir=str(final), **teacher_figures)


def fill_cache(cfg: DistillConfig, chunks: Chunks, view: TeacherView | None, cache: TopkCache | None, context: int,
               main: bool) -> dict:
    """--cache-only: the teacher's top-k for every chunk the budget's steps draw, and nothing else."""
    from tqdm import tqdm
    if view is None or cache is None:
        raise UserError("--cache-only fills the teacher cache: it needs --alpha above 0, --top-k above 0 and a cache "
                        "(not --teacher-cache none)")
    if cfg.max_time and not (cfg.max_steps or cfg.max_tokens):
        raise UserError("--cache-only with --max-time: how many chunks a timed run draws is not known in advance; "
                        "give --max-tokens (or --max-steps)")
    per_step = cfg.batch_size * cfg.grad_accum
    steps = cfg.max_steps or (math.ceil(cfg.max_tokens / (per_step * context)) if cfg.max_tokens
                              else math.ceil(chunks.n / per_step))
    if cfg.max_steps and cfg.max_tokens:
        steps = min(steps, math.ceil(cfg.max_tokens / (per_step * context)))
    bar = tqdm(total=steps * per_step, desc="teacher", unit="chunk", disable=not (cfg.progress and main),
               file=sys.stderr, dynamic_ncols=True)
    try:
        for step in range(steps):
            for micro in range(cfg.grad_accum):
                picked = chunks.chunks(step, micro)
                view(picked, chunks.at(picked)["input_ids"])
                bar.update(len(picked))
    finally:
        bar.close()
        cache.save()
    summary = {"cache_dir": str(cache.dir), "chunks": steps * per_step, "computed": cache.misses,
               "already_there": cache.hits, "teacher_s": round(view.seconds, 1), "context": context}
    if main:
        print(f"teacher cache {cache.dir}: {cache.misses:,} chunks computed, {cache.hits:,} already there "
              f"({steps * per_step * context:,} tokens; the teacher ran {view.seconds:.0f} s)")
    return summary


def fingerprint_data(data_dir: Path) -> str:
    import hashlib
    return hashlib.sha256((data_dir / META).read_bytes()).hexdigest()[:16]

