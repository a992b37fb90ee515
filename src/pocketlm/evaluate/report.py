"""One self-contained HTML page about a run: `pocketlm report RUN_DIR` -> RUN_DIR/report.html.

The page reads only what a run directory already holds (metrics.jsonl, summary.json, the model's
weight files and evals/*.json) and needs nothing else to open: the CSS is inline, the plots are
PNG data URIs drawn here with matplotlib, and there are no scripts, web fonts or remote links, so
it can be mailed, archived or opened offline. Missing pieces (no summary yet because the run is
still going, no evaluations) are said on the page rather than treated as errors; only a RUN_DIR
without metrics.jsonl is refused.

This module prepares the page's data (figures formatted, plots drawn) as plain values; the markup
is the jinja2 template templates/report.html.j2 (package data), rendered with autoescaping on, so
every piece of text from the run is HTML-escaped.
"""

from __future__ import annotations

import base64
import datetime as _dt
import functools
import html
import io
import json
import math
import struct
from pathlib import Path
from typing import Any

import jinja2
import matplotlib
from markupsafe import Markup

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import EngFormatter  # noqa: E402

from pocketlm import runs  # noqa: E402
from pocketlm.errors import UserError  # noqa: E402
from pocketlm.fsutil import atomic_write_text  # noqa: E402

METRICS, SUMMARY, EVALS, REPORT, MODEL = runs.METRICS, runs.SUMMARY, runs.EVALS, runs.REPORT, runs.MODEL
TEXT_LIMIT = 240  # characters of an example text shown in a table cell; the full text goes in its title
TEMPLATE = "report.html.j2"  # in templates/ beside this module, shipped as package data
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")

TRAIN_COLOR, VAL_COLOR, LR_COLOR, GRAD_COLOR = "#4C72B0", "#DD8452", "#55A868", "#8172B3"


# ----------------------------------------------------------------------------- reading the run


def read_metrics_lenient(path: Path) -> tuple[list[dict], int]:
    """The JSON objects of a metrics.jsonl, and how many lines could not be read.

    A run in progress may be mid-way through writing its last line, so a bad line is skipped,
    not fatal."""
    records, bad = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(obj, dict):
            records.append(obj)
        else:
            bad += 1
    return records, bad


def _read_json(path: Path) -> tuple[Any, str | None]:
    """(object, None) or (None, why it could not be read)."""
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"{type(e).__name__}: {e}"


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    return _is_num(v) and math.isfinite(v)


