"""`pocketlm quantize --method int8`: a smaller Hugging Face directory for the PyTorch path.

Made by torchao (PyTorch's maintained quantization library; `torch.ao.quantization` is deprecated) through
transformers' `TorchAoConfig`: the directory's config.json carries a `quantization_config`, the weights are in
`model.safetensors`, and `AutoModelForCausalLM.from_pretrained` loads it unchanged wherever torchao is
installed. Every linear layer of the decoder is quantized; the embedding and the output layer keep their
dtype (transformers' default). The model is made in bf16, the dtype its activations run in.

int8: weights int8 with one scale per output channel (torchao's `Int8WeightOnlyConfig`), activations bf16.
pocketlm's decode loop (inference/fastpath.py) multiplies them with PyTorch's own int8 weight-only kernel
(`torch._weight_int8pack_mm`); torchao's CPU path turns the int8 weights back into bf16 at every call.

Measured and left out (docs/benchmarks.md, "Quantization for PyTorch"): int8 activations too (torchao's
`Int8DynamicActivationInt8WeightConfig`) decoded 8x slower than int8 weights alone on a CPU without VNNI;
one scale per 64 weights halves the per-row scale's perplexity cost on SmolLM2 but torchao runs it by
dequantizing every call (slower than fp32). int4: torchao 0.18 has no int4 weight layout for CPUs any more;
a 4-bit model that runs on a laptop is what the GGUF types (q4_k_m and others, through llama.cpp) are for.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pocketlm.errors import UserError
from pocketlm.model.io import import_torchao

METHODS = ("int8",)


def _plain_source(model: str, tmp: Path) -> Path:
    """A Hugging Face directory holding `model` unquantized: the directory itself, or a GGUF file dequantized /
    a LoRA adapter merged into its base, written under `tmp`."""
    from pocketlm.model.io import gguf_to_hf, load_model, quantization_method, resolve_model_dir, save_model
    path = Path(model)
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise UserError(f"{model}: no such GGUF file")
        return gguf_to_hf(path, tmp / "from-gguf")
    src = resolve_model_dir(path)
    if quantization_method(src) is not None:
        raise UserError(f"{model} is quantized already; quantize the model it was made from")
    if (src / "adapter_config.json").exists():
        m, tok = load_model(src)
        return save_model(m, tok, tmp / "merged")
    return src


def quantize_torch(model: str, out: str, method: str = "int8", *, say=print) -> dict:
    """Write `out`, a Hugging Face directory whose decoder's linear weights are int8; returns its path and size."""
    import_torchao()
    import torch
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import AutoModelForCausalLM, TorchAoConfig

    from pocketlm.data.tokenizer import load_tokenizer
    from pocketlm.model.io import save_model
    from pocketlm.retrieval.grounding import GROUNDING_DIR, copy_grounding

    if method not in METHODS:
        raise UserError(f"unknown PyTorch quantization {method!r}; the PyTorch path offers: {', '.join(METHODS)}")
    out_path = Path(out)
    if out_path.suffix.lower() == ".gguf":
        raise UserError(f"{out}: --method {method} writes a model directory that transformers loads; name a "
                        f"directory (e.g. {out_path.with_suffix('')}), or choose a GGUF type such as q8_0")
    if out_path.exists() and not out_path.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".quantize-") as tmp:
        src = _plain_source(model, Path(tmp))
        qmodel = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.bfloat16, local_files_only=True,
                                                      quantization_config=TorchAoConfig(Int8WeightOnlyConfig()))
        tokenizer = load_tokenizer(src)
        done = sum(1 for m in qmodel.modules() if type(getattr(m, "weight", None)).__module__.startswith("torchao"))
        save_model(qmodel, tokenizer, out_path,
                   before_commit=lambda d: copy_grounding(model, d / GROUNDING_DIR))
    size = sum(p.stat().st_size for p in out_path.glob("*.safetensors"))
    say(f"{done} linear layers quantized to {method}; the embedding and output layer kept in bf16")
    return {"path": str(out_path), "bytes": size, "method": method, "note": None, "tried": [],
            "grounding": str(out_path / GROUNDING_DIR) if (out_path / GROUNDING_DIR).is_dir() else None}
