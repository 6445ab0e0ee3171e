"""Token ids and labels for LM training: labels cover exactly the answer tokens."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fedmkt.data.samples import Sample, answer_span, full_text
from fedmkt.data.tasks import load_task
from fedmkt.data.tokenize import (
    IGNORE_INDEX,
    EncodingError,
    collate,
    encode_for_lm,
    encode_prompt,
)
from fedmkt.models.tokenizers import load_tokenizer

TOKENIZERS = ["gpt2", "mistral"]


@pytest.fixture(scope="module", params=TOKENIZERS)
def tok(request: pytest.FixtureRequest) -> Any:
    return load_tokenizer(request.param)


def _real_samples() -> list[Sample]:
    return [load_task("rte")[0], load_task("copa")[3], load_task("arc_easy")[5],
            load_task("boolq")[1]]


def _check_labels_cover_answer(tok: Any, sample: Sample, enc: Any) -> None:
    start, end = answer_span(sample)
    labelled = [i for i, label in enumerate(enc.labels) if label != IGNORE_INDEX]
    assert labelled == list(range(enc.answer_start, len(enc.input_ids)))
    assert [enc.labels[i] for i in labelled] == enc.input_ids[enc.answer_start :]
    # prompt tokens lie inside the prompt; answer tokens reach into the answer
    assert all(e <= start for _, e in enc.offsets[: enc.answer_start])
    assert all(e > start for _, e in enc.offsets[enc.answer_start :])
    assert enc.offsets[-1][1] == end
    assert tok.decode(enc.answer_ids).strip() == sample.answer.strip()


def test_labels_mask_exactly_the_answer_tokens(tok: Any) -> None:
    for sample in _real_samples():
        enc = encode_for_lm(tok, sample, max_length=4096)
        _check_labels_cover_answer(tok, sample, enc)
        plain = tok(full_text(sample), add_special_tokens=False)["input_ids"]
        has_bos = tok.bos_token_id is not None and tok("a")["input_ids"][0] == tok.bos_token_id
        assert enc.input_ids == ([tok.bos_token_id] if has_bos else []) + plain
        assert enc.text == full_text(sample) and enc.text_start == 0


def test_bos_only_where_the_tokenizer_adds_it() -> None:
    sample = load_task("rte")[0]
    mistral = load_tokenizer("mistral")
    gpt2 = load_tokenizer("gpt2")
    assert encode_for_lm(mistral, sample).input_ids[0] == mistral.bos_token_id
    assert encode_for_lm(gpt2, sample).input_ids[0] != gpt2.bos_token_id


def test_every_choice_can_be_the_answer(tok: Any) -> None:
    sample = load_task("copa")[0]
    for choice in sample.choices:
        enc = encode_for_lm(tok, sample, answer=choice)
        assert tok.decode(enc.answer_ids).strip() == choice.strip()
        assert enc.text == sample.prompt + choice


def test_boundary_token_counts_as_answer() -> None:
    gpt2 = load_tokenizer("gpt2")
    sample = Sample("b", "The cat sa", "t on the mat")  # " sat" straddles the boundary
    enc = encode_for_lm(gpt2, sample)
    first_start, first_end = enc.offsets[enc.answer_start]
    assert first_start < len(sample.prompt) < first_end
    assert gpt2.decode(enc.answer_ids) == " sat on the mat"


def test_truncation_cuts_the_prompt_from_the_left(tok: Any) -> None:
    sample = load_task("boolq")[1]
    whole = encode_for_lm(tok, sample, max_length=4096)
    enc = encode_for_lm(tok, sample, max_length=20)
    assert len(enc.input_ids) == 20
    assert enc.answer_ids == whole.answer_ids
    _check_labels_cover_answer(tok, sample, enc)
    assert enc.text_start > 0
    kept = [i for i in enc.input_ids if i != tok.bos_token_id or tok.bos_token_id is None]
    assert kept == whole.input_ids[len(whole.input_ids) - len(kept) :]
    if whole.input_ids[0] == tok.bos_token_id:
        assert enc.input_ids[0] == tok.bos_token_id
    if tok.name_or_path.endswith("gpt2"):  # byte-level BPE decodes back to the exact text
        assert tok.decode(enc.input_ids) == enc.text[enc.text_start :]


def test_answer_that_cannot_fit_raises(tok: Any) -> None:
    sample = Sample("long", "Q:", " " + "word " * 50)
    with pytest.raises(EncodingError, match="max_length"):
        encode_for_lm(tok, sample, max_length=10)


def test_special_token_strings_in_data_stay_text(tok: Any) -> None:
    literal = tok.convert_ids_to_tokens(tok.eos_token_id)
    sample = Sample("inj", f"Say {literal} now:", f" {literal}")
    enc = encode_for_lm(tok, sample)
    assert tok.eos_token_id not in enc.input_ids
    assert literal in tok.decode(enc.answer_ids)


def test_add_eos_labels_the_eos(tok: Any) -> None:
    sample = load_task("rte")[0]
    plain = encode_for_lm(tok, sample)
    enc = encode_for_lm(tok, sample, add_eos=True)
    assert enc.input_ids == [*plain.input_ids, tok.eos_token_id]
    assert enc.labels[-1] == tok.eos_token_id and enc.answer_start == plain.answer_start


def test_encode_prompt_keeps_bos_and_the_prompt_tail(tok: Any) -> None:
    prompt = load_task("boolq")[1].prompt
    ids = encode_prompt(tok, prompt, max_length=4096)
    short = encode_prompt(tok, prompt, max_length=12)
    assert len(short) == 12
    body = [i for i in short if i != tok.bos_token_id]
    assert body == ids[len(ids) - len(body) :]


def test_collate_pads_on_the_right() -> None:
    gpt2 = load_tokenizer("gpt2")
    encoded = [encode_for_lm(gpt2, s) for s in _real_samples()]
    batch = collate(encoded, pad_id=50256)
    width = max(len(e) for e in encoded)
    assert batch["input_ids"].shape == (len(encoded), width)
    assert batch["input_ids"].dtype == torch.long
    for row, enc in enumerate(encoded):
        n = len(enc)
        assert batch["input_ids"][row, :n].tolist() == enc.input_ids
        assert batch["labels"][row, :n].tolist() == enc.labels
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        assert (batch["input_ids"][row, n:] == 50256).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
    with pytest.raises(ValueError):
        collate([], pad_id=0)
