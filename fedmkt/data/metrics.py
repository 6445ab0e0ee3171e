"""Evaluation: multiple-choice accuracy by log-likelihood, and ROUGE-L of greedy generations.

Multiple choice follows lm-evaluation-harness: each choice is scored by the total
log-likelihood of its tokens given the prompt; ``acc`` takes the argmax of that score and
``acc_norm`` the argmax of the score divided by the choice's length in characters. Each
choice's ids are those of ``prompt + choice`` tokenized as one text (`encode_for_lm`), so the
token at the prompt/answer boundary may differ between choices.

By default each sample is run **once**: its choices' id lists share a prefix (their longest
common prefix, cut before the first scored token), which goes into one row followed by every
choice's suffix, the suffix's position ids restarting where the prefix ends, under a custom 4D
attention mask (a suffix token sees the prefix and the earlier tokens of its own suffix, within
the sliding window where a layer has one). The LM head runs only at the positions whose logits
are read: the last prefix position once for every choice's first token, and the suffix positions
that predict scored tokens. This is the same arithmetic as scoring each choice on its own (up to
float rounding); architectures not known to take such a mask (see ``_PACKABLE``), and a model
whose packed scores disagree with per-choice scores on the one-sample check of its first call,
get the per-choice path: one request per (sample, choice), sorted by length, left-padded so
that every scored token sits at the end and only the last logits are computed
(``logits_to_keep``). Both count their work (forward tokens, LM-head positions) and its floor
in an optional `WorkLedger`.

Every function works with any Hugging Face causal LM (peft-wrapped ones included) and a fast
tokenizer; the model is put in eval mode while it runs and given back in its former mode.
"""

from __future__ import annotations

import inspect
import logging
import re
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from rapidfuzz.distance import LCSseq

from fedmkt.data.samples import Sample
from fedmkt.data.tokenize import encode_for_lm, encode_prompt, pad_id_for
from fedmkt.models.padding import low_padding_batches
from fedmkt.models.work import Work, WorkLedger

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class _Packed:
    """One sample laid out for a single pass: the shared prefix once, then every choice's suffix.

    ``positions`` restart at ``len(prefix)`` for each suffix; ``segments`` is 0 on the prefix
    and ``c + 1`` on choice ``c``'s suffix. ``reads``: the indices whose logits are used,
    ascending and distinct (the last prefix index predicts the first scored token of every
    choice whose scored tokens start right after the prefix). ``targets``: one ``(index into
    reads, token id, choice)`` per scored token.
    """

    sample: int
    ids: list[int]
    positions: list[int]
    segments: list[int]
    reads: list[int]
    targets: list[tuple[int, int, int]]


def _common_prefix(rows: Sequence[Sequence[int]]) -> int:
    first, size = rows[0], min(len(row) for row in rows)
    for index in range(size):
        if any(row[index] != first[index] for row in rows[1:]):
            return index
    return size


def _pack(sample: int, requests: Sequence[_Request]) -> _Packed:
    """The packed row of one sample's requests (all its choices, in choice order)."""
    starts = [len(req.ids) - req.scored for req in requests]  # first scored index, always >= 1
    shared = min(_common_prefix([req.ids for req in requests]), *starts)
    ids, positions = list(requests[0].ids[:shared]), list(range(shared))
    segments = [0] * shared
    wanted: list[tuple[int, int, int]] = []
    for req, start in zip(requests, starts, strict=True):
        offset = len(ids) - shared  # row index of logical position j >= shared: j + offset
        ids += req.ids[shared:]
        positions += range(shared, len(req.ids))
        segments += [req.choice + 1] * (len(req.ids) - shared)
        for j in range(start, len(req.ids)):  # token j is predicted at logical position j - 1
            source = j - 1 if j - 1 < shared else j - 1 + offset
            wanted.append((source, req.ids[j], req.choice))
    reads = sorted({source for source, _, _ in wanted})
    where = {source: index for index, source in enumerate(reads)}
    targets = [(where[source], token, choice) for source, token, choice in wanted]
    return _Packed(sample, ids, positions, segments, reads, targets)


