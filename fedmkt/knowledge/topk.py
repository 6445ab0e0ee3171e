"""Knowledge extraction: top-k next-token logits and the answer's loss (DESIGN §1 steps 2/5).

For every real position ``i`` of a sample (``0 .. len-2``; row ``i`` predicts token ``i + 1``)
we keep the ``k`` largest logits and their ids, sorted descending. Per sample we also measure
the tokenizer-independent loss used for teacher selection: the answer's **total** negative
log-likelihood, summed over the answer tokens (``labels != -100``). The probability of a string
does not depend on how it is cut into tokens, so totals from models with different tokenizers
are comparable; a per-token mean would not be (it divides by a tokenizer-dependent count). A
sample without answer tokens has a total NLL of exactly 0 (the empty answer is certain).

Batches are right-padded: ``attention_mask`` is a run of ones followed by zeros. Labels follow
the Hugging Face layout (``labels[i]`` is token ``i`` or -100; the logits at ``i`` score
``labels[i + 1]``). Dense logits live only for one batch: top-k and loss leave the device as
``[B, S, k]`` and ``[B]`` arrays.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Literal, NamedTuple, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from fedmkt.knowledge.kd_loss import IGNORE_INDEX
from fedmkt.models.heads import SelectiveHead
from fedmkt.models.padding import low_padding_batches
from fedmkt.models.work import WorkLedger
from fedmkt.wire.chunking import KnowledgeSample

_CPU_BLOCK_ELEMENTS = 1 << 20  # logits read at once on CPU: a block that stays in cache
_DEVICE_BLOCK_ELEMENTS = 1 << 24  # on an accelerator: few, large kernels
_HEAD_BLOCK_ELEMENTS = 1 << 24  # logits made at once by the LM head (64 MiB of float32)

PAD_ID = -1
"""Id of a padding slot in ``topk_ids`` (only when the vocabulary is smaller than k)."""


class SampleTopK(NamedTuple):
    """Knowledge of one sample.

    Attributes:
        topk_ids: int32 [P, k]; row ``j`` holds the ids of the k largest logits at position ``j``,
            sorted by logit, descending; ``-1`` pads rows when the vocabulary has fewer than k ids.
        topk_logits: float32 [P, k]; those logits (``-inf`` at padding slots, as received
            knowledge holds them).
        answer_nll: total negative log-likelihood of the answer tokens (nats).
    """

    topk_ids: np.ndarray
    topk_logits: np.ndarray
    answer_nll: float


class EncodedSample(Protocol):
    """What :func:`iter_knowledge` needs of a tokenized sample."""

    @property
    def sample_id(self) -> str: ...

    @property
    def input_ids(self) -> Sequence[int] | np.ndarray: ...

    @property
    def labels(self) -> Sequence[int] | np.ndarray: ...


def extract_topk(
    model: torch.nn.Module, batch: Mapping[str, torch.Tensor], k: int
) -> list[SampleTopK]:
    """Top-k logits at every real position and the answer's total NLL, for each sample.

    One forward pass in inference mode and eval mode (the model's training flag is restored),
    then :func:`topk_from_logits`.

    Args:
        model: a causal LM whose output has ``.logits`` [B, S, V].
        batch: ``input_ids``, ``attention_mask`` (right padding) and ``labels``, all [B, S].
        k: number of logits kept per position (>= 1).
    """
    input_ids, attention_mask, labels = _check_batch(batch, k)
    _right_padded_lengths(attention_mask)  # reject a bad batch before the forward pass
    logits = _forward_logits(model, input_ids, attention_mask)
    return topk_from_logits(logits, attention_mask, labels, k)


def topk_from_logits(
    logits: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, k: int
) -> list[SampleTopK]:
    """What :func:`extract_topk` does after the forward pass, on logits [B, S, V].

    Real positions are read in blocks of rows (about 4 MiB on CPU, so that ``topk`` and the
    log-softmax of a block run while it is in cache; 64 MiB on an accelerator, so that there are
    few kernel launches); results leave the device once, at the end.
    """
    _check_shapes(attention_mask, attention_mask, labels, k)
    if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(attention_mask.shape):
        raise ValueError(f"logits must be [B, S, V] with [B, S] = {tuple(attention_mask.shape)}, "
                         f"got {tuple(logits.shape)}")
    lengths = _right_padded_lengths(attention_mask)
    vocab = int(logits.shape[-1])
    width = min(k, vocab)
    step = _rows_per_block(logits)
    with torch.inference_mode():
        targets = _next_token_targets(labels, attention_mask, vocab).to(logits.device)
        nll = torch.zeros(len(lengths), dtype=torch.float64, device=logits.device)
        values, ids = [], []
        for b, length in enumerate(lengths):
            for start in range(0, length - 1, step):
                stop = min(length - 1, start + step)
                block = logits[b, start:stop]
                top = torch.topk(block, width, dim=-1)
                values.append(top.values)
                ids.append(top.indices)
                nll[b] += _block_nll(block, targets[b, start:stop])
        empty = logits.new_empty((0, width))
        values_np = torch.cat(values or [empty]).float().cpu().numpy()
        ids_np = torch.cat(ids or [empty.long()]).to(torch.int32).cpu().numpy()
        nll_np = nll.cpu().numpy()
    out, row = [], 0
    for b, length in enumerate(lengths):
        rows = max(length - 1, 0)
        part = slice(row, row + rows)
        row += rows
        topk_ids, topk_logits = _pad_columns(ids_np[part], values_np[part], k)
        out.append(SampleTopK(topk_ids, topk_logits, float(nll_np[b])))
    return out


def naive_topk(
    model: torch.nn.Module, batch: Mapping[str, torch.Tensor], k: int
) -> list[SampleTopK]:
    """Baseline for benchmarks and tests: :func:`extract_topk` with the per-position loop of
    :func:`naive_topk_from_logits` after the same forward pass."""
    input_ids, attention_mask, labels = _check_batch(batch, k)
    logits = _forward_logits(model, input_ids, attention_mask)
    return naive_topk_from_logits(logits, attention_mask, labels, k)


def naive_topk_from_logits(
    logits: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, k: int
) -> list[SampleTopK]:
    """Same result as :func:`topk_from_logits`, one Python step (``topk`` and ``log_softmax`` on a
    single vector) per position, as a straightforward port of the reference would do."""
    lengths = _right_padded_lengths(attention_mask)
    out = []
    with torch.inference_mode():
        for b, length in enumerate(lengths):
            ids_rows, value_rows, nll = [], [], 0.0
            for i in range(max(length - 1, 0)):
                row = logits[b, i].float()
                values, ids = torch.topk(row, min(k, row.shape[0]))
                ids_rows.append(ids.to(torch.int32).numpy(force=True))
                value_rows.append(values.numpy(force=True))
                target = int(labels[b, i + 1])
                if target != IGNORE_INDEX:
                    nll -= float(torch.log_softmax(row, dim=-1)[target])
            width = min(k, logits.shape[-1])
            ids_arr = np.array(ids_rows, dtype=np.int32).reshape(-1, width)
            val_arr = np.array(value_rows, dtype=np.float32).reshape(-1, width)
            topk_ids, topk_logits = _pad_columns(ids_arr, val_arr, k)
            out.append(SampleTopK(topk_ids, topk_logits, nll))
    return out


Positions = Literal["all", "answer"]


class RowsTopK(NamedTuple):
    """Knowledge of one sample at rows ``position_start ..`` (see :func:`extract_topk_rows`)."""

    position_start: int
    topk: SampleTopK


def knowledge_spans(attention_mask: torch.Tensor, labels: torch.Tensor,
                    positions: Positions) -> list[tuple[int, int]]:
    """``[start, stop)`` of the rows whose logits are read, per sample: every real position but
    the last (``"all"``), or only the positions that predict an answer token (``"answer"``: from
    the one before the first labelled token to the end; a sample without labels keeps all)."""
    if positions not in ("all", "answer"):
        raise ValueError(f"positions must be 'all' or 'answer', got {positions!r}")
    lengths = _right_padded_lengths(attention_mask)
    spans = []
    scored = (labels.to(attention_mask.device) != IGNORE_INDEX) & attention_mask.bool()
    for b, length in enumerate(lengths):
        start = 0
        if positions == "answer":
            where = torch.nonzero(scored[b, 1:length]).squeeze(1)
            start = int(where[0]) if where.numel() else 0
        spans.append((start, max(length - 1, start)))
    return spans


def extract_topk_rows(
    head: SelectiveHead, batch: Mapping[str, torch.Tensor], k: int,
    positions: Positions = "all", work: WorkLedger | None = None,
) -> list[RowsTopK]:
    """Top-k logits and the answer's total NLL, with the LM head evaluated only at the rows of
    :func:`knowledge_spans` (the transformer body runs once over the batch).

    With ``positions="all"`` the result equals :func:`extract_topk` (within float rounding of
    the head's matrix product); with ``"answer"`` it is the same rows' subset, from
    ``position_start``. The answer NLL is the same either way (it reads only answer rows).
    ``work``, if given, gets what the pass did and its floor (real tokens; the rows read).
    """
    input_ids, attention_mask, labels = _check_batch(batch, k)
    spans = knowledge_spans(attention_mask, labels, positions)
    model = head.model
    device = _model_device(model)
    with _eval_mode(model), torch.inference_mode():
        hidden = head.hidden(input_ids.to(device), attention_mask.to(device))
        rows = torch.cat([hidden[b, start:stop] for b, (start, stop) in enumerate(spans)])
        vocab = head.vocab_size(hidden)
        targets = _next_token_targets(labels, attention_mask, vocab).to(device)
        row_targets = torch.cat([targets[b, start:stop] for b, (start, stop) in enumerate(spans)])
        width = min(k, vocab)
        step = max(1, _HEAD_BLOCK_ELEMENTS // vocab)
        values, ids, nll_rows = [], [], []
        for start in range(0, rows.shape[0], step):
            block = head.logits(rows[start : start + step])
            top = torch.topk(block, width, dim=-1)
            values.append(top.values.float())
            ids.append(top.indices)
            nll_rows.append(_row_nll(block, row_targets[start : start + step]))
        empty = hidden.new_empty((0, width))
        values_np = torch.cat(values or [empty]).float().cpu().numpy()
        ids_np = torch.cat(ids or [empty.long()]).to(torch.int32).cpu().numpy()
        nll_np = torch.cat(nll_rows or [empty.new_empty(0).double()]).cpu().numpy()
    if work is not None:
        real = int(attention_mask.sum())
        counted = sum(stop - start for start, stop in spans)
        work.done.add(forward=attention_mask.numel(),
                      head=counted if head.fast else attention_mask.numel())
        work.floor.add(forward=real, head=counted)
    out, row = [], 0
    for start, stop in spans:
        part = slice(row, row + stop - start)
        row += stop - start
        topk_ids, topk_logits = _pad_columns(ids_np[part], values_np[part], k)
        out.append(RowsTopK(start, SampleTopK(topk_ids, topk_logits, float(nll_np[part].sum()))))
    return out


def iter_knowledge(
    model: torch.nn.Module,
    encoded_samples: Iterable[EncodedSample],
    *,
    k: int,
    batch_size: int,
    device: str | torch.device | None = None,
    progress: bool = True,
    positions: Positions = "all",
    head: SelectiveHead | None = None,
    work: WorkLedger | None = None,
) -> Iterator[KnowledgeSample]:
    """Knowledge of each sample, computed at most ``batch_size`` samples at a time.

    A sequence of samples is processed longest first, in batches that pad at most
    ``fedmkt.models.padding.MAX_PADDING`` of their tokens; the samples come out in that order,
    each with its ``sample_id``. Other iterables keep their order, in batches of ``batch_size``.

    Args:
        model: the causal LM (already on ``device``).
        encoded_samples: tokenized samples (``sample_id``, ``input_ids``, ``labels``).
        k: logits kept per position.
        batch_size: samples per forward pass (>= 1).
        device: where batches go; default: the device of the model's first parameter.
        progress: show a tqdm progress bar.
        positions: ``"all"`` rows, or only the ``"answer"`` rows (see :func:`knowledge_spans`);
            each sample's ``position_start`` says where its rows begin.
        head: the model's :class:`SelectiveHead` (built and checked here when not given).
        work: accumulates the model work done and its floor.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    target = torch.device(device) if device is not None else _model_device(model)
    head = head or SelectiveHead.for_model(model)
    total = len(encoded_samples) if isinstance(encoded_samples, Sequence) else None
    if isinstance(encoded_samples, Sequence):
        items = list(encoded_samples)
        batches: Iterable[list[EncodedSample]] = [
            [items[i] for i in batch]
            for batch in low_padding_batches([len(s.input_ids) for s in items], batch_size)]
    else:
        batches = _batched(encoded_samples, batch_size)
    with tqdm(total=total, disable=not progress, unit="sample", desc="knowledge") as bar:
        for chunk in batches:
            token_ids = [_as_int_array(s.input_ids, "input_ids", s.sample_id) for s in chunk]
            batch = collate(chunk, device=target)
            found = extract_topk_rows(head, batch, k, positions, work)
            for sample, ids, rows in zip(chunk, token_ids, found, strict=True):
                yield KnowledgeSample(
                    sample_id=sample.sample_id,
                    token_ids=ids,
                    topk_ids=rows.topk.topk_ids,
                    topk_logits=rows.topk.topk_logits,
                    position_start=rows.position_start,
                    loss=rows.topk.answer_nll,
                )
            bar.update(len(chunk))


def collate(
    samples: Sequence[EncodedSample], device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Right-pad samples into ``input_ids`` (pad 0), ``attention_mask`` and ``labels`` (-100)."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    arrays = []
    for s in samples:
        ids = _as_int_array(s.input_ids, "input_ids", s.sample_id)
        labels = _as_int_array(s.labels, "labels", s.sample_id)
        if ids.shape != labels.shape or ids.size == 0:
            raise ValueError(
                f"sample {s.sample_id!r}: input_ids and labels must be non-empty and of equal "
                f"length, got {ids.size} and {labels.size}"
            )
        arrays.append((ids, labels))
    width = max(ids.size for ids, _ in arrays)
    input_ids = np.zeros((len(arrays), width), dtype=np.int64)
    labels = np.full((len(arrays), width), IGNORE_INDEX, dtype=np.int64)
    mask = np.zeros((len(arrays), width), dtype=np.int64)
    for b, (ids, lab) in enumerate(arrays):
        input_ids[b, : ids.size] = ids
        labels[b, : lab.size] = lab
        mask[b, : ids.size] = 1
    return {
        "input_ids": torch.from_numpy(input_ids).to(device),
        "attention_mask": torch.from_numpy(mask).to(device),
        "labels": torch.from_numpy(labels).to(device),
    }


# --------------------------------------------------------------------------- helpers


def _check_batch(
    batch: Mapping[str, torch.Tensor], k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    missing = {"input_ids", "attention_mask", "labels"} - set(batch)
    if missing:
        raise ValueError(f"batch lacks {sorted(missing)}")
    input_ids, attention_mask, labels = (
        batch["input_ids"], batch["attention_mask"], batch["labels"]
    )
    _check_shapes(input_ids, attention_mask, labels, k)
    return input_ids, attention_mask, labels


def _check_shapes(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, k: int
) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    shapes = {tuple(input_ids.shape), tuple(attention_mask.shape), tuple(labels.shape)}
    if input_ids.dim() != 2 or len(shapes) != 1:
        raise ValueError(
            "input_ids, attention_mask and labels must all be [B, S]; got "
            f"{tuple(input_ids.shape)}, {tuple(attention_mask.shape)}, {tuple(labels.shape)}"
        )


def _right_padded_lengths(attention_mask: torch.Tensor) -> list[int]:
    """Length of each row; raises unless every row is ones followed by zeros (and not empty)."""
    mask = attention_mask.bool()
    lengths = mask.sum(dim=1)
    positions = torch.arange(mask.shape[1], device=mask.device)
    expected = positions.unsqueeze(0) < lengths.unsqueeze(1)
    if not bool((mask == expected).all()):
        raise ValueError("attention_mask must be right-padded (ones, then zeros)")
    if bool((lengths == 0).any()):
        raise ValueError("every sample needs at least one token")
    return [int(n) for n in lengths.tolist()]


def _model_device(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _forward_logits(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    device = _model_device(model)
    with _eval_mode(model), torch.inference_mode():
        output = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
    return output.logits


def _rows_per_block(logits: torch.Tensor) -> int:
    elements = _CPU_BLOCK_ELEMENTS if logits.device.type == "cpu" else _DEVICE_BLOCK_ELEMENTS
    return max(1, elements // max(1, int(logits.shape[-1])))


def _next_token_targets(
    labels: torch.Tensor, attention_mask: torch.Tensor, vocab: int
) -> torch.Tensor:
    """int64 [B, S]: the label each position predicts (-100 = not scored); checks the range."""
    labels = labels.to(attention_mask.device).long()
    labels = labels.masked_fill(~attention_mask.bool(), IGNORE_INDEX)
    bad = (labels >= vocab) | ((labels < 0) & (labels != IGNORE_INDEX))
    if bool(bad.any()):
        raise ValueError(f"labels must be in [0, {vocab}) or -100")
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    return targets


def _block_nll(block: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """float64 scalar: sum over the scored rows of ``block`` [r, V] of -log p(target)."""
    targets = targets.to(block.device)
    scored = targets != IGNORE_INDEX
    if block.device.type == "cpu":
        # Skip the rows before the first and after the last scored one (the prompt, usually);
        # finding them would cost a device sync elsewhere, where the whole block is cheap.
        where = torch.nonzero(scored).squeeze(1)
        if where.numel() == 0:
            return torch.zeros((), dtype=torch.float64)
        rows = slice(int(where[0]), int(where[-1]) + 1)
        block, targets, scored = block[rows], targets[rows], scored[rows]
    log_probs = torch.log_softmax(block.float(), dim=-1)
    picked = log_probs.gather(1, targets.clamp(min=0).unsqueeze(1)).squeeze(1)
    return -(picked.double() * scored).sum()


def _row_nll(block: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """float64 [r]: -log p(target) of each row of ``block`` [r, V]; 0 where not scored."""
    scored = targets != IGNORE_INDEX
    out = torch.zeros(block.shape[0], dtype=torch.float64, device=block.device)
    if bool(scored.any()):
        rows = torch.nonzero(scored).squeeze(1)
        log_probs = torch.log_softmax(block[rows].float(), dim=-1)
        picked = log_probs.gather(1, targets[rows].unsqueeze(1)).squeeze(1)
        out[rows] = -picked.double()
    return out


def _pad_columns(ids: np.ndarray, values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Copies of ``ids`` (int32) and ``values`` (float32), right-padded to k columns."""
    rows, width = ids.shape
    out_ids = np.full((rows, k), PAD_ID, dtype=np.int32)
    out_values = np.full((rows, k), -np.inf, dtype=np.float32)
    out_ids[:, :width] = ids
    out_values[:, :width] = values
    return out_ids, out_values


def _as_int_array(values: Sequence[int] | np.ndarray, name: str, sample_id: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"sample {sample_id!r}: {name} must be a 1-D integer sequence")
    return arr.astype(np.int32)


def _batched(items: Iterable[EncodedSample], size: int) -> Iterator[list[EncodedSample]]:
    chunk: list[EncodedSample] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
