"""FedAvg of LoRA adapters given as safetensors bytes (homogeneous scenario)."""

from __future__ import annotations

from collections.abc import Sequence


def average_adapters(adapters: Sequence[bytes], weights: Sequence[float] | None = None) -> bytes:
    """The weighted average of adapters (same tensor names and shapes), as safetensors bytes.
    Every input is validated (safetensors, floating, finite) before it is averaged."""
    from fedmkt.models.adapters import fedavg, state_dict_from_bytes, state_dict_to_bytes

    states = [state_dict_from_bytes(data) for data in adapters]
    return state_dict_to_bytes(fedavg(states, weights))
