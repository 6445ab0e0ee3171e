"""A short, explicit training loop (nanoGPT style) shared by local fine-tuning and distillation.

``run_training`` owns everything but the loss: seeds (torch, numpy, random and the data order,
so a CPU run is reproducible), AdamW over the trainable parameters only (β=(0.9, 0.95),
weight decay), linear warm-up then cosine decay of the learning rate, gradient accumulation,
gradient clipping, bfloat16 autocast on CUDA only, a tqdm bar (off when stderr is not a TTY),
the ``progress`` callback after every optimizer step, and a ``cancel`` check between
micro-batches. The loss comes from ``step_fn(batch_indices)``, which returns a `StepOutput`.
"""

from __future__ import annotations

import math
import random
import sys
import threading
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from fedmkt.errors import FedmktError
from fedmkt.models.padding import split_batch
from fedmkt.models.work import WorkLedger

ProgressFn = Callable[[str, int, int, dict[str, float]], None]
"""``progress(step, completed, total, metrics)``; called from the worker thread."""


class Cancelled(FedmktError):
    """The caller cancelled a long call; the participant stays usable."""

    code = "CANCELLED"
    http_status = 499


@dataclass(frozen=True)
class TrainOptions:
    """Optimizer, schedule and batching of one training call."""

    learning_rate: float
    epochs: int = 1
    batch_size: int = 4
    grad_accum: int = 1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_ratio: float = 0.0
    grad_clip: float = 1.0  # 0 = off
    seed: int = 0
    group_by_length: bool = True  # batches of similar lengths: little padding, same epochs


@dataclass
class StepOutput:
    """What a step function returns for one micro-batch: the loss to back-propagate (mean over
    its samples) and plain numbers to average into the metrics."""

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    work: WorkLedger | None = None  # model work of the micro-batch (summed, not averaged)


@dataclass
class TrainResult:
    """Mean metrics of the last epoch, per-epoch mean loss, counts, and the model work of
    all epochs."""

    metrics: dict[str, float]
    epoch_losses: list[float]
    optimizer_steps: int
    work: WorkLedger = field(default_factory=WorkLedger)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices) from one integer."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (e.g. config seed, round, phase), stable everywhere."""
    state = np.random.SeedSequence([int(p) & ((1 << 63) - 1) for p in parts]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up over ``warmup`` steps,
    then cosine decay towards 0 over the rest (never exactly 0 on the last step)."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


GROUP_WINDOW = 16  # micro-batches whose samples are sorted by length together


def micro_batches(count: int, batch_size: int, generator: torch.Generator,
                  lengths: Sequence[int] | None = None) -> list[list[int]]:
    """A shuffled order of ``range(count)`` cut into micro-batches of ``batch_size``.

    With ``lengths``, samples are grouped by length (as Hugging Face's ``group_by_length``):
    the shuffled order is cut into windows of ``GROUP_WINDOW`` micro-batches, each window is
    sorted by length (longest first) and cut into micro-batches, and the order of all the
    micro-batches is shuffled again. Every sample is still seen once per epoch in a seeded random
    batch order, but a batch pads its samples only to lengths close to their own.
    """
    order = torch.randperm(count, generator=generator).tolist()
    if lengths is None:
        return [order[i : i + batch_size] for i in range(0, count, batch_size)]
    if len(lengths) != count:
        raise ValueError(f"lengths has {len(lengths)} entries for {count} samples")
    window = batch_size * GROUP_WINDOW
    batches = []
    for start in range(0, count, window):
        part = sorted(order[start : start + window], key=lambda i: -lengths[i])
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffled]


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled by the caller")


def run_training(
    model: torch.nn.Module,
    num_items: int,
    step_fn: Callable[[Sequence[int]], StepOutput],
    options: TrainOptions,
    *,
    name: str = "train",
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    lengths: Sequence[int] | None = None,
) -> TrainResult:
    """Train ``model``'s trainable parameters on ``num_items`` items (indices passed to
    ``step_fn`` in seeded shuffled micro-batches) for ``options.epochs`` epochs.

    ``lengths`` (tokens per item) lets ``options.group_by_length`` batch similar lengths."""
    if num_items < 1:
        raise ValueError(f"{name}: nothing to train on (0 samples)")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{name}: the model has no trainable parameters")
    seed_everything(options.seed)
    order = torch.Generator().manual_seed(options.seed)
    optimizer = torch.optim.AdamW(params, lr=options.learning_rate, betas=options.betas,
                                  weight_decay=options.weight_decay)
    groups_per_epoch = math.ceil(math.ceil(num_items / options.batch_size) / options.grad_accum)
    total = groups_per_epoch * options.epochs
    warmup = math.ceil(options.warmup_ratio * total)
    device = next(iter(params)).device
    step, epoch_losses, epoch_metrics = 0, [], {}
    work = WorkLedger()
    grouped = lengths if options.group_by_length else None
    model.train()
    bar = tqdm(total=total, desc=name, unit="step", disable=not sys.stderr.isatty())
    try:
        for _epoch in range(options.epochs):
            batches = micro_batches(num_items, options.batch_size, order, grouped)
            sums: dict[str, float] = {}
            for start in range(0, len(batches), options.grad_accum):
                group = batches[start : start + options.grad_accum]
                if grouped is not None:  # the same samples per step, run with little padding
                    group = [part for batch in group for part in split_batch(batch, grouped)]
                metrics = _optimizer_step(model, params, optimizer, group, step_fn, options,
                                          lr_at(step, total, options.learning_rate, warmup),
                                          device, cancel, work)
                step += 1
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + value
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")
                if progress is not None:
                    progress(name, step, total, metrics)
            epoch_metrics = {k: v / groups_per_epoch for k, v in sums.items()}
            epoch_losses.append(epoch_metrics["loss"])
    finally:
        bar.close()
        optimizer.zero_grad(set_to_none=True)
        model.eval()
    return TrainResult(epoch_metrics, epoch_losses, step, work)


def _optimizer_step(
    model: torch.nn.Module,
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    group: list[list[int]],
    step_fn: Callable[[Sequence[int]], StepOutput],
    options: TrainOptions,
    lr: float,
    device: torch.device,
    cancel: threading.Event | None,
    work: WorkLedger,
) -> dict[str, float]:
    """Accumulate gradients over the micro-batches of ``group`` (weighted by their sizes), then
    clip and take one AdamW step. Returns the group's sample-weighted mean metrics."""
    samples = sum(len(batch) for batch in group)
    sums: dict[str, float] = {}
    for batch in group:
        _check_cancel(cancel)
        with _autocast(device):
            out = step_fn(batch)
        share = len(batch) / samples
        if out.work is not None:
            work += out.work
        (out.loss * share).backward()
        sums["loss"] = sums.get("loss", 0.0) + float(out.loss.detach()) * share
        for key, value in out.metrics.items():
            if key == "loss":  # taken from out.loss above
                continue
            sums[key] = sums.get(key, 0.0) + float(value) * share
    if options.grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, options.grad_clip)
        sums["grad_norm"] = float(norm)
    for param_group in optimizer.param_groups:
        param_group["lr"] = lr
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    sums["lr"] = lr
    return sums
