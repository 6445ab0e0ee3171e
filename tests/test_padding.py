"""Low-padding batches (fedmkt.models.padding)."""

from __future__ import annotations

import random

import pytest

from fedmkt.models.padding import MAX_PADDING, low_padding_batches, split_batch


def padding(batch: list[int], lengths: list[int]) -> float:
    real = sum(lengths[i] for i in batch)
    return (len(batch) * max(lengths[i] for i in batch) - real) / real


def test_every_batch_pads_within_the_bound_and_every_item_appears_once() -> None:
    rng = random.Random(4)
    for _ in range(50):
        lengths = [rng.randint(1, 300) for _ in range(rng.randint(1, 60))]
        cap = rng.randint(1, 9)
        batches = low_padding_batches(lengths, cap)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        for batch in batches:
            assert 1 <= len(batch) <= cap
            assert padding(batch, lengths) <= MAX_PADDING + 1e-12
            assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch),
                                                         reverse=True)


def test_equal_lengths_fill_batches_and_the_cap_holds() -> None:
    assert low_padding_batches([5] * 7, 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert low_padding_batches([100, 10, 10], 8) == [[0], [1, 2]]
    assert low_padding_batches([], 4) == []
    with pytest.raises(ValueError, match="max_items"):
        low_padding_batches([1], 0)


def test_split_batch_keeps_the_batchs_items() -> None:
    lengths = [50, 150, 60, 90, 148]
    parts = split_batch([0, 1, 3, 4], lengths)
    assert sorted(i for p in parts for i in p) == [0, 1, 3, 4]
    assert parts[0] == [1, 4]  # 150 and 148 pad 2 tokens of 298
