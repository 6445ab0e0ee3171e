"""LoRA adapters on disk and on the wire: per-round checkpoints, bytes, validation, FedAvg.

On disk a participant keeps one PEFT folder per round, ``<state_dir>/adapters/round-0003/``
(``adapter_config.json`` + ``adapter_model.safetensors``), which
``peft.PeftModel.from_pretrained(base, folder)`` opens as it is; its ``base_model_name_or_path``
is the absolute checkpoint folder the base was loaded from, and ``fedmkt_adapter.json`` beside it
names the base as fedmkt knows it (a builtin name travels between machines, a cache path does
not). ``fedmkt export`` (``fedmkt.models.export``) merges such a folder into a full checkpoint.
Each is written under a temporary name and renamed into place (``fedmkt.models.atomic``), so the
latest round folder is always a whole adapter, whatever moment a crash hits. On the wire an
adapter is the bytes of its safetensors file; whatever arrives is checked against the receiving
model's own LoRA parameters (names, shapes, floating dtype, finite values) before anything is
loaded. No pickle anywhere.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedmkt.errors import InvalidArgument, NotFound, ResourceExhausted
from fedmkt.models.atomic import atomic_folder, remove_temporaries

log = logging.getLogger(__name__)

ADAPTERS_DIRNAME = "adapters"
ADAPTER_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
INFO_FILE = "fedmkt_adapter.json"  # which base model, as fedmkt names it (optional to readers)
ROUND_PATTERN = re.compile(r"^round-(\d{4,})$")
MAX_ADAPTER_BYTES = 1 << 30  # 1 GiB: LoRA r=64 on every projection of a 70B model fits


class AdapterMismatch(InvalidArgument):
    """Adapter tensors that do not fit the receiving model's LoRA parameters."""


def adapters_dir(state_dir: str | Path) -> Path:
    return Path(state_dir) / ADAPTERS_DIRNAME


def round_dir(state_dir: str | Path, round_index: int) -> Path:
    """``<state_dir>/adapters/round-NNNN`` (four digits at least)."""
    if not isinstance(round_index, int) or round_index < 0:
        raise InvalidArgument(f"round must be a non-negative integer, got {round_index!r}")
    return adapters_dir(state_dir) / f"round-{round_index:04d}"


def _is_whole(folder: Path) -> bool:
    return (folder / ADAPTER_FILE).is_file() and (folder / CONFIG_FILE).is_file()


def save_adapter(peft_model: Any, state_dir: str | Path, round_index: int) -> Path:
    """Save ``peft_model``'s adapter as round ``round_index``, atomically; replaces an existing
    adapter of the same round (re-running a step gives the same result)."""
    final = round_dir(state_dir, round_index)
    remove_temporaries(final.parent, final.name)  # left by a writer that crashed
    with atomic_folder(final, replace=True) as tmp:
        peft_model.save_pretrained(str(tmp), safe_serialization=True)
        if not _is_whole(tmp):
            raise RuntimeError(f"PEFT did not write {ADAPTER_FILE} and {CONFIG_FILE} into {tmp}")
        _describe_base(tmp)
    log.info("saved adapter of round %d to %s", round_index, final)
    return final


