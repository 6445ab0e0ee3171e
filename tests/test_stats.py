"""Paired bootstrap intervals and the verdict rule (fedmkt.federation.stats)."""

from __future__ import annotations

import numpy as np
import pytest

from fedmkt.federation.stats import (
    HELPED,
    HURT,
    NO_DIFFERENCE,
    paired_bootstrap,
    verdict,
)


def test_identical_arms_give_a_zero_width_interval_and_no_difference() -> None:
    a = np.array([1, 0, 1, 1, 0] * 40)
    result = paired_bootstrap(a, a)
    assert (result.mean, result.low, result.high) == (0.0, 0.0, 0.0)
    assert result.verdict == NO_DIFFERENCE and result.n == 200


def test_a_clear_gain_is_a_gain_and_a_clear_loss_is_a_loss() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2, 300)
    better = base.copy()
    better[np.nonzero(base == 0)[0][:60]] = 1  # 60 of 300 samples fixed, none broken: +0.2
    gain = paired_bootstrap(better, base)
    assert gain.mean == pytest.approx(0.2)
    assert 0 < gain.low < 0.2 < gain.high and gain.verdict == HELPED
    assert paired_bootstrap(base, better).verdict == HURT


def test_a_few_flips_either_way_are_no_measurable_difference() -> None:
    base = np.array([1, 0] * 100)
    other = base.copy()
    other[:6] = 1 - other[:6]  # 3 fixed, 3 broken
    other[10] = 1 - other[10]
    result = paired_bootstrap(other, base)
    assert result.low < 0 < result.high and result.verdict == NO_DIFFERENCE


def test_the_interval_matches_the_normal_approximation_on_a_large_sample() -> None:
    rng = np.random.default_rng(5)
    diff = rng.choice([-1, 0, 0, 1, 1], size=2000)
    result = paired_bootstrap(diff, np.zeros_like(diff), resamples=4000, seed=1)
    half = 1.96 * diff.std(ddof=1) / np.sqrt(diff.size)
    assert result.low == pytest.approx(diff.mean() - half, abs=0.01)
    assert result.high == pytest.approx(diff.mean() + half, abs=0.01)
    assert paired_bootstrap(diff, np.zeros_like(diff), resamples=4000, seed=1) == result


def test_the_verdict_rule_and_bad_inputs() -> None:
    assert verdict(0.01, 0.2) == HELPED and verdict(-0.2, -0.01) == HURT
    assert verdict(0.0, 0.1) == NO_DIFFERENCE and verdict(-0.1, 0.0) == NO_DIFFERENCE
    with pytest.raises(ValueError, match="paired"):
        paired_bootstrap([1, 0], [1])
    with pytest.raises(ValueError, match="no samples"):
        paired_bootstrap([], [])
    with pytest.raises(ValueError, match="finite"):
        paired_bootstrap([1.0, float("nan")], [0.0, 0.0])
    text = paired_bootstrap([1, 1, 0, 1], [0, 1, 0, 0]).describe()
    assert "paired bootstrap, n = 4" in text