def _plans(requests: Sequence[_Request], n_samples: int) -> list[_Packed]:
    grouped: list[list[_Request]] = [[] for _ in range(n_samples)]
    for req in requests:
        grouped[req.sample].append(req)
    return [_pack(index, group) for index, group in enumerate(grouped)]


def _floor(plans: Sequence[_Packed]) -> Work:
    """The least work (DESIGN §11): each sample's prefix once plus its suffixes, and the LM head
    at the distinct positions whose logits are read."""
    return Work(forward_tokens=sum(len(p.ids) for p in plans),
                head_positions=sum(len(p.reads) for p in plans))


# --------------------------------------------------------------------------- per-choice path


def _score_batch(model: Any, batch: Sequence[_Request], pad_id: int, device: torch.device,
                 keep_logits: bool, work: Work) -> list[float]:
    """Sum of log-probabilities of each request's last ``scored`` tokens."""
    inputs = _left_pad([req.ids for req in batch], pad_id, device)
    keep = max(req.scored for req in batch) + 1
    if keep_logits:
        inputs["logits_to_keep"] = keep
    logits = model(**inputs).logits
    # The model runs over the padded batch: padding counts as work done (not in the floor).
    work.add(forward=inputs["input_ids"].numel(), head=logits.shape[0] * logits.shape[1])
    logits = logits[:, -keep:, :]
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    targets = inputs["input_ids"][:, -(keep - 1) :]
    token_scores = log_probs[:, :-1, :].gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return [float(token_scores[row, keep - 1 - req.scored :].sum())
            for row, req in enumerate(batch)]


def _score_per_choice(model: Any, requests: Sequence[_Request], scores: list[list[float]],
                      batch_size: int, pad_id: int, device: torch.device, work: Work) -> None:
    """One left-padded row per (sample, choice), ``batch_size`` rows per forward pass."""
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].ids))
    keep_logits = _accepts_logits_to_keep(model)
    for batch_ids in _batches(order, batch_size):
        batch = [requests[i] for i in batch_ids]
        for req, value in zip(batch, _score_batch(model, batch, pad_id, device, keep_logits,
                                                  work), strict=True):
            scores[req.sample][req.choice] = value


# --------------------------------------------------------------------------- packed path

# Architectures whose decoder takes a custom 4D float mask unchanged (checked in transformers
# 5's masking_utils: a 4D mask, or a dict of them per layer type, is returned as-is) and whose
# causal-LM forward is ``lm_head(body(...))`` (+ Gemma's optional final soft-capping). Value:
# how the mask goes in: "one" mask for every layer, or a dict "by_type" of layer type.
_PACKABLE = {
    "llama": "one", "mistral": "one", "gpt2": "one", "gpt_neox": "one",
    "qwen2": "by_type", "gemma3_text": "by_type",
}
_ATTENTION = ("eager", "sdpa")  # flash / flex kernels do not take a float mask
_HEAD_CHUNK = 1 << 23  # logits elements per LM-head chunk (32 MiB in float32)


@dataclass(frozen=True)
class _PackedModel:
    """What the packed path calls: the decoder body, the LM head, and how masks go in."""

    body: Any
    head: Any
    softcap: float | None
    windows: dict[str, int | None] | None  # layer type -> sliding window; None: one mask
    window: int | None  # the window of the single mask
    dtype: torch.dtype
    vocab: int