def _weight_files(model_dir: Path) -> list[Path]:
    if not model_dir.is_dir():
        return []
    return sorted(p for p in model_dir.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def _safetensors_parameters(path: Path) -> int | None:
    """Count the parameters in a .safetensors file from its header, without loading a tensor."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                return None
            header = json.loads(f.read(n))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError):
        return None
    total = 0
    for name, info in header.items():
        if name == "__metadata__" or not isinstance(info, dict):
            continue
        total += math.prod(info.get("shape") or [1])
    return total


def run_kind(summary: dict | None, run_dir: Path) -> str:
    """'pretrain', 'finetune' or 'unknown' (a run in progress leaves few clues)."""
    config = (summary or {}).get("config") or {}
    if summary:
        if "base" in summary or "trainable_parameters" in summary or "base" in config:
            return "finetune"
        return "pretrain"
    if (run_dir / runs.BEST).is_dir() or any((run_dir / d / "adapter_model.safetensors").exists()
                                             for d in (MODEL, runs.CHECKPOINT)):
        return "finetune"
    return "unknown"


# ----------------------------------------------------------------------------- formatting


def _fmt_int(v: Any) -> str:
    return f"{int(v):,}" if _is_num(v) else "—"


def _fmt_metric(v: Any) -> str:
    """Task metrics: 4 significant digits (0.625, 45.67), thousands separated."""
    if not _is_num(v):
        return "—" if v is None else str(v)
    if isinstance(v, int) or not math.isfinite(v):
        return f"{v:,}" if isinstance(v, int) else str(v)
    return f"{v:,.1f}" if abs(v) >= 1000 else f"{v:.4g}"


def _fmt_count(v: Any) -> str:
    """1234567 -> '1.23M (1,234,567)'."""
    if not _is_num(v):
        return "—"
    v = int(v)
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.2f}{unit} ({v:,})"
    return f"{v:,}"


def _fmt_bytes(n: int) -> str:
    for div, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


def _fmt_duration(seconds: Any) -> str:
    if not _finite(seconds):
        return "—"
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min {s:02d} s" if h else f"{m} min {s:02d} s"


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    return json.dumps(v, ensure_ascii=False)


def _span(text: str, cls: str = "", title: str = "") -> dict[str, str]:
    """A piece of a table cell for the template: text, with a CSS class and a hover title if not empty."""
    return {"text": text, "cls": cls, "title": title}


def _plain(text: str) -> list[dict[str, str]]:
    """A cell of plain text (a cell is a list of spans, shown with a space between them)."""
    return [_span(text)]


def _dim(text: str) -> list[dict[str, str]]:
    return [_span(text, "dim")]


def _cell(v: Any, limit: int = TEXT_LIMIT) -> list[dict[str, str]]:
    """A table cell of run text; a long text is cut, with the whole of it in the title."""
    s = _text(v)
    if len(s) <= limit:
        return _plain(s)
    return [_span(s[:limit].rstrip() + "…", "cut", s)]


# ----------------------------------------------------------------------------- plots


def _png_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def loss_plot(records: list[dict], title: str) -> str | None:
    """Train and validation loss against training tokens, as a PNG data URI (None with no data)."""
    use_tokens = any(_finite(r.get("tokens")) and r.get("tokens") > 0 for r in records)
    key = "tokens" if use_tokens else "step"
    train = [(r[key], r["loss"]) for r in records if _finite(r.get("loss")) and _finite(r.get(key))]
    val = [(r[key], r["val_loss"]) for r in records if _finite(r.get("val_loss")) and _finite(r.get(key))]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(9.2, 4.4), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", color=TRAIN_COLOR, alpha=0.85, linewidth=1.2)
    if val:
        ax.plot(*zip(*val, strict=True), label="validation loss", color=VAL_COLOR, marker="o", markersize=3.5)
        bx, by = min(val, key=lambda p: p[1])
        ax.scatter([bx], [by], s=90, facecolors="none", edgecolors=VAL_COLOR, linewidths=1.5, zorder=5,
                   label=f"best validation {by:.4f}")
    ax.set_xlabel("training tokens" if use_tokens else "step")
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _png_data_uri(fig)


def lr_plot(records: list[dict]) -> str | None:
    """Learning rate per step, and the gradient norm beside it when logged (PNG data URI or None)."""
    lr = [(r["step"], r["lr"]) for r in records if _finite(r.get("lr")) and _finite(r.get("step"))]
    grad = [(r["step"], r["grad_norm"]) for r in records
            if _finite(r.get("grad_norm")) and _finite(r.get("step"))]
    if not lr and not grad:
        return None
    panels = [p for p in (lr, grad) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(9.2, 3.4), dpi=110, squeeze=False)
    axes = list(axes[0])
    if lr:
        ax = axes.pop(0)
        ax.plot(*zip(*lr, strict=True), color=LR_COLOR, linewidth=1.4)
        ax.set_title("learning rate")
        ax.set_xlabel("step")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        ax.grid(alpha=0.3)
    if grad:
        ax = axes.pop(0)
        ax.plot(*zip(*grad, strict=True), color=GRAD_COLOR, linewidth=1.0, alpha=0.9)
        ax.set_title("gradient norm (before clipping)")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png_data_uri(fig)


# ----------------------------------------------------------------------------- the page's data
# Plain data for templates/report.html.j2: strings, numbers, lists and dicts, nothing escaped here.
# Table rows are (label, cell) pairs; a cell is a list of spans (see `_span`).


def _summary_rows(run_dir: Path, kind: str, summary: dict | None, records: list[dict]) -> list[tuple[str, list]]:
    train = [r for r in records if _finite(r.get("loss"))]
    evals = [r for r in records if _finite(r.get("val_loss"))]
    last = max(records, key=lambda r: r.get("step", 0) if _is_num(r.get("step")) else 0, default={})
    s = summary or {}
    config = s.get("config") if isinstance(s.get("config"), dict) else {}
    rows: list[tuple[str, list]] = []
    kind_text = kind + (" (LoRA)" if config.get("lora") else "")
    rows.append(("run kind", _plain(kind_text if kind != "unknown" else "not known yet")))
    if s.get("stopped"):
        stopped = {"budget": "finished (training budget reached)",
                   "interrupted": "interrupted (checkpoint saved; --resume continues it)"}
        rows.append(("status", _plain(stopped.get(str(s["stopped"]), str(s["stopped"])))))
    elif summary is None:
        rows.append(("status", _plain("in progress, or stopped before it finished (no summary.json yet)")))
    if kind == "finetune" and (s.get("base") or config.get("base")):
        rows.append(("base model", _cell(s.get("base") or config.get("base"))))
    if kind == "pretrain" and config.get("model"):
        rows.append(("model preset", _cell(config.get("model"))))

    model_dir = run_dir / MODEL
    if not model_dir.is_dir() and s.get("model_dir") and Path(str(s["model_dir"])).is_dir():
        model_dir = Path(str(s["model_dir"]))
    weights = _weight_files(model_dir)

    params = s.get("parameters")
    if _is_num(params):
        rows.append(("parameters", _plain(_fmt_count(params))))
    else:
        counted = [n for n in (_safetensors_parameters(p) for p in weights if p.suffix == ".safetensors")
                   if n is not None]
        if counted and not any(p.name.startswith("adapter") for p in weights):
            rows.append(("parameters", _plain(f"≈ {_fmt_count(sum(counted))}, counted from the weights")))
    trainable = s.get("trainable_parameters")
    if _is_num(trainable):
        share = f" — {100 * trainable / params:.2f}% of the model" if _is_num(params) and params else ""
        rows.append(("trainable parameters", _plain(_fmt_count(trainable) + share)))
    if weights:
        total = sum(p.stat().st_size for p in weights)
        parts = ", ".join(f"{p.name} {_fmt_bytes(p.stat().st_size)}" for p in weights)
        rows.append(("model weights", [_span(_fmt_bytes(total), title=f"{total:,} bytes in {model_dir}"),
                                       _span(f"({parts})", "dim")]))
    else:
        rows.append(("model weights", _dim(f"none yet in {model_dir}")))

    if s.get("device") or s.get("dtype"):
        hw = f"{s.get('device', '?')} / {s.get('dtype', '?')}" + (", torch.compile" if s.get("compile") else "")
        rows.append(("device / precision", _plain(hw)))
    if _is_num(s.get("context")) or _is_num(config.get("context")):
        rows.append(("context", _plain(_fmt_int(s.get("context", config.get("context"))))))
    step = s.get("step", last.get("step"))
    tokens = s.get("tokens", last.get("tokens"))
    elapsed = s.get("elapsed", last.get("elapsed"))
    rows.append(("optimizer steps", _plain(_fmt_int(step))))
    rows.append(("training tokens", _plain(_fmt_count(tokens))))
    wall = _fmt_duration(elapsed) + " of training"
    if _finite(s.get("wall_s")):
        wall += f", {_fmt_duration(s['wall_s'])} wall clock in all"
    rows.append(("time", _plain(wall)))
    tps = s.get("tokens_per_s")
    if not _finite(tps) and _finite(tokens) and _finite(elapsed) and elapsed > 0:
        tps = tokens / elapsed
    rows.append(("tokens / s", _plain(f"{tps:,.0f}" if _finite(tps) else "—")))
    if _finite(s.get("train_tflops")):
        rows.append(("training TFLOP/s", _plain(f"{s['train_tflops']:.3g}")))
    if train:
        rows.append(("last train loss", _plain(f"{train[-1]['loss']:.4f} (step {train[-1].get('step', '?')})")))
    final_val = s.get("val_loss") if _finite(s.get("val_loss")) else (evals[-1]["val_loss"] if evals else None)
    if final_val is not None:
        text = f"{final_val:.4f}"
        bpb = s.get("val_bpb") if summary else (evals[-1].get("val_bpb") if evals else None)
        if _finite(bpb):
            text += f" ({bpb:.4f} bits per byte)"
        rows.append(("final validation loss", _plain(text)))
    else:
        rows.append(("final validation loss", _dim("no evaluation yet")))
    if evals:
        best = min(evals, key=lambda r: r["val_loss"])
        rows.append(("best validation loss", _plain(f"{best['val_loss']:.4f} at step {best.get('step', '?')}")))
    for key, label in (("train_examples", "training examples"), ("val_examples", "validation examples")):
        if _is_num(s.get(key)):
            rows.append((label, _plain(_fmt_int(s[key]))))
    return rows


def _config_rows(summary: dict | None) -> list[tuple[str, list]]:
    """The options the run was started with; none before summary.json exists."""
    config = (summary or {}).get("config")
    if not isinstance(config, dict):
        return []
    return [(str(k), _dim("—") if v is None else _cell(v, 400)) for k, v in config.items()]


def _examples_table(rows: Any) -> dict | None:
    """{"indexed", "rows"} for a table of examples (input / expected / got / score); None if there are none."""
    if not isinstance(rows, list) or not rows:
        return None
    indexed = any(isinstance(r, dict) and _is_num(r.get("index")) for r in rows)
    body = []
    for i, r in enumerate(rows, 1):
        if not isinstance(r, dict):
            r = {"input": r}
        n = int(r["index"]) + 1 if _is_num(r.get("index")) else ("" if indexed else i)
        body.append({"n": str(n), "input": _cell(r.get("input")), "expected": _cell(r.get("expected")),
                     "got": _cell(r.get("got")), "score": _fmt_metric(r.get("score"))})
    return {"indexed": indexed, "rows": body}


def _eval(path: Path, anchor: str, data: Any, error: str | None) -> dict:
    """One evaluation file, for the overview table and its own section."""
    if error or not isinstance(data, dict):
        return {"file": path.name, "anchor": anchor, "error": error or "not a JSON object", "task": "?",
                "tokens_per_s": "—"}
    metrics = data.get("metrics") if isinstance(data.get("metrics"), dict) else {}
    speed = data.get("speed") if isinstance(data.get("speed"), dict) else {}
    bits: list[tuple[str, str]] = []  # (bold part, the rest)
    if _finite(speed.get("tokens_per_s")):
        bits.append((f"{speed['tokens_per_s']:,.1f}", "tokens/s"))
    if _finite(speed.get("seconds")):
        bits.append((_fmt_duration(speed["seconds"]), "in all"))
    bits += [("", f"{k}: {_fmt_metric(v)}") for k, v in speed.items() if k not in ("tokens_per_s", "seconds")]
    return {
        "file": path.name,
        "anchor": anchor,
        "error": None,
        "task": str(data.get("task", "unknown task")),
        "meta": [(label, _cell(data[key], 400)) for key, label in (("data", "data"), ("model", "model"),
                                                                   ("date", "date"))
                 if data.get(key) is not None],
        "metrics": [(str(k), _fmt_metric(v)) for k, v in metrics.items()],
        "tokens_per_s": f"{speed['tokens_per_s']:,.1f}" if _finite(speed.get("tokens_per_s")) else "—",
        "speed": bits,
        "examples": _examples_table(data.get("examples")),
        "worst": _examples_table(data.get("worst")),
    }


def _evals(run_dir: Path) -> list[dict]:
    files = sorted((run_dir / EVALS).glob("*.json")) if (run_dir / EVALS).is_dir() else []
    return [_eval(p, f"eval-{i + 1}", *_read_json(p)) for i, p in enumerate(files)]


def _page(run_dir: Path) -> dict[str, Any]:
    """Everything the template shows, read from `run_dir` (checked to be a run directory)."""
    records, bad = read_metrics_lenient(run_dir / METRICS)
    summary, summary_error = None, None
    if (run_dir / SUMMARY).exists():
        summary, summary_error = _read_json(run_dir / SUMMARY)
        if summary_error is None and not isinstance(summary, dict):
            summary, summary_error = None, "not a JSON object"
    kind = run_kind(summary, run_dir)
    name = run_dir.resolve().name
    config = (summary or {}).get("config") or {}
    if kind == "finetune":
        base = (summary or {}).get("base") or config.get("base")
        plot_title = f"fine-tuning {Path(str(base)).name}" if base else f"fine-tuning: {name}"
    elif config.get("model"):
        plot_title = f"{config['model']} on {Path(str(config.get('data', ''))).name or 'its data'}"
    else:
        plot_title = name
    return {
        "name": name,
        "kind_known": kind != "unknown",
        "kind_label": {"pretrain": "pretrain", "finetune": "finetune", "unknown": "run in progress"}[kind],
        "run_path": str(run_dir.resolve()),
        "summary_error": summary_error,
        "summary_missing": summary is None,
        "summary_rows": _summary_rows(run_dir, kind, summary, records),
        "bad_lines": bad,
        "loss_png": loss_plot(records, plot_title),
        "lr_png": lr_plot(records),
        "config_rows": _config_rows(summary),
        "evals_dir": str(run_dir / EVALS),
        "evals": _evals(run_dir),
        "generated": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


# ----------------------------------------------------------------------------- the page


def _escape(value: Any) -> Markup:
    """The template's escaping (its `finalize`): html.escape, as the page has always been escaped
    (&quot; and &#x27; rather than markupsafe's &#34; and &#39;); markup made by the template itself
    (macros) passes through."""
    if hasattr(value, "__html__"):
        return Markup(value)
    return Markup(html.escape(str(value), quote=True))


@functools.cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pocketlm.evaluate", "templates"),
        autoescape=True,
        finalize=_escape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return env.get_template(TEMPLATE)


def build_report(run_dir: str | Path) -> str:
    """The report page for `run_dir` as an HTML string (see `write_report`)."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise UserError(f"{run_dir}: no such run directory")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: not a directory (give the run directory, the --out of pretrain or finetune)")
    if not (run_dir / METRICS).is_file():
        raise UserError(f"{run_dir}: no {METRICS} here; is it a pocketlm run directory "
                        "(the --out of pretrain or finetune)?")
    return _template().render(_page(run_dir))


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the self-contained HTML report of a run to `out` (default RUN_DIR/report.html).

    Raises UserError when `run_dir` does not exist or holds no metrics.jsonl. The file is written
    atomically, so a browser open on it never sees half a page."""
    html = build_report(run_dir)
    out = Path(out) if out is not None else Path(run_dir) / REPORT
    atomic_write_text(out, html)
    return out
