"""The one training loop. Pretraining, fine-tuning and distillation differ only in their Task.

A Task supplies `batch(step, micro) -> dict` (deterministic in its arguments, so resume replays the
same data; under torchrun each process reads only its share of the rows, `distributed.my_share`), `loss(model, batch) -> (loss, n_target_tokens)` and `evaluate(model) -> dict` with at
least `val_loss`. The loop owns everything else: optimizer, schedule, precision, compile,
accumulation, clipping, budgets, logging, plots, checkpoints, resume and Ctrl-C.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from pocketlm import runs
from pocketlm.device import autocast, dtype_name, resolve_dtype, training_attention
from pocketlm.errors import UserError
from pocketlm.model.io import is_adapter, save_model
from pocketlm.train import distributed
from pocketlm.train.average import WeightAverage
from pocketlm.train.checkpoint import load_state, restore_rng, save_checkpoint
from pocketlm.train.options import LoopConfig
from pocketlm.train.schedule import lr_at
from pocketlm.train.session import Start, begin

BEST_INFO = "trainer_best.json"


def parse_duration(text: str | float | int | None) -> float | None:
    """'90', '90s', '10m', '1.5h' -> seconds."""
    if text is None or text == "":
        return None
    if isinstance(text, int | float):
        return float(text)
    t = str(text).strip().lower()
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if t[-1] in units:
            return float(t[:-1]) * units[t[-1]]
        return float(t)
    except (ValueError, IndexError):
        raise UserError(f"--max-time {text!r}: give seconds or a number with s, m or h (e.g. 600, 10m, 1.5h)") from None


@dataclass
class Task:
    # (step, micro) -> the micro-batch; under torchrun this process's rows of it (`distributed.my_share`)
    batch: Callable[[int, int], dict]
    loss: Callable[[torch.nn.Module, dict], tuple[torch.Tensor, torch.Tensor]]  # (mean loss, target count)
    evaluate: Callable[[torch.nn.Module], dict]
    tokens_per_step: int | None = None  # for budgets and the progress bar; None = count as we go
    context: int | None = None  # longest sequence in a batch, for choosing the attention kernel


class _StopFlag:
    """Turns the first Ctrl-C / SIGTERM into a clean stop after the current step."""

    def __init__(self, say: bool = True):
        self.say = say
        self.stop = False
        self.signal = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.stop:  # second signal: stop now
            raise KeyboardInterrupt
        self.stop = True
        self.signal = signal.Signals(signum).name
        if self.say:
            print(f"\n{self.signal} received: finishing this step and saving a checkpoint "
                  "(press again to stop at once)", file=sys.stderr)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def make_optimizer(model: torch.nn.Module, cfg: LoopConfig, device: torch.device) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8, fused=fused)


def _truncate_metrics(path: Path, step: int) -> None:
    if not path.exists():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _restore_weights(model: torch.nn.Module, ckpt: Path, device: torch.device) -> None:
    from safetensors.torch import load_file
    if (ckpt / "adapter_model.safetensors").exists():  # a LoRA run: only the adapter was trained
        from peft import set_peft_model_state_dict
        set_peft_model_state_dict(model, load_file(str(ckpt / "adapter_model.safetensors"), device=str(device)))
        return
    weights = load_file(str(ckpt / "model.safetensors"), device=str(device))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or any(k != "lm_head.weight" for k in missing):
        raise UserError(f"{ckpt}: checkpoint does not match the model (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")
    model.tie_weights()


def progress(cfg: LoopConfig, max_time: float | None, step: int, tokens: int, elapsed: float) -> float:
    """How much of the budget is spent (0 to 1): the first of steps, tokens and time to run out."""
    p = 0.0
    if cfg.max_steps:
        p = max(p, step / cfg.max_steps)
    if cfg.max_tokens:
        p = max(p, tokens / cfg.max_tokens)
    if max_time:
        p = max(p, elapsed / max_time)
    return p


@dataclass
class Interval:
    """The running figures of one logging interval. Its loss is this process's share; they are summed over
    the processes when the interval is logged or saved with a checkpoint, which carries it on so that a
    resumed run logs the same curve."""
    loss: torch.Tensor
    tokens: int = 0
    steps: int = 0
    start: float = 0.0

    @classmethod
    def resumed(cls, carried: dict, device: torch.device, main: bool) -> Interval:
        # rank 0 alone carries the saved loss on (it is the sum over the processes already)
        loss = torch.tensor(carried.get("loss", 0.0) if main else 0.0, device=device)
        # the interval keeps its training time so far, so its tokens/s is not inflated by the earlier tokens
        return cls(loss, carried.get("tokens", 0), carried.get("steps", 0),
                   time.perf_counter() - carried.get("seconds", 0.0))

    def add(self, loss: torch.Tensor, tokens: int) -> None:
        self.loss = self.loss + loss
        self.tokens += tokens
        self.steps += 1

    def saved(self) -> dict:  # called by every process
        return {"loss": float(distributed.all_sum(self.loss)), "steps": self.steps, "tokens": self.tokens,
                "seconds": time.perf_counter() - self.start}

    def close(self, step: int) -> tuple[float, float]:
        """(mean loss, tokens/s) of the interval; a new one starts. Called by every process."""
        loss = float(distributed.all_sum(self.loss)) / self.steps
        tps = self.tokens / (time.perf_counter() - self.start)
        if not math.isfinite(loss):
            raise UserError(f"training diverged at step {step} (loss {loss}); lower --lr or use --dtype fp32")
        self.loss = torch.zeros_like(self.loss)
        self.tokens, self.steps, self.start = 0, 0, time.perf_counter()
        return loss, tps


@dataclass
class Best:
    """With a directory: the weights with the lowest validation loss so far are kept there (rank 0 writes)."""
    directory: Path | None
    val_loss: float = float("inf")

    @classmethod
    def resumed(cls, directory: Path | None, resume: bool) -> Best:
        if directory is not None and resume and (Path(directory) / BEST_INFO).exists():
            return cls(directory, json.loads((Path(directory) / BEST_INFO).read_text())["val_loss"])
        return cls(directory)

    def offer(self, result: dict, step: int, model, tokenizer, main: bool) -> None:
        """Every process calls it (validation losses are reduced, so all agree; FSDP gathers the weights)."""
        if self.directory is not None and result.get("val_loss", float("inf")) < self.val_loss:
            self.val_loss = result["val_loss"]
            weights = distributed.unsharded(model)
            if main:
                save_model(weights, tokenizer, self.directory,
                           extra_files={BEST_INFO: {"step": step, "val_loss": self.val_loss}})


def _append(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _averaged(ema: WeightAverage | None):
    """Validation and the kept best weights use the weight average when there is one."""
    return ema.swapped_in() if ema is not None else contextlib.nullcontext()


def _evaluate(model, task: Task, device, amp_dtype, wrapper) -> dict:
    model.eval()
    with torch.no_grad(), autocast(device, amp_dtype), distributed.gathered(wrapper):
        result = task.evaluate(model)
    model.train()
    return result


def _resume_weights(start: Start, model, metrics_path: Path) -> dict:
    """Restore the weights from the checkpoint (before the model is wrapped for several processes); the trainer
    state, or {} for a new run. The optimizer and RNG states follow in `_resume_rest`."""
    if start.checkpoint is None:
        if start.main:
            metrics_path.write_text("", encoding="utf-8")
        return {}
    _restore_weights(model, start.checkpoint, start.device)
    return load_state(start.checkpoint)


def _resume_rest(start: Start, state: dict, wrapper, optimizer, metrics_path: Path) -> None:
    if not state:
        return
    ckpt = start.checkpoint
    distributed.load_optimizer_state(wrapper, optimizer, state["optimizer"], ckpt)
    restore_rng(state)
    if start.main:
        _truncate_metrics(metrics_path, state["step"])
        print(f"resumed from {ckpt} at step {state['step']} ({state['tokens']:,} tokens)", file=sys.stderr)
        was = state.get("world_size", 1)
        if was != start.dist.world:
            print(f"the checkpoint was written by {was} process(es), this run has {start.dist.world}: the global "
                  "batch is the same (each process takes its share of it), so training continues unchanged",
                  file=sys.stderr)
    return state


def _step(forward, wrapper, task: Task, step: int, cfg: LoopConfig, dist, device, amp_dtype) -> tuple[torch.Tensor, int]:
    """Forward and backward over the step's micro-batches: (this process's share of the loss, target tokens)."""
    step_loss = torch.zeros((), device=device)
    step_tokens = 0
    for micro in range(cfg.grad_accum):
        batch = task.batch(step, micro)
        # gradients are averaged over processes once per step, after the last micro-batch
        with distributed.gradient_sync(wrapper, sync=micro == cfg.grad_accum - 1):
            with autocast(device, amp_dtype):
                loss, n = forward(batch)
            if dist.enabled:
                # each process's mean weighted by its share of the batch's target tokens, times the world size
                # that DDP's (and FSDP's) averaging divides by: the gradient of the whole batch's mean
                n_all = distributed.all_sum(n)
                loss = loss * (n * dist.world / n_all.clamp(min=1))
                n = n_all
            (loss / cfg.grad_accum).backward()
        step_loss += loss.detach() / (cfg.grad_accum * dist.world)
        step_tokens += n
    return step_loss, step_tokens


def _check_fsdp(cfg: LoopConfig, model, dist) -> bool:
    if not cfg.fsdp:
        return False
    if not dist.enabled:
        if dist.main:
            print("note: --fsdp shards the model over the processes of a torchrun launch; "
                  "in one process it changes nothing", file=sys.stderr)
        return False
    if is_adapter(model):
        raise UserError("--fsdp with --lora: LoRA trains a few MB of adapter, which every process holds whole; "
                        "leave out --fsdp (DDP is the default)")
    if cfg.ema:
        raise UserError("--fsdp with --ema: the weight average is not sharded yet; leave out one of them")
    return True


def train(model: torch.nn.Module, tokenizer, task: Task, cfg: LoopConfig, out_dir: str | Path,
          *, run_info: dict | None = None, best_dir: Path | None = None, start: Start | None = None) -> dict:
    """Train `model` in place on `task`; checkpoints and metrics go to `out_dir`. Returns a summary.

    `start` is what the verb's `session.begin` found (made here when not given). With `best_dir`, the
    weights with the lowest validation loss so far are kept there."""
    start = start or begin(cfg, out_dir)
    out_dir, dist, main, device = start.out_dir, start.dist, start.main, start.device
    out_dir.mkdir(parents=True, exist_ok=True)
    amp_dtype = resolve_dtype(cfg.dtype, device)
    max_time = parse_duration(cfg.max_time)
    if not (cfg.max_steps or cfg.max_tokens or max_time):
        raise UserError("give a training budget: --max-steps, --max-tokens or --max-time")
    if not 0.0 <= cfg.ema < 1.0:
        raise UserError(f"--ema {cfg.ema}: give a decay between 0 (off) and 1, e.g. 0.995")
    fsdp = _check_fsdp(cfg, model, dist)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model.to(device)
    model.train()
    inference_attention = model.config._attn_implementation
    attention = training_attention(cfg.attention, device, task.context)
    model.set_attn_implementation(attention)  # not saved: config.json never records it
    metrics_path = out_dir / runs.METRICS
    state = _resume_weights(start, model, metrics_path)
    # compiling the loss with the model puts the head, the cast to fp32 and the cross-entropy in one graph
    # (10% faster than compiling the model alone: 12M model, bf16, 2-core CPU)
    loss_fn = torch.compile(task.loss) if cfg.compile else task.loss
    # with several processes: DDP (or FSDP2) over the model and its objective; each process trains on its rows
    forward, wrapper = distributed.wrap(model, loss_fn, device, fsdp=fsdp)
    optimizer = make_optimizer(model, cfg, device)  # after wrapping: FSDP replaces the parameters with shards
    _resume_rest(start, state, wrapper, optimizer, metrics_path)
    step, tokens, elapsed = state.get("step", 0), state.get("tokens", 0), state.get("elapsed", 0.0)
    # made after a resume has restored the weights: --ema first given on --resume averages from there
    ema = WeightAverage(model, cfg.ema) if cfg.ema else None
    if ema is not None and state.get("ema") is not None:
        ema.load_state_dict(state["ema"])
    best = Best.resumed(best_dir, start.checkpoint is not None)

    def log(record: dict) -> None:
        if main:
            _append(metrics_path, record)

    def checkpoint() -> None:
        # every process takes part: summing the interval's loss, and under FSDP gathering weights and optimizer
        interval_state = interval.saved()
        weights, optimizer_state = distributed.unsharded(model), distributed.optimizer_state(wrapper, optimizer)
        if main:
            save_checkpoint(out_dir, weights, tokenizer, optimizer_state,
                            {"step": step, "tokens": tokens, "elapsed": elapsed, "config": dataclasses.asdict(cfg),
                             "run": run_info or {}, "interval": interval_state, "world_size": dist.world,
                             "ema": None if ema is None else ema.state_dict()})

    bar = tqdm(total=100, disable=not (cfg.progress and main), unit="%", dynamic_ncols=True, file=sys.stderr,
               mininterval=0.5, bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}{postfix}]", leave=True)
    bar.n = progress(cfg, max_time, step, tokens, elapsed) * 100
    last_val = None
    if step == 0 and cfg.eval_at_start:
        bar.set_postfix_str("measuring the starting validation loss")  # minutes for a 135M model on CPU
        with _averaged(ema):
            last_val = _evaluate(model, task, device, amp_dtype, wrapper)
            best.offer(last_val, step, model, tokenizer, main)
        bar.set_postfix_str("training", refresh=False)
        log({"step": 0, "tokens": 0, "elapsed": 0.0, **last_val})
    interval = Interval.resumed(state.get("interval", {}), device, main)
    t_last = time.perf_counter()
    reason = "budget"
    with _StopFlag(say=main) as flag:
        while progress(cfg, max_time, step, tokens, elapsed) < 1.0:
            lr = lr_at(step, progress(cfg, max_time, step, tokens, elapsed), lr=cfg.lr, warmup_steps=cfg.warmup_steps,
                       schedule=cfg.schedule, min_lr_ratio=cfg.min_lr_ratio, decay_fraction=cfg.decay_fraction)
            for g in optimizer.param_groups:
                g["lr"] = lr
            step_loss, step_tokens = _step(forward, wrapper, task, step, cfg, dist, device, amp_dtype)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if ema is not None:
                ema.update(step)
            step_tokens = task.tokens_per_step or int(step_tokens)
            tokens += step_tokens
            now = time.perf_counter()
            elapsed += now - t_last
            t_last = now
            if dist.enabled:  # every process stops at the same step: the slowest clock and any Ctrl-C count
                agreed = distributed.all_max(torch.tensor([elapsed, float(flag.stop)], dtype=torch.float64))
                elapsed, flag.stop = float(agreed[0]), bool(agreed[1])
            interval.add(step_loss, step_tokens)
            if step % cfg.log_interval == 0:
                loss_value, tps = interval.close(step)
                log({"step": step, "tokens": tokens, "elapsed": round(elapsed, 3), "loss": round(loss_value, 5),
                     "lr": lr, "tok_per_s": round(tps, 1),
                     "grad_norm": None if grad_norm is None else round(distributed.scalar(grad_norm), 4)})
                bar.set_postfix_str(f"step {step}, loss {loss_value:.3f}, {tps:,.0f} tok/s", refresh=False)
            done = progress(cfg, max_time, step, tokens, elapsed) >= 1.0
            bar.update(min(progress(cfg, max_time, step, tokens, elapsed), 1.0) * 100 - bar.n)  # redraws <= 2/s
            if step % cfg.eval_interval == 0 or done:
                with _averaged(ema):
                    last_val = _evaluate(model, task, device, amp_dtype, wrapper)
                    best.offer(last_val, step, model, tokenizer, main)
                log({"step": step, "tokens": tokens, "elapsed": round(elapsed, 3), **last_val})
                if main:
                    bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in last_val.items()))
                t_last = time.perf_counter()  # evaluation time is not training time
            if step % cfg.save_interval == 0 and not done:
                checkpoint()
                t_last = time.perf_counter()
            if flag.stop:
                reason = "interrupted"
                break
    bar.close()
    checkpoint()
    if ema is not None:  # the model handed back (and saved as the final model) is the average
        ema.copy_to_model()
    model.set_attn_implementation(inference_attention)
    return {"step": step, "tokens": tokens, "elapsed": round(elapsed, 2), "stopped": reason,
            "device": str(device), "dtype": dtype_name(amp_dtype), "compile": cfg.compile, "attention": attention,
            "ema": cfg.ema, **({} if last_val is None else last_val)}
