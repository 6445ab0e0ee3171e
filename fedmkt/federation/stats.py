"""Paired comparisons of two arms on the same evaluation samples (DESIGN §11).

Two arms (FedMKT and a baseline, say) are scored on the same held-out samples, so their
difference is measured per sample: ``d_i = a_i - b_i`` (for accuracy, each ``a_i`` is 0 or 1).
The interval is the percentile paired bootstrap: resample the samples with replacement, recompute
the mean difference, take the 2.5 % and 97.5 % quantiles. The verdict comes from the interval,
never from the point estimate: "helped" only when the whole interval lies above 0, "hurt" only
when it lies below, otherwise "no measurable difference".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

HELPED, HURT, NO_DIFFERENCE = "helped", "hurt", "no measurable difference"


@dataclass(frozen=True)
class PairedDifference:
    """Mean of ``a - b`` over ``n`` paired samples with its bootstrap interval."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float

    @property
    def verdict(self) -> str:
        return verdict(self.low, self.high)

    def describe(self, digits: int = 3) -> str:
        sign = "+" if self.mean >= 0 else ""
        return (f"{sign}{self.mean:.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}] "
                f"({100 * self.confidence:.0f} % paired bootstrap, n = {self.n}): {self.verdict}")


def verdict(low: float, high: float) -> str:
    """"helped" if the interval excludes 0 from above, "hurt" from below, else no difference."""
    if low > 0:
        return HELPED
    if high < 0:
        return HURT
    return NO_DIFFERENCE


def paired_bootstrap(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *,
                     resamples: int = 10_000, confidence: float = 0.95,
                     seed: int = 0) -> PairedDifference:
    """The mean paired difference ``a - b`` and its percentile bootstrap interval.

    ``a`` and ``b`` hold one score per sample, in the same sample order. Deterministic for a
    given ``seed``. Raises ``ValueError`` for unpaired, empty or non-finite inputs.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"paired scores must be two 1-D arrays of one length, got {x.shape} "
                         f"and {y.shape}")
    if x.size == 0:
        raise ValueError("no samples to compare")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("scores must be finite")
    if not 0 < confidence < 1 or resamples < 1:
        raise ValueError("confidence must be in (0, 1) and resamples >= 1")
    diff = x - y
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=np.float64)
    block = max(1, 2_000_000 // diff.size)  # bounded memory: block × n indices at a time
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        picks = rng.integers(0, diff.size, size=(stop - start, diff.size))
        means[start:stop] = diff[picks].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return PairedDifference(float(diff.mean()), float(low), float(high), int(diff.size),
                            confidence)