def _packed_model(model: Any) -> _PackedModel | None:
    """The packed path's parts of ``model``, or None when its architecture is not known to
    take a custom 4D attention mask (then every choice is scored on its own)."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(lm, "config", None)
    kind = _PACKABLE.get(getattr(config, "model_type", None))
    if kind is None or getattr(config, "_attn_implementation", None) not in _ATTENTION:
        return None
    if getattr(config, "use_bidirectional_attention", False):
        return None
    body = getattr(lm, getattr(lm, "base_model_prefix", ""), None)
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if body is None or head is None:
        return None
    windows, window = None, None
    if kind == "by_type":
        sliding = getattr(config, "sliding_window", None)
        windows = {t: (sliding if t == "sliding_attention" else None)
                   for t in set(config.layer_types)}
        if not set(windows) <= {"full_attention", "sliding_attention"}:
            return None
    elif config.model_type == "mistral":
        window = getattr(config, "sliding_window", None)
    embeddings = lm.get_input_embeddings().weight
    return _PackedModel(body, head, getattr(config, "final_logit_softcapping", None), windows,
                        window, embeddings.dtype, int(getattr(config, "vocab_size", 0) or
                                                      embeddings.shape[0]))


def _packed_masks(groups: torch.Tensor, segments: torch.Tensor, positions: torch.Tensor,
                  parts: _PackedModel) -> Any:
    """``[batch, 1, L, L]`` additive masks. A row holds one or more samples (``groups``: which,
    -1 on padding); a query sees its own sample's prefix and the earlier tokens of its own
    suffix (within the sliding window, on logical positions); padding sees only itself."""
    width = segments.shape[1]
    index = torch.arange(width, device=segments.device)
    eye = index[:, None] == index[None, :]
    causal = index[:, None] >= index[None, :]
    seg_q, seg_k = segments[:, :, None], segments[:, None, :]
    allowed = (causal & (groups[:, :, None] == groups[:, None, :]) & (groups[:, :, None] >= 0)
               & ((seg_k == 0) | (seg_k == seg_q)))

    def mask(window: int | None) -> torch.Tensor:
        visible = allowed
        if window is not None:
            visible = visible & (positions[:, None, :] > positions[:, :, None] - window)
        additive = torch.zeros(visible.shape, dtype=parts.dtype, device=visible.device)
        additive.masked_fill_(~(visible | eye), torch.finfo(parts.dtype).min)
        return additive.unsqueeze(1)

    if parts.windows is None:
        return mask(parts.window)
    return {layer_type: mask(window) for layer_type, window in parts.windows.items()}


def _fill_rows(plans: Sequence[_Packed]) -> list[list[int]]:
    """Samples (indices into ``plans``) laid end to end in rows as wide as the longest sample,
    first fit, longest first: a row holds several short samples instead of padding."""
    order = sorted(range(len(plans)), key=lambda i: -len(plans[i].ids))
    width = len(plans[order[0]].ids)
    rows: list[list[int]] = []
    room: list[int] = []
    for index in order:
        size = len(plans[index].ids)
        row = next((r for r, left in enumerate(room) if left >= size), None)
        if row is None:
            rows.append([])
            room.append(width)
            row = len(rows) - 1
        rows[row].append(index)
        room[row] -= size
    return rows


def _score_packed_batch(parts: _PackedModel, batch: Sequence[Sequence[_Packed]], pad_id: int,
                        device: torch.device, scores: list[list[float]], work: Work) -> None:
    width = max(sum(len(p.ids) for p in row) for row in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(batch), width), dtype=torch.long)
    segments = torch.zeros((len(batch), width), dtype=torch.long)
    groups = torch.full((len(batch), width), -1, dtype=torch.long)
    flat_reads, target_read, target_token, target_slot = [], [], [], []
    slots: list[tuple[int, int]] = []
    for r, row in enumerate(batch):
        start = 0
        for group, packed in enumerate(row):
            end = start + len(packed.ids)
            ids[r, start:end] = torch.tensor(packed.ids)
            positions[r, start:end] = torch.tensor(packed.positions)
            segments[r, start:end] = torch.tensor(packed.segments)
            groups[r, start:end] = group
            base, first_slot = len(flat_reads), len(slots)
            flat_reads += [r * width + start + index for index in packed.reads]
            n_choices = max(choice for _, _, choice in packed.targets) + 1
            slots += [(packed.sample, choice) for choice in range(n_choices)]
            for read, token, choice in packed.targets:
                target_read.append(base + read)
                target_token.append(token)
                target_slot.append(first_slot + choice)
            start = end
    ids, positions = ids.to(device), positions.to(device)
    masks = _packed_masks(groups.to(device), segments.to(device), positions, parts)
    out = parts.body(input_ids=ids, attention_mask=masks, position_ids=positions,
                     use_cache=False)
    hidden = out[0].reshape(len(batch) * width, -1)[torch.tensor(flat_reads, device=device)]
    work.add(forward=len(batch) * width, head=len(flat_reads))  # padding included

    reads_t = torch.tensor(target_read, device=device)
    tokens_t = torch.tensor(target_token, device=device)
    slots_t = torch.tensor(target_slot, device=device)
    totals = torch.zeros(len(slots), dtype=torch.float32, device=device)
    chunk = max(1, _HEAD_CHUNK // max(1, parts.vocab))
    for first in range(0, hidden.shape[0], chunk):
        logits = parts.head(hidden[first : first + chunk])
        if parts.softcap is not None:
            logits = torch.tanh(logits / parts.softcap) * parts.softcap
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        inside = (reads_t >= first) & (reads_t < first + chunk)
        values = log_probs[reads_t[inside] - first, tokens_t[inside]]
        totals.index_add_(0, slots_t[inside], values)
    for (sample, choice), value in zip(slots, totals.tolist(), strict=True):
        scores[sample][choice] = value


def _score_packed(parts: _PackedModel, plans: Sequence[_Packed], scores: list[list[float]],
                  batch_size: int, pad_id: int, device: torch.device, work: Work) -> None:
    """Rows as wide as the longest sample (`_fill_rows`), at most ``batch_size`` rows per pass,
    in passes that pad little (``fedmkt.models.padding``)."""
    rows = _fill_rows(plans)
    fills = [sum(len(plans[i].ids) for i in row) for row in rows]
    for pass_rows in low_padding_batches(fills, batch_size):
        batch = [[plans[i] for i in rows[r]] for r in pass_rows]
        _score_packed_batch(parts, batch, pad_id, device, scores, work)


# Models whose packed scores were checked against per-choice scores: model -> agreed.
_CHECKED: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def _tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(atol, rtol) for packed vs per-choice scores: reduction order only, in ``dtype``."""
    return (1e-3, 1e-4) if dtype in (torch.float32, torch.float64) else (0.25, 0.02)


