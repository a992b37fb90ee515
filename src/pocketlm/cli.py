"""The `pocketlm` command: one verb per stage. Run `pocketlm VERB --help` for every option."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from pocketlm import __version__
from pocketlm.config import add_arguments, field, from_namespace, load_yaml
from pocketlm.errors import UserError
from pocketlm.evaluate.options import TaskOptions
from pocketlm.serve.options import ServeOptions

DESCRIPTION = """\
pocketlm turns your own text into a small language model, on your own machine, offline.

stages:
  prepare   clean, de-duplicate and tokenize text files into token shards
  models    list the model presets and their sizes
  pretrain  train a model from scratch on prepared data (CPU or GPU)
  finetune  specialise a model on examples: full or LoRA, chat or prompt/completion data
  merge     fold a LoRA adapter into a standalone model directory
  eval      loss, perplexity, bits per byte, size, memory and speed; task metrics with --task
  compare   several models on one task, side by side
  report    one self-contained HTML page about a run
  run       a recipe: a task end to end from one YAML file
  bot       a support bot from your own FAQ and documents (retrieval + a small model)
  generate  complete a prompt (a model directory or a .gguf file)
  chat      talk to a model in the terminal
  serve     an OpenAI-compatible HTTP API for a model (a model directory or a .gguf file)
  export    write a GGUF file for llama.cpp and Ollama, or an ONNX directory for onnxruntime

a first run (the bundled shop FAQ, about 3 minutes on a laptop):
  pocketlm prepare examples/shop/handbook.md examples/shop/faq.jsonl --out runs/shop-data \
      --vocab-size 2048 --template 'Question: {question}\nAnswer: {answer}'
  pocketlm pretrain --data runs/shop-data --model micro-5m --out runs/shop --max-time 3m
  pocketlm generate runs/shop --temperature 0 --prompt $'Question: Do you price match?\nAnswer:'

