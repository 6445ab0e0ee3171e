"""Partitioning into eval / public / private splits."""

from __future__ import annotations

import pytest

from fedmkt.data.partition import Partition, PartitionError, partition
from fedmkt.data.samples import Sample
from fedmkt.data.tasks import load_task


def _samples(count: int) -> list[Sample]:
    return [Sample(f"s{i}", f"prompt {i}", f" answer {i}") for i in range(count)]


def _all_parts(split: Partition) -> list[list[Sample]]:
    return [split.eval, split.public, *split.private, *split.unused]


def _ids(part: list[Sample]) -> set[str]:
    return {s.id for s in part}


def test_sizes_disjoint_and_covering() -> None:
    samples = _samples(100)
    split = partition(samples, num_clients=4, seed=7)
    assert split.sizes() == {"public": 16, "private": [16] * 4, "eval": 20, "unused": []}
    parts = _all_parts(split)
    union: set[str] = set()
    for part in parts:
        assert not union & _ids(part)
        union |= _ids(part)
    assert union == _ids(samples)


def test_uneven_counts_differ_by_at_most_one() -> None:
    split = partition(_samples(103), num_clients=3, seed=1, eval_fraction=0.1)
    sizes = [len(split.public), *map(len, split.private)]
    assert len(split.eval) == 10
    assert sum(sizes) == 93 and max(sizes) - min(sizes) <= 1


def test_paper_split_five_parts_two_clients_leaves_two_unused() -> None:
    split = partition(_samples(50), num_clients=2, seed=0, eval_fraction=0.0, parts=5)
    assert split.eval == []
    assert len(split.private) == 2 and len(split.unused) == 2
    assert all(len(part) == 10 for part in [split.public, *split.private, *split.unused])


def test_deterministic_for_a_seed_and_different_across_seeds() -> None:
    samples = _samples(60)
    first = partition(samples, num_clients=2, seed=3)
    assert partition(list(samples), num_clients=2, seed=3) == first
    other = partition(samples, num_clients=2, seed=4)
    assert _ids(other.public) != _ids(first.public)
    # shuffled, not a plain cut of the input order
    assert [s.id for s in first.eval] != [s.id for s in samples[: len(first.eval)]]


def test_max_samples_caps_every_split() -> None:
    split = partition(_samples(200), num_clients=2, seed=0, max_samples=5)
    assert split.sizes() == {"public": 5, "private": [5, 5], "eval": 5, "unused": []}
    full = partition(_samples(200), num_clients=2, seed=0)
    assert split.public == full.public[:5]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"num_clients": 5, "parts": 5}, "at least 6 parts"),
        ({"num_clients": 0}, "at least 1"),
        ({"num_clients": 2, "eval_fraction": 1.0}, "eval_fraction"),
        ({"num_clients": 2, "eval_fraction": -0.1}, "eval_fraction"),
        ({"num_clients": 2, "max_samples": 0}, "max_samples"),
        ({"num_clients": 9}, "fewer than the 10 parts"),
    ],
)
def test_impossible_requests_raise_clear_errors(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(PartitionError, match=needle):
        partition(_samples(10), seed=0, **kwargs)  # type: ignore[arg-type]


def test_duplicate_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="more than once"):
        partition([*_samples(10), Sample("s1", "p", " a")], num_clients=1, seed=0)


def test_partition_of_a_real_task() -> None:
    samples = load_task("rte")
    split = partition(samples, num_clients=4, seed=42, eval_fraction=0.2)
    assert len(split.eval) == round(277 * 0.2)
    assert sum(map(len, _all_parts(split))) == 277
    assert {len(split.public), *map(len, split.private)} <= {44, 45}
