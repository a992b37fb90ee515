"""The options of the training verbs, as typed configs (one field = one flag = one YAML key).

Kept apart from the training code, which imports torch, so that `pocketlm --help` and the checks of a
recipe's options start in a fraction of a second.
"""

from __future__ import annotations

from dataclasses import dataclass

from pocketlm.config import field


@dataclass(kw_only=True)
class LoopConfig:
    batch_size: int = field(16, "sequences per micro-batch")
    grad_accum: int = field(1, "micro-batches per optimizer step (effective batch = batch-size x grad-accum)")
    lr: float = field(1e-3, "peak learning rate")
    min_lr_ratio: float = field(0.1, "final learning rate as a fraction of --lr")
    warmup_steps: int = field(100, "linear warm-up steps")
    schedule: str = field("cosine", "learning-rate schedule after warm-up", choices=["cosine", "wsd", "constant"])
    decay_fraction: float = field(0.2, "wsd only: fraction of the budget spent decaying")
    weight_decay: float = field(0.1, "AdamW weight decay (matrices only; norms are not decayed)")
    beta1: float = field(0.9, "AdamW beta1")
    beta2: float = field(0.95, "AdamW beta2")
    grad_clip: float = field(1.0, "clip the gradient norm to this (0 = off)")
    max_steps: int | None = field(None, "stop after this many optimizer steps")
    max_tokens: int | None = field(None, "stop after this many training tokens")
    max_time: str | None = field(None, "stop after this much training time (evaluation excluded): "
                                 "seconds or 30s / 10m / 1.5h")
    eval_interval: int = field(200, "evaluate on the validation split every N steps (and at the end)")
    eval_batches: int = field(20, "validation batches per evaluation")
    eval_at_start: bool = field(True, "measure the validation loss before the first step, where the loss curve "
                                      "starts (off saves a validation pass: minutes for a 135M model on CPU)")
    log_interval: int = field(10, "write a metrics line every N steps")
    save_interval: int = field(500, "write a checkpoint every N steps (also at the end and on Ctrl-C)")
    seed: int = field(1337, "random seed (initialisation and data order)")
    dtype: str = field("auto", "compute precision: auto (bf16 where the hardware has it), fp32, bf16, fp16",
                       choices=["auto", "fp32", "bf16", "fp16"])
    compile: bool = field(False, "torch.compile the model (slower start, faster steps)")
    ema: float = field(0.0, "keep an exponential moving average of the weights with this decay (e.g. 0.995, about "
                            "the last 200 steps) and validate and save the average; 0 = off")
    attention: str = field("auto", "attention kernel while training: auto (plain matmul attention on CPU for "
                           "contexts up to 512 tokens, where it is faster; PyTorch's SDPA otherwise), sdpa, eager",
                           choices=["auto", "sdpa", "eager"])
    device: str = field("auto", "auto, cpu, cuda, cuda:N or mps")
    fsdp: bool = field(False, "under torchrun: shard the weights, gradients and optimizer state over the processes "
                              "(FSDP2) instead of a whole copy in each (DDP, the default); for models that do not "
                              "fit one device")
    resume: bool = field(False, "continue from OUT/checkpoint")
    progress: bool = field(True, "show a progress bar")


@dataclass(kw_only=True)
class PretrainConfig(LoopConfig):
    data: str = field(help="prepared data directory (from `pocketlm prepare`)")
    out: str = field(help="run directory: checkpoints, metrics, plots and the final model (OUT/model)")
    model: str = field("mini-12m", "model preset (see `pocketlm models`)")
    init: str | None = field(None, "start from this Hugging Face causal-LM directory instead of a preset")
    context: int | None = field(None, "sequence length in tokens (default: the preset's, at most 1024)")


DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(kw_only=True)
class FinetuneConfig(LoopConfig):
    base: str = field(help="base model: a Hugging Face directory, a pocketlm run, a .gguf file or a hub id")
    data: list[str] = field(help="training examples: .jsonl/.json (chat or prompt/completion), .csv/.tsv")
    out: str = field(help="run directory; the fine-tuned model (or adapter) goes to OUT/model")
    val_data: list[str] = field(default_factory=list, help="validation examples (default: split off --val-fraction)")
    val_fraction: float = field(0.1, "fraction of examples held out for validation when --val-data is not given")
    epochs: float = field(3.0, "passes over the training examples (when no other budget is given)")
    context: int = field(512, "longest example in tokens; short examples are packed up to this length")
    lora: bool = field(False, "train a LoRA adapter instead of all weights")
    lora_rank: int = field(16, "LoRA rank r")
    lora_alpha: int = field(32, "LoRA scaling alpha")
    lora_dropout: float = field(0.05, "LoRA dropout")
    lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS), help="module names LoRA adapts")
    prompt_field: str = field("prompt", "record field (or CSV column) holding the prompt")
    completion_field: str = field("completion", "record field (or CSV column) holding the answer")
    prompt_template: str | None = field(None, "build the prompt from fields, e.g. 'Translate to German: {en}'")
    completion_template: str | None = field(None, "build the answer from fields, e.g. '{de}'")
    system: str | None = field(None, "system prompt added to every example")
    columns: list[str] | None = field(None, "column names for a CSV/TSV file without a header row")
    augment: int = field(0, "add N noisy copies of every training example (words dropped or swapped, typos, "
                         "lower case in the user turn) so a small model learns to read past the exact wording")
    keep_best: bool = field(True, "keep the weights with the lowest validation loss as the final model")
    ground_field: str | None = field(None, "record field naming each example's topic (e.g. fact): a router learns "
                                     "question -> topic and every answer is made with the closest known answer "
                                     "of that topic in view (see docs/finetune.md, grounded answers)")
    ground_copy: float = field(0.5, "with --ground-field: fraction of training examples whose answer is replaced "
                               "by their reference, so the model learns to trust it (0 = own answers only)")
    strict: bool = field(True, "stop at the first bad record (--no-strict skips it with a warning)")
    teacher: str | None = field(None, "sequence-level distillation: this model (a directory, run or GGUF file, any "
                                "tokenizer) writes the answer of every example and --base learns those instead of "
                                "the data's (kept in OUT/teacher_answers.jsonl); examples may then be prompts only")
    teacher_max_tokens: int = field(256, "with --teacher: longest answer it writes, in its tokens")
    teacher_temperature: float = field(0.0, "with --teacher: its sampling temperature (0 = greedy)")
    # fine-tuning defaults differ from pretraining
    lr: float | None = field(None, "peak learning rate (default: 1e-3 with --lora, 5e-5 otherwise)")
    batch_size: int = field(8, "sequences per micro-batch")
    warmup_steps: int = field(20, "linear warm-up steps")
    weight_decay: float = field(0.0, "AdamW weight decay")
    eval_interval: int = field(50, "evaluate every N steps (and at the end)")
    save_interval: int = field(200, "checkpoint every N steps (also at the end and on Ctrl-C)")


@dataclass(kw_only=True)
class DistillConfig(LoopConfig):
    teacher: str = field(help="the model to learn from: a Hugging Face directory, a pocketlm run or a .gguf file")
    data: str = field(help="prepared data directory, tokenized with the teacher's tokenizer "
                           "(`pocketlm prepare TEXT --tokenizer TEACHER --out DATA`)")
    out: str = field(help="run directory: checkpoints, metrics, plots, the teacher cache and the student (OUT/model)")
    student: str = field("mini-12m", "a model preset (a new model with the teacher's vocabulary; see `pocketlm "
                         "models`) or a model directory / run to continue, e.g. a pruned teacher")
    context: int | None = field(None, "sequence length in tokens (default: the student preset's, at most 1024)")
    loss: str = field("fkl", "divergence from the teacher: fkl = KL(teacher||student), rkl = KL(student||teacher), "
                      "jsd = Jensen-Shannon", choices=["fkl", "rkl", "jsd"])
    alpha: float = field(0.5, "weight of the distillation loss; the rest (1 - alpha) is the usual next-token "
                         "cross-entropy on the data (0 = no teacher: the student is trained alone)")
    temperature: float = field(1.0, "soften both distributions by this temperature (the loss is scaled by its square)")
    top_k: int = field(32, "keep the teacher's k most likely tokens (and the rest's total mass) at each position; "
                       "0 = its whole distribution, computed every step and never cached")
    teacher_cache: str | None = field(None, "directory for the teacher's top-k, computed once per chunk of the data "
                                      "and read back on later epochs and by later runs on the same data "
                                      "(default OUT/teacher_topk; 'none' = compute every time)")
    cache_only: bool = field(False, "only run the teacher: fill the teacher cache for the chunks a run of this "
                             "budget (--max-steps or --max-tokens; default one epoch) draws, then stop; students "
                             "trained later with the same --teacher-cache, seed and batch read it back")
    inherit_embeddings: bool = field(True, "start a new student's token embeddings from the teacher's: copied when "
                                     "the widths match, projected onto the student's width by PCA when narrower")
