"""Sparse knowledge-distillation losses (DESIGN §1 step 4/7, §4 "Sparse KD").

A teacher's knowledge at a student position is its top-k: kept token ids (in the student's
vocabulary, ``-1`` = padding slot) and their logits. The teacher distribution is
``p_t = softmax(teacher_logits / T)`` over the kept ids only; the student side is
``log q_s = student_logits / T`` read at those ids minus the student's log-partition over the
whole vocabulary. A dense ``[batch, length, vocab]`` target is never built: per teacher only
``[B, L, k]`` values are gathered, and the log-partition is computed once and shared between the
cross-entropy on the labels and every teacher (see :mod:`fedmkt.knowledge.vocab_ops`).

* ``kind="ce"`` (the paper's default): ``-Σ p_t log q_s``.
* ``kind="kl"``: ``Σ p_t (log p_t - log q_s)``; it differs from ``ce`` by the teacher entropy,
  a constant, so both give the same gradients.

Per sample, the KD loss is the mean over the positions where the teacher has knowledge
(``position_mask`` and at least one non-padding id); a sample with no such position has KD 0.
When ``T != 1`` the KD loss is multiplied by ``T²`` (Hinton et al.), which keeps the size of its
gradients independent of ``T``. The kept ids of one row should be distinct (the aligner keeps the
first occurrence of each id); with repeated ids ``ce`` still equals the dense loss, ``kl`` does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch

from fedmkt.knowledge.vocab_ops import logsumexp_and_gather

KDKind = Literal["ce", "kl"]
IGNORE_INDEX = -100
"""Label value of tokens that are not scored (prompt, padding), as in Hugging Face."""


class TeacherTargets(NamedTuple):
    """One teacher's knowledge laid out on the student's positions.

    Attributes:
        ids: integer [B, L, k]; kept token ids in the student's vocabulary, ``-1`` = padding.
            Row ``i`` is the distribution over the token at position ``i + 1``.
        logits: float [B, L, k]; the teacher's logits of those ids (ignored at padding slots).
        mask: bool [B, L]; positions where the teacher has knowledge.
    """

    ids: torch.Tensor
    logits: torch.Tensor
    mask: torch.Tensor


@dataclass(frozen=True)
class CombinedLoss:
    """Result of :func:`combined_loss`.

    Attributes:
        loss: scalar tensor to call ``backward()`` on (mean over the batch of per-sample losses).
        ce: float [B], detached; per-sample cross-entropy (mean over answer tokens).
        kd: float [B], detached; per-sample weighted KD loss (0 where not distilled).
        distilled: bool [B]; the sample had a KD term (some teacher weight > 0).
    """

    loss: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor
    distilled: torch.Tensor

    @property
    def distilled_fraction(self) -> float:
        return float(self.distilled.float().mean()) if self.distilled.numel() else 0.0

    def metrics(self) -> dict[str, float]:
        """Plain numbers for logs and Prometheus: loss, mean CE, mean KD over distilled samples."""
        kd = float(self.kd[self.distilled].mean()) if bool(self.distilled.any()) else 0.0
        return {
            "loss": float(self.loss.detach()),
            "ce": float(self.ce.mean()) if self.ce.numel() else 0.0,
            "kd": kd,
            "distilled_fraction": self.distilled_fraction,
        }


def sparse_kd_loss(
    student_logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logits: torch.Tensor,
    position_mask: torch.Tensor,
    temperature: float = 1.0,
    kind: KDKind = "ce",
) -> torch.Tensor:
    """Per-sample sparse KD loss [B] of the student against one top-k teacher.

    Args:
        student_logits: float [B, L, V].
        teacher_ids: integer [B, L, k], ``-1`` = padding slot.
        teacher_logits: float [B, L, k].
        position_mask: bool [B, L].
        temperature: T > 0; the loss is multiplied by T² when T != 1.
        kind: ``"ce"`` or ``"kl"``.
    """
    _check_kind_and_temperature(kind, temperature)
    teacher = _check_teacher(TeacherTargets(teacher_ids, teacher_logits, position_mask),
                             student_logits)
    lse, gathered = logsumexp_and_gather(
        student_logits, teacher.ids.clamp(min=0), temperatures=(temperature,)
    )
    return _kd_from_gathered(gathered, lse[0], teacher, temperature, kind)


def combined_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teachers: Sequence[TeacherTargets | tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    weights: torch.Tensor | np.ndarray,
    kd_alpha: float = 0.9,
    temperature: float = 1.0,
    kind: KDKind = "ce",
) -> CombinedLoss:
    """``λ·CE + (1-λ)·KD`` per sample, averaged over the batch.

    ``CE`` is the cross-entropy of the student on ``labels`` (Hugging Face layout: ``labels[b, i]``
    is token ``i`` or ``-100``; the logits at ``i`` predict ``labels[b, i + 1]``), averaged over a
    sample's scored tokens. ``KD = Σ_t weights[b, t] · KD_t(b)`` with :func:`sparse_kd_loss`.

    A sample whose weights are all zero (no teacher selected) gets plain ``CE``, not ``λ·CE``: that
    is the paper's loss for unselected samples, and scaling it by λ would silently lower the
    learning rate of exactly the samples on which the student is already better than every
    teacher.

    Args:
        student_logits: float [B, L, V].
        labels: integer [B, L].
        teachers: T teachers, each ``(ids [B, L, k], logits [B, L, k], mask [B, L])``; ``k`` may
            differ between teachers.
        weights: float [B, T], >= 0; e.g. a batch slice of ``Selection.weights`` (or of
            ``Selection.weights_with_self()`` with the student's snapshot as the last teacher).
        kd_alpha: λ in [0, 1], the share of CE for distilled samples (paper: 0.9).
        temperature: T > 0 of the KD term (the CE term always uses T = 1).
        kind: ``"ce"`` or ``"kl"``.
    """
    batch, length = _check_student(student_logits)
    if tuple(labels.shape) != (batch, length):
        raise ValueError(f"labels must be [B, L] = {(batch, length)}, got {tuple(labels.shape)}")
    return combined_loss_at(student_logits, _next_token_targets(labels), teachers, weights,
                            kd_alpha=kd_alpha, temperature=temperature, kind=kind)


def combined_loss_at(
    student_logits: torch.Tensor,
    next_token: torch.Tensor,
    teachers: Sequence[TeacherTargets | tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    weights: torch.Tensor | np.ndarray,
    kd_alpha: float = 0.9,
    temperature: float = 1.0,
    kind: KDKind = "ce",
) -> CombinedLoss:
    """:func:`combined_loss` on rows that are not a sequence: row ``j`` of sample ``b`` predicts
    ``next_token[b, j]`` (``-100`` = not scored) and the teachers are laid out on the same rows.

    This is how the loss is computed from logits evaluated at chosen positions only
    (``fedmkt.models.heads``): the rows are the positions that CE or KD reads, in any order,
    padded with unscored, unmasked rows. The result equals :func:`combined_loss` on the full
    sequence because both losses are means over scored rows and masked rows.
    """
    _check_kind_and_temperature(kind, temperature)
    if not 0.0 <= kd_alpha <= 1.0:
        raise ValueError(f"kd_alpha must be in [0, 1], got {kd_alpha}")
    batch, length = _check_student(student_logits)
    if tuple(next_token.shape) != (batch, length):
        raise ValueError(f"next-token targets must be [B, L] = {(batch, length)}, "
                         f"got {tuple(next_token.shape)}")
    targets = [_check_teacher(TeacherTargets(*t), student_logits) for t in teachers]
    weight = _check_weights(weights, batch, len(targets), student_logits.device)

    active = [t for t in range(len(targets)) if bool((weight[:, t] > 0).any())]
    next_token = next_token.to(student_logits.device).long()
    ids = [next_token.clamp(min=0).unsqueeze(-1)]
    ids += [targets[t].ids.clamp(min=0).long() for t in active]
    temps = (1.0,) if temperature == 1.0 else (1.0, temperature)
    lse, gathered = logsumexp_and_gather(student_logits, torch.cat(ids, dim=-1), temps)

    scored = next_token != IGNORE_INDEX
    token_ce = (lse[0] - gathered[..., 0]) * scored
    ce = token_ce.sum(dim=1) / scored.sum(dim=1).clamp(min=1)

    kd = torch.zeros(batch, dtype=torch.float32, device=student_logits.device)
    offset = 1
    for t in active:
        k = targets[t].ids.shape[-1]
        part = gathered[..., offset : offset + k]
        offset += k
        kd = kd + weight[:, t] * _kd_from_gathered(part, lse[-1], targets[t], temperature, kind)

    distilled = (weight > 0).any(dim=1)
    mixed = kd_alpha * ce + (1.0 - kd_alpha) * kd
    per_sample = torch.where(distilled, mixed, ce)
    return CombinedLoss(
        loss=per_sample.mean(),
        ce=ce.detach(),
        kd=kd.detach(),
        distilled=distilled.detach(),
    )


def _next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """int64 [B, L]: the label each position predicts (``labels`` shifted left, -100 at the end)."""
    shifted = torch.full_like(labels, IGNORE_INDEX, dtype=torch.long)
    shifted[:, :-1] = labels[:, 1:]
    return shifted


def _kd_from_gathered(
    student_at_ids: torch.Tensor,
    student_lse: torch.Tensor,
    teacher: TeacherTargets,
    temperature: float,
    kind: KDKind,
) -> torch.Tensor:
    """Per-sample KD [B] from the student's raw logits at the teacher's ids [B, L, k]."""
    kept = teacher.ids >= 0
    log_q = student_at_ids / temperature - student_lse.unsqueeze(-1)
    scaled = teacher.logits.detach().float() / temperature
    log_p = torch.log_softmax(scaled.masked_fill(~kept, float("-inf")), dim=-1)
    log_p = torch.where(kept, log_p, torch.zeros_like(log_p))  # rows with no kept id: not NaN
    p = log_p.exp() * kept
    if kind == "ce":
        per_position = -(p * log_q).sum(dim=-1)
    else:
        per_position = (p * (log_p - log_q)).sum(dim=-1)
    positions = teacher.mask.bool() & kept.any(dim=-1)
    total = (per_position * positions).sum(dim=1)
    loss = total / positions.sum(dim=1).clamp(min=1)
    return loss * (temperature**2) if temperature != 1.0 else loss


def _check_kind_and_temperature(kind: str, temperature: float) -> None:
    if kind not in ("ce", "kl"):
        raise ValueError(f"kind must be 'ce' or 'kl', got {kind!r}")
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")


def _check_student(student_logits: torch.Tensor) -> tuple[int, int]:
    if student_logits.dim() != 3 or not student_logits.is_floating_point():
        raise ValueError(
            f"student_logits must be a float [B, L, V] tensor, got {student_logits.dtype} "
            f"{tuple(student_logits.shape)}"
        )
    return int(student_logits.shape[0]), int(student_logits.shape[1])


def _check_teacher(teacher: TeacherTargets, student_logits: torch.Tensor) -> TeacherTargets:
    """Shapes, dtypes, id range and finite logits; returns the targets on the student's device."""
    batch, length = _check_student(student_logits)
    vocab = int(student_logits.shape[-1])
    device = student_logits.device
    ids, logits, mask = (x.to(device) for x in teacher)
    if ids.dim() != 3 or tuple(ids.shape[:2]) != (batch, length):
        raise ValueError(f"teacher ids must be [B, L, k] with B, L = {(batch, length)}, "
                         f"got {tuple(ids.shape)}")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"teacher ids must be integers, got {ids.dtype}")
    if tuple(logits.shape) != tuple(ids.shape) or not logits.is_floating_point():
        raise ValueError(f"teacher logits must be float {tuple(ids.shape)}, "
                         f"got {logits.dtype} {tuple(logits.shape)}")
    if tuple(mask.shape) != (batch, length):
        raise ValueError(f"teacher mask must be [B, L] = {(batch, length)}, "
                         f"got {tuple(mask.shape)}")
    if ids.numel() and (int(ids.min()) < -1 or int(ids.max()) >= vocab):
        raise ValueError(f"teacher ids must be in [-1, {vocab}) (-1 = padding)")
    if not bool(torch.isfinite(logits[ids >= 0]).all()):
        raise ValueError("teacher logits must be finite at kept (non-padding) ids")
    return TeacherTargets(ids, logits, mask.bool())


def _check_weights(
    weights: torch.Tensor | np.ndarray, batch: int, num_teachers: int, device: torch.device
) -> torch.Tensor:
    weight = torch.as_tensor(weights, dtype=torch.float32, device=device)
    if tuple(weight.shape) != (batch, num_teachers):
        raise ValueError(f"weights must be [B, T] = {(batch, num_teachers)}, "
                         f"got {tuple(weight.shape)}")
    if not bool(torch.isfinite(weight).all()) or bool((weight < 0).any()):
        raise ValueError("weights must be finite and >= 0")
    return weight
