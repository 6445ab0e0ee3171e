"""Which teacher each public sample is distilled from (DESIGN §1, §4 "Selection").

Every loss here is the tokenizer-independent loss of a model on one public sample: the
answer's total negative log-likelihood (see ``fedmkt.knowledge.topk``). Lower is better.

Strategies:

* ``dualmince`` (the paper's DualMinCE, the default): take the teacher with the smallest loss;
  distil from it (weight 1) only if its loss is strictly smaller than the student's own loss on
  that sample, else the sample gets no KD (plain cross-entropy only). Ties between teachers go to
  the lowest teacher index, so the choice is stable for a fixed teacher order.
* ``fate`` (the FATE-LLM reference behaviour): like ``dualmince``, but a sample that no teacher
  wins is distilled from the student's own snapshot (its top-k from before this round); such
  samples have ``use_self`` set and the teacher index :data:`SELF`.
* ``weighted``: every teacher that has knowledge of the sample is used, with weights
  ``softmax(-loss / temperature)`` over those teachers. The student's own loss is not consulted.

A NaN teacher loss means that teacher has no knowledge of the sample: it is never selected and
gets weight 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

SELF = -1
"""Teacher index of a sample distilled from the student's own snapshot (``fate``)."""

NO_TEACHER = -2
"""Teacher index of a sample that gets no KD (cross-entropy only)."""


class Strategy(StrEnum):
    """Name of a selection strategy, as written in configuration files."""

    DUALMINCE = "dualmince"
    FATE = "fate"
    WEIGHTED = "weighted"


@dataclass(frozen=True)
class Selection:
    """The outcome of :func:`select_teachers` for N samples and T teachers.

    Attributes:
        weights: float32 [N, T]; KD weight of each teacher for each sample (rows sum to 1 or 0).
        use_self: bool [N]; the sample is distilled from the student's own snapshot (``fate``).
        chosen: int32 [N]; the teacher with the largest weight, :data:`SELF`, or
            :data:`NO_TEACHER` when the sample gets cross-entropy only.
        strategy: the strategy that produced this selection.
    """

    weights: np.ndarray
    use_self: np.ndarray
    chosen: np.ndarray
    strategy: Strategy

    @property
    def num_samples(self) -> int:
        return int(self.weights.shape[0])

    @property
    def num_teachers(self) -> int:
        return int(self.weights.shape[1])

    @property
    def distilled(self) -> np.ndarray:
        """bool [N]: the sample gets a KD term (from a teacher or from the student's snapshot)."""
        return (self.weights.sum(axis=1) > 0) | self.use_self

    @property
    def distilled_fraction(self) -> float:
        """Share of samples that get a KD term (0.0 when there are no samples)."""
        if self.num_samples == 0:
            return 0.0
        return float(self.distilled.mean())

    @property
    def teacher_counts(self) -> np.ndarray:
        """int64 [T]: number of samples in which each teacher has a non-zero weight."""
        return (self.weights > 0).sum(axis=0).astype(np.int64)

    @property
    def self_count(self) -> int:
        """Number of samples distilled from the student's own snapshot."""
        return int(self.use_self.sum())

    def weights_with_self(self) -> np.ndarray:
        """float32 [N, T + 1]: :attr:`weights` with the self-snapshot column appended last.

        Pass the student's snapshot as the last teacher of ``combined_loss`` to use it.
        """
        return np.concatenate(
            [self.weights, self.use_self.astype(np.float32)[:, None]], axis=1
        )


