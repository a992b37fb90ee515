"""One self-contained HTML page about a run: `pocketlm report RUN_DIR` -> RUN_DIR/report.html.

The page reads only what a run directory already holds (metrics.jsonl, summary.json, the model's
weight files and evals/*.json) and needs nothing else to open: the CSS is inline, the plots are
PNG data URIs drawn here with matplotlib, and there are no scripts, web fonts or remote links, so
it can be mailed, archived or opened offline. Every piece of text from the run is HTML-escaped.
Missing pieces (no summary yet because the run is still going, no evaluations) are said on the
page rather than treated as errors; only a RUN_DIR without metrics.jsonl is refused.
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import json
import math
import struct
from html import escape
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import EngFormatter  # noqa: E402

from pocketlm import runs  # noqa: E402
from pocketlm.errors import UserError  # noqa: E402
from pocketlm.fsutil import atomic_write_text  # noqa: E402

METRICS, SUMMARY, EVALS, REPORT, MODEL = runs.METRICS, runs.SUMMARY, runs.EVALS, runs.REPORT, runs.MODEL
TEXT_LIMIT = 240  # characters of an example text shown in a table cell; the full text goes in its title
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


def _fmt_float(v: Any, digits: int = 4) -> str:
    if not _is_num(v):
        return "—" if v is None else str(v)
    if not math.isfinite(v):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.{digits}f}"


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


def _cell(v: Any, limit: int = TEXT_LIMIT) -> str:
    """Escaped text for a table cell; a long text is cut, with the whole of it in the title."""
    s = _text(v)
    if len(s) <= limit:
        return escape(s)
    return f'<span class="cut" title="{escape(s, quote=True)}">{escape(s[:limit].rstrip())}…</span>'


def _table(rows: list[tuple[str, str]], cls: str = "kv") -> str:
    """Two-column table; cells are already-escaped HTML."""
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="{cls}"><tbody>{body}</tbody></table>'


def _note(text: str, cls: str = "note") -> str:
    return f'<p class="{cls}">{text}</p>'


# ----------------------------------------------------------------------------- plots


def _png_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{escape(alt, quote=True)}">'


def _x_of(r: dict) -> float | None:
    return r.get("tokens") if _finite(r.get("tokens")) else None


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


# ----------------------------------------------------------------------------- sections


def _summary_section(run_dir: Path, kind: str, summary: dict | None, summary_error: str | None,
                     records: list[dict]) -> str:
    train = [r for r in records if _finite(r.get("loss"))]
    evals = [r for r in records if _finite(r.get("val_loss"))]
    last = max(records, key=lambda r: r.get("step", 0) if _is_num(r.get("step")) else 0, default={})
    s = summary or {}
    config = s.get("config") if isinstance(s.get("config"), dict) else {}
    rows: list[tuple[str, str]] = []
    kind_text = kind + (" (LoRA)" if config.get("lora") else "")
    rows.append(("run kind", escape(kind_text if kind != "unknown" else "not known yet")))
    if s.get("stopped"):
        stopped = {"budget": "finished (training budget reached)",
                   "interrupted": "interrupted (checkpoint saved; --resume continues it)"}
        rows.append(("status", escape(stopped.get(str(s["stopped"]), str(s["stopped"])))))
    elif summary is None:
        rows.append(("status", "in progress, or stopped before it finished (no summary.json yet)"))
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
        rows.append(("parameters", escape(_fmt_count(params))))
    else:
        counted = [n for n in (_safetensors_parameters(p) for p in weights if p.suffix == ".safetensors")
                   if n is not None]
        if counted and not any(p.name.startswith("adapter") for p in weights):
            rows.append(("parameters", escape(f"≈ {_fmt_count(sum(counted))}, counted from the weights")))
    trainable = s.get("trainable_parameters")
    if _is_num(trainable):
        share = f" — {100 * trainable / params:.2f}% of the model" if _is_num(params) and params else ""
        rows.append(("trainable parameters", escape(_fmt_count(trainable) + share)))
    if weights:
        total = sum(p.stat().st_size for p in weights)
        parts = ", ".join(f"{p.name} {_fmt_bytes(p.stat().st_size)}" for p in weights)
        where = escape(str(model_dir))
        rows.append(("model weights", f'<span title="{total:,} bytes in {where}">{escape(_fmt_bytes(total))}'
                                      f'</span> <span class="dim">({escape(parts)})</span>'))
    else:
        rows.append(("model weights", f'<span class="dim">none yet in {escape(str(model_dir))}</span>'))

    if s.get("device") or s.get("dtype"):
        hw = f"{s.get('device', '?')} / {s.get('dtype', '?')}" + (", torch.compile" if s.get("compile") else "")
        rows.append(("device / precision", escape(hw)))
    if _is_num(s.get("context")) or _is_num(config.get("context")):
        rows.append(("context", _fmt_int(s.get("context", config.get("context")))))
    step = s.get("step", last.get("step"))
    tokens = s.get("tokens", last.get("tokens"))
    elapsed = s.get("elapsed", last.get("elapsed"))
    rows.append(("optimizer steps", _fmt_int(step)))
    rows.append(("training tokens", escape(_fmt_count(tokens))))
    wall = _fmt_duration(elapsed) + " of training"
    if _finite(s.get("wall_s")):
        wall += f", {_fmt_duration(s['wall_s'])} wall clock in all"
    rows.append(("time", escape(wall)))
    tps = s.get("tokens_per_s")
    if not _finite(tps) and _finite(tokens) and _finite(elapsed) and elapsed > 0:
        tps = tokens / elapsed
    rows.append(("tokens / s", escape(f"{tps:,.0f}") if _finite(tps) else "—"))
    if _finite(s.get("train_tflops")):
        rows.append(("training TFLOP/s", escape(f"{s['train_tflops']:.3g}")))
    if train:
        rows.append(("last train loss", escape(f"{train[-1]['loss']:.4f} (step {train[-1].get('step', '?')})")))
    final_val = s.get("val_loss") if _finite(s.get("val_loss")) else (evals[-1]["val_loss"] if evals else None)
    if final_val is not None:
        text = f"{final_val:.4f}"
        bpb = s.get("val_bpb") if summary else (evals[-1].get("val_bpb") if evals else None)
        if _finite(bpb):
            text += f" ({bpb:.4f} bits per byte)"
        rows.append(("final validation loss", escape(text)))
    else:
        rows.append(("final validation loss", '<span class="dim">no evaluation yet</span>'))
    if evals:
        best = min(evals, key=lambda r: r["val_loss"])
        rows.append(("best validation loss", escape(f"{best['val_loss']:.4f} at step {best.get('step', '?')}")))
    for key, label in (("train_examples", "training examples"), ("val_examples", "validation examples")):
        if _is_num(s.get(key)):
            rows.append((label, _fmt_int(s[key])))

    notes = ""
    if summary_error:
        notes += _note(f"summary.json could not be read ({escape(summary_error)}); the figures below come "
                       "from metrics.jsonl.", "warn")
    elif summary is None:
        notes += _note("No summary.json yet: the run is still in progress or stopped before it finished. "
                       "The figures below come from metrics.jsonl so far.", "warn")
    return f'<section id="summary"><h2>Summary</h2>{notes}{_table(rows)}</section>'


def _curves_section(records: list[dict], title: str, bad_lines: int) -> str:
    parts = ['<section id="curves"><h2>Training curves</h2>']
    if bad_lines:
        parts.append(_note(f"{bad_lines} line(s) of metrics.jsonl could not be read and were skipped.", "warn"))
    loss = loss_plot(records, title)
    parts.append(_img(loss, "train and validation loss against training tokens") if loss
                 else _note("No losses logged yet."))
    lr = lr_plot(records)
    parts.append(_img(lr, "learning rate and gradient norm per step") if lr
                 else _note("No learning rate logged yet."))
    parts.append("</section>")
    return "".join(parts)


def _config_section(summary: dict | None) -> str:
    config = (summary or {}).get("config")
    if not isinstance(config, dict) or not config:
        return ('<section id="config"><h2>Configuration</h2>'
                + _note("No configuration recorded (it is written to summary.json when the run ends).")
                + "</section>")
    rows = [(f"<code>{escape(str(k))}</code>",
             '<span class="dim">—</span>' if v is None else _cell(v, 400)) for k, v in config.items()]
    return f'<section id="config"><h2>Configuration</h2>{_table(rows, "kv config")}</section>'


def _examples_table(rows: Any) -> str:
    if not isinstance(rows, list) or not rows:
        return _note("none recorded")
    indexed = any(isinstance(r, dict) and _is_num(r.get("index")) for r in rows)
    number = ('<th title="the example\'s number in the evaluation data (1 = the first)">#</th>' if indexed
              else "<th>#</th>")
    head = f"<tr>{number}<th>input</th><th>expected</th><th>got</th><th>score</th></tr>"
    body = []
    for i, r in enumerate(rows, 1):
        if not isinstance(r, dict):
            r = {"input": r}
        n = int(r["index"]) + 1 if _is_num(r.get("index")) else ("" if indexed else i)
        body.append(f"<tr><td class='num'>{escape(str(n))}</td><td>{_cell(r.get('input'))}</td>"
                    f"<td>{_cell(r.get('expected'))}</td><td>{_cell(r.get('got'))}</td>"
                    f"<td class='num'>{escape(_fmt_metric(r.get('score')))}</td></tr>")
    return f'<table class="examples"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


def _eval_section(path: Path, anchor: str, data: Any, error: str | None) -> str:
    name = escape(path.name)
    if error or not isinstance(data, dict):
        why = error or "not a JSON object"
        return (f'<section class="eval" id="{anchor}"><h3>{name}</h3>'
                + _note(f"could not be read: {escape(why)}", "warn") + "</section>")
    task = escape(str(data.get("task", "unknown task")))
    parts = [f'<section class="eval" id="{anchor}"><h3>{task} <span class="dim">— {name}</span></h3>']
    meta = [(label, _cell(data[key], 400)) for key, label in (("data", "data"), ("model", "model"), ("date", "date"))
            if data.get(key) is not None]
    if meta:
        parts.append(_table(meta, "kv meta"))
    metrics = data.get("metrics")
    if isinstance(metrics, dict) and metrics:
        head = "".join(f"<th>{escape(str(k))}</th>" for k in metrics)
        vals = "".join(f"<td class='num'>{escape(_fmt_metric(v))}</td>" for v in metrics.values())
        parts.append(f'<h4>Metrics</h4><table class="metrics"><thead><tr>{head}</tr></thead>'
                     f"<tbody><tr>{vals}</tr></tbody></table>")
    else:
        parts.append(_note("no metrics recorded"))
    speed = data.get("speed")
    if isinstance(speed, dict) and speed:
        bits = []
        if _finite(speed.get("tokens_per_s")):
            bits.append(f"<b>{speed['tokens_per_s']:,.1f}</b> tokens/s")
        if _finite(speed.get("seconds")):
            bits.append(f"<b>{_fmt_duration(speed['seconds'])}</b> in all")
        bits += [f"{escape(str(k))}: {escape(_fmt_metric(v))}" for k, v in speed.items()
                 if k not in ("tokens_per_s", "seconds")]
        parts.append(f'<p class="speed">Speed: {" · ".join(bits)}</p>')
    parts.append("<h4>Examples</h4>" + _examples_table(data.get("examples")))
    parts.append("<h4>Worst examples</h4>" + _examples_table(data.get("worst")))
    parts.append("</section>")
    return "".join(parts)


def _evals_section(run_dir: Path) -> str:
    files = sorted((run_dir / EVALS).glob("*.json")) if (run_dir / EVALS).is_dir() else []
    if not files:
        return ('<section id="evals"><h2>Task evaluations</h2>'
                + _note(f"No task evaluations: {escape(str(run_dir / EVALS))}/*.json does not exist yet.")
                + "</section>")
    loaded = [(p, *_read_json(p)) for p in files]
    overview, sections = [], []
    for i, (p, data, err) in enumerate(loaded):
        anchor = f"eval-{i + 1}"
        sections.append(_eval_section(p, anchor, data, err))
        if isinstance(data, dict):
            metrics = data.get("metrics") if isinstance(data.get("metrics"), dict) else {}
            ms = ", ".join(f"{escape(str(k))} {escape(_fmt_metric(v))}" for k, v in metrics.items())
            speed = data.get("speed") if isinstance(data.get("speed"), dict) else {}
            tps = f"{speed['tokens_per_s']:,.1f}" if _finite(speed.get("tokens_per_s")) else "—"
            task = escape(str(data.get("task", "?")))
        else:
            ms, tps, task = '<span class="warn">unreadable</span>', "—", "?"
        overview.append(f'<tr><td><a href="#{anchor}">{escape(p.name)}</a></td><td>{task}</td>'
                        f"<td>{ms}</td><td class='num'>{tps}</td></tr>")
    table = ('<table class="overview"><thead><tr><th>file</th><th>task</th><th>metrics</th>'
             f'<th>tokens/s</th></tr></thead><tbody>{"".join(overview)}</tbody></table>')
    return f'<section id="evals"><h2>Task evaluations</h2>{table}{"".join(sections)}</section>'


CSS = """
:root { --fg:#1f2328; --dim:#656d76; --line:#d0d7de; --bg:#ffffff; --alt:#f6f8fa; --accent:#4C72B0;
        --warn-bg:#fff8c5; --warn-line:#d4a72c; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1040px; margin: 0 auto; padding: 24px 28px 48px; }
header h1 { margin: 0 0 4px; font-size: 1.7em; }
header .sub { color: var(--dim); margin: 0; }
.badge { display:inline-block; padding:1px 10px; border-radius:12px; background:var(--accent); color:#fff;
         font-size:.55em; vertical-align:middle; margin-left:8px; letter-spacing:.03em; }
.badge.unknown { background: var(--dim); }
nav { margin: 14px 0 8px; padding: 8px 0; border-top:1px solid var(--line); border-bottom:1px solid var(--line); }
nav a { margin-right: 18px; color: var(--accent); text-decoration: none; }
h2 { margin-top: 34px; padding-bottom: 4px; border-bottom: 1px solid var(--line); font-size: 1.3em; }
h3 { margin-top: 28px; font-size: 1.12em; }
h4 { margin: 18px 0 6px; font-size: .95em; color: var(--dim); text-transform: uppercase; letter-spacing: .04em; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: .92em; }
th, td { border: 1px solid var(--line); padding: 5px 9px; text-align: left; vertical-align: top; }
thead th { background: var(--alt); }
table.kv th { background: var(--alt); font-weight: 600; white-space: nowrap; width: 1%; }
table.kv.config td { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .95em; }
table.examples { width: 100%; table-layout: fixed; }
table.examples th:nth-child(1) { width: 3.2em; } table.examples th:nth-child(5) { width: 5em; }
table.examples td { white-space: pre-wrap; overflow-wrap: anywhere; }
tbody tr:nth-child(even) td { background: #fbfcfd; }
td.num, table.metrics td { text-align: right; font-variant-numeric: tabular-nums; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .92em; }
img { display:block; max-width: 100%; height: auto; margin: 10px 0 16px; border: 1px solid var(--line); }
.dim { color: var(--dim); }
.cut { border-bottom: 1px dotted var(--dim); cursor: help; }
p.note { color: var(--dim); font-style: italic; }
p.warn, span.warn { background: var(--warn-bg); border-left: 4px solid var(--warn-line); padding: 6px 10px; }
p.speed { margin: 8px 0; }
footer { margin-top: 40px; color: var(--dim); font-size: .85em; border-top: 1px solid var(--line); padding-top: 8px; }
@media print { nav { display: none; } img { break-inside: avoid; } section.eval { break-before: auto; } }
"""


def build_report(run_dir: str | Path) -> str:
    """The report page for `run_dir` as an HTML string (see `write_report`)."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise UserError(f"{run_dir}: no such run directory")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: not a directory (give the run directory, the --out of pretrain or finetune)")
    metrics_path = run_dir / METRICS
    if not metrics_path.is_file():
        raise UserError(f"{run_dir}: no {METRICS} here; is it a pocketlm run directory "
                        "(the --out of pretrain or finetune)?")
    records, bad = read_metrics_lenient(metrics_path)
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
    now = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    badge_cls = "badge unknown" if kind == "unknown" else "badge"
    kind_label = {"pretrain": "pretrain", "finetune": "finetune", "unknown": "run in progress"}[kind]
    body = "".join([
        f'<header><h1>{escape(name)}<span class="{badge_cls}">{escape(kind_label)}</span></h1>',
        f'<p class="sub">pocketlm run report · <code>{escape(str(run_dir.resolve()))}</code></p></header>',
        '<nav><a href="#summary">Summary</a><a href="#curves">Training curves</a>'
        '<a href="#config">Configuration</a><a href="#evals">Task evaluations</a></nav>',
        _summary_section(run_dir, kind, summary, summary_error, records),
        _curves_section(records, plot_title, bad),
        _config_section(summary),
        _evals_section(run_dir),
        f"<footer>Generated {escape(now)} by pocketlm report from the files in this run directory. "
        "This page is self-contained: it needs no network.</footer>",
    ])
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(name)} · pocketlm report</title><style>{CSS}</style></head>"
            f"<body><main>{body}</main></body></html>\n")


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the self-contained HTML report of a run to `out` (default RUN_DIR/report.html).

    Raises UserError when `run_dir` does not exist or holds no metrics.jsonl. The file is written
    atomically, so a browser open on it never sees half a page."""
    html = build_report(run_dir)
    out = Path(out) if out is not None else Path(run_dir) / REPORT
    atomic_write_text(out, html)
    return out
