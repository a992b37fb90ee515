"""Export a Llama-architecture model to an ONNX directory for onnxruntime.

The directory holds everything needed to run the model without PyTorch or pocketlm:

    DIR/
      model.onnx             the graph and (below 1 GiB of weights) the weights, fp32
      model.onnx.data        the weights, for models above 1 GiB (ONNX files cannot exceed 2 GB)
      config.json            the model's Hugging Face config (a LoRA run's is its base's)
      generation_config.json BOS/EOS/padding ids
      tokenizer.json ...     the tokenizer, readable by `tokenizers` or transformers

The graph takes ``input_ids`` and ``attention_mask`` (int64, [batch, sequence], both axes dynamic) and
returns ``logits`` (float32, [batch, sequence, vocab]). There is no KV cache: every step re-reads the
whole sequence. The graph is traced with PyTorch's own exporter (``torch.onnx.export``, the
torch.export-based one) from transformers' ``LlamaForCausalLM``; a LoRA run is merged into its base
first. After writing, the export runs the file once in onnxruntime and checks it against PyTorch.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from pocketlm.errors import UserError
from pocketlm.fsutil import atomic_dir

MODEL_FILE = "model.onnx"
EXTERNAL_DATA_BYTES = 1 << 30  # weights above this go to model.onnx.data (protobuf's limit is 2 GB)
CHECK_TOLERANCE = 1e-3  # largest |logit difference| accepted between onnxruntime and PyTorch after export
_NEEDS = ("onnx", "onnxscript", "onnxruntime")


def export_onnx(model: str | Path, out_dir: str | Path) -> dict:
    """Export the Llama model in `model` (a model, run or LoRA run directory) to the directory `out_dir`.

    `out_dir` must be new, empty or an earlier ONNX export (it is replaced whole, atomically). Returns a
    summary dict with ``path`` (the directory), ``model`` (the .onnx file), ``bytes`` (of the ONNX files),
    ``parameters``, ``opset``, ``external_data``, ``seconds`` and ``max_abs_diff`` (onnxruntime vs
    PyTorch on a check input).
    """
    source, out_dir = Path(model), Path(out_dir)
    _check_source(source)
    _check_out(out_dir)
    missing = [m for m in _NEEDS if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"ONNX export needs {', '.join(missing)}: pip install 'pocketlm[onnx]'")

    import torch

    from pocketlm.model.io import load_model

    net, tokenizer = load_model(source)  # a LoRA adapter is merged into its base here
    if type(net).__name__ != "LlamaForCausalLM":
        raise UserError(f"{source}: ONNX export supports Llama-architecture models (LlamaForCausalLM); "
                        f"this one is {type(net).__name__}")
    n_params = sum(p.numel() for p in net.parameters())
    external = sum(p.numel() * p.element_size() for p in net.parameters()) > EXTERNAL_DATA_BYTES

    t0 = time.perf_counter()
    with atomic_dir(out_dir) as tmp:
        path = tmp / MODEL_FILE
        with torch.no_grad():
            program = _export(net, path, external, source)
        diff = _check(net, path, source)
        net.config.save_pretrained(tmp)
        net.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    seconds = time.perf_counter() - t0
    onnx_files = [out_dir / MODEL_FILE] + ([out_dir / f"{MODEL_FILE}.data"] if external else [])
    return {
        "path": str(out_dir),
        "model": str(out_dir / MODEL_FILE),
        "bytes": sum(f.stat().st_size for f in onnx_files if f.exists()),
        "parameters": n_params,
        "opset": _opset(program),
        "external_data": external,
        "seconds": round(seconds, 2),
        "max_abs_diff": diff,
    }


# --------------------------------------------------------------------------------------------------


def _check_source(source: Path) -> None:
    if source.suffix.lower() == ".gguf":
        raise UserError(f"{source}: ONNX export reads a model or run directory, not a GGUF file "
                        "(export the PyTorch model the GGUF file was made from)")
    if source.is_file():
        raise UserError(f"{source}: ONNX export reads a model or run directory, not a file")


def _check_out(out_dir: Path) -> None:
    """`out_dir` is replaced whole: refuse anything that is not new, empty or an earlier export."""
    if out_dir.suffix.lower() == ".onnx":
        raise UserError(f"--out {out_dir}: give a directory; ONNX export writes DIR/{MODEL_FILE} with the "
                        "tokenizer and config.json beside it")
    if out_dir.is_file():
        raise UserError(f"--out {out_dir}: a file is in the way; ONNX export writes a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MODEL_FILE).exists():
        raise UserError(f"--out {out_dir}: the directory exists and is not an ONNX export; give a new "
                        "directory (the export replaces it whole)")


@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
    """Keep torch.onnx's progress lines, log records and warnings away from the user; yield what was said."""
    said = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "torch.fx",
                                             "torch._dynamo", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield said
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def _sample(net, batch: int = 2, seq: int = 8):
    import torch

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, net.config.vocab_size, (batch, seq), generator=gen)
    mask = torch.ones_like(ids)
    mask[-1, : seq // 2] = 0  # one left-padded row, so the graph keeps the padding path
    return ids, mask


def _export(net, path: Path, external: bool, source: Path):
    import torch

    class Logits(torch.nn.Module):
        """input_ids, attention_mask -> logits, without a cache (the graph's whole interface)."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    axes = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}
    with _quiet() as said:
        try:
            program = torch.onnx.export(
                Logits(net).eval(), _sample(net), None, input_names=["input_ids", "attention_mask"],
                output_names=["logits"], dynamic_shapes={"input_ids": axes, "attention_mask": axes},
                dynamo=True, optimize=True, verbose=False)
            # every node carries the Python stack that made it (local paths included): a third of a
            # small file, and of no use to whoever runs it
            for node in program.model.graph.all_nodes():
                node.metadata_props.clear()
            program.save(str(path), external_data=external)
        except Exception as e:
            detail = str(e).strip().splitlines()[0] if str(e).strip() else said.getvalue().strip()[-200:]
            raise UserError(f"{source}: torch.onnx could not export the model ({type(e).__name__}: "
                            f"{detail})") from None
    return program


def _check(net, path: Path, source: Path) -> float:
    """Run the new file once in onnxruntime; the largest |logit difference| from PyTorch."""
    import numpy as np
    import onnxruntime as ort
    import torch

    ids, mask = _sample(net, batch=2, seq=5)  # other shapes than the traced ones: the axes are dynamic
    with torch.no_grad():
        ref = net(input_ids=ids, attention_mask=mask, use_cache=False).logits.numpy()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: onnxruntime's own notes are not for the user
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    keep = mask.numpy().astype(bool)  # padded positions' logits are meaningless in both
    diff = float(np.abs(got - ref)[keep].max())
    if not diff <= CHECK_TOLERANCE * max(1.0, float(np.abs(ref[keep]).max())):
        raise UserError(f"{source}: the exported ONNX model's logits differ from PyTorch's by {diff:.3g}; "
                        "the export is not usable (please report this)")
    return diff


def _opset(program) -> int | None:
    """The default-domain ONNX opset the graph uses."""
    imports = getattr(getattr(program, "model_proto", None), "opset_import", None) or []
    return next((int(o.version) for o in imports if o.domain in ("", "ai.onnx")), None)