def _packing_agrees(model: Any, parts: _PackedModel, requests: Sequence[_Request],
                    plans: Sequence[_Packed], pad_id: int, device: torch.device,
                    work: Work) -> bool:
    """Score one short sample both ways; False (and a warning) when they differ.

    The sample is the shortest of those that read logits inside the suffix of a choice other
    than the first (where a mask that lets suffixes see each other would show), if any.
    """
    deep = [i for i, plan in enumerate(plans) if any(plan.segments[r] > 1 for r in plan.reads)]
    probe = min(deep or range(len(plans)), key=lambda i: len(plans[i].ids))
    mine = [req for req in requests if req.sample == plans[probe].sample]
    n = max(req.sample for req in requests) + 1
    packed = [[0.0] * (max(r.choice for r in mine) + 1) for _ in range(n)]
    reference = [row[:] for row in packed]
    _score_packed(parts, [plans[probe]], packed, 1, pad_id, device, work)
    _score_per_choice(model, mine, reference, len(mine), pad_id, device, work)
    got, want = np.asarray(packed[plans[probe].sample]), np.asarray(reference[plans[probe].sample])
    atol, rtol = _tolerance(parts.dtype)
    if np.allclose(got, want, atol=atol, rtol=rtol):
        return True
    log.warning("shared-prefix scoring disagrees with per-choice scoring for %s (%s vs %s); "
                "scoring every choice on its own for this model", type(model).__name__,
                got.tolist(), want.tolist())
    return False


