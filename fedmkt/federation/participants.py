"""The participant configs a federation config implies (what each service is started with).

``participant_config(config, name, state_dir)`` gives the mapping a
``fedmkt.participant.config.ParticipantConfig`` validates: the participant's own settings from
``participants[]`` (model, LoRA, learning rate, epochs, batch size, device, ``options``), the
federation-wide ones every participant must share (task, partition seed and caps, top-k,
λ, temperature, strategy, max length), and its place in the partition (``client_index``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedmkt.config import FederationConfig


def participant_config(config: FederationConfig, name: str,
                       state_dir: Path | None = None) -> dict[str, Any]:
    spec = config.participant(name)
    task = config.task
    data: dict[str, Any] = {
        "task": task.name,
        "num_clients": len(config.clients),
        "client_index": config.client_index(name) if spec.role == "client" else 0,
        "partition_seed": config.seed,
        "eval_fraction": task.eval_fraction,
        "parts": task.parts,
        "max_public": task.max_public,
        "max_private": task.max_private,
        "max_eval": task.max_eval,
    }
    values: dict[str, Any] = {
        "name": spec.name,
        "role": spec.role,
        "model": spec.model,
        "lora": spec.lora.model_dump(mode="json"),
        "learning_rate": spec.learning_rate,
        "local_epochs": max(1, spec.local_epochs),
        "distill_epochs": spec.distill_epochs,
        "batch_size": spec.batch_size,
        "max_length": task.max_length,
        "top_k": config.knowledge.top_k,
        "logit_dtype": config.knowledge.logit_dtype,
        "kd_alpha": config.selection.kd_alpha,
        "temperature": config.selection.temperature,
        "strategy": config.selection.strategy,
        "seed": config.seed,
        "device": spec.device,
        "dtype": spec.dtype,
        "data": {k: v for k, v in data.items() if v is not None},
    }
    if state_dir is not None:
        values["state_dir"] = str(state_dir)
    values.update(spec.options)
    return values


def validate_participant_config(values: dict[str, Any]) -> None:
    """Check ``values`` with the participant's own config class (raises its ConfigError)."""
    from fedmkt.participant.config import build_config

    build_config(values)
