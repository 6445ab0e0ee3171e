"""Top-k knowledge extraction on a tiny Llama built from a config (no hub, no weights)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fedmkt.knowledge import topk
from fedmkt.knowledge.topk import collate, extract_topk, iter_knowledge, naive_topk
from fedmkt.models.work import WorkLedger
from fedmkt.wire.chunking import KnowledgeSample

VOCAB = 40


@dataclass(frozen=True)
class Encoded:
    sample_id: str
    input_ids: list[int]
    labels: list[int]


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        attention_dropout=0.5,  # so that a forward pass in training mode would be random
    )
    return LlamaForCausalLM(config).train()


def samples() -> list[Encoded]:
    rng = np.random.default_rng(3)
    out = []
    for i, (length, prompt) in enumerate([(7, 3), (4, 1), (1, 0), (9, 9), (5, 2)]):
        ids = rng.integers(0, VOCAB, length).tolist()
        labels = [-100] * prompt + ids[prompt:]
        out.append(Encoded(f"s{i}", ids, labels))
    return out


def reference(model: LlamaForCausalLM, sample: Encoded, k: int):
    """Unpadded forward of one sample; top-k and total answer NLL computed plainly."""
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([sample.input_ids])).logits[0]
    model.train()
    positions = len(sample.input_ids) - 1
    values, ids = torch.topk(logits[:positions], k, dim=-1)
    log_probs = torch.log_softmax(logits, dim=-1)
    nll = -sum(
        float(log_probs[i - 1, sample.labels[i]])
        for i in range(1, len(sample.labels))
        if sample.labels[i] != -100
    )
    return ids.numpy(), values.numpy(), nll


def test_extract_topk_matches_unpadded_reference(model) -> None:
    batch_samples = samples()
    out = extract_topk(model, collate(batch_samples), k=5)
    assert len(out) == len(batch_samples)
    for sample, got in zip(batch_samples, out, strict=True):
        ids, values, nll = reference(model, sample, 5)
        assert got.topk_ids.dtype == np.int32 and got.topk_logits.dtype == np.float32
        assert got.topk_ids.shape == (len(sample.input_ids) - 1, 5)
        np.testing.assert_array_equal(got.topk_ids, ids)
        np.testing.assert_allclose(got.topk_logits, values, rtol=1e-5, atol=1e-5)
        assert got.answer_nll == pytest.approx(nll, rel=1e-5, abs=1e-5)
        assert np.all(np.diff(got.topk_logits, axis=1) <= 0)  # sorted, descending
    assert out[2].topk_ids.shape == (0, 5)  # a one-token sample has no position
    assert out[2].answer_nll == 0.0
    assert out[3].answer_nll == 0.0  # no answer tokens: the empty answer is certain
    assert out[0].answer_nll > 0.0


def test_small_blocks_give_the_same_result(model, monkeypatch) -> None:
    batch = collate(samples())
    whole = extract_topk(model, batch, 5)
    monkeypatch.setattr(topk, "_CPU_BLOCK_ELEMENTS", 3 * VOCAB)  # blocks of 3 rows
    for a, b in zip(whole, extract_topk(model, batch, 5), strict=True):
        np.testing.assert_array_equal(a.topk_ids, b.topk_ids)
        np.testing.assert_array_equal(a.topk_logits, b.topk_logits)
        assert a.answer_nll == pytest.approx(b.answer_nll, rel=1e-6)


def test_answer_nll_is_the_total_not_the_mean(model) -> None:
    one = Encoded("a", [1, 2, 3, 4, 5], [-100, -100, -100, 4, 5])
    first = Encoded("b", [1, 2, 3, 4, 5], [-100, -100, -100, 4, -100])
    second = Encoded("c", [1, 2, 3, 4, 5], [-100, -100, -100, -100, 5])
    both, only_first, only_second = extract_topk(model, collate([one, first, second]), k=1)
    assert both.answer_nll == pytest.approx(only_first.answer_nll + only_second.answer_nll)


def test_naive_baseline_gives_the_same_result(model) -> None:
    batch = collate(samples())
    for fast, slow in zip(extract_topk(model, batch, 6), naive_topk(model, batch, 6), strict=True):
        np.testing.assert_array_equal(fast.topk_ids, slow.topk_ids)
        np.testing.assert_allclose(fast.topk_logits, slow.topk_logits, rtol=1e-6)
        assert fast.answer_nll == pytest.approx(slow.answer_nll, rel=1e-5)


def test_k_larger_than_vocab_pads_with_minus_one(model) -> None:
    (got,) = extract_topk(model, collate(samples()[:1]), k=VOCAB + 3)
    assert got.topk_ids.shape == (6, VOCAB + 3)
    assert (got.topk_ids[:, VOCAB:] == -1).all()
    assert np.isneginf(got.topk_logits[:, VOCAB:]).all()
    assert sorted(got.topk_ids[0, :VOCAB].tolist()) == list(range(VOCAB))


def test_extraction_is_deterministic_and_restores_training_mode(model) -> None:
    batch = collate(samples())
    first = extract_topk(model, batch, 3)
    second = extract_topk(model, batch, 3)
    assert model.training
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.topk_logits, b.topk_logits)
    assert all(p.grad is None for p in model.parameters())


def test_iter_knowledge_yields_every_sample_longest_first(model) -> None:
    items = samples()
    whole = extract_topk(model, collate(items), 4)
    got = list(iter_knowledge(model, items, k=4, batch_size=2, progress=False))
    assert sorted(s.sample_id for s in got) == sorted(s.sample_id for s in items)
    lengths = [len(s.token_ids) for s in got]
    assert lengths == sorted(lengths, reverse=True)
    by_id = {s.sample_id: s for s in got}
    for sample, expected in zip(items, whole, strict=True):
        knowledge = by_id[sample.sample_id]
        assert isinstance(knowledge, KnowledgeSample)
        assert knowledge.position_start == 0
        assert knowledge.token_ids is not None
        np.testing.assert_array_equal(knowledge.token_ids, sample.input_ids)
        assert knowledge.token_ids.dtype == np.int32
        np.testing.assert_array_equal(knowledge.topk_ids, expected.topk_ids)
        np.testing.assert_allclose(knowledge.topk_logits, expected.topk_logits, rtol=1e-5,
                                   atol=1e-5)
        assert knowledge.loss == pytest.approx(expected.answer_nll, rel=1e-5, abs=1e-5)


def test_left_padding_and_bad_inputs_are_rejected(model) -> None:
    batch = collate(samples()[:2])
    left = dict(batch, attention_mask=batch["attention_mask"].flip(1))
    with pytest.raises(ValueError, match="right-padded"):
        extract_topk(model, left, 2)
    with pytest.raises(ValueError, match="k must be"):
        extract_topk(model, batch, 0)
    bad_labels = dict(batch, labels=batch["labels"].clone().fill_(VOCAB))
    with pytest.raises(ValueError, match="labels must be in"):
        extract_topk(model, bad_labels, 2)
    with pytest.raises(ValueError, match="batch lacks"):
        extract_topk(model, {"input_ids": batch["input_ids"]}, 2)
    with pytest.raises(ValueError, match="equal length"):
        collate([Encoded("x", [1, 2], [1])])
    with pytest.raises(ValueError, match="batch_size"):
        list(iter_knowledge(model, samples(), k=2, batch_size=0, progress=False))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_result(model) -> None:
    batch = collate(samples())
    on_cpu = extract_topk(model, batch, 5)
    model.cuda()
    try:
        on_cuda = extract_topk(model, collate(samples(), device="cuda"), 5)
    finally:
        model.cpu()
    for a, b in zip(on_cpu, on_cuda, strict=True):
        np.testing.assert_allclose(a.topk_logits, b.topk_logits, rtol=1e-4, atol=1e-4)
        assert a.answer_nll == pytest.approx(b.answer_nll, rel=1e-4, abs=1e-4)


def test_answer_rows_are_the_all_rows_from_the_answer_on(model) -> None:
    items = samples()
    work_all, work_answer = WorkLedger(), WorkLedger()
    every = {s.sample_id: s for s in iter_knowledge(model, items, k=3, batch_size=2,
                                                    progress=False, work=work_all)}
    answer = list(iter_knowledge(model, items, k=3, batch_size=2, progress=False,
                                 positions="answer", work=work_answer))
    rows = 0
    for got in answer:
        full = every[got.sample_id]
        labels = np.asarray(next(s.labels for s in items if s.sample_id == got.sample_id))
        predicted = np.nonzero(labels[1:] != -100)[0]  # rows that predict a label
        assert got.position_start == (int(predicted[0]) if predicted.size else 0)
        assert len(got.topk_ids) == len(labels) - 1 - got.position_start
        np.testing.assert_array_equal(got.topk_ids, full.topk_ids[got.position_start:])
        np.testing.assert_allclose(got.topk_logits, full.topk_logits[got.position_start:],
                                   rtol=1e-5, atol=1e-5)
        assert got.loss == pytest.approx(full.loss, rel=1e-6, abs=1e-6)
        rows += len(got.topk_ids)
    assert work_answer.done.head_positions == work_answer.floor.head_positions == rows
    assert work_all.floor.head_positions == sum(max(len(s.input_ids) - 1, 0) for s in items)
    assert work_answer.floor.forward_tokens == sum(len(s.input_ids) for s in items)
    assert work_answer.done.forward_tokens >= work_answer.floor.forward_tokens
    assert work_answer.done.backward_tokens == 0