def _describe_base(folder: Path) -> None:
    """Make ``base_model_name_or_path`` absolute when it is a local folder (a relative
    ``$FEDMKT_HOME`` would otherwise tie the adapter to one working directory) and write
    ``fedmkt_adapter.json``: ``base_model`` is the builtin name when the base is a builtin's
    checkpoint in this cache, else the folder or hub id the base was loaded from."""
    import json

    config_path = folder / CONFIG_FILE
    config = json.loads(config_path.read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path") or ""
    if base and Path(base).expanduser().is_dir():
        absolute = str(Path(base).expanduser().resolve())
        if absolute != base:
            config["base_model_name_or_path"] = base = absolute
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n",
                                   encoding="utf-8")
    info = {"format": 1, "base_model": builtin_name_of(base) or base or None,
            "base_model_name_or_path": base or None}
    (folder / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def builtin_name_of(path: str) -> str | None:
    """The builtin model whose cache checkpoint folder ``path`` is, else None."""
    from fedmkt.models.registry import BUILTIN_MODELS, models_root

    if not path:
        return None
    folder = Path(path).expanduser()
    if folder.name not in BUILTIN_MODELS or not folder.is_dir():
        return None
    try:
        return folder.name if folder.resolve().parent == models_root().resolve() else None
    except OSError:
        return None


def list_adapters(state_dir: str | Path) -> list[tuple[int, Path]]:
    """Every whole adapter under ``state_dir`` as ``(round, folder)``, oldest first.
    Temporary, discarded and incomplete folders are skipped."""
    root = adapters_dir(state_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = ROUND_PATTERN.match(child.name)
        if match and child.is_dir() and _is_whole(child):
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_adapter(state_dir: str | Path) -> tuple[int, Path] | None:
    """The newest whole adapter as ``(round, folder)``, or None when there is none."""
    found = list_adapters(state_dir)
    return found[-1] if found else None


def _adapter_file(path: str | Path) -> Path:
    path = Path(path)
    file = path / ADAPTER_FILE if path.is_dir() else path
    if not file.is_file():
        raise NotFound(f"no adapter at {path} (expected {ADAPTER_FILE})")
    return file


def adapter_bytes(path: str | Path) -> bytes:
    """The safetensors bytes of the adapter in folder (or file) ``path``."""
    return _adapter_file(path).read_bytes()


def adapter_state_dict(peft_model: Any) -> dict[str, Any]:
    """The model's LoRA tensors as saved by PEFT (names without the adapter name), on CPU."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(peft_model)
    return {name: t.detach().to("cpu").contiguous().clone() for name, t in state.items()}


def state_dict_to_bytes(state: Mapping[str, Any]) -> bytes:
    """Serialize tensors to safetensors bytes (the PEFT adapter file format)."""
    from safetensors.torch import save

    return save({name: t.detach().to("cpu").contiguous() for name, t in state.items()})


def state_dict_from_bytes(data: bytes, *, max_bytes: int = MAX_ADAPTER_BYTES) -> dict[str, Any]:
    """Parse safetensors bytes into tensors; reject oversize, malformed or non-finite data."""
    import torch
    from safetensors.torch import load

    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidArgument(f"adapter data must be bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise ResourceExhausted(f"adapter of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    try:
        state = load(bytes(data))
    except Exception as exc:  # safetensors raises its own error types for malformed input
        raise InvalidArgument(f"adapter data is not a valid safetensors file: {exc}") from exc
    if not state:
        raise InvalidArgument("adapter data holds no tensors")
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            raise InvalidArgument(f"adapter tensor {name!r} has non-float dtype {tensor.dtype}")
        if not bool(torch.isfinite(tensor).all()):
            raise InvalidArgument(f"adapter tensor {name!r} holds NaN or infinite values")
    return state


def validate_adapter_state(peft_model: Any, state: Mapping[str, Any]) -> None:
    """Check that ``state`` has exactly the model's LoRA tensor names and shapes."""
    from peft import get_peft_model_state_dict

    expected = {name: tuple(t.shape) for name, t in get_peft_model_state_dict(peft_model).items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise AdapterMismatch(
            f"adapter does not fit this model's LoRA parameters: {len(missing)} missing "
            f"{_preview(missing)}, {len(unexpected)} unexpected {_preview(unexpected)} "
            "(different base architecture, target modules or PEFT layout?)"
        )
    for name, shape in expected.items():
        got = tuple(state[name].shape)
        if got != shape:
            raise AdapterMismatch(
                f"adapter tensor {name!r} has shape {list(got)}, the model expects {list(shape)} "
                "(different LoRA rank or base model size?)"
            )
        if not state[name].is_floating_point():
            raise AdapterMismatch(f"adapter tensor {name!r} has non-float dtype")


def _preview(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}]"


def load_state_into(peft_model: Any, state: Mapping[str, Any]) -> None:
    """Validate ``state`` against the model, then copy it into the model's LoRA parameters."""
    from peft import set_peft_model_state_dict

    validate_adapter_state(peft_model, state)
    result = set_peft_model_state_dict(peft_model, dict(state))
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:  # cannot happen after validation; guard against a PEFT layout change
        raise AdapterMismatch(f"PEFT did not accept adapter tensors {_preview(unexpected)}")


def load_adapter_into(peft_model: Any, path: str | Path) -> None:
    """Load the adapter saved in folder (or file) ``path`` into ``peft_model``."""
    load_state_into(peft_model, state_dict_from_bytes(adapter_bytes(path)))


def adapter_from_bytes(peft_model: Any, data: bytes) -> None:
    """Load adapter bytes received over the wire into ``peft_model`` after validating them."""
    load_state_into(peft_model, state_dict_from_bytes(data))


def fedavg(
    states: Sequence[Mapping[str, Any]], weights: Sequence[float] | None = None
) -> dict[str, Any]:
    """Weighted average of LoRA state dicts, tensor by tensor (A and B averaged separately,
    as in FedAvg over LoRA in FATE-LLM). ``weights`` default to equal; they are normalized.
    The result keeps the first state's dtypes, on CPU; accumulation is in float32."""
    import torch

    if not states:
        raise InvalidArgument("fedavg needs at least one adapter")
    norm = _normalized_weights(weights, len(states))
    first = states[0]
    for index, state in enumerate(states[1:], start=1):
        if set(state) != set(first):
            raise AdapterMismatch(f"adapter {index} has different tensor names than adapter 0")
        for name, tensor in state.items():
            if tuple(tensor.shape) != tuple(first[name].shape):
                raise AdapterMismatch(
                    f"adapter {index} tensor {name!r} has shape {list(tensor.shape)}, adapter 0 "
                    f"has {list(first[name].shape)}"
                )
    averaged = {}
    for name, reference in first.items():
        total = torch.zeros(reference.shape, dtype=torch.float32)
        for weight, state in zip(norm, states, strict=True):
            total += weight * state[name].detach().to("cpu", torch.float32)
        averaged[name] = total.to(reference.dtype)
    return averaged


def _normalized_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    if weights is None:
        return [1.0 / count] * count
    values = [float(w) for w in weights]
    if len(values) != count:
        raise InvalidArgument(f"fedavg got {len(values)} weights for {count} adapters")
    if any(not math.isfinite(w) or w < 0 for w in values) or sum(values) <= 0:
        raise InvalidArgument(f"fedavg weights must be finite, >= 0 and not all 0: {values}")
    total = sum(values)
    return [w / total for w in values]


# --------------------------------------------------------------------------- PEFT folders elsewhere

MAX_PEFT_CONFIG_BYTES = 64 * 1024
MAX_BASE_MODEL_CHARS = 1024


def peft_folder_texts(folder: str | Path) -> tuple[str, str]:
    """``(adapter_config.json text, base model as fedmkt names it)`` of a saved round folder,
    to send with its bytes (empty strings where unknown)."""
    import json

    folder = Path(folder)
    try:
        config = (folder / CONFIG_FILE).read_text(encoding="utf-8")
    except OSError:
        config = ""
    try:
        info = json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
        base = str(info.get("base_model") or "") if isinstance(info, dict) else ""
    except (OSError, ValueError):
        base = ""
    return config, base


def check_peft_config(text: str) -> dict[str, Any]:
    """A received ``adapter_config.json``: a JSON object of at most 64 KiB for a LoRA adapter
    (raises ``InvalidArgument`` saying what is wrong)."""
    import json

    if len(text.encode("utf-8")) > MAX_PEFT_CONFIG_BYTES:
        raise InvalidArgument(f"adapter_config.json is larger than {MAX_PEFT_CONFIG_BYTES} bytes")
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"adapter_config.json is not JSON: {exc}") from exc
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise InvalidArgument("adapter_config.json must be a JSON object with peft_type LORA")
    return config


def check_base_model_name(name: str) -> str:
    """A received base model name: at most 1024 printable characters (``InvalidArgument``)."""
    if len(name) > MAX_BASE_MODEL_CHARS or not name.isprintable():
        raise InvalidArgument(f"base model name must be at most {MAX_BASE_MODEL_CHARS} "
                              "printable characters")
    return name


def write_peft_folder(folder: str | Path, data: bytes, peft_config: str,
                      base_model: str = "") -> Path:
    """Write a PEFT folder (``adapter_config.json``, ``adapter_model.safetensors`` and
    ``fedmkt_adapter.json``) from an adapter received over the wire, atomically, replacing an
    older one. The bytes must be a safetensors file and the config a LoRA config."""
    import json

    check_peft_config(peft_config)
    check_base_model_name(base_model)
    state_dict_from_bytes(data)  # raises for anything that is not a safetensors file
    final = Path(folder)
    with atomic_folder(final, replace=True) as tmp:
        (tmp / ADAPTER_FILE).write_bytes(data)
        (tmp / CONFIG_FILE).write_text(peft_config, encoding="utf-8")
        info = {"format": 1, "base_model": base_model or None}
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return final
