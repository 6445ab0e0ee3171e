"""Batches that pad little: the cut rule every pass of ours uses (DESIGN §11).

A right-padded batch runs ``len(batch) × longest`` token positions through the model, of which
only the samples' own tokens are needed. Taking samples longest first and closing a batch as soon
as one more sample would make its padding exceed ``max_padding`` of its real tokens bounds the
waste of every batch (a batch of one sample has none); ``max_items`` still caps its size.
Inference passes batch their samples this way; a training step keeps its samples (the optimizer
sees the same micro-batch) but runs them as such sub-batches, with gradients accumulated.
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_PADDING = 0.05


def low_padding_batches(lengths: Sequence[int], max_items: int,
                        max_padding: float = MAX_PADDING) -> list[list[int]]:
    """Indices into ``lengths``, longest first, cut into batches of at most ``max_items`` whose
    padding (``len × longest - Σ lengths``) stays within ``max_padding × Σ lengths``."""
    if max_items < 1:
        raise ValueError(f"max_items must be >= 1, got {max_items}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    total = 0
    for index in order:
        size = lengths[index]
        if current:
            width = lengths[current[0]]
            too_wide = (len(current) + 1) * width > (1 + max_padding) * (total + size)
            if len(current) >= max_items or too_wide:
                batches.append(current)
                current, total = [], 0
        current.append(index)
        total += size
    if current:
        batches.append(current)
    return batches


def split_batch(batch: Sequence[int], lengths: Sequence[int],
                max_padding: float = MAX_PADDING) -> list[list[int]]:
    """The items of one batch (indices into ``lengths``) as low-padding sub-batches."""
    parts = low_padding_batches([lengths[i] for i in batch], len(batch) or 1, max_padding)
    return [[batch[j] for j in part] for part in parts]
