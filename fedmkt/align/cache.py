"""On-disk cache of vocabulary maps, keyed by the two tokenizer fingerprints and the mode.

One map is two files in the cache folder:

* ``<source fp>-<target fp>-<mode>.npy``: the int32 map, written with ``np.save`` and read with
  ``allow_pickle=False``;
* ``<source fp>-<target fp>-<mode>.json``: its sidecar (fingerprints, mode, sizes, sha256 of
  the array bytes, and whatever the builder adds), written last.

Each file is written to a temporary file in the same folder and moved into place with
``os.replace``, so a reader never sees a partial file. Anything that does not check out — a
missing or unreadable file, another dtype or shape, ids out of range, a checksum that does not
match — is a miss: it is logged and the caller rebuilds the map, which overwrites the files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from fedmkt.align.canonical import CanonicalMode
from fedmkt.align.fingerprint import is_fingerprint

log = logging.getLogger(__name__)

FORMAT = "fedmkt.vocab_map/1"


class VocabMapCache:
    """Vocabulary maps stored under ``root`` (created on first write)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @classmethod
    def default(cls) -> VocabMapCache:
        """The cache in ``<FEDMKT_HOME or ~/.cache/fedmkt>/vocab_maps``."""
        from fedmkt.paths import cache_dir

        return cls(cache_dir("vocab_maps"))

    # ------------------------------------------------------------------ paths

    def paths(self, src_fp: str, tgt_fp: str, mode: CanonicalMode | str) -> tuple[Path, Path]:
        """The ``.npy`` and ``.json`` paths of one map; rejects malformed fingerprints."""
        for name, value in (("source", src_fp), ("target", tgt_fp)):
            if not is_fingerprint(value):
                raise ValueError(
                    f"{name} fingerprint must be 64 lowercase hex characters, got {value!r:.80}"
                )
        stem = f"{src_fp}-{tgt_fp}-{CanonicalMode(mode).value}"
        return self.root / f"{stem}.npy", self.root / f"{stem}.json"

    # ------------------------------------------------------------------ read

    def get(self, src_fp: str, tgt_fp: str, mode: CanonicalMode | str, *,
            source_size: int | None = None, target_size: int | None = None) -> np.ndarray | None:
        """The cached map, or None when there is none or it does not check out.

        ``source_size`` / ``target_size``, when given, must equal the stored sizes.
        """
        npy_path, json_path = self.paths(src_fp, tgt_fp, mode)
        if not json_path.exists() or not npy_path.exists():
            return None
        try:
            meta = json.loads(json_path.read_text(encoding="utf-8"))
            array = np.load(npy_path, allow_pickle=False)
            problem = _check(array, meta, src_fp, tgt_fp, CanonicalMode(mode), source_size,
                             target_size)
        except (OSError, ValueError, TypeError, KeyError, EOFError, AttributeError) as exc:
            problem = f"unreadable: {exc}"
        if problem:
            log.warning("vocab map cache entry %s ignored (%s); it will be rebuilt",
                        npy_path.name, problem)
            return None
        return array

    # ------------------------------------------------------------------ write

    def put(self, src_fp: str, tgt_fp: str, mode: CanonicalMode | str, array: np.ndarray,
            meta: dict[str, Any]) -> None:
        """Store ``array`` (int32, one target id per source id) with ``meta``.

        ``meta`` must hold ``target_size`` (the number of target ids); the cache adds the
        fingerprints, mode, source size and checksum.
        """
        npy_path, json_path = self.paths(src_fp, tgt_fp, mode)
        array = np.ascontiguousarray(array)
        target_size = int(meta["target_size"])
        sidecar = {
            **meta,
            "format": FORMAT,
            "source_fingerprint": src_fp,
            "target_fingerprint": tgt_fp,
            "mode": CanonicalMode(mode).value,
            "source_size": int(array.shape[0]) if array.ndim == 1 else -1,
            "target_size": target_size,
            "sha256": _digest(array),
        }
        problem = _check(array, sidecar, src_fp, tgt_fp, CanonicalMode(mode), None, None)
        if problem:
            raise ValueError(f"refusing to cache an invalid vocab map: {problem}")
        self.root.mkdir(parents=True, exist_ok=True)
        _write_atomic(npy_path, lambda f: np.save(f, array, allow_pickle=False))
        text = json.dumps(sidecar, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        _write_atomic(json_path, lambda f: f.write(text.encode("utf-8")))


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _check(array: np.ndarray, meta: dict[str, Any], src_fp: str, tgt_fp: str,
           mode: CanonicalMode, source_size: int | None, target_size: int | None) -> str | None:
    """What is wrong with a stored map, or None."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return "unknown sidecar format"
    if (meta.get("source_fingerprint"), meta.get("target_fingerprint"), meta.get("mode")) != (
            src_fp, tgt_fp, mode.value):
        return "sidecar names other tokenizers or mode"
    if array.dtype != np.int32 or array.ndim != 1:
        return f"expected a 1-d int32 array, got {array.dtype} with shape {array.shape}"
    stored_source, stored_target = meta.get("source_size"), meta.get("target_size")
    if not isinstance(stored_target, int) or stored_target <= 0:
        return "sidecar lacks a positive target_size"
    if array.shape[0] != stored_source or (source_size is not None
                                           and array.shape[0] != source_size):
        return f"length {array.shape[0]} differs from the source vocabulary size"
    if target_size is not None and stored_target != target_size:
        return f"target size {stored_target} differs from {target_size}"
    if array.size and (int(array.min()) < 0 or int(array.max()) >= stored_target):
        return f"ids outside [0, {stored_target})"
    if meta.get("sha256") != _digest(array):
        return "checksum mismatch"
    return None


def _write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write through a temporary file in ``path``'s folder, then ``os.replace`` it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
