"""Load and save models as Hugging Face directories, the only on-disk model format pocketlm uses."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, PreTrainedModel
from transformers.utils import logging as hf_logging

from pocketlm import runs
from pocketlm.data.tokenizer import load_tokenizer, stop_token_ids
from pocketlm.errors import UserError
from pocketlm.fsutil import atomic_dir

hf_logging.disable_progress_bar()  # pocketlm shows its own progress; per-file bars are noise here


def resolve_model_dir(path: str | Path) -> Path:
    """Accept a model directory or a run directory (whose final model is `RUN_DIR/model`)."""
    path = Path(path)
    if (path / "config.json").exists() or (path / "adapter_config.json").exists():
        return path
    final = path / runs.MODEL
    if (final / "config.json").exists() or (final / "adapter_config.json").exists():
        return final
    if (path / runs.CHECKPOINT / "config.json").exists():
        return path / runs.CHECKPOINT
    if not path.exists():
        raise UserError(f"{path}: no such model directory or file")
    raise UserError(f"{path}: not a model directory (no config.json; expected a Hugging Face model "
                    "directory, a pocketlm run directory or a .gguf file)")


def load_model(path: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               attn_implementation: str = "sdpa") -> tuple[PreTrainedModel, object]:
    """Load (model, tokenizer) from a Hugging Face directory or a pocketlm run directory, offline."""
    model_dir = resolve_model_dir(path)
    adapter = model_dir / "adapter_config.json"
    base_dir = Path(json.loads(adapter.read_text())["base_model_name_or_path"]) if adapter.exists() else model_dir
    if quantization_method(base_dir) is not None:  # int8 from `pocketlm quantize`: kept in the dtype it was made in
        import_torchao(base_dir)
        dtype = "auto"
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(base_dir), dtype=dtype, local_files_only=True, attn_implementation=attn_implementation)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{base_dir}: cannot load the model ({type(e).__name__}: {e})") from None
    if adapter.exists():  # a LoRA adapter: fold it into its base for fast inference
        from peft import PeftModel
        with warnings.catch_warnings():  # peft asks transformers a deprecated question; it means nothing here
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            model = PeftModel.from_pretrained(model, str(model_dir)).merge_and_unload()
    tokenizer = load_tokenizer(model_dir)
    model.to(device)
    model.eval()
    return model, tokenizer


def import_torchao(model_dir: str | Path | None = None):
    """torchao (its log noise is kept quiet by pocketlm/__init__.py); one line when it is not installed."""
    try:
        import torchao
    except ImportError:
        what = f"{model_dir} is quantized with torchao; loading it" if model_dir else "int8 quantization"
        raise UserError(f"{what} needs torchao: pip install 'torchao>=0.14'") from None
    return torchao


def quantization_method(model_dir: str | Path) -> str | None:
    """The `quant_method` a model directory's config.json names ("torchao" for `pocketlm quantize --method
    int8`), or None for a plain model."""
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    q = cfg.get("quantization_config") if isinstance(cfg, dict) else None
    return q.get("quant_method", "unknown") if isinstance(q, dict) else None


def gguf_to_hf(path: str | Path, local: str | Path) -> Path:
    """A GGUF model file as a Hugging Face directory at `local` (dequantized to fp32 by transformers' GGUF loader),
    made once: an existing conversion is reused."""
    path, local = Path(path), Path(local)
    if not path.exists():
        raise UserError(f"{path}: no such GGUF file")
    if not (local / "config.json").exists():
        import sys
        print(f"converting {path.name} to a Hugging Face directory (dequantized) in {local}", file=sys.stderr)
        try:
            from transformers import AutoTokenizer
            tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        except Exception as e:
            raise UserError(f"{path}: transformers cannot load this GGUF file ({type(e).__name__}: {e})") from None
        # the weights are dequantized fp32 now: drop the GGUF quantizer so the model saves as safetensors
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        save_model(model, tok, local)
    return local


def is_adapter(model) -> bool:
    return hasattr(model, "peft_config")


def save_model(model: PreTrainedModel, tokenizer, out_dir: str | Path, *, extra_files: dict | None = None,
               before_commit=None) -> Path:
    """Write a complete, loadable model directory atomically (temp directory + rename)."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        stops = stop_token_ids(tokenizer)
        generation = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=stops if len(stops) != 1 else stops[0],
            pad_token_id=tokenizer.pad_token_id,
            do_sample=False,
        )
        if is_adapter(model):  # PEFT writes only the adapter (adapter_config.json, adapter_model.safetensors)
            model.save_pretrained(str(tmp))
            generation.save_pretrained(str(tmp))
        else:
            model.generation_config = generation
            model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        for name, obj in (extra_files or {}).items():
            with open(tmp / name, "w", encoding="utf-8") as f:
                json.dump(obj, f, indent=2)
            os.chmod(tmp / name, 0o644)
        if before_commit is not None:
            before_commit(tmp)
    return out_dir


def model_summary(model_dir: str | Path) -> dict:
    model_dir = resolve_model_dir(model_dir)
    cfg = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    size = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    return {"path": str(model_dir), "architecture": (cfg.architectures or ["?"])[0], "file_bytes": size}
