"""Counting the model work a step does, next to the least work the algorithm needs (DESIGN §11).

On a CPU, compute is the whole cost of a round, so every step counts what its model processed:

* ``forward_tokens``: token positions run through the transformer body in a forward pass;
* ``backward_tokens``: token positions back-propagated through it;
* ``head_positions``: positions at which the LM head (``hidden → vocabulary`` logits) was
  evaluated, the largest single matrix product of a small model with a big vocabulary.

A ``Work`` holds one such count. Steps keep two: what they *did* and the *floor*, what the
algorithm needs (each sample once per pass, the LM head only where logits are used, a shared
prompt once for all its choices). Their ratio is the work ratio the report and ``make bench``
print; 1.0 means no wasted model work.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

FIELDS = ("forward_tokens", "backward_tokens", "head_positions")


@dataclass
class Work:
    """Counts of model work (see the module docstring); add with ``+=``."""

    forward_tokens: int = 0
    backward_tokens: int = 0
    head_positions: int = 0

    def add(self, *, forward: int = 0, backward: int = 0, head: int = 0) -> None:
        self.forward_tokens += int(forward)
        self.backward_tokens += int(backward)
        self.head_positions += int(head)

    def __iadd__(self, other: Work) -> Work:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def __add__(self, other: Work) -> Work:
        out = Work(**{f.name: getattr(self, f.name) for f in fields(self)})
        out += other
        return out

    def as_dict(self) -> dict[str, int]:
        return {name: int(getattr(self, name)) for name in FIELDS}


@dataclass
class WorkLedger:
    """What a step did and its floor, as flat metrics (``work/<field>``, ``floor/<field>``)."""

    done: Work
    floor: Work

    def __init__(self) -> None:
        self.done = Work()
        self.floor = Work()

    def __iadd__(self, other: WorkLedger) -> WorkLedger:
        self.done += other.done
        self.floor += other.floor
        return self

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name in FIELDS:
            out[f"work/{name}"] = float(getattr(self.done, name))
            out[f"floor/{name}"] = float(getattr(self.floor, name))
        return out


def work_ratio(done: int | float, floor: int | float) -> float:
    """``done / floor``; 1.0 when both are 0 (nothing needed, nothing done), inf when only the
    floor is 0."""
    if floor == 0:
        return 1.0 if done == 0 else float("inf")
    return float(done) / float(floor)
