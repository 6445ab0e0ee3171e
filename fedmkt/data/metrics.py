"""Evaluation: multiple-choice accuracy by log-likelihood, and ROUGE-L of greedy generations.

Multiple choice follows lm-evaluation-harness: each choice is scored by the total
log-likelihood of its tokens given the prompt; ``acc`` takes the argmax of that score and
``acc_norm`` the argmax of the score divided by the choice's length in characters. Requests
(one per sample and choice) are sorted by length and run in batches, left-padded so that every
scored token sits at the end and only the last logits are computed (``logits_to_keep``): memory
stays ``batch × answer length × vocab`` rather than ``batch × sequence × vocab``.

Every function works with any Hugging Face causal LM (peft-wrapped ones included) and a fast
tokenizer; the model is put in eval mode while it runs and given back in its former mode.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from rapidfuzz.distance import LCSseq

from fedmkt.data.samples import Sample
from fedmkt.data.tokenize import encode_for_lm, encode_prompt, pad_id_for

Device = str | torch.device | None


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1: longest common subsequence of lower-cased word tokens (``\\w+``, Unicode).

    0.0 when either side has no words (as the ``rouge_score`` package does).
    """
    pred, ref = _words(prediction), _words(reference)
    if not pred or not ref:
        return 0.0
    common = LCSseq.similarity(pred, ref)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


@contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _device_of(model: Any, device: Device) -> torch.device:
    if device is not None:
        return torch.device(device)
    return next(model.parameters()).device


def _accepts_logits_to_keep(model: Any) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def _batches(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    if size < 1:
        raise ValueError(f"batch_size must be at least 1, got {size}")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> dict[str, Any]:
    """Left-padded ids, mask and matching position ids (each row's positions start at 0)."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[index, width - len(row) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": mask.to(device),
        "position_ids": positions.to(device),
    }


@dataclass(frozen=True)
class _Request:
    """One (sample, choice) pair to score: ids, and how many trailing ids are the choice."""

    sample: int
    choice: int
    ids: list[int]
    scored: int


def _requests(tokenizer: Any, samples: Sequence[Sample], max_length: int) -> list[_Request]:
    context_id = tokenizer.bos_token_id
    if context_id is None:
        context_id = tokenizer.eos_token_id
    out = []
    for s_index, sample in enumerate(samples):
        if not sample.choices:
            raise ValueError(f"sample {sample.id!r} has no choices; it is not multiple choice")
        for c_index, choice in enumerate(sample.choices):
            enc = encode_for_lm(tokenizer, sample, answer=choice, max_length=max_length)
            ids = enc.input_ids
            if enc.answer_start == 0:  # nothing predicts the first token: give it a context
                if context_id is None:
                    raise ValueError(f"sample {sample.id!r}: empty prompt and no BOS/EOS token")
                ids = [context_id, *ids]
            out.append(_Request(s_index, c_index, ids, len(ids) - max(enc.answer_start, 1)))
    return out


def _score_batch(model: Any, batch: Sequence[_Request], pad_id: int, device: torch.device,
                 keep_logits: bool) -> list[float]:
    """Sum of log-probabilities of each request's last ``scored`` tokens."""
    inputs = _left_pad([req.ids for req in batch], pad_id, device)
    keep = max(req.scored for req in batch) + 1
    if keep_logits:
        inputs["logits_to_keep"] = keep
    logits = model(**inputs).logits[:, -keep:, :]
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    targets = inputs["input_ids"][:, -(keep - 1) :]
    token_scores = log_probs[:, :-1, :].gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return [float(token_scores[row, keep - 1 - req.scored :].sum())
            for row, req in enumerate(batch)]


def score_choices(
    model: Any,
    tokenizer: Any,
    samples: Sequence[Sample],
    *,
    batch_size: int = 8,
    device: Device = None,
    max_length: int = 512,
) -> list[list[float]]:
    """Log-likelihood of each choice of each sample given its prompt: ``[sample][choice]``.

    ``device``: where inputs go (default: the model's device); the model must already be there.
    """
    requests = _requests(tokenizer, samples, max_length)
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].ids))
    scores = [[0.0] * len(sample.choices) for sample in samples]
    pad_id, target = pad_id_for(tokenizer), _device_of(model, device)
    keep_logits = _accepts_logits_to_keep(model)
    with _eval_mode(model):
        for batch_ids in _batches(order, batch_size):
            batch = [requests[i] for i in batch_ids]
            for req, value in zip(batch, _score_batch(model, batch, pad_id, target, keep_logits),
                                  strict=True):
                scores[req.sample][req.choice] = value
    return scores


