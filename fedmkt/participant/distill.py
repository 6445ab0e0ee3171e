"""Selective knowledge distillation on the public data (DESIGN §1 steps 4 and 7).

Before training, one inference pass measures the student's own answer NLL on every public
sample (and, for strategy ``fate``, stages its own top-k as the self-snapshot). The teachers'
sent losses and the student's go to ``select_teachers``; then each micro-batch's loss is
``combined_loss``: ``λ·CE + (1-λ)·KD`` over the selected teachers, plain CE where none is.
Teacher knowledge is read from the staging files per batch, only for teachers with a non-zero
weight in that batch: nothing of size ``[batch, length, vocab]`` is built.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedmkt.data.tokenize import IGNORE_INDEX, collate
from fedmkt.knowledge.kd_loss import TeacherTargets, combined_loss_at
from fedmkt.knowledge.selection import Selection
from fedmkt.models.heads import SelectiveHead, compact_positions
from fedmkt.models.work import WorkLedger
from fedmkt.participant.data import EncodedSplit
from fedmkt.participant.staging import StagedKnowledge
from fedmkt.participant.training import Cancelled, StepOutput
from fedmkt.wire.chunking import KnowledgeSample


@dataclass(frozen=True)
class DistillSettings:
    kd_alpha: float
    temperature: float
    kind: str  # "ce" | "kl"
    positions: str  # "answer" | "all"


def teacher_losses(teachers: Sequence[StagedKnowledge], sample_ids: Sequence[str]) -> np.ndarray:
    """float64 [T, N]: each teacher's sent loss per sample; NaN where it sent no knowledge."""
    out = np.full((len(teachers), len(sample_ids)), math.nan, dtype=np.float64)
    for t, staged in enumerate(teachers):
        for n, sample_id in enumerate(sample_ids):
            out[t, n] = staged.loss(sample_id)
    return out


def collect_losses(samples: Iterable[KnowledgeSample], losses: dict[str, float],
                   cancel: threading.Event | None = None) -> Iterator[KnowledgeSample]:
    """Pass ``samples`` through, recording each one's loss in ``losses`` (checks ``cancel``)."""
    for sample in samples:
        if cancel is not None and cancel.is_set():
            raise Cancelled("cancelled by the caller")
        losses[sample.sample_id] = float(sample.loss)
        yield sample


def selection_metrics(selection: Selection, names: Sequence[str]) -> dict[str, float]:
    """Distilled fraction and how many samples each teacher (and the self-snapshot) won."""
    out = {"distilled_fraction": selection.distilled_fraction,
           "teachers": float(len(names)), "samples": float(selection.num_samples)}
    for name, count in zip(names, selection.teacher_counts.tolist(), strict=True):
        out[f"selected/{name}"] = float(count)
    if selection.self_count:
        out["selected/self"] = float(selection.self_count)
    return out


def _empty_teacher(batch: int, length: int, device: torch.device) -> TeacherTargets:
    return TeacherTargets(
        torch.full((batch, length, 1), -1, dtype=torch.long, device=device),
        torch.zeros((batch, length, 1), dtype=torch.float32, device=device),
        torch.zeros((batch, length), dtype=torch.bool, device=device),
    )


