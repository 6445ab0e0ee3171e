"""Load a causal LM and its tokenizer from a builtin name, a checkpoint folder, or a hub id.

All three go through the same ``from_pretrained`` call: builtins are ordinary checkpoint folders
in the cache (``fedmkt.models.registry``), and a hub id works for a user with network access
(or a populated Hugging Face cache). Model and tokenizer always come from the same place.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from fedmkt.models.registry import BUILTIN_MODELS, ModelNotFoundError, builtin_model_path

log = logging.getLogger(__name__)

DTYPES = {
    "float32": "float32", "fp32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}

# Always the Hugging Face fast tokenizer. Without this flag a folder whose config says
# model_type "mistral" is routed to the mistral-common backend, which needs tiktoken (not
# installed) and lacks the offsets the aligner uses. False keeps the tokenizer exactly as saved.
TOKENIZER_KWARGS = {"fix_mistral_regex": False}


def resolve_model(spec: str) -> str:
    """A folder or hub id that ``from_pretrained`` accepts for ``spec`` (builtins are built)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelNotFoundError(f"empty model spec; builtins: {', '.join(BUILTIN_MODELS)}")
    if spec in BUILTIN_MODELS:
        return str(builtin_model_path(spec))
    path = Path(spec).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise ModelNotFoundError(f"{spec!r} is a file; give the checkpoint folder that holds it")
    if spec.startswith(("/", ".", "~")) or spec.count("/") > 1:
        raise ModelNotFoundError(
            f"no checkpoint folder at {spec!r}; builtins: {', '.join(BUILTIN_MODELS)}"
        )
    return spec  # a hub id


def resolve_device(device: str = "auto") -> Any:
    """``torch.device`` for ``device``: "auto" is CUDA when available, else CPU."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
    return resolved


def resolve_dtype(dtype: str, device: Any) -> Any:
    """``torch.dtype`` for ``dtype``: "auto" is bfloat16 on CUDA and float32 elsewhere."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, {', '.join(sorted(set(DTYPES)))}")
    return getattr(torch, DTYPES[dtype])


def load_model(spec: str, *, dtype: str = "auto", device: str = "auto") -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for ``spec``: the model in eval mode on ``device``; the
    tokenizer with a pad token (its eos when it has none) so that batches can be padded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    target = resolve_model(spec)
    started = time.monotonic()
    try:
        tokenizer = AutoTokenizer.from_pretrained(target, **TOKENIZER_KWARGS)
        model = AutoModelForCausalLM.from_pretrained(target, dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"cannot load model {spec!r}: not a builtin ({', '.join(BUILTIN_MODELS)}), not a "
            f"checkpoint folder with config, weights and tokenizer files, and not loadable as a "
            f"hub id (offline?): {exc}"
        ) from exc
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(torch_device)
    model.eval()
    log.info("loaded %s (%s, %.1fM params, %s on %s) in %.1f s", spec, type(model).__name__,
             model.num_parameters() / 1e6, str(torch_dtype).removeprefix("torch."),
             torch_device, time.monotonic() - started)
    return model, tokenizer
