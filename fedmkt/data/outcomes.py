"""Per-sample evaluation results (``SampleOutcomes``), the input of paired comparisons.

An evaluation of a participant on the held-out split gives, besides its means (``acc``, ``nll``,
…), one value per sample and metric: 1.0 / 0.0 for whether the argmax choice was right (``acc``,
``acc_norm``), the answer NLL (``nll``), ROUGE-L F1 for generation tasks (``rouge_l``). Two
evaluations of the same split — FedMKT against a baseline — are then compared sample by sample
(``fedmkt.federation.stats.paired_bootstrap``), which is what makes a small difference on a
few hundred samples measurable at all.

The held-out split is shared evaluation data, never a client's private data, so its
per-sample results may leave a participant. They travel in the final ``Progress`` message of
``Evaluate`` and in ``RunEvent`` (``fedmkt.v1.SampleOutcomes``), are stored with the run's
events and in the step memo as JSON, and are validated wherever they are read: unique
printable ids, known-size columns of finite numbers, bounded sizes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_SAMPLES = 1_000_000
MAX_COLUMNS = 16
MAX_ID_CHARS = 256
_METRIC = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class OutcomesError(ValueError):
    """Per-sample outcomes that are not valid; the message says which part and why."""


@dataclass(frozen=True)
class SampleOutcomes:
    """One value per sample for each metric; ``values[m][i]`` belongs to ``sample_ids[i]``."""

    sample_ids: tuple[str, ...]
    values: Mapping[str, tuple[float, ...]]

    def __post_init__(self) -> None:
        ids = tuple(self.sample_ids)
        if len(ids) > MAX_SAMPLES:
            raise OutcomesError(f"at most {MAX_SAMPLES:,} samples, got {len(ids):,}")
        for sample_id in ids:
            if not isinstance(sample_id, str) or not sample_id or len(sample_id) > MAX_ID_CHARS \
                    or not sample_id.isprintable():
                raise OutcomesError(f"sample ids must be 1 to {MAX_ID_CHARS} printable "
                                    f"characters, got {str(sample_id)[:80]!r}")
        if len(set(ids)) != len(ids):
            raise OutcomesError("a sample id appears more than once")
        if len(self.values) > MAX_COLUMNS:
            raise OutcomesError(f"at most {MAX_COLUMNS} metrics, got {len(self.values)}")
        columns: dict[str, tuple[float, ...]] = {}
        for metric, column in self.values.items():
            if not isinstance(metric, str) or not _METRIC.match(metric):
                raise OutcomesError(f"metric names are lower-case identifiers of at most 64 "
                                    f"characters, got {str(metric)[:80]!r}")
            numbers = tuple(float(v) for v in column)
            if len(numbers) != len(ids):
                raise OutcomesError(f"metric {metric!r} has {len(numbers)} values for "
                                    f"{len(ids)} samples")
            if not all(math.isfinite(v) for v in numbers):
                raise OutcomesError(f"metric {metric!r} has a value that is not finite")
            columns[metric] = numbers
        object.__setattr__(self, "sample_ids", ids)
        object.__setattr__(self, "values", columns)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def column(self, metric: str) -> np.ndarray:
        if metric not in self.values:
            raise KeyError(f"no per-sample {metric!r} (have {', '.join(self.values) or 'none'})")
        return np.asarray(self.values[metric], dtype=np.float64)

    def to_json(self) -> dict[str, Any]:
        return {"sample_ids": list(self.sample_ids),
                "values": {m: list(v) for m, v in self.values.items()}}

    @classmethod
    def from_json(cls, document: Any) -> SampleOutcomes:
        """Validated outcomes from :meth:`to_json`'s document (raises ``OutcomesError``)."""
        if not isinstance(document, Mapping):
            raise OutcomesError("outcomes must be a JSON object")
        ids, values = document.get("sample_ids"), document.get("values")
        if not isinstance(ids, list) or not isinstance(values, Mapping) or not all(
                isinstance(v, list) and all(isinstance(x, int | float) and not isinstance(x, bool)
                                            for x in v) for v in values.values()):
            raise OutcomesError("outcomes need 'sample_ids' (a list) and 'values' (metric → "
                                "list of numbers)")
        return cls(tuple(ids), dict(values))


def paired_columns(a: SampleOutcomes, b: SampleOutcomes, metric: str
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``metric`` of the samples both evaluations scored, in ``a``'s order, as two arrays.

    Raises ``OutcomesError`` when the two evaluations share no sample (different splits)."""
    where = {sample_id: i for i, sample_id in enumerate(b.sample_ids)}
    common = [(i, where[s]) for i, s in enumerate(a.sample_ids) if s in where]
    if not common:
        raise OutcomesError("the two evaluations share no sample")
    ia, ib = (np.asarray(x, dtype=np.int64) for x in zip(*common, strict=True))
    return a.column(metric)[ia], b.column(metric)[ib]


def outcomes_of(sample_ids: Sequence[str], **columns: Sequence[float] | np.ndarray
                ) -> SampleOutcomes:
    """Shorthand: ``outcomes_of(ids, acc=hits, nll=losses)``."""
    return SampleOutcomes(tuple(sample_ids), {m: tuple(np.asarray(v, dtype=float).tolist())
                                              for m, v in columns.items()})