def multiple_choice_accuracy(
    model: Any,
    tokenizer: Any,
    samples: Sequence[Sample],
    *,
    batch_size: int = 8,
    device: Device = None,
    max_length: int = 512,
) -> dict[str, float]:
    """``{"acc", "acc_norm", "n"}``: argmax accuracy of raw and per-character scores."""
    if not samples:
        raise ValueError("multiple_choice_accuracy needs at least one sample")
    scores = score_choices(model, tokenizer, samples, batch_size=batch_size, device=device,
                           max_length=max_length)
    hits, hits_norm = [], []
    for sample, values in zip(samples, scores, strict=True):
        raw = np.asarray(values)
        lengths = np.asarray([max(len(choice), 1) for choice in sample.choices], dtype=float)
        hits.append(int(np.argmax(raw)) == sample.label)
        hits_norm.append(int(np.argmax(raw / lengths)) == sample.label)
    return {"acc": float(np.mean(hits)), "acc_norm": float(np.mean(hits_norm)),
            "n": len(samples)}


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return ids


def _cut_at(text: str, stop: Sequence[str]) -> str:
    for marker in stop:
        if marker and marker in text:
            text = text[: text.index(marker)]
    return text


def generate_answers(
    model: Any,
    tokenizer: Any,
    samples: Sequence[Sample],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    device: Device = None,
    max_length: int = 512,
    stop: Sequence[str] = (),
) -> list[str]:
    """Greedy continuation of each sample's prompt, cut at EOS and at the first ``stop`` string.

    Prompts are cut from the left to ``max_length - max_new_tokens`` tokens.
    """
    if max_new_tokens < 1 or max_new_tokens >= max_length:
        raise ValueError(f"max_new_tokens must be in 1..{max_length - 1}, got {max_new_tokens}")
    prompts = [encode_prompt(tokenizer, s.prompt, max_length=max_length - max_new_tokens)
               for s in samples]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    answers = [""] * len(samples)
    pad_id, target, stop_ids = pad_id_for(tokenizer), _device_of(model, device), _stop_ids(
        model, tokenizer)
    with _eval_mode(model):
        for batch_ids in _batches(order, batch_size):
            inputs = _left_pad([prompts[i] for i in batch_ids], pad_id, target)
            width = inputs["input_ids"].shape[1]
            output = model.generate(input_ids=inputs["input_ids"],
                                    attention_mask=inputs["attention_mask"],
                                    max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                    pad_token_id=pad_id)
            for row, index in enumerate(batch_ids):
                new = output[row, width:].tolist()
                end = next((i for i, tok in enumerate(new) if tok in stop_ids), len(new))
                text = tokenizer.decode(new[:end], skip_special_tokens=True)
                answers[index] = _cut_at(text, stop)
    return answers


def generation_rouge_l(
    model: Any,
    tokenizer: Any,
    samples: Sequence[Sample],
    max_new_tokens: int = 32,
    *,
    batch_size: int = 8,
    device: Device = None,
    max_length: int = 512,
    stop: Sequence[str] = (),
) -> dict[str, float]:
    """``{"rouge_l", "n"}``: mean ROUGE-L F1 of greedy answers against ``sample.answer``."""
    if not samples:
        raise ValueError("generation_rouge_l needs at least one sample")
    predictions = generate_answers(model, tokenizer, samples, max_new_tokens=max_new_tokens,
                                   batch_size=batch_size, device=device, max_length=max_length,
                                   stop=stop)
    values = [rouge_l(pred, sample.answer) for pred, sample in zip(predictions, samples,
                                                                   strict=True)]
    return {"rouge_l": float(np.mean(values)), "n": len(samples)}
