"""`pocketlm quantize`: a model directory, run or GGUF file in, a smaller GGUF file out (or, with --method int8, a
smaller model directory for PyTorch: compress/torch_quant.py).

The quantizer is llama.cpp's own (`llama_model_quantize`, reached through llama-cpp-python), so every type
llama.cpp runs is available, K-quants included, for models with pocketlm's own tokenizers as well as imported
ones. A model directory is first written as an f32 GGUF (pocketlm's exporter, checked against transformers)
into a temporary file beside the output, then quantized from it; nothing is rounded twice.

With `--max-loss-increase` and `--data`, the smallest file of a ladder (q3_k_m, q4_k_m, q4_1, q5_k_m, q6_k, q8_0,
f16; all made first, then measured in order of their size, which depends on the model) whose perplexity on the
data is within the budget of the f32 file's is kept (measured through llama.cpp, evaluate/against.py), and the
figures of every type tried are printed.

llama.cpp writes a line per tensor to stderr; those are kept from the terminal, and what matters in them
(tensors that fell back to another type because their width is not a multiple of 256) is said in one line.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pocketlm.errors import UserError

# name -> llama.cpp file type (attribute of llama_cpp); roughly smallest last
TYPES = {
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "q5_k_s": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
    "q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1", "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "iq4_nl": "LLAMA_FTYPE_MOSTLY_IQ4_NL",
    "q3_k_l": "LLAMA_FTYPE_MOSTLY_Q3_K_L", "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "q3_k_s": "LLAMA_FTYPE_MOSTLY_Q3_K_S", "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K",
}
EXPORTED = ("f32", "f16")  # written by pocketlm's exporter directly
METHODS = (*EXPORTED, *TYPES)
# --max-loss-increase makes these and measures them smallest file first
LADDER = ("q3_k_m", "q4_k_m", "q4_1", "q5_k_m", "q6_k", "q8_0", "f16")


@contextlib.contextmanager
def _llama_log_to(path: Path, lines: list[str]) -> Iterator[None]:
    """llama.cpp's log for the block: its log callback's text into `lines`, and whatever its C code writes to
    file descriptor 2 into `path`; llama-cpp-python's own callback is put back afterwards."""
    import ctypes

    import llama_cpp
    import llama_cpp._logger as llama_logger

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):
        lines.append(text.decode("utf-8", errors="replace"))

    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "wb") as sink:
        os.dup2(sink.fileno(), 2)
    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield
    finally:
        llama_cpp.llama_log_set(llama_logger.llama_log_callback, ctypes.c_void_p(0))
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def llama_quantize(src: Path, dst: Path, method: str, *, threads: int | None = None,
                   requantize: bool = False) -> dict:
    """Quantize the GGUF file `src` into `dst` with llama.cpp; returns what llama.cpp reported."""
    from pocketlm.inference.llamacpp import import_llama_cpp
    llama_cpp = import_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, TYPES[method])
    params.nthread = threads or 0
    params.allow_requantize = requantize
    log = dst.with_name(dst.name + ".log")
    lines: list[str] = []
    try:
        with _llama_log_to(log, lines):
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
        text = "".join(lines) + log.read_text(encoding="utf-8", errors="replace")
    finally:
        log.unlink(missing_ok=True)
    if rc != 0:
        last = [line for line in text.splitlines() if line.strip()][-1:] or ["no message"]
        raise UserError(f"llama.cpp could not quantize {src} to {method} ({last[0].strip()})")
    fallbacks = re.findall(r"required for type\s+(\S+)\)\s*->\s*falling back to\s+(\S+)", text)
    return {"fallbacks": len(fallbacks), "fallback_types": sorted({b for _, b in fallbacks}),
            "tensors": len(re.findall(r"^\[\s*\d+/\s*\d+\]", text, flags=re.M))}


def describe_fallbacks(info: dict) -> str | None:
    if not info["fallbacks"]:
        return None
    return (f"note: {info['fallbacks']} of {info['tensors']} tensors use {'/'.join(info['fallback_types'])} "
            "instead (llama.cpp's K-quants need rows whose length is a multiple of 256)")


def _source_gguf(model: str, tmpdir: Path) -> tuple[Path, bool]:
    """(an f32/f16 GGUF of `model`, whether it is already quantized): the file itself, or an f32 export."""
    from pocketlm.evaluate.against import gguf_file_type
    from pocketlm.export.gguf import export_gguf
    from pocketlm.inference.llamacpp import is_gguf
    if is_gguf(model):
        kind = gguf_file_type(model)
        return Path(model), kind not in ("F32", "F16", "BF16")
    if not Path(model).exists():
        raise UserError(f"{model}: no such model directory, run or GGUF file")
    return Path(export_gguf(model, tmpdir / "source-f32.gguf", quant="f32")["path"]), False


