"""LoRA on a frozen base model, with the paper's defaults (r=8, alpha=16, dropout 0.05).

Which linear layers get adapters depends on the architecture; ``default_target_modules`` picks
the attention projections the reference implementations use, from ``config.model_type``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

_QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]
TARGET_MODULES: dict[str, list[str]] = {
    "llama": _QKVO,
    "mistral": _QKVO,
    "mixtral": _QKVO,
    "qwen2": _QKVO,
    "qwen3": _QKVO,
    "gpt2": ["c_attn"],
    "opt": ["q_proj", "v_proj"],
    "bloom": ["query_key_value"],
    "gpt_neox": ["query_key_value"],
}


class LoraTargetError(ValueError):
    """No default LoRA target modules are known for a model type."""


@dataclass
class LoraSettings:
    """LoRA hyper-parameters. ``target_modules=None`` means the architecture's defaults."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"LoRA r must be a positive integer, got {self.r!r}")
        if not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        names = self.target_modules
        if names is not None and (not names or not all(isinstance(m, str) and m for m in names)):
            raise ValueError("LoRA target_modules must be a non-empty list of module names")


class ParameterCounts(NamedTuple):
    trainable: int
    total: int


def _model_type(model_or_config: Any) -> str:
    config = getattr(model_or_config, "config", model_or_config)
    return str(getattr(config, "model_type", "") or "")


def default_target_modules(model_or_config: Any) -> list[str]:
    """The module names LoRA adapts by default for this model's architecture."""
    model_type = _model_type(model_or_config)
    if model_type in TARGET_MODULES:
        return list(TARGET_MODULES[model_type])
    if model_type.startswith("gemma"):
        return list(_QKVO)
    raise LoraTargetError(
        f"no default LoRA target modules for model type {model_type or '(unknown)'!r}; set "
        f"target_modules explicitly (known types: {', '.join(sorted(TARGET_MODULES))}, gemma*)"
    )


def count_parameters(model: Any) -> ParameterCounts:
    """Trainable and total parameter counts (tied weights counted once)."""
    trainable = total = 0
    for param in model.parameters():  # parameters() yields a shared tensor only once
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return ParameterCounts(trainable, total)


def _targets_conv1d(model: Any, targets: list[str]) -> bool:
    """True when the targeted layers are GPT-2 style Conv1D (weight stored transposed)."""
    from transformers.pytorch_utils import Conv1D

    wanted = set(targets)
    return any(isinstance(module, Conv1D) for name, module in model.named_modules()
               if name.rsplit(".", 1)[-1] in wanted)


def apply_lora(model: Any, settings: LoraSettings | None = None) -> Any:
    """Wrap ``model`` in a ``PeftModel`` whose only trainable parameters are the LoRA ones."""
    from peft import LoraConfig, TaskType, get_peft_model

    settings = settings or LoraSettings()
    targets = settings.target_modules or default_target_modules(model)
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(targets),
        fan_in_fan_out=_targets_conv1d(model, targets),
        bias="none",
    )
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as exc:  # e.g. none of the target modules exists in this model
        raise LoraTargetError(f"cannot apply LoRA to {_model_type(model)!r}: {exc}") from exc
    for name, param in peft_model.named_parameters():
        if param.requires_grad and "lora_" not in name:
            param.requires_grad_(False)
    counts = count_parameters(peft_model)
    log.info("LoRA r=%d alpha=%s on %s: %d trainable of %d parameters (%.3f%%)", settings.r,
             settings.alpha, ",".join(targets), counts.trainable, counts.total,
             100.0 * counts.trainable / max(counts.total, 1))
    return peft_model
