"""`pocketlm rightsize MODEL --data TEXT --out DIR`: which shrunk form of a model to ship, measured on your text.

Every candidate (the GGUF types of llama.cpp's quantizer, and int8 for PyTorch when torchao is installed) is
made from MODEL by `pocketlm quantize` and measured against MODEL on the same held-out tokens by
`evaluate/against.py`: file size, perplexity change, KL divergence, same top token, greedy decode tokens/s and
energy per token, each on the runtime that will run it (llama.cpp for GGUF, pocketlm's decode loop for int8).
With `--task` and `--task-data`, each candidate is also scored on held-out task examples (`pocketlm eval
--task`, GGUF files through llama.cpp) and its main metric compared with MODEL's. The recommendation is the
smallest file that meets every budget given (`--max-loss-increase`, default 1%; `--max-size`;
`--min-tokens-per-s`; `--max-metric-drop`, default 2 points, with a task); the Pareto front is the candidates that no other beats on size, quality
and speed at once. Written to DIR: the recommended model (the others are deleted unless `--keep-all`),
`rightsize.json`, `rightsize.png` (quality against size, speed as colour, the front drawn) and `report.html`
(the plot and table in one self-contained page), with the command that builds the recommended model again.

Sizes of model (training smaller presets) and pruning ratios are not swept here: both need training, which
`pocketlm distill` and `pocketlm prune` do; measure their outputs with `pocketlm rightsize` in turn.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import shutil
from pathlib import Path

from pocketlm.errors import UserError

GGUF_TYPES = ("q2_k", "q3_k_m", "q4_k_m", "q4_1", "q5_k_m", "q6_k", "q8_0", "f16")


def default_methods() -> tuple[str, ...]:
    import importlib.util
    return (*GGUF_TYPES, "int8") if importlib.util.find_spec("torchao") else GGUF_TYPES


def _target(workdir: Path, name: str, method: str) -> Path:
    return workdir / (f"{name}-int8" if method == "int8" else f"{name}-{method}.gguf")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def pareto(rows: list[dict], quality: str = "perplexity_change_pct") -> list[str]:
    """Methods no other row beats on all of size (smaller), `quality` (lower: the perplexity change, or the task
    metric's drop) and tokens/s (higher)."""
    def beats(a, b):
        ge = (a["bytes"] <= b["bytes"] and a[quality] <= b[quality]
              and a["decode_tokens_per_s"] >= b["decode_tokens_per_s"])
        gt = (a["bytes"] < b["bytes"] or a[quality] < b[quality]
              or a["decode_tokens_per_s"] > b["decode_tokens_per_s"])
        return ge and gt
    return [r["method"] for r in rows if not any(beats(o, r) for o in rows if o is not r)]


# the metric a task budget is on (evaluate/metrics.py), and whether it is a 0-1 rate (shown as points x 100)
PRIMARY = {"qa": ("token_f1", True), "summarization": ("rouge_l", True), "translation": ("chrf", False),
           "classification": ("accuracy", True), "commands": ("intent_accuracy", True),
           "facts": ("fact_accuracy", True)}


def task_points(task_opts, task_data: str, path: str) -> float:
    """The task's main metric for the model at `path` (a GGUF file through llama.cpp, or a directory), in points."""
    from pocketlm.evaluate.tasks import evaluate_task
    from pocketlm.inference.llamacpp import is_gguf
    from pocketlm.model.io import load_model
    model, tokenizer = (None, None) if is_gguf(path) else load_model(path)
    r = evaluate_task(model, tokenizer, path, task_data, task_opts, progress=False)
    name, rate = PRIMARY[task_opts.task]
    return round(r["metrics"][name] * (100 if rate else 1), 2)


def _meets(row: dict, budget: dict) -> list[str]:
    """Why `row` misses the budget (empty when it meets it)."""
    why = []
    if row.get("task_drop") is not None and row["task_drop"] > budget["max_metric_drop"]:
        why.append(f"{budget['task_metric']} {row['task_drop']:.1f} points below the model's "
                   f"> {budget['max_metric_drop']:g}")
    if row["perplexity_change_pct"] > budget["max_loss_increase"]:
        why.append(f"perplexity {row['perplexity_change_pct']:+.2f}% > {budget['max_loss_increase']:g}%")
    if budget.get("max_bytes") and row["bytes"] > budget["max_bytes"]:
        why.append(f"{row['bytes'] / 1e6:.1f} MB > {budget['max_bytes'] / 1e6:g} MB")
    if budget.get("min_tokens_per_s") and row["decode_tokens_per_s"] < budget["min_tokens_per_s"]:
        why.append(f"{row['decode_tokens_per_s']:.1f} tokens/s < {budget['min_tokens_per_s']:g}")
    return why


def plot(result: dict):
    """Quality (the task metric's drop with a task, else the perplexity change) against file size, decode speed as
    colour, the Pareto front joined; a matplotlib figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = result["candidates"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    xs = [r["bytes"] / 1e6 for r in rows]
    b = result["budget"]
    key = "task_drop" if b.get("task") else "perplexity_change_pct"
    ys = [r[key] for r in rows]
    sc = ax.scatter(xs, ys, c=[r["decode_tokens_per_s"] for r in rows], cmap="viridis", s=60, zorder=3)
    fig.colorbar(sc, ax=ax, label="decode tokens/s")
    for r, x, y in zip(rows, xs, ys, strict=True):
        ax.annotate(r["method"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    front = sorted((r for r in rows if r["method"] in result["pareto"]), key=lambda r: r["bytes"])
    ax.plot([r["bytes"] / 1e6 for r in front], [r[key] for r in front], "--", color="grey",
            zorder=2, label="Pareto front (size, quality, speed)")
    ax.axhline(b["max_metric_drop"] if b.get("task") else b["max_loss_increase"], color="tab:red", lw=1,
               label="budget")
    if result["recommended"]:
        best = next(r for r in rows if r["method"] == result["recommended"])
        ax.scatter([best["bytes"] / 1e6], [best[key]], s=220, facecolors="none",
                   edgecolors="tab:red", zorder=4, label=f"recommended: {best['method']}")
    ref = result["reference"]
    ax.set_xlabel(f"file size, MB (reference: {ref['bytes'] / 1e6:.1f} MB)")
    ax.set_ylabel(f"{b['task_metric']}: points below the model" if b.get("task")
                  else "perplexity change vs reference, %")
    ax.set_xscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_title(f"{result['model']}: {b['task']} on {Path(result['task_data']).name}" if b.get("task") else
                 f"{result['model']}: {result['tokens']:,} tokens of {Path(result['data']).name}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


def _html(result: dict, png: bytes) -> str:
    e = html.escape
    head = ("<tr><th>method</th><th>MB</th><th>perplexity</th><th>change</th><th>KL mean</th><th>same top</th>"
            "<th>tokens/s</th><th>J/token</th><th>task</th><th>runs on</th><th>verdict</th></tr>")
    body = []
    for r in result["candidates"]:
        verdict = "recommended" if r["method"] == result["recommended"] else ("meets the budget" if not r["misses"]
                                                                               else "; ".join(r["misses"]))
        body.append(f"<tr><td>{e(r['method'])}</td><td>{r['bytes'] / 1e6:.1f}</td><td>{r['perplexity']:.3f}</td>"
                    f"<td>{r['perplexity_change_pct']:+.2f}%</td><td>{r['kl_mean']:.5f}</td>"
                    f"<td>{r['same_top_token_pct']:.2f}%</td><td>{r['decode_tokens_per_s']:.1f}</td>"
                    f"<td>{r['decode_joules_per_token']:.3g}</td>"
                    f"<td>{'-' if r.get('task_metric') is None else format(r['task_metric'], '.2f')}</td>"
                    f"<td>{e(r['runs_on'])}</td><td>{e(verdict)}</td></tr>")
    ref = result["reference"]
    b = result["budget"]
    task_line = (f"Task: {e(b['task'])} on {e(str(result.get('task_data')))}, {e(b['task_metric'])} "
                 f"{ref.get('task_metric')} for the model itself, at most {b['max_metric_drop']:g} points lost."
                 if b.get("task") else "")
    rec = (f"<p><b>Recommended: {e(result['recommended'])}</b> — <code>{e(result['command'])}</code></p>"
           if result["recommended"] else "<p><b>No candidate meets the budget.</b></p>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>pocketlm rightsize</title>
<style>body{{font-family:sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}}td:first-child,td:last-child{{text-align:left}}</style>
</head><body><h1>Which size to ship</h1>
<p>Reference {e(ref['path'])}: {ref['bytes'] / 1e6:.1f} MB, perplexity {ref['perplexity']:.3f},
{ref['decode_tokens_per_s']:.1f} tokens/s ({e(ref['runs_on'])}); {result['tokens']:,} tokens of {e(result['data'])}.
{task_line}
Energy: {e(result['energy_source'])}.</p>{rec}
<img alt="perplexity change against size" src="data:image/png;base64,{base64.b64encode(png).decode()}">
<table>{head}{''.join(body)}</table></body></html>
"""


def rightsize(model: str, out: str, data: str, *, max_loss_increase: float = 1.0, max_size_mb: float | None = None,
              min_tokens_per_s: float | None = None, methods: tuple[str, ...] | None = None, max_tokens: int = 4096,
              keep_all: bool = False, task_opts=None, task_data: str | None = None, max_metric_drop: float = 2.0,
              say=print) -> dict:
    from pocketlm.compress.quantize import quantize
    from pocketlm.evaluate.against import evaluate_against
    from pocketlm.fsutil import atomic_path
    from pocketlm.inference.llamacpp import is_gguf
    from pocketlm.model.io import quantization_method, resolve_model_dir
    from pocketlm.retrieval.grounding import sidecar

    if is_gguf(model):
        raise UserError(f"{model}: rightsize starts from the unquantized model (a model or run directory); "
                        "a GGUF file is quantized already")
    model_dir = resolve_model_dir(model)
    if quantization_method(model_dir) is not None:
        raise UserError(f"{model} is quantized already; rightsize the model it was made from")
    if max_loss_increase < 0:
        raise UserError("--max-loss-increase must be 0 or more (a percentage of perplexity)")
    methods = tuple(m.lower() for m in (methods or default_methods()))
    from pocketlm.compress import quantize as q
    from pocketlm.compress import torch_quant
    known = (*q.METHODS, *torch_quant.METHODS)
    unknown = [m for m in methods if m not in known]
    if unknown or not methods:
        raise UserError(f"--methods: unknown {', '.join(unknown) or '(none given)'}; choose among {', '.join(known)}")
    task = task_opts.task if task_opts is not None else None
    if task and not task_data:
        raise UserError("--task needs --task-data: the held-out examples every candidate is scored on")
    if task and task not in PRIMARY:
        raise UserError(f"--task {task!r}: rightsize scores {', '.join(PRIMARY)}")
    for what, path in (("--data", data), ("--task-data", task_data)):
        if path and not Path(path).exists():
            raise UserError(f"{what} {path}: no such file or directory")
    name = Path(model).resolve().name if Path(model).resolve().name != "model" else Path(model).resolve().parent.name
    out_dir = Path(out)
    work = out_dir / "candidates"
    stamp = {"model": str(model_dir.resolve()), "weights": [[p.name, p.stat().st_size, p.stat().st_mtime_ns]
                                                            for p in sorted(model_dir.glob("*.safetensors"))]}
    if work.is_dir() and _read_json(work / "source.json") != stamp:  # made from another model: start again
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "source.json").write_text(json.dumps(stamp), encoding="utf-8")
    budget = {"max_loss_increase": max_loss_increase,
              "max_bytes": int(max_size_mb * 1e6) if max_size_mb else None, "min_tokens_per_s": min_tokens_per_s,
              "task": task, "task_metric": PRIMARY[task][0] if task else None,
              "max_metric_drop": max_metric_drop if task else None}
    model_points = None
    if task:
        model_points = task_points(task_opts, task_data, str(model_dir))
        say(f"{task} on {task_data}: {budget['task_metric']} {model_points:.2f} for {model} itself")
    rows, reference, tokens, energy_source = [], None, 0, ""
    say(f"measuring {len(methods)} candidates on {data} (at most {max_tokens:,} tokens) against {model}:")
    say(f"  {'method':<8}{'MB':>9}{'ppl':>10}{'change':>9}{'KL mean':>10}{'tok/s':>9}{'J/token':>10}"
        + (f"{'task':>8}" if task else ""))
    for method in methods:
        path = _target(work, name, method)
        if not path.exists():  # a rerun reuses what an interrupted run (or --keep-all) made from the same model
            quantize(str(model_dir), str(path), method, say=lambda *_: None)
        r = evaluate_against(str(path), str(model_dir), data, max_tokens=max_tokens)
        reference, tokens, energy_source = r["reference"], r["tokens"], r.get("energy_source", "")
        m = r["model"]
        row = {"method": method, "path": str(path), "bytes": m["bytes"], "perplexity": m["perplexity"],
               "perplexity_change_pct": r["perplexity_change_pct"], "kl_mean": r["kl_mean"],
               "same_top_token_pct": r["same_top_token_pct"], "decode_tokens_per_s": m["decode_tokens_per_s"],
               "decode_joules_per_token": m["decode_joules_per_token"], "runs_on": m["runs_on"],
               "task_metric": None, "task_drop": None}
        if task:
            row["task_metric"] = task_points(task_opts, task_data, str(path))
            row["task_drop"] = round(model_points - row["task_metric"], 2)
        row["misses"] = _meets(row, budget)
        rows.append(row)
        say(f"  {method:<8}{row['bytes'] / 1e6:>9.1f}{row['perplexity']:>10.3f}{row['perplexity_change_pct']:>+8.2f}%"
            f"{row['kl_mean']:>10.5f}{row['decode_tokens_per_s']:>9.1f}{row['decode_joules_per_token']:>10.3g}"
            + (f"{row['task_metric']:>8.2f}" if task else "")
            + f"  {'meets the budget' if not row['misses'] else 'misses: ' + '; '.join(row['misses'])}")
    rows.sort(key=lambda r: r["bytes"])
    meeting = [r for r in rows if not r["misses"]]
    best = meeting[0] if meeting else None
    if reference is not None and task:
        reference["task_metric"] = model_points
    result = {"model": str(model), "reference": reference, "data": str(data), "task_data": task_data, "tokens": tokens, "budget": budget,
              "energy_source": energy_source, "candidates": rows,
              "pareto": pareto(rows, "task_drop" if task else "perplexity_change_pct"),
              "recommended": best["method"] if best else None, "command": None, "path": None}
    if best:
        final = _target(out_dir, name, best["method"])
        if final.exists():
            shutil.rmtree(final) if final.is_dir() else final.unlink()
        os.replace(best["path"], final)
        if sidecar(best["path"]).is_dir():  # a bot's grounding travels with its GGUF file
            shutil.rmtree(sidecar(final), ignore_errors=True)
            os.replace(sidecar(best["path"]), sidecar(final))
        best["path"] = result["path"] = str(final)
        result["command"] = f"pocketlm quantize {model} --method {best['method']} --out {final}"
    if not keep_all:
        shutil.rmtree(work, ignore_errors=True)
        for r in rows:
            if r is not best:
                r["path"] = None
    import matplotlib.pyplot as plt
    fig = plot(result)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    png = buf.getvalue()
    for fname, content in (("rightsize.json", json.dumps(result, indent=2) + "\n"), ("rightsize.png", png),
                           ("report.html", _html(result, png))):
        with atomic_path(out_dir / fname) as tmp:
            Path(tmp).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return result
