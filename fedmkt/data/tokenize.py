"""Turn samples into token ids and labels for causal-LM training and scoring.

The full text ``prompt + answer`` is tokenized **once**, with character offsets (so the ids are
exactly what the tokenizer makes of the text the aligner sees), and the answer tokens are the
tail that starts at the first token reaching past the prompt. A token that straddles the
prompt/answer boundary therefore counts as an answer token. Labels are the ids at answer
positions and -100 elsewhere (Hugging Face causal LMs shift labels themselves).

Literal special-token strings inside the text (``"<s>"``, ``"<|endoftext|>"``) are tokenized as
plain text (``split_special_tokens=True``): data can never inject control tokens. A BOS token
is put first when the tokenizer has one and adds it by default (Mistral/LLaMA yes, GPT-2 no).
Too long a text loses prompt tokens from the left (after the BOS); the answer is never cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fedmkt.data.samples import Sample, full_text

IGNORE_INDEX = -100


class EncodingError(ValueError):
    """A sample cannot be encoded (answer longer than the length limit, or no answer tokens)."""


@dataclass(frozen=True)
class EncodedSample:
    """One sample as token ids.

    ``input_ids``: BOS (if any) + kept prompt tokens + answer tokens (+ EOS if asked).
    ``labels``: ``input_ids`` at answer positions, ``IGNORE_INDEX`` elsewhere.
    ``offsets``: the ``[start, end)`` character span of each token in ``text`` (``(s, s)`` for
    BOS/EOS). ``answer_start``: index of the first answer token. ``text``: the full text (prompt
    + answer); ``text_start``: first character of ``text`` that the kept tokens cover (above 0
    only when the prompt was truncated).
    """

    sample_id: str
    input_ids: list[int]
    labels: list[int]
    offsets: list[tuple[int, int]]
    answer_start: int
    text: str
    text_start: int

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def answer_ids(self) -> list[int]:
        return self.input_ids[self.answer_start :]


def _require_fast(tokenizer: Any) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"{type(tokenizer).__name__} is not a fast (Rust) tokenizer; character offsets are "
            "needed. Load it with AutoTokenizer.from_pretrained(..., use_fast=True)."
        )


def bos_id(tokenizer: Any) -> int | None:
    """The BOS id if the tokenizer puts one first by default (tested, not read from config)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bos if with_special and with_special[0] == bos else None


def _tokenize(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tokenizer(
        text,
        add_special_tokens=False,
        return_offsets_mapping=True,
        split_special_tokens=True,
    )
    return list(enc["input_ids"]), [tuple(span) for span in enc["offset_mapping"]]


def encode_prompt(tokenizer: Any, prompt: str, *, max_length: int = 512) -> list[int]:
    """BOS (if the tokenizer adds one) + prompt ids, cut from the left to ``max_length``."""
    _require_fast(tokenizer)
    ids, _ = _tokenize(tokenizer, prompt)
    bos = bos_id(tokenizer)
    prefix = [] if bos is None else [bos]
    room = max_length - len(prefix)
    if room < 1:
        raise EncodingError(f"max_length {max_length} leaves no room for the prompt")
    return prefix + ids[max(0, len(ids) - room) :]


def encode_for_lm(
    tokenizer: Any,
    sample: Sample,
    *,
    max_length: int = 512,
    answer: str | None = None,
    add_eos: bool = False,
) -> EncodedSample:
    """Token ids and labels for ``sample`` (or for its prompt followed by ``answer``).

    ``add_eos`` appends the EOS token as the answer's last (labelled) token, to teach a model to
    stop. Raises `EncodingError` when the answer alone does not fit in ``max_length``.
    """
    _require_fast(tokenizer)
    text = full_text(sample, answer)
    prompt_chars = len(sample.prompt)
    ids, offsets = _tokenize(tokenizer, text)
    answer_start = next((i for i, (_, end) in enumerate(offsets) if end > prompt_chars), None)
    if answer_start is None:
        raise EncodingError(f"sample {sample.id!r}: the answer produced no tokens")
    if add_eos:
        if tokenizer.eos_token_id is None:
            raise EncodingError("add_eos=True but the tokenizer has no EOS token")
        ids.append(tokenizer.eos_token_id)
        offsets.append((len(text), len(text)))

    bos = bos_id(tokenizer)
    prefix = 0 if bos is None else 1
    excess = prefix + len(ids) - max_length
    if excess > answer_start:
        raise EncodingError(
            f"sample {sample.id!r}: the answer takes {len(ids) - answer_start} tokens, more than "
            f"max_length={max_length} allows; raise max_length or shorten the answer"
        )
    drop = max(0, excess)
    ids, offsets, answer_start = ids[drop:], offsets[drop:], answer_start - drop
    text_start = offsets[0][0] if drop else 0
    if bos is not None:
        ids, offsets = [bos, *ids], [(text_start, text_start), *offsets]
        answer_start += 1
    labels = [IGNORE_INDEX] * answer_start + ids[answer_start:]
    return EncodedSample(sample.id, ids, labels, offsets, answer_start, text, text_start)


def collate(encoded: Sequence[EncodedSample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` / ``attention_mask`` / ``labels`` tensors (``[batch, len]``).

    Padding positions get ``pad_id``, mask 0 and label ``IGNORE_INDEX``.
    """
    if not encoded:
        raise ValueError("collate needs at least one encoded sample")
    if pad_id < 0:
        raise ValueError(f"pad_id must be a token id (>= 0), got {pad_id}")
    width = max(len(item) for item in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
    for row, item in enumerate(encoded):
        size = len(item)
        input_ids[row, :size] = torch.tensor(item.input_ids, dtype=torch.long)
        attention_mask[row, :size] = 1
        labels[row, :size] = torch.tensor(item.labels, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pad_id_for(tokenizer: Any) -> int:
    """A usable padding id: the tokenizer's pad token, else EOS, else 0 (padding is masked)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0