every verb explains its options: pocketlm VERB --help
"""


@dataclass(kw_only=True)
class GenerateOptions:
    model: str = field(help="model directory, run directory or .gguf file", positional=True)
    prompt: list[str] = field(default_factory=list, help="prompt text (repeat for several prompts)")
    device: str = field("auto", "auto, cpu, cuda or mps (PyTorch models)")
    dtype: str = field("fp32", "weights precision for PyTorch models: fp32, bf16, fp16", choices=["fp32", "bf16", "fp16"])
    stream: bool = field(True, "print tokens as they are generated")


@dataclass(kw_only=True)
class ChatOptions:
    model: str = field(help="model directory, run directory or .gguf file", positional=True)
    system: str | None = field(None, "system prompt")
    device: str = field("auto", "auto, cpu, cuda or mps")
    dtype: str = field("fp32", "weights precision: fp32, bf16, fp16", choices=["fp32", "bf16", "fp16"])
    ground: bool = field(True, "answer with the model's grounding when it has one (fine-tuned with --ground-field)")


@dataclass(kw_only=True)
class EvalOptions:
    model: str = field(help="model directory or run directory (with --against: also a GGUF file)", positional=True)
    data: str = field(help="a prepared data directory (its val split) or a UTF-8 text file")
    against: str | None = field(None, "a reference model (directory, run or GGUF) with the same tokenizer: "
                                "report perplexity change, KL divergence and same-top-token rate against it, "
                                "with size and speed (what quantizing or distilling cost)")
    context: int | None = field(None, "window length in tokens (default: the model's, at most 1024)")
    batch_size: int = field(8, "windows per forward pass")
    max_tokens: int | None = field(None, "score at most this many tokens")
    device: str = field("auto", "auto, cpu, cuda or mps")
    json: bool = field(False, "print the figures as one JSON object")


@dataclass(kw_only=True)
class QuantizeOptions:
    model: str = field(help="model directory, run directory or GGUF file (f32/f16 is best)", positional=True)
    method: str = field("q4_k_m", "GGUF type: q8_0, q6_k, q5_k_m, q4_k_m (a good default), q3_k_m, q2_k, ... "
                        "(every type llama.cpp's quantizer writes), or f16/f32; or int8 for PyTorch (int8 weights, "
                        "a model directory transformers loads)",
                        choices=None)
    out: str = field(help="the GGUF file to write, e.g. model-q4_k_m.gguf (a directory for int8)")
    data: str | None = field(None, "text (a UTF-8 file, or a prepared data directory) to measure the loss on, "
                             "for --max-loss-increase")
    max_loss_increase: str | None = field(None, "pick the smallest type whose perplexity on --data is within "
                                          "this much of the f32 model's, e.g. 1%% (overrides --method)")
    max_tokens: int = field(8192, "score at most this many tokens of --data per type")
    threads: int | None = field(None, "quantizer threads (default: all cores)")


@dataclass(kw_only=True)
class RightsizeOptions:
    model: str = field(help="the unquantized model: a model directory or run directory", positional=True)
    data: str = field(help="held-out text of the kind the model will see (a UTF-8 file or a prepared data "
                           "directory's val split) to measure every candidate on")
    out: str = field(help="directory for the recommended model, rightsize.json, rightsize.png and report.html")
    max_loss_increase: str = field("1", "quality budget: perplexity at most this many percent above the "
                                   "model's, e.g. 1%% or 3")
    max_size: float | None = field(None, "size budget in MB (the file or directory of weights)")
    min_tokens_per_s: float | None = field(None, "speed budget: greedy decode tokens/s on this machine")
    methods: str | None = field(None, "comma-separated candidates (default: q2_k,q3_k_m,q4_k_m,q4_1,q5_k_m,"
                                "q6_k,q8_0,f16 and int8 when torchao is installed)")
    max_tokens: int = field(4096, "score at most this many tokens of --data per candidate")
    keep_all: bool = field(False, "keep every candidate in OUT/candidates, not only the recommended one")
    task_data: str | None = field(None, "with --task: held-out task examples every candidate is scored on "
                                  "(the fields as for pocketlm eval --task)")
    max_metric_drop: float = field(2.0, "with --task: the task's main metric may be at most this many points "
                                   "below the model's (accuracy, F1, ROUGE-L as 0-100; chrF)")


@dataclass(kw_only=True)
class PruneOptions:
    model: str = field(help="model directory, run directory or GGUF file (Llama, Mistral, Qwen2/3 architectures)",
                       positional=True)
    out: str = field(help="the pruned model directory to write")
    data: str = field(help="calibration text: a UTF-8 file or a prepared data directory (its train split), "
                           "of the kind the model will see")
    layers: int | None = field(None, "keep this many layers: the ones that change the hidden state most")
    ffn_size: int | None = field(None, "keep this many MLP channels in every layer: the most active ones")
    hidden_size: int | None = field(None, "keep this many hidden (embedding) channels: the most active ones")
    max_tokens: int = field(16384, "measure importance on at most this many tokens of --data")


@dataclass(kw_only=True)
class ExportOptions:
    model: str = field(help="model directory or run directory", positional=True)
    format: str = field("gguf", "output format: gguf (one file for llama.cpp and Ollama) or onnx (a directory "
                        "for onnxruntime: model.onnx, tokenizer and config)", choices=["gguf", "onnx"])
    quant: str = field("f16", "GGUF tensor type: f32 (exact), f16 (half the size), q8_0 (a quarter, "
                       "near-lossless); ONNX is always f32", choices=["f32", "f16", "q8_0"])
    out: str = field(help="output file, e.g. model.gguf (with --format onnx: a directory)")


@dataclass(kw_only=True)
class CompareOptions:
    models: list[str] = field(help="model or run directories to compare", positional=True)
    data: str = field(help="held-out examples to score every model on")
    device: str = field("auto", "auto, cpu, cuda or mps")
    json: bool = field(False, "print the results as JSON")


@dataclass(kw_only=True)
class MergeOptions:
    adapter: str = field(help="a LoRA run directory or adapter directory", positional=True)
    out: str = field(help="where to write the standalone model directory")


def _torch_dtype(name: str):
    import torch
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def _is_main_process() -> bool:
    """False in the processes other than rank 0 of a torchrun launch (they print nothing)."""
    from pocketlm.train import distributed
    return distributed.current().main


def _print_error(e: Exception) -> None:
    """One line on stderr. Under torchrun every rank meets the same error: rank 0 says it, and so does the first
    rank of each other machine (its files or devices may be what is wrong there), naming itself."""
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if rank == 0:
        print(f"error: {e}", file=sys.stderr)
    elif local == 0 and int(os.environ.get("LOCAL_WORLD_SIZE", "1")) < int(os.environ.get("WORLD_SIZE", "1")):
        print(f"error (rank {rank}): {e}", file=sys.stderr)


def _config_from(cls, ns):
    base = load_yaml(cls, ns.config) if getattr(ns, "config", None) else None
    return from_namespace(cls, ns, base)  # flags given on the command line win over the YAML file


def cmd_prepare(ns):
    from pocketlm.data.prepare import PrepareConfig, prepare, summary
    stats = prepare(_config_from(PrepareConfig, ns))
    print(summary(stats))


def cmd_models(ns):
    from pocketlm.model.presets import PRESETS, count_parameters
    print(f"{'preset':<14} {'params':>9} {'layers':>6} {'width':>5} {'heads':>7} {'ffn':>5} {'context':>7}  note")
    for p in PRESETS.values():
        n = count_parameters(p, ns.vocab_size)
        print(f"{p.name:<14} {n / 1e6:>8.1f}M {p.layers:>6} {p.hidden:>5} {p.heads:>3}/{p.kv_heads:<3} {p.ffn:>5} "
              f"{p.context:>7}  {p.note}")
    print(f"\nparameter counts at vocabulary {ns.vocab_size or 'size of each preset (8192 unless noted)'}; "
          "the tokenizer's size is used when training.")


def cmd_pretrain(ns):
    from pocketlm.train.pretrain import PretrainConfig, pretrain
    s = pretrain(_config_from(PretrainConfig, ns))
    if not _is_main_process():
        return
    print(f"\ntrained {s['step']} steps, {s['tokens']:,} tokens in {s['elapsed']:.0f} s "
          f"({s['tokens_per_s']:,.0f} tokens/s, {s['dtype']}{', compiled' if s['compile'] else ''}); "
          f"validation loss {s.get('val_loss', float('nan')):.4f}")
    if s["stopped"] == "interrupted":
        print("interrupted: checkpoint saved; continue with the same command plus --resume")
    print(f"model:      {s['model_dir']}\nloss curve: {s['loss_plot']}\nmetrics:    {os.path.dirname(s['loss_plot'])}/metrics.jsonl")


def cmd_finetune(ns):
    from pocketlm.train.finetune import FinetuneConfig, finetune
    s = finetune(_config_from(FinetuneConfig, ns))
    if not _is_main_process():
        return
    print(f"\nfine-tuned {s['step']} steps, {s['tokens']:,} tokens in {s['elapsed']:.0f} s "
          f"({s['tokens_per_s']:,.0f} tokens/s, {s['dtype']}); validation loss {s.get('val_loss', float('nan')):.4f}")
    if s["stopped"] == "interrupted":
        print("interrupted: checkpoint saved; continue with the same command plus --resume")
    print(f"model:      {s['model_dir']}{' (LoRA adapter; `pocketlm merge` folds it in)' if s['config']['lora'] else ''}")
    print(f"loss curve: {s['loss_plot']}")


def cmd_distill(ns):
    from pocketlm.train.distill import DistillConfig, distill
    s = distill(_config_from(DistillConfig, ns))
    if not _is_main_process() or "step" not in s:  # --cache-only has said what it did
        return
    teacher = f"; the teacher ran {s['teacher_s']:.0f} s of it" if "teacher_s" in s else ""
    cached = (f"; teacher cache: {s['cache_hits']:,} chunks read back, {s['cache_misses']:,} computed"
              if "cache_hits" in s else "")
    print(f"\ndistilled {s['step']} steps, {s['tokens']:,} tokens in {s['elapsed']:.0f} s "
          f"({s['tokens_per_s']:,.0f} tokens/s{teacher}{cached}); validation loss "
          f"{s.get('val_loss', float('nan')):.4f}")
    print(f"student:    {s['parameters'] / 1e6:.1f}M parameters, {s['compression']:.1f}x smaller than the teacher")
    if s["stopped"] == "interrupted":
        print("interrupted: checkpoint saved; continue with the same command plus --resume")
    print(f"model:      {s['model_dir']}\nloss curve: {s['loss_plot']}\n"
          f"measure it: pocketlm eval {s['model_dir']} --data TEXT   (and the teacher on the same TEXT)")


def cmd_merge(ns):
    from pocketlm.model.io import load_model, save_model
    opts = from_namespace(MergeOptions, ns)
    from pocketlm.retrieval.grounding import GROUNDING_DIR, copy_grounding
    model, tokenizer = load_model(opts.adapter)
    save_model(model, tokenizer, opts.out)
    copy_grounding(opts.adapter, Path(opts.out) / GROUNDING_DIR)  # a grounded bot stays grounded once merged
    print(f"wrote {opts.out}: a standalone model ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")


def cmd_report(ns):
    from pocketlm.evaluate.report import write_report
    print(f"wrote {write_report(ns.run_dir, ns.out)}")


def cmd_run(ns):
    from pocketlm.recipes import parse_sets, run_recipe
    run_recipe(ns.recipe, parse_sets(ns.set or []))


def _is_gguf(path: str) -> bool:
    from pocketlm.inference.llamacpp import is_gguf
    return path.lower().endswith(".gguf") or is_gguf(path)


def cmd_bot(ns):
    from pocketlm.bot.build import BotBuildConfig, build_bot
    cfg = _config_from(BotBuildConfig, ns)
    s = build_bot(cfg)
    print(f"\nbot ready in {s['seconds']:.0f} s: {s['faq_entries']} FAQ entries, {s['passages'] - s['faq_entries']} "
          f"document passages\n"
          f"talk to it:  pocketlm chat {cfg.out}\n"
          f"score it:    pocketlm eval {cfg.out} --task facts --data QUESTIONS.jsonl --prompt-field question "
          "--completion-field answer --key-field key")


def cmd_generate(ns):
    from pocketlm.inference.options import SamplingConfig
    opts, samp = from_namespace(GenerateOptions, ns), from_namespace(SamplingConfig, ns)
    prompts = opts.prompt
    if not prompts and not sys.stdin.isatty():
        prompts = [sys.stdin.read()]
    if not prompts:
        raise UserError("give a prompt with --prompt TEXT (or pipe text in)")
    if _is_gguf(opts.model):
        from pocketlm.inference.llamacpp import generate_gguf
        for prompt in prompts:
            print(prompt, end="", flush=True)
            for piece in generate_gguf(opts.model, prompt, max_new_tokens=samp.max_new_tokens,
                                       temperature=samp.temperature, top_k=samp.top_k, top_p=samp.top_p,
                                       repetition_penalty=samp.repetition_penalty, seed=samp.seed,
                                       stop=samp.stop, stream=True):
                print(piece, end="", flush=True)
            print()
        return
    from pocketlm.data.tokenizer import stop_token_ids
    from pocketlm.device import resolve_device
    from pocketlm.inference.engine import stream_text
    from pocketlm.model.io import load_model
    model, tokenizer = load_model(opts.model, dtype=_torch_dtype(opts.dtype), device=resolve_device(opts.device))
    for prompt in prompts:
        ids = tokenizer.encode(prompt, add_special_tokens=True)
        print(prompt, end="", flush=True)
        pieces = stream_text(model, tokenizer, ids, samp, stop_token_ids(tokenizer))
        if opts.stream:
            for piece in pieces:
                print(piece, end="", flush=True)
        else:
            print("".join(pieces), end="")
        print()


def cmd_chat(ns):
    from pocketlm.inference.options import SamplingConfig
    opts, samp = from_namespace(ChatOptions, ns), from_namespace(SamplingConfig, ns)
    from pocketlm.bot.answer import is_bot
    from pocketlm.retrieval.grounding import find_grounding
    if is_bot(opts.model):
        from pocketlm.bot.chat import chat_bot
        chat_bot(opts.model)
        return
    grounding = find_grounding(opts.model) if opts.ground else None
    if _is_gguf(opts.model):
        from pocketlm.serve.chat import chat_gguf
        chat_gguf(opts.model, samp, system=opts.system, grounding=grounding)
        return
    from pocketlm.device import resolve_device
    from pocketlm.model.io import load_model
    from pocketlm.serve.chat import chat_loop
    model, tokenizer = load_model(opts.model, dtype=_torch_dtype(opts.dtype), device=resolve_device(opts.device))
    chat_loop(model, tokenizer, samp, system=opts.system, grounding=grounding)


def cmd_serve(ns):
    opts = from_namespace(ServeOptions, ns)
    try:
        import uvicorn

        from pocketlm.serve.server import create_app
    except ImportError as e:
        raise UserError(f"pocketlm serve needs FastAPI and uvicorn ({e}); install them with: "
                        "pip install 'pocketlm[serve]'") from None
    from pocketlm.bot.answer import is_bot
    from pocketlm.inference.backends import load_backend
    from pocketlm.retrieval.grounding import find_grounding
    if is_bot(opts.model):  # a bot run: answers from its FAQ and documents, with citations
        from pocketlm.bot.backend import BotBackend
        backend = BotBackend(opts.model, opts.name or Path(opts.model).resolve().name)
        grounding = None
    else:
        backend = load_backend(opts.model, name=opts.name, device=opts.device, dtype=opts.dtype,
                               parallel=opts.parallel, max_waiting=opts.max_waiting)
        grounding = find_grounding(opts.model) if opts.ground else None
    app = create_app(backend, api_key=opts.api_key, system=opts.system, grounding=grounding,
                     max_body_bytes=opts.max_body_bytes, max_tokens_limit=opts.max_tokens_limit,
                     max_waiting=opts.max_waiting)
    shown = "localhost" if opts.host in ("127.0.0.1", "0.0.0.0", "::") else opts.host
    base = f"http://{shown}:{opts.port}"
    auth = " -H 'Authorization: Bearer $KEY'" if opts.api_key else ""
    body = json.dumps({"model": backend.name, "messages": [{"role": "user", "content": "Hello"}]})
    print(f"serving {backend.name} (OpenAI API) on http://{opts.host}:{opts.port}/v1 (Ctrl-C stops); chat page: "
          f"{base}/ ; try: curl {base}/v1/chat/completions{auth} -H 'Content-Type: application/json' -d '{body}'",
          flush=True)
    config = uvicorn.Config(app, host=opts.host, port=opts.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    try:
        server.run()  # Ctrl-C: uvicorn stops accepting, gives open streams 5 s, then raises it again
    except KeyboardInterrupt:
        pass
    except SystemExit:  # uvicorn's way of saying it could not start (it has logged why)
        pass
    if server.started:
        print("stopped", file=sys.stderr)
    else:
        raise UserError(f"could not listen on {opts.host}:{opts.port} (in use? try another --port)")


def cmd_eval(ns):
    from pocketlm.bot.answer import is_bot
    from pocketlm.device import resolve_device
    from pocketlm.model.io import load_model
    opts = from_namespace(EvalOptions, ns)
    task_opts = from_namespace(TaskOptions, ns)
    if is_bot(opts.model):
        from pocketlm.bot.answer import Bot
        from pocketlm.bot.evaluate import evaluate_bot, format_bot_results
        from pocketlm.evaluate.tasks import save_results
        result = evaluate_bot(Bot(opts.model), opts.data, task_opts)
        path = Path(task_opts.save) if task_opts.save else Path(opts.model) / "evals" / f"facts-{Path(opts.data).stem}.json"
        save_results(result, path)
        print(json.dumps(result) if opts.json else format_bot_results(result) + f"\nresults: {path}")
        return
    if opts.against:
        if task_opts.task:
            raise UserError("--against compares next-token distributions on --data; leave --task out")
        from pocketlm.evaluate.against import evaluate_against, print_against
        report = evaluate_against(opts.model, opts.against, opts.data, context=opts.context or 512,
                                  max_tokens=opts.max_tokens or 16384, device=resolve_device(opts.device))
        print_against(report, opts.json)
        return
    from pocketlm.inference.llamacpp import is_gguf
    if task_opts.task and is_gguf(opts.model):  # scored through llama.cpp
        model, tokenizer = None, None
    else:
        model, tokenizer = load_model(opts.model, device=resolve_device(opts.device))
    if task_opts.task:
        from pocketlm.evaluate.tasks import default_save_path, evaluate_task, format_results, save_results
        result = evaluate_task(model, tokenizer, opts.model, opts.data, task_opts)
        path = Path(task_opts.save) if task_opts.save else default_save_path(opts.model, task_opts.task, opts.data)
        if path is not None:
            save_results(result, path)
        print(json.dumps(result) if opts.json else format_results(result))
        if path is not None and not opts.json:
            print(f"results: {path}")
        return
    from pocketlm.evaluate.perplexity import evaluate_model, print_report
    report = evaluate_model(model, tokenizer, opts.model, opts.data, context=opts.context,
                            batch_size=opts.batch_size, max_tokens=opts.max_tokens)
    print_report(report, opts.json)


def cmd_compare(ns):
    from pocketlm.device import resolve_device
    from pocketlm.evaluate.tasks import evaluate_task
    from pocketlm.model.io import load_model
    opts = from_namespace(CompareOptions, ns)
    task_opts = from_namespace(TaskOptions, ns)
    if not task_opts.task:
        raise UserError("give the task to compare on with --task")
    rows = []
    for path in opts.models:
        model, tokenizer = load_model(path, device=resolve_device(opts.device))
        r = evaluate_task(model, tokenizer, path, opts.data, task_opts)
        rows.append((path, sum(p.numel() for p in model.parameters()), r))
    if opts.json:
        print(json.dumps([{"model": p, "parameters": n, **r} for p, n, r in rows]))
        return
    names = list(rows[0][2]["metrics"])
    width = max(len(p) for p, _, _ in rows) + 2
    print(f"{'model':<{width}}{'params':>9}" + "".join(f"{n:>16}" for n in names) + f"{'tokens/s':>10}")
    for p, n, r in rows:
        print(f"{p:<{width}}{n / 1e6:>8.1f}M" + "".join(f"{r['metrics'][k]:>16.4f}" for k in names)
              + f"{r['speed']['tokens_per_s']:>10.1f}")


def cmd_quantize(ns):
    from pocketlm.compress.quantize import quantize
    opts = from_namespace(QuantizeOptions, ns)
    budget = None
    if opts.max_loss_increase is not None:
        try:
            budget = float(opts.max_loss_increase.strip().rstrip("%"))
        except ValueError:
            raise UserError(f"--max-loss-increase {opts.max_loss_increase!r}: give a percentage, e.g. 1%") from None
    info = quantize(opts.model, opts.out, opts.method, data=opts.data, max_loss_increase=budget,
                    max_tokens=opts.max_tokens, threads=opts.threads)
    print(f"wrote {info['path']} ({info['bytes'] / 1e6:.1f} MB, {info['method']})")
    if Path(info["path"]).is_dir():
        print(f"run it: pocketlm generate {info['path']} (bf16 activations, int8 weights)")
    if info["note"]:
        print(info["note"])
    if info["grounding"]:
        print(f"      {info['grounding']}/ (the bot's grounding: keep it beside the file)")
    print(f"measure it: pocketlm eval {info['path']} --against {opts.model} --data TEXT")


def cmd_rightsize(ns):
    from pocketlm.compress.rightsize import rightsize
    opts = from_namespace(RightsizeOptions, ns)
    task_opts = from_namespace(TaskOptions, ns)
    try:
        budget = float(opts.max_loss_increase.strip().rstrip("%"))
    except ValueError:
        raise UserError(f"--max-loss-increase {opts.max_loss_increase!r}: give a percentage, e.g. 1%") from None
    methods = tuple(m.strip() for m in opts.methods.split(",") if m.strip()) if opts.methods else None
    r = rightsize(opts.model, opts.out, opts.data, max_loss_increase=budget, max_size_mb=opts.max_size,
                  min_tokens_per_s=opts.min_tokens_per_s, methods=methods, max_tokens=opts.max_tokens,
                  keep_all=opts.keep_all, task_opts=task_opts if task_opts.task else None, task_data=opts.task_data,
                  max_metric_drop=opts.max_metric_drop)
    ref = r["reference"]
    if r["recommended"]:
        best = next(c for c in r["candidates"] if c["method"] == r["recommended"])
        print(f"recommended: {best['method']}, {best['bytes'] / 1e6:.1f} MB ({ref['bytes'] / best['bytes']:.1f}x "
              f"smaller than {ref['bytes'] / 1e6:.1f} MB), perplexity {best['perplexity_change_pct']:+.2f}%, "
              f"{best['decode_tokens_per_s']:.1f} tokens/s"
              + (f", {r['budget']['task_metric']} {best['task_metric']:.2f} (the model: {ref['task_metric']:.2f})"
                 if r["budget"]["task"] else "") + f" -> {r['path']}")
        print(f"built by: {r['command']}")
    else:
        print("no candidate meets the budget; the figures of each are above (raise --max-loss-increase or --max-size)")
    print(f"Pareto front (size, quality, speed): {', '.join(r['pareto'])}")
    print(f"report: {Path(opts.out) / 'report.html'}")
    return 0 if r["recommended"] else 1


def cmd_prune(ns):
    from pocketlm.compress.prune import prune
    opts = from_namespace(PruneOptions, ns)
    info = prune(opts.model, opts.out, data=opts.data, layers=opts.layers, ffn_size=opts.ffn_size,
                 hidden_size=opts.hidden_size, max_tokens=opts.max_tokens)
    sizes = ", ".join(f"{k.replace('_', ' ')} {a} -> {b}" for k, (a, b) in info["sizes"].items() if a != b)
    before, after = info["parameters_before"], info["parameters_after"]
    print(f"wrote {info['path']}: {before / 1e6:.1f}M -> {after / 1e6:.1f}M parameters ({after / before:.0%}; {sizes})")
    if info["layers_dropped"]:
        print(f"layers dropped (least block influence): {', '.join(map(str, info['layers_dropped']))}")
    print(f"recover its quality: pocketlm distill --teacher {opts.model} --student {info['path']} --data DATA "
          "--out RUN (DATA tokenized with the model's tokenizer)")


def cmd_export(ns):
    opts = from_namespace(ExportOptions, ns)
    if opts.format == "onnx":
        return _export_onnx(opts, quant_given=hasattr(ns, "quant"))
    from pocketlm.export.gguf import export_gguf
    info = export_gguf(opts.model, opts.out, quant=opts.quant)
    print(f"wrote {info['path']} ({info['bytes'] / 1e6:.1f} MB, {opts.quant})")
    if info["grounding"]:
        print(f"      {info['grounding']}/ (the bot's grounding: keep it beside the file; pocketlm chat uses it)")
    print(f"run it: pocketlm generate {info['path']} --prompt 'Hello'\n"
          f"    or: llama-completion -m {info['path']} -no-cnv -p 'Hello'   (llama.cpp; see docs/export.md for Ollama)")


def _export_onnx(opts: ExportOptions, *, quant_given: bool) -> None:
    if quant_given:
        raise UserError("--quant applies to GGUF only; --format onnx writes f32 weights (leave --quant out)")
    from pocketlm.export.onnx import export_onnx
    info = export_onnx(opts.model, opts.out)
    print(f"wrote {info['path']}/ ({info['bytes'] / 1e6:.1f} MB of ONNX, f32; tokenizer and config.json beside "
          f"it; onnxruntime matches PyTorch to {info['max_abs_diff']:.1g})")
    print("run it with onnxruntime and tokenizers: see docs/export.md (ONNX)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pocketlm", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"pocketlm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="VERB")
    fmt = argparse.ArgumentDefaultsHelpFormatter

    def verb(name, help, func, *configs, epilog=None, recipe=False):
        p = sub.add_parser(name, help=help, description=help, epilog=epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if recipe:
            p.add_argument("--config", metavar="YAML", help="read options from a YAML file; flags override it")
        for cls in configs:
            add_arguments(p, cls)
        p.set_defaults(func=func)
        return p

    from pocketlm.bot.build import BotBuildConfig
    from pocketlm.data.options import PrepareConfig
    from pocketlm.inference.options import SamplingConfig
    from pocketlm.train.options import DistillConfig, FinetuneConfig, PretrainConfig
    del fmt
    verb("prepare", "Clean, de-duplicate and tokenize text into train/val token shards.", cmd_prepare,
         PrepareConfig, recipe=True, epilog="""examples:
  pocketlm prepare docs/ faq.jsonl --out data/mydocs
  pocketlm prepare support.csv --text-column answer --out data/support --vocab-size 8192
  pocketlm prepare notes/ --tokenizer path/to/SmolLM2 --out data/notes   # reuse a model's tokenizer""")
    m = verb("models", "List the model presets with their parameter counts.", cmd_models)
    m.add_argument("--vocab-size", type=int, default=None, help="count parameters at this vocabulary size")
    verb("pretrain", "Train a small Llama-family model from scratch on prepared data.", cmd_pretrain,
         PretrainConfig, recipe=True, epilog="""examples:
  pocketlm pretrain --data data/mydocs --model mini-12m --out runs/mini --max-time 10m
  pocketlm pretrain --data data/mydocs --out runs/mini --max-steps 5000 --compile --resume
Ctrl-C saves a checkpoint; add --resume to the same command to continue.""")
    verb("finetune", "Fine-tune a model (full or LoRA) on chat or prompt/completion examples.", cmd_finetune,
         FinetuneConfig, recipe=True, epilog="""examples:
  pocketlm finetune --base runs/shop --data faq.jsonl --out runs/shop-sft \\
      --prompt-field question --completion-field answer
  pocketlm finetune --base SmolLM2-135M-Instruct.Q4_1.gguf --data chats.jsonl --out runs/smol-lora --lora
  pocketlm finetune --base models/qwen --data pairs.tsv --columns en de \\
      --prompt-template 'Translate to German: {en}' --completion-template '{de}' --out runs/de --lora
Only assistant tokens are trained on; the best validation checkpoint becomes OUT/model.""")
    verb("distill", "Train a small student on a bigger teacher's next-token distributions (knowledge "
         "distillation).", cmd_distill, DistillConfig, recipe=True, epilog="""examples:
  pocketlm prepare stories.txt --tokenizer SmolLM2-135M-Instruct.Q4_1.gguf --out data/stories-smol
  pocketlm distill --teacher SmolLM2-135M-Instruct.Q4_1.gguf --student mini-12m \\
      --data data/stories-smol --out runs/student --max-time 30m
  pocketlm distill --teacher runs/big --student runs/big-pruned --data data/mine --out runs/recovered \\
      --alpha 1 --max-steps 2000
The data must be tokenized with the teacher's tokenizer. The teacher's top-k at each position is computed
once per chunk and kept in OUT/teacher_topk (share it between students with --teacher-cache DIR).
Ctrl-C saves a checkpoint; add --resume to continue. See docs/shrink.md.""")
    verb("merge", "Fold a LoRA adapter into its base: a standalone model directory.", cmd_merge, MergeOptions)
    verb("generate", "Complete prompts with a model directory or a GGUF file.", cmd_generate,
         GenerateOptions, SamplingConfig, epilog="""examples:
  pocketlm generate runs/mini --prompt 'Once upon a time' --temperature 0.7
  pocketlm generate model.gguf --prompt 'Our opening hours' --temperature 0""")
    verb("chat", "Talk to a model in the terminal (its chat template, streaming).", cmd_chat,
         ChatOptions, SamplingConfig)
    verb("serve", "Serve a model over HTTP with OpenAI's API (chat and completions, streaming).", cmd_serve,
         ServeOptions, epilog="""examples:
  pocketlm serve runs/shop-sft                     # http://127.0.0.1:8000/v1, this machine only
  pocketlm serve model.gguf --port 8080 --api-key s3cret
Concurrent requests are decoded together (--parallel); see docs/serve.md.""")
    verb("eval", "Loss, perplexity, bits per byte, size, memory and speed of a model; or, with --task, "
         "the task metric on held-out examples.", cmd_eval, EvalOptions, TaskOptions, epilog="""examples:
  pocketlm eval runs/mini --data data/mine                     # perplexity and bits per byte on the val split
  pocketlm eval runs/mini --data notes.txt --json
  pocketlm eval mini-q4_k_m.gguf --against runs/mini --data notes.txt   # what quantizing cost (KL, top token)
  pocketlm eval runs/bot --task facts --data examples/shop/faq_heldout.jsonl \\
      --prompt-field question --completion-field answer
  pocketlm eval runs/intents --task classification --data test.csv --prompt-field text --completion-field category
  pocketlm eval runs/mybot --task facts --data questions.jsonl --prompt-field question --key-field key
      (a `pocketlm bot` run: an empty key means the bot should decline; reports both rates)
tasks: qa (exact match, token F1), summarization (ROUGE-L), translation (chrF, BLEU), classification
(accuracy, macro-F1; decoding constrained to the labels), commands (JSON validity, intent accuracy, slot F1;
decoding constrained to valid JSON), facts (share of answers containing the expected key fact).""")
    r = verb("report", "Write RUN_DIR/report.html: one self-contained page about a run (plots, metrics, "
             "examples).", cmd_report)
    r.add_argument("run_dir", metavar="RUN_DIR", help="a pretrain or finetune run directory")
    r.add_argument("--out", default=None, help="write the page here instead of RUN_DIR/report.html")
    verb("bot", "Build a support bot from your own FAQ and documents: retrieval that understands meaning, "
         "a small model that picks among close candidates, answers that cite their source, and 'I don't know' "
         "when your data does not say.",
         cmd_bot, BotBuildConfig, recipe=True, epilog="""examples:
  pocketlm bot --faq faq.jsonl --out runs/mybot
  pocketlm bot --faq export.csv --question-field Title --answer-field Body --docs manual/ --out runs/mybot
  pocketlm bot --faq faq.jsonl --model none --out runs/lookup     # answers with the retrieved text itself
then: pocketlm chat runs/mybot, or pocketlm eval runs/mybot --task facts --data questions.jsonl --key-field key
(a question with an empty key expects the bot to decline). See docs/bot.md.""")
    r = verb("run", "Run a recipe end to end: data -> base or pretrain -> fine-tune -> evaluate -> report.", cmd_run,
             epilog="""examples:
  pocketlm run recipes/shop-faq.yaml
  pocketlm run support-bot --set out=runs/support --set steps=400
recipes shipped in recipes/: shop-faq, support-bot, translate-en-de(-scratch), summarize,
assistant-commands(-scratch), intents-banking77(-scratch). A recipe run again skips finished steps and resumes interrupted training.""")
    r.add_argument("recipe", help="a recipe YAML file, or the name of one in recipes/")
    r.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a recipe parameter (repeatable)")
    verb("compare", "Score several models on the same task, side by side.", cmd_compare, CompareOptions, TaskOptions)
    verb("quantize", "Shrink a model into a quantized GGUF file with llama.cpp's quantizer (K-quants and the "
         "rest), optionally the smallest type within a loss budget; or into an int8 model directory for "
         "PyTorch (torchao).", cmd_quantize, QuantizeOptions,
         epilog="""examples:
  pocketlm quantize runs/mini --method q4_k_m --out mini-q4_k_m.gguf
  pocketlm quantize runs/mini --method int8 --out runs/mini-int8      # PyTorch: generate, chat, eval, serve
  pocketlm quantize runs/mini --max-loss-increase 1% --data notes.txt --out mini-small.gguf
  pocketlm eval mini-q4_k_m.gguf --against runs/mini --data notes.txt    # what it cost
See docs/shrink.md.""")
    verb("rightsize", "Make every quantized form of a model, measure each on your text (size, quality, speed, "
         "energy) and recommend the smallest within your budgets, with a Pareto plot.", cmd_rightsize,
         RightsizeOptions, TaskOptions, epilog="""examples:
  pocketlm rightsize runs/mine --data notes.txt --out runs/mine-sizes
  pocketlm rightsize runs/bot --data notes.txt --task facts --task-data heldout.jsonl --out runs/bot-sizes
  pocketlm rightsize runs/mine --data notes.txt --max-loss-increase 3% --max-size 50 --out sizes
See docs/shrink.md.""")
    verb("prune", "Cut layers, MLP channels or hidden channels of a model by their importance on your text; "
         "then recover with `pocketlm distill`.", cmd_prune, PruneOptions, epilog="""examples:
  pocketlm prune runs/smol --data notes.txt --layers 20 --out runs/smol-20l
  pocketlm prune SmolLM2-135M-Instruct.Q4_1.gguf --data data/stories-smol --hidden-size 378 --ffn-size 1024 \\
      --out runs/smol-half
  pocketlm distill --teacher SmolLM2-135M-Instruct.Q4_1.gguf --student runs/smol-half \\
      --data data/stories-smol --out runs/smol-half-recovered --max-time 30m
See docs/shrink.md.""")
    verb("export", "Export a model to GGUF for llama.cpp and Ollama, or to ONNX for onnxruntime.", cmd_export,
         ExportOptions, epilog="""examples:
  pocketlm export runs/mini --quant q8_0 --out mini.gguf
  pocketlm export runs/mini --format onnx --out mini-onnx     # needs pip install 'pocketlm[onnx]'""")
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    parser = build_parser()
    ns = parser.parse_args(argv)
    if not getattr(ns, "func", None):
        parser.print_help()
        return 0
    try:
        rc = ns.func(ns)  # a verb may return an exit status (rightsize: 1 when nothing meets the budget)
    except UserError as e:
        _print_error(e)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    finally:
        if "pocketlm.train.distributed" in sys.modules:  # a torchrun launch leaves its process group cleanly
            sys.modules["pocketlm.train.distributed"].teardown()
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
