"""Memory-lean reads of a student's logits over the vocabulary.

Knowledge distillation with top-k teachers only ever needs, per position, the student's
log-partition ``logsumexp(z / T)`` over the vocabulary and the student's logits at a handful of
ids (the true next token and each teacher's kept ids). :func:`logsumexp_and_gather` computes
both in one autograd node:

* forward: the log-partition in row chunks (temporaries of a few MiB, not ``[B, L, V]``) and one
  ``gather`` of every requested id at once;
* backward: the gradient w.r.t. the logits is built in a single ``[B, L, V]`` buffer (softmax
  times the incoming gradient, computed in row chunks, plus a scatter-add of the gathered ids'
  gradient), where separate ``log_softmax`` / ``gather`` nodes would each allocate their own.

Nothing of size ``[B, L, V]`` is stored for backward beyond the logits themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.autograd.function import FunctionCtx, once_differentiable

_CHUNK_ELEMENTS = 1 << 22  # float32 temporaries of at most 16 MiB per chunk


def logsumexp_and_gather(
    logits: torch.Tensor, ids: torch.Tensor, temperatures: Sequence[float] = (1.0,)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-partition of ``logits / T`` for each T, and the raw logits at ``ids``.

    Args:
        logits: [..., V] float tensor (any float dtype; reductions run in float32).
        ids: [..., m] integer tensor of ids in ``[0, V)`` (callers clamp padding first).
        temperatures: the T values; each must be > 0.

    Returns:
        ``(lse, gathered)``: lse float32 [len(temperatures), ...] and gathered float32 [..., m]
        (``logits`` at ``ids``, not divided by any temperature).
    """
    if logits.shape[:-1] != ids.shape[:-1]:
        raise ValueError(
            f"ids shape {tuple(ids.shape)} does not match logits shape {tuple(logits.shape)}"
        )
    temps = tuple(float(t) for t in temperatures)
    if not temps or any(not t > 0 for t in temps):
        raise ValueError(f"temperatures must be > 0, got {temps}")
    lead = logits.shape[:-1]
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_ids = ids.reshape(-1, ids.shape[-1]).long()
    lse, gathered = _LogSumExpGather.apply(flat_logits, flat_ids, temps)
    return lse.reshape(len(temps), *lead), gathered.reshape(*lead, ids.shape[-1])


def _row_chunks(rows: int, vocab: int) -> list[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(1, vocab))
    return [slice(start, min(rows, start + step)) for start in range(0, rows, step)]


class _LogSumExpGather(torch.autograd.Function):
    """Autograd node behind :func:`logsumexp_and_gather` on 2-D ``[N, V]`` logits."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, logits: torch.Tensor, ids: torch.Tensor, temps: tuple[float, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows, vocab = logits.shape
        lse = torch.empty((len(temps), rows), dtype=torch.float32, device=logits.device)
        for part in _row_chunks(rows, vocab):
            block = logits[part].float()
            for i, temp in enumerate(temps):
                scaled = block if temp == 1.0 else block / temp
                lse[i, part] = torch.logsumexp(scaled, dim=-1)
        gathered = logits.gather(-1, ids).float()
        ctx.save_for_backward(logits, ids, lse)
        ctx.temps = temps  # type: ignore[attr-defined]
        return lse, gathered

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: FunctionCtx, grad_lse: torch.Tensor | None, grad_gathered: torch.Tensor | None
    ) -> tuple[torch.Tensor, None, None]:
        logits, ids, lse = ctx.saved_tensors  # type: ignore[attr-defined]
        temps: tuple[float, ...] = ctx.temps  # type: ignore[attr-defined]
        grad = torch.zeros_like(logits) if grad_lse is None else torch.empty_like(logits)
        if grad_lse is not None:
            rows, vocab = logits.shape
            for part in _row_chunks(rows, vocab):
                block = logits[part].float()
                acc = torch.zeros_like(block)
                for i, temp in enumerate(temps):
                    # d lse_T / d z = softmax(z / T) / T
                    probs = (block / temp - lse[i, part, None]).exp_()
                    acc.add_(probs.mul_(grad_lse[i, part, None] / temp))
                grad[part] = acc.to(grad.dtype)
        if grad_gathered is not None:
            grad.scatter_add_(-1, ids, grad_gathered.to(grad.dtype))
        return grad, None, None
