"""Split one task's samples between the evaluation set, the public set and the clients.

As in the paper (DESIGN §1): after holding out an evaluation split, the rest is cut into
``parts`` equal parts (default ``num_clients + 1``); part 0 is the **public** set every party
holds, part ``i + 1`` is the **private** set of client ``i``. With ``parts`` larger than
``num_clients + 1`` (the paper: 5 parts, 1 public + 4 private) the extra parts go unused.

How: the sample order is shuffled once with ``random.Random(seed)``; the first
``round(len(samples) * eval_fraction)`` shuffled samples are the evaluation split, and the rest
is cut into consecutive parts whose sizes differ by at most one (no sample is dropped). Every
party that calls `partition` with the same samples and seed gets the same split, so a client
can take its own private part without any exchange. The splits are disjoint by construction.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from fedmkt.data.samples import Sample, check_unique_ids


class PartitionError(ValueError):
    """The requested split is impossible (too many clients, too few samples, bad fraction)."""


@dataclass(frozen=True)
class Partition:
    """The splits of one task.

    ``public``: shared by every party. ``private[i]``: client ``i``'s own data. ``eval``: held out
    for evaluation. ``unused``: parts beyond ``num_clients + 1`` (empty unless ``parts`` asked
    for more).
    """

    public: list[Sample]
    private: list[list[Sample]]
    eval: list[Sample]
    unused: list[list[Sample]]

    def sizes(self) -> dict[str, object]:
        """Split sizes, for logs and reports."""
        return {
            "public": len(self.public),
            "private": [len(part) for part in self.private],
            "eval": len(self.eval),
            "unused": [len(part) for part in self.unused],
        }


def _check_arguments(
    num_clients: int, eval_fraction: float, parts: int, max_samples: int | None
) -> None:
    if num_clients < 1:
        raise PartitionError(f"num_clients must be at least 1, got {num_clients}")
    if not 0.0 <= eval_fraction < 1.0:
        raise PartitionError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    if parts < num_clients + 1:
        raise PartitionError(
            f"{num_clients} clients need at least {num_clients + 1} parts (1 public + "
            f"{num_clients} private); got parts={parts}. Lower num_clients or raise parts."
        )
    if max_samples is not None and max_samples < 1:
        raise PartitionError(f"max_samples must be at least 1, got {max_samples}")


def _cut(items: list[Sample], parts: int) -> list[list[Sample]]:
    """``items`` cut into ``parts`` consecutive runs whose sizes differ by at most one."""
    base, extra = divmod(len(items), parts)
    out, start = [], 0
    for index in range(parts):
        end = start + base + (1 if index < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def partition(
    samples: Sequence[Sample],
    *,
    num_clients: int,
    seed: int,
    eval_fraction: float = 0.2,
    parts: int | None = None,
    max_samples: int | None = None,
) -> Partition:
    """Hold out an evaluation split, then cut the rest into public + private parts.

    ``parts`` defaults to ``num_clients + 1``. ``max_samples`` caps every split (public, each
    private part, eval) for quick demos; the cap keeps a random subset because splits are in
    shuffled order. Raises `PartitionError` when the request cannot be met.
    """
    parts = num_clients + 1 if parts is None else parts
    _check_arguments(num_clients, eval_fraction, parts, max_samples)
    check_unique_ids(samples)
    order = list(samples)
    random.Random(seed).shuffle(order)
    num_eval = round(len(order) * eval_fraction)
    held_out, rest = order[:num_eval], order[num_eval:]
    if len(rest) < parts:
        raise PartitionError(
            f"after the evaluation split only {len(rest)} samples are left, fewer than the "
            f"{parts} parts requested"
        )

    cap = len(order) if max_samples is None else max_samples
    cut = [part[:cap] for part in _cut(rest, parts)]
    return Partition(
        public=cut[0],
        private=cut[1 : num_clients + 1],
        eval=held_out[:cap],
        unused=cut[num_clients + 1 :],
    )
