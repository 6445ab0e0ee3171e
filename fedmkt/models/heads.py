"""The LM head only where logits are used: the transformer body once, the head at chosen rows.

A causal LM's forward pass ends in the LM head, ``hidden [B, S, H] → logits [B, S, V]``. With
vocabularies of 49k–262k ids and hidden sizes of 576–1024, that product is most of a small
model's FLOPs, yet FedMKT reads logits only at a few positions: the answer tokens (training CE,
answer-only KD, knowledge for answer-only KD, the answer NLL) and the scored choice tokens
(evaluation). ``SelectiveHead`` runs the body (the model without its head, LoRA layers
included), gathers the rows whose logits are wanted and applies the head (and the final logit
soft-capping of Gemma-style models) to those rows only. Gradients flow as through the full
forward pass.

Any Hugging Face causal LM whose ``forward`` is "body, then ``get_output_embeddings()``, then an
optional soft-cap" works; ``SelectiveHead.for_model`` checks that claim once per model on a few
tokens against the model's own ``forward`` and, when it does not hold (a model with another
logit transform), returns a head that runs the full forward pass and slices it: always correct,
never faster.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

CHECK_TOLERANCE = 1e-4  # relative to the largest logit; float32 BLAS blocking differs by ~1e-6


def _causal_lm(model: Any) -> Any:
    """The Hugging Face causal LM under a peft wrapper (LoRA layers are injected in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@dataclass
class SelectiveHead:
    """Body + head of one model; ``fast`` is False when the model's forward had to be used."""

    model: Any
    body: Any
    head: Any
    softcap: float | None
    fast: bool

    @classmethod
    def for_model(cls, model: Any, *, check: bool = True) -> SelectiveHead:
        lm = _causal_lm(model)
        body = getattr(lm, getattr(lm, "base_model_prefix", ""), None)
        head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
        softcap = getattr(lm.config, "final_logit_softcapping", None)
        found = body is not None and body is not lm and head is not None
        selective = cls(model, body, head, softcap, found)
        if found and check and not selective._agrees_with_forward():
            log.warning("%s: logits from body + head differ from its forward pass; evaluating "
                        "the full LM head", type(lm).__name__)
            selective.fast = False
        elif not found:
            log.warning("%s: no body/head split found; evaluating the full LM head",
                        type(lm).__name__)
        return selective

    # ------------------------------------------------------------------ the two halves

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               **kwargs: Any) -> torch.Tensor:
        """Last hidden states [B, S, H] (or, without a fast path, the full logits [B, S, V])."""
        if not self.fast:
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              **kwargs).logits
        out = self.body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                        **kwargs)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def vocab_size(self, hidden: torch.Tensor) -> int:
        """Width of the logits (``hidden`` is what :meth:`hidden` returned)."""
        return int(self.head.weight.shape[0]) if self.fast else int(hidden.shape[-1])

    def logits(self, hidden_rows: torch.Tensor) -> torch.Tensor:
        """Logits of rows taken from :meth:`hidden` (any leading shape, last dim H)."""
        if not self.fast:
            return hidden_rows  # already logits
        logits = self.head(hidden_rows)
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def logits_at(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  index: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Logits [B, K, V] at positions ``index`` [B, K] of each row (any valid positions;
        rows may repeat positions as padding)."""
        hidden = self.hidden(input_ids, attention_mask, **kwargs)
        return self.logits(gather_rows(hidden, index))

    # ------------------------------------------------------------------ self-check

    def _agrees_with_forward(self) -> bool:
        """Compare with the model's own forward on a short right-padded batch of two rows."""
        device = next(self.model.parameters()).device
        vocab = int(self.head.weight.shape[0]) if hasattr(self.head, "weight") else 2
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(0, max(2, min(vocab, 1000)), (2, 6), generator=generator)
        mask = torch.ones_like(ids)
        mask[1, 4:] = 0
        ids, mask = ids.to(device), mask.to(device)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                full = self.model(input_ids=ids, attention_mask=mask).logits.float()
                ours = self.logits(self.hidden(ids, mask)).float()
        finally:
            self.model.train(was_training)
        if full.shape != ours.shape:
            return False
        real = mask.bool()
        scale = float(full[real].abs().max().clamp(min=1.0))
        return bool(((full - ours)[real].abs().max() / scale) <= CHECK_TOLERANCE)


def gather_rows(hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``hidden[b, index[b, j]]`` as [B, K, H]."""
    expanded = index.to(hidden.device).long().unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
    return hidden.gather(1, expanded)


def compact_positions(wanted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a bool [B, S] of wanted positions: ``index`` [B, K] (each row's wanted positions in
    order, padded by repeating position 0) and ``valid`` bool [B, K]; K = the most any row
    wants (at least 1)."""
    counts = wanted.sum(dim=1)
    width = max(1, int(counts.max())) if wanted.numel() else 1
    # Stable sort puts the wanted positions first, in their order.
    order = torch.sort((~wanted).to(torch.int8), dim=1, stable=True).indices[:, :width]
    valid = torch.arange(width, device=wanted.device).unsqueeze(0) < counts.unsqueeze(1)
    index = torch.where(valid, order, torch.zeros_like(order))
    return index, valid
