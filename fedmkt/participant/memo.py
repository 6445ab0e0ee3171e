"""Results of steps that are provably the same computation, reused instead of recomputed.

A participant step is a deterministic function of what it starts from: the model, the adapter
it starts with, the data split it reads, and its settings (seed included). When a second run
asks for the same step — the baseline run's first local training of a client starts from the
same initial adapter, on the same private data, with the same seed as the FedMKT run's; an LLM
that is never trained is evaluated on the same split in both runs — the result is already known.
``StepMemo`` stores each result under a key that digests all of those inputs (sha256 of a
canonical JSON document; the adapter and the data by the sha256 of their contents), and gives it
back only for an identical key: a different seed, sample, adapter bit or setting is another key.

Entries live in one folder (``<key>.json`` with the metrics and an evaluation's per-sample
outcomes, ``<key>.safetensors`` with the resulting adapter when the step trains), each written
to a temporary name and renamed, so a crash leaves either a whole entry or none. No pickle:
JSON and safetensors only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MEMO_VERSION = 1  # part of every key: bump when a step's computation changes meaning
MAX_ENTRY_BYTES = 1 << 30


def digest_json(document: Mapping[str, Any]) -> str:
    """sha256 hex of ``document`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def digest_tensors(state: Mapping[str, Any]) -> str:
    """sha256 hex of tensors by name: name, dtype, shape and little-endian bytes of each."""
    h = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(tensor.view(-1).view(dtype=_byte_dtype()).numpy().tobytes())
    return h.hexdigest()


def _byte_dtype() -> Any:
    import torch

    return torch.uint8


def digest_split(encoded: Sequence[Any]) -> str:
    """sha256 hex of a split's samples as the model sees them: ids, tokens and labels in order."""
    h = hashlib.sha256()
    for enc in encoded:
        h.update(f"{enc.sample_id}|{len(enc.input_ids)}|".encode())
        h.update(np.asarray(enc.input_ids, dtype="<i8").tobytes())
        h.update(np.asarray(enc.labels, dtype="<i8").tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class MemoEntry:
    metrics: dict[str, float]
    adapter: bytes | None  # safetensors bytes of the resulting adapter, if the step trains
    outcomes: dict[str, Any] | None = None  # per-sample results (JSON), if the step has them


class StepMemo:
    """A folder of step results by key (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    @staticmethod
    def key(**inputs: Any) -> str:
        return digest_json({"memo_version": MEMO_VERSION, **inputs})

    def get(self, key: str) -> MemoEntry | None:
        meta = self.folder / f"{key}.json"
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("key") != key:
            return None
        metrics = data.get("metrics")
        if not isinstance(metrics, dict) or not all(
                isinstance(v, int | float) and math.isfinite(v) for v in metrics.values()):
            return None
        adapter = None
        if data.get("adapter_sha256"):
            path = self.folder / f"{key}.safetensors"
            try:
                if path.stat().st_size > MAX_ENTRY_BYTES:
                    return None
                adapter = path.read_bytes()
            except OSError:
                return None
            if hashlib.sha256(adapter).hexdigest() != data["adapter_sha256"]:
                log.warning("memo entry %s: adapter digest mismatch; ignored", key[:12])
                return None
        outcomes = data.get("outcomes")
        return MemoEntry({k: float(v) for k, v in metrics.items()}, adapter,
                         outcomes if isinstance(outcomes, dict) else None)

    def put(self, key: str, metrics: Mapping[str, float], adapter: bytes | None = None,
            outcomes: Mapping[str, Any] | None = None) -> None:
        """Store a result; ``outcomes`` is a JSON document (per-sample results) kept with it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        clean = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
        document: dict[str, Any] = {"key": key, "metrics": clean}
        if outcomes is not None:
            document["outcomes"] = dict(outcomes)
        if adapter is not None:
            # The adapter first: the JSON (written last) is what makes an entry visible.
            self._write(self.folder / f"{key}.safetensors", adapter)
            document["adapter_sha256"] = hashlib.sha256(adapter).hexdigest()
        self._write(self.folder / f"{key}.json", json.dumps(document).encode())

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