def select_teachers(
    student_loss: np.ndarray,
    teacher_losses: np.ndarray,
    strategy: Strategy | str = Strategy.DUALMINCE,
    temperature: float = 1.0,
) -> Selection:
    """Choose, per sample, the teachers to distil from.

    Args:
        student_loss: float [N]; the student's own loss on each sample. Must be finite and >= 0.
        teacher_losses: float [T, N]; each teacher's loss on each sample; NaN = no knowledge.
            Non-NaN values must be >= 0 (+inf is allowed and never wins).
        strategy: ``dualmince`` | ``fate`` | ``weighted``.
        temperature: softmax temperature of ``weighted`` (> 0); ignored otherwise.

    Raises:
        ValueError: on bad shapes, values or strategy names.
    """
    strategy = _parse_strategy(strategy)
    student, teachers = _validate_losses(student_loss, teacher_losses)
    if strategy is Strategy.WEIGHTED:
        return _select_weighted(teachers, temperature)
    return _select_best(student, teachers, fate=strategy is Strategy.FATE)


def _parse_strategy(strategy: Strategy | str) -> Strategy:
    try:
        return Strategy(strategy)
    except ValueError:
        names = ", ".join(s.value for s in Strategy)
        raise ValueError(f"unknown selection strategy {strategy!r}; use one of: {names}") from None


def _validate_losses(
    student_loss: np.ndarray, teacher_losses: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    student = np.asarray(student_loss, dtype=np.float64)
    teachers = np.asarray(teacher_losses, dtype=np.float64)
    if student.ndim != 1:
        raise ValueError(f"student_loss must be 1-D [N], got shape {student.shape}")
    n = student.shape[0]
    if teachers.ndim == 1 and teachers.shape[0] == 0:
        teachers = teachers.reshape(0, n)
    if teachers.ndim != 2 or teachers.shape[1] != n:
        raise ValueError(
            f"teacher_losses must be [T, N] with N={n} (student_loss length), "
            f"got shape {teachers.shape}"
        )
    if not np.all(np.isfinite(student)) or np.any(student < 0):
        raise ValueError("student_loss must be finite and >= 0 for every sample")
    known = teachers[~np.isnan(teachers)]
    if np.any(known < 0):
        raise ValueError("teacher losses must be >= 0 (a total negative log-likelihood) or NaN")
    return student, teachers


def _select_best(student: np.ndarray, teachers: np.ndarray, *, fate: bool) -> Selection:
    num_teachers, n = teachers.shape
    weights = np.zeros((n, num_teachers), dtype=np.float32)
    chosen = np.full(n, NO_TEACHER, dtype=np.int32)
    if num_teachers > 0:
        # NaN -> +inf so that a missing teacher never wins; argmin keeps the first minimum.
        filled = np.where(np.isnan(teachers), np.inf, teachers)
        best = np.argmin(filled, axis=0)
        best_loss = filled[best, np.arange(n)]
        wins = best_loss < student
        rows = np.flatnonzero(wins)
        weights[rows, best[rows]] = 1.0
        chosen[rows] = best[rows]
    else:
        wins = np.zeros(n, dtype=bool)
    use_self = ~wins if fate else np.zeros(n, dtype=bool)
    chosen[use_self] = SELF
    strategy = Strategy.FATE if fate else Strategy.DUALMINCE
    return Selection(weights=weights, use_self=use_self, chosen=chosen, strategy=strategy)


def _select_weighted(teachers: np.ndarray, temperature: float) -> Selection:
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    num_teachers, n = teachers.shape
    rewards = -teachers.T / temperature  # [N, T]; NaN where a teacher has no knowledge
    usable = np.isfinite(rewards)  # a NaN (no knowledge) or +inf loss gets weight 0
    shifted = np.where(usable, rewards, -np.inf)
    top = shifted.max(axis=1, initial=-np.inf, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    exp = np.where(usable, np.exp(shifted - top), 0.0)
    total = exp.sum(axis=1, keepdims=True)
    weights = np.divide(exp, total, out=np.zeros_like(exp), where=total > 0).astype(np.float32)
    chosen = np.full(n, NO_TEACHER, dtype=np.int32)
    has_any = total[:, 0] > 0
    if num_teachers > 0:
        chosen[has_any] = np.argmax(weights[has_any], axis=1)
    use_self = np.zeros(n, dtype=bool)
    return Selection(weights=weights, use_self=use_self, chosen=chosen, strategy=Strategy.WEIGHTED)