def teacher_targets(
    staged: StagedKnowledge,
    sample_ids: Sequence[str],
    active: np.ndarray,
    length: int,
    device: torch.device,
) -> TeacherTargets:
    """One teacher's knowledge laid out on the batch's positions ([B, L, k] ids and logits,
    mask [B, L] of the positions that carry a distribution); rows not ``active`` stay empty."""
    batch = len(sample_ids)
    wanted = [sample_ids[b] for b in range(batch) if active[b]]
    if not wanted:
        return _empty_teacher(batch, length, device)
    found = staged.get_many(wanted)
    k = staged.top_k
    ids = np.full((batch, length, k), -1, dtype=np.int64)
    logits = np.zeros((batch, length, k), dtype=np.float32)
    mask = np.zeros((batch, length), dtype=bool)
    for b, sample_id in enumerate(sample_ids):
        sample = found.get(sample_id) if active[b] else None
        if sample is None:
            continue
        start = sample.position_start
        rows = min(sample.positions, max(0, length - 1 - start))
        ids[b, start : start + rows] = sample.topk_ids[:rows]
        logits[b, start : start + rows] = sample.topk_logits[:rows]
        mask[b, start : start + rows] = True
    return TeacherTargets(torch.from_numpy(ids).to(device), torch.from_numpy(logits).to(device),
                          torch.from_numpy(mask).to(device))


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """bool [B, L]: positions whose next token is an answer token (``labels[i + 1] != -100``)."""
    out = torch.zeros_like(labels, dtype=torch.bool)
    out[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return out


class DistillStep:
    """The loss of one micro-batch of public samples (indices into ``split``)."""

    def __init__(
        self,
        head: SelectiveHead,
        split: EncodedSplit,
        teachers: Sequence[StagedKnowledge],
        weights: np.ndarray,
        settings: DistillSettings,
        pad_id: int,
        device: torch.device,
    ) -> None:
        self.head = head
        self.split = split
        self.teachers = list(teachers)
        self.weights = np.asarray(weights, dtype=np.float32)  # [N, T]
        self.settings = settings
        self.pad_id = pad_id
        self.device = device

    def __call__(self, indices: Sequence[int]) -> StepOutput:
        encoded, batch = collate_batch(self.split, indices, self.pad_id, self.device)
        length = batch["input_ids"].shape[1]
        weights = self.weights[list(indices)]
        sample_ids = [enc.sample_id for enc in encoded]
        keep = answer_positions(batch["labels"]) if self.settings.positions == "answer" else None
        targets = []
        for t, staged in enumerate(self.teachers):
            target = teacher_targets(staged, sample_ids, weights[:, t] > 0, length, self.device)
            if keep is not None:
                target = TeacherTargets(target.ids, target.logits, target.mask & keep)
            targets.append(target)
        rows = forward_rows(self.head, batch, [t.mask for t in targets])
        result = combined_loss_at(rows.logits, rows.next_token,
                                  [rows.take_teacher(t) for t in targets], weights,
                                  kd_alpha=self.settings.kd_alpha,
                                  temperature=self.settings.temperature,
                                  kind=self.settings.kind)  # type: ignore[arg-type]
        return StepOutput(result.loss, result.metrics(), rows.work)


def collate_batch(split: EncodedSplit, indices: Sequence[int], pad_id: int,
                  device: torch.device) -> tuple[list, dict[str, torch.Tensor]]:
    """The encoded samples at ``indices`` and their right-padded batch on ``device``."""
    encoded = [split.encoded[i] for i in indices]
    return encoded, {k: v.to(device) for k, v in collate(encoded, pad_id).items()}


@dataclass
class LossRows:
    """The student's logits at the rows a loss reads (see ``fedmkt.models.heads``).

    ``logits`` [B, K, V] at positions ``index`` [B, K]; ``valid`` marks real rows (the rest pad
    the batch); ``next_token`` [B, K] is the label each row predicts (-100 where not scored)."""

    logits: torch.Tensor
    index: torch.Tensor
    valid: torch.Tensor
    next_token: torch.Tensor
    work: WorkLedger

    def take_teacher(self, target: TeacherTargets) -> TeacherTargets:
        """A teacher's [B, L, ...] targets at the same rows; padding rows carry no knowledge."""
        k = target.ids.shape[-1]
        at = self.index.unsqueeze(-1).expand(-1, -1, k)
        return TeacherTargets(target.ids.gather(1, at), target.logits.gather(1, at),
                              target.mask.gather(1, self.index) & self.valid)


def forward_rows(head: SelectiveHead, batch: dict[str, torch.Tensor],
                 extra_masks: Sequence[torch.Tensor] = ()) -> LossRows:
    """The forward pass of a training micro-batch with the LM head only at the rows that CE
    (positions predicting a label) or a teacher mask in ``extra_masks`` reads, and its work: the
    body runs forward and backward over the padded batch; the floor is its real tokens."""
    labels, attention = batch["labels"], batch["attention_mask"]
    next_token = torch.full_like(labels, IGNORE_INDEX)
    next_token[:, :-1] = labels[:, 1:]
    wanted = next_token != IGNORE_INDEX
    for mask in extra_masks:
        wanted |= mask.bool()
    index, valid = compact_positions(wanted)
    logits = head.logits_at(batch["input_ids"], attention, index)
    work = WorkLedger()
    padded, real = labels.numel(), int(attention.sum())
    work.done.add(forward=padded, backward=padded,
                  head=index.numel() if head.fast else padded)
    work.floor.add(forward=real, backward=real, head=int(wanted.sum()))
    return LossRows(logits, index, valid,
                    next_token.gather(1, index).masked_fill(~valid, IGNORE_INDEX), work)


class CrossEntropyStep:
    """The plain cross-entropy loss of one micro-batch (local fine-tuning on private data)."""

    def __init__(self, head: SelectiveHead, split: EncodedSplit, pad_id: int,
                 device: torch.device) -> None:
        self.head = head
        self.split = split
        self.pad_id = pad_id
        self.device = device

    def __call__(self, indices: Sequence[int]) -> StepOutput:
        encoded, batch = collate_batch(self.split, indices, self.pad_id, self.device)
        rows = forward_rows(self.head, batch)
        weights = torch.zeros((len(encoded), 0), device=self.device)
        result = combined_loss_at(rows.logits, rows.next_token, [], weights)
        return StepOutput(result.loss, {"ce": float(result.ce.mean())}, rows.work)