def score_choices(
    model: Any,
    tokenizer: Any,
    samples: Sequence[Sample],
    *,
    batch_size: int = 8,
    device: Device = None,
    max_length: int = 512,
    shared_prefix: bool = True,
    work: WorkLedger | None = None,
) -> list[list[float]]:
    """Log-likelihood of each choice of each sample given its prompt: ``[sample][choice]``.

    ``shared_prefix`` (default): each sample is run once, its choices packed after their
    common prefix; samples are laid end to end in rows as wide as the longest one,
    ``batch_size`` rows per pass; the LM head runs only where logits are read. Falls back to
    one request per (sample, choice), ``batch_size`` requests per pass (what
    ``shared_prefix=False`` does), for architectures not known to take a custom attention
    mask, and for a model whose packed scores, checked once on its first call against
    per-choice scores of one short sample, disagree.

    ``device``: where inputs go (default: the model's device); the model must already be there.
    ``work``: gets what the scoring did (forward tokens, LM-head positions) and the floor.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    requests = _requests(tokenizer, samples, max_length)
    scores = [[0.0] * len(sample.choices) for sample in samples]
    if not samples:
        return scores
    plans = _plans(requests, len(samples))
    pad_id, target = pad_id_for(tokenizer), _device_of(model, device)
    done = Work()
    parts = _packed_model(model) if shared_prefix else None
    with _eval_mode(model):
        if parts is not None and model not in _CHECKED:
            _CHECKED[model] = _packing_agrees(model, parts, requests, plans, pad_id, target,
                                              done)
        if parts is not None and _CHECKED[model]:
            _score_packed(parts, plans, scores, batch_size, pad_id, target, done)
        else:
            _score_per_choice(model, requests, scores, batch_size, pad_id, target, done)
    if work is not None:
        work.done += done
        work.floor += _floor(plans)
    return scores


def multiple_choice_accuracy(
    model: Any,
    tokenizer: Any,
    samples: Sequence[Sample],
    *,
    batch_size: int = 8,
    device: Device = None,
    max_length: int = 512,
    shared_prefix: bool = True,
    work: WorkLedger | None = None,
) -> dict[str, float]:
    """``{"acc", "acc_norm", "n"}``: argmax accuracy of raw and per-character scores.

    ``shared_prefix`` and ``work``: as in `score_choices`.
    """
    if not samples:
        raise ValueError("multiple_choice_accuracy needs at least one sample")
    scores = score_choices(model, tokenizer, samples, batch_size=batch_size, device=device,
                           max_length=max_length, shared_prefix=shared_prefix, work=work)
    return accuracy_from_scores(samples, scores)


def choice_hits(samples: Sequence[Sample], scores: Sequence[Sequence[float]]
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: 1.0 where the argmax of the raw scores (``acc``), and of the scores per
    character (``acc_norm``), is the right choice, else 0.0."""
    hits, hits_norm = [], []
    for sample, values in zip(samples, scores, strict=True):
        raw = np.asarray(values)
        lengths = np.asarray([max(len(choice), 1) for choice in sample.choices], dtype=float)
        hits.append(int(np.argmax(raw)) == sample.label)
        hits_norm.append(int(np.argmax(raw / lengths)) == sample.label)
    return np.asarray(hits, dtype=float), np.asarray(hits_norm, dtype=float)


def accuracy_from_scores(samples: Sequence[Sample], scores: Sequence[Sequence[float]]
                         ) -> dict[str, float]:
    """``{"acc", "acc_norm", "n"}`` from :func:`score_choices`' scores."""
    hits, hits_norm = choice_hits(samples, scores)
    return {"acc": float(hits.mean()), "acc_norm": float(hits_norm.mean()), "n": len(samples)}


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
    values = generation_rouge_l_values(model, tokenizer, samples, max_new_tokens,
                                       batch_size=batch_size, device=device,
                                       max_length=max_length, stop=stop)
    return {"rouge_l": float(np.mean(values)), "n": len(samples)}


def generation_rouge_l_values(
    model: Any,
    tokenizer: Any,
    samples: Sequence[Sample],
    max_new_tokens: int = 32,
    *,
    batch_size: int = 8,
    device: Device = None,
    max_length: int = 512,
    stop: Sequence[str] = (),
) -> np.ndarray:
    """ROUGE-L F1 of each sample's greedy answer against ``sample.answer`` (float64)."""
    if not samples:
        raise ValueError("generation_rouge_l needs at least one sample")
    predictions = generate_answers(model, tokenizer, samples, max_new_tokens=max_new_tokens,
                                   batch_size=batch_size, device=device, max_length=max_length,
                                   stop=stop)
    return np.asarray([rouge_l(pred, sample.answer)
                       for pred, sample in zip(predictions, samples, strict=True)], dtype=float)
