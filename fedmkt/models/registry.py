"""The builtin models by name, and the one place that builds them into the cache.

A builtin is either a tiny random model (``fedmkt.models.tiny``) or a real pretrained model
converted from a packaged GGUF file (``fedmkt.models.gguf``). Either way it is built once into
``<cache>/models/<name>/`` as an ordinary checkpoint folder (config + safetensors + tokenizer
files), under a file lock (two services starting together build it once) and under a temporary
name renamed into place (a crash never leaves a half checkpoint).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedmkt.models.atomic import atomic_folder, remove_temporaries
from fedmkt.models.gguf import GGUF_MODELS, convert_gguf
from fedmkt.models.tiny import HIDDEN, LAYERS, TINY_MODELS, build_tiny
from fedmkt.paths import cache_dir

log = logging.getLogger(__name__)

COMPLETE_FILES = ("config.json", "model.safetensors")


class ModelNotFoundError(LookupError):
    """A model spec names neither a builtin, nor a checkpoint folder, nor a loadable hub id."""


@dataclass(frozen=True)
class BuiltinModel:
    """One builtin model: what it is and how to write its checkpoint into a folder."""

    name: str
    kind: str  # "tiny" (random weights) or "pretrained" (converted from GGUF)
    tokenizer: str  # builtin tokenizer name
    description: str
    build: Callable[[str, Path], None]


def _builtins() -> dict[str, BuiltinModel]:
    models = [
        BuiltinModel(t.name, "tiny", t.tokenizer,
                     f"{t.architecture}, hidden {HIDDEN}, {LAYERS} layers, random weights",
                     build_tiny)
        for t in TINY_MODELS.values()
    ]
    models += [
        BuiltinModel(g.name, "pretrained", g.tokenizer, f"{g.description} [{g.package}]",
                     convert_gguf)
        for g in GGUF_MODELS.values()
    ]
    return {m.name: m for m in models}


BUILTIN_MODELS: dict[str, BuiltinModel] = _builtins()


def builtin_names() -> list[str]:
    return list(BUILTIN_MODELS)


def models_root() -> Path:
    return cache_dir("models")


def is_complete(folder: Path) -> bool:
    """True when ``folder`` holds a finished checkpoint (config and weights)."""
    return all((folder / name).is_file() for name in COMPLETE_FILES)


def builtin_model_path(name: str, *, build: bool = True) -> Path:
    """The checkpoint folder of builtin model ``name``, built on first use unless ``build`` is
    False (then the folder is returned whether or not it exists yet)."""
    if name not in BUILTIN_MODELS:
        raise ModelNotFoundError(
            f"unknown builtin model {name!r}; builtins: {', '.join(BUILTIN_MODELS)}"
        )
    final = models_root() / name
    if is_complete(final) or not build:
        return final
    from filelock import FileLock

    with FileLock(str(models_root() / f".{name}.lock")):
        if is_complete(final):  # built by someone else while we waited
            return final
        remove_temporaries(models_root(), name)
        log.info("building builtin model %s into %s", name, final)
        with atomic_folder(final, replace=final.exists()) as tmp:
            BUILTIN_MODELS[name].build(name, tmp)
    return final