def quantize(model: str, out: str, method: str = "q4_k_m", *, data: str | None = None,
             max_loss_increase: float | None = None, max_tokens: int = 8192, threads: int | None = None,
             say=print) -> dict:
    """Write `out` (a GGUF file); returns its path, size and type, and the candidates measured."""
    from pocketlm.compress import torch_quant
    from pocketlm.export.gguf import export_gguf
    from pocketlm.fsutil import atomic_path
    from pocketlm.retrieval.grounding import copy_grounding, sidecar
    method = method.lower()
    if method in torch_quant.METHODS:
        if max_loss_increase is not None:
            raise UserError("--max-loss-increase chooses among GGUF types; measure an int8 model with "
                            "pocketlm eval MODEL --against REFERENCE --data TEXT")
        return torch_quant.quantize_torch(model, out, method, say=say)
    if method == "int4":
        raise UserError("int4: for a 4-bit model choose a GGUF type, e.g. --method q4_k_m (llama.cpp runs it on any "
                        "CPU; torchao has no int4 layout for CPUs); int8 is the PyTorch path")
    if method not in METHODS:
        raise UserError(f"unknown quantization {method!r}; choose one of: "
                        f"{', '.join((*METHODS, *torch_quant.METHODS))}")
    if max_loss_increase is not None and not data:
        raise UserError("--max-loss-increase needs --data: the text on which the loss is measured")
    if max_loss_increase is not None and max_loss_increase < 0:
        raise UserError("--max-loss-increase must be 0 or more (a percentage of perplexity)")
    out_path = Path(out)
    if out_path.is_dir():
        raise UserError(f"{out}: is a directory; give the GGUF file to write, e.g. {out_path / 'model-q4_k_m.gguf'}")
    if out_path.suffix.lower() != ".gguf":
        raise UserError(f"{out}: the output is a GGUF file; name it with .gguf")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tried: list[dict] = []
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".quantize-") as tmp:
        tmpdir = Path(tmp)
        src, quantized = _source_gguf(model, tmpdir)
        if quantized:
            say(f"note: {model} is quantized already; quantizing it again loses more than starting from the "
                "model directory or an f16/f32 file")

        def make(kind: str, dest: Path) -> dict:
            if kind in EXPORTED:
                if Path(model).suffix.lower() == ".gguf" or quantized:
                    raise UserError(f"{kind} is written from a model directory; {model} is a GGUF file already")
                export_gguf(model, dest, quant=kind)
                return {"fallbacks": 0, "fallback_types": [], "tensors": 0}
            return llama_quantize(src, dest, kind, threads=threads, requantize=quantized)

        if max_loss_increase is None:
            if method in EXPORTED:
                info = make(method, out_path)  # the exporter writes atomically itself
            else:
                with atomic_path(out_path) as tmp_out:
                    info = make(method, tmp_out)
            chosen = method
        else:
            chosen, info = _pick(model, src, data, max_loss_increase, max_tokens, tmpdir, make, tried, say)
            os.replace(tmpdir / f"{chosen}.gguf", out_path)
    grounding = None if quantized or Path(model).suffix.lower() == ".gguf" else copy_grounding(model, sidecar(out_path))
    note = describe_fallbacks(info)
    return {"path": str(out_path), "bytes": out_path.stat().st_size, "method": chosen, "note": note,
            "tried": tried, "grounding": str(grounding) if grounding else None}


def _pick(model, src: Path, data: str, budget: float, max_tokens: int, tmpdir: Path, make, tried: list, say):
    """The smallest type of LADDER within `budget` percent of perplexity of the f32 source, on `data`."""
    from pocketlm.evaluate.against import evaluate_against
    made, infos = [], {}
    for kind in LADDER:
        dest = tmpdir / f"{kind}.gguf"
        try:
            infos[kind] = make(kind, dest)
            made.append((dest.stat().st_size, kind, dest))
        except UserError:
            if kind in EXPORTED:  # f16 of a GGUF input: not offered
                continue
            raise
    # smallest file first: which type that is depends on the model's widths (rows that are not a multiple of 256
    # make the K-quants fall back to larger types) and on where its weights came from
    made.sort()
    say(f"measuring on {data} (at most {max_tokens:,} tokens) against {Path(model).name} f32, smallest file first:")
    say(f"  {'type':<8}{'size MB':>10}{'perplexity':>12}{'change':>10}{'KL mean':>10}")
    for _, kind, dest in made:
        r = evaluate_against(str(dest), str(src), data, max_tokens=max_tokens, speed=False)
        row = {"method": kind, "bytes": dest.stat().st_size, "perplexity": r["model"]["perplexity"],
               "reference_perplexity": r["reference"]["perplexity"],
               "perplexity_change_pct": r["perplexity_change_pct"], "kl_mean": r["kl_mean"],
               "same_top_token_pct": r["same_top_token_pct"]}
        tried.append(row)
        ok = row["perplexity_change_pct"] <= budget
        say(f"  {kind:<8}{row['bytes'] / 1e6:>10.1f}{row['perplexity']:>12.3f}{row['perplexity_change_pct']:>+9.2f}%"
            f"{row['kl_mean']:>10.5f}  {'within' if ok else 'over'} {budget:g}%")
        if ok:
            return kind, infos[kind]
        dest.unlink()
    best = min(tried, key=lambda t: t["perplexity_change_pct"])
    raise UserError(f"no type keeps perplexity within +{budget:g}% on {data} (the closest, {best['method']}, is "
                    f"{best['perplexity_change_pct']:+.2f}%); raise --max-loss-increase or use f32")
