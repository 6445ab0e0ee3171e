"""Evaluation metrics on tiny random models, checked against slow reference loops."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import transformers

from fedmkt.data.metrics import (
    generate_answers,
    generation_rouge_l,
    multiple_choice_accuracy,
    rouge_l,
    score_choices,
)
from fedmkt.data.samples import Sample
from fedmkt.data.tasks import load_task
from fedmkt.data.tokenize import encode_for_lm, encode_prompt
from fedmkt.models.tokenizers import load_tokenizer


def _tiny_llama(tok: Any, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2,
    )
    return transformers.LlamaForCausalLM(config)


def _tiny_gpt2(tok: Any, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2)
    return transformers.GPT2LMHeadModel(config)


class _NoLogitsToKeep(torch.nn.Module):
    """A causal LM whose forward has no ``logits_to_keep`` (exercises the fallback path)."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: Any, attention_mask: Any = None, position_ids: Any = None) -> Any:
        return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids)


@pytest.fixture(scope="module")
def gpt2_tok() -> Any:
    return load_tokenizer("gpt2")


@pytest.fixture(scope="module")
def mc_samples() -> list[Sample]:
    # different lengths and choice counts, so batches need padding
    return [*load_task("copa")[:3], *load_task("arc_easy")[:2], *load_task("rte")[:1]]


def _slow_scores(model: Any, tok: Any, samples: list[Sample]) -> list[list[float]]:
    """One unpadded forward pass per choice; sum log p(answer token | everything before)."""
    out = []
    with torch.no_grad():
        for sample in samples:
            row = []
            for choice in sample.choices:
                enc = encode_for_lm(tok, sample, answer=choice)
                hidden = model.base_model(input_ids=torch.tensor([enc.input_ids]))[0][0]
                # the LM head only where an answer token is predicted (cheap on a 50k vocab)
                logits = model.get_output_embeddings()(hidden[enc.answer_start - 1 : -1])
                log_probs = torch.log_softmax(logits.float(), dim=-1)
                targets = enc.input_ids[enc.answer_start :]
                row.append(sum(float(log_probs[j, t]) for j, t in enumerate(targets)))
            out.append(row)
    return out


@pytest.mark.parametrize("builder", [_tiny_llama, _tiny_gpt2])
def test_batched_scores_match_a_slow_loop(builder: Any, gpt2_tok: Any,
                                          mc_samples: list[Sample]) -> None:
    model = builder(gpt2_tok).eval()
    expected = _slow_scores(model, gpt2_tok, mc_samples)
    got = score_choices(model, gpt2_tok, mc_samples, batch_size=3)
    assert [len(r) for r in got] == [len(s.choices) for s in mc_samples]
    np.testing.assert_allclose(np.concatenate(got), np.concatenate(expected), rtol=1e-4,
                               atol=1e-3)


def test_scores_with_a_bos_tokenizer_and_without_logits_to_keep(mc_samples: list[Sample]) -> None:
    tok = load_tokenizer("mistral")
    model = _tiny_llama(tok, seed=1).eval()
    expected = _slow_scores(model, tok, mc_samples)
    for candidate in (model, _NoLogitsToKeep(model)):
        got = score_choices(candidate, tok, mc_samples, batch_size=4)
        np.testing.assert_allclose(np.concatenate(got), np.concatenate(expected), rtol=1e-4,
                                   atol=1e-3)


def test_accuracy_is_the_argmax_of_the_slow_scores(gpt2_tok: Any,
                                                   mc_samples: list[Sample]) -> None:
    model = _tiny_llama(gpt2_tok, seed=2)
    model.train()
    result = multiple_choice_accuracy(model, gpt2_tok, mc_samples, batch_size=5)
    assert model.training  # mode given back
    model.eval()
    slow = _slow_scores(model, gpt2_tok, mc_samples)
    acc = np.mean([int(np.argmax(s)) == x.label for s, x in zip(slow, mc_samples, strict=True)])
    acc_norm = np.mean([
        int(np.argmax(np.asarray(s) / [len(c) for c in x.choices])) == x.label
        for s, x in zip(slow, mc_samples, strict=True)
    ])
    assert result == {"acc": pytest.approx(acc), "acc_norm": pytest.approx(acc_norm),
                      "n": len(mc_samples)}


def test_peft_wrapped_model_scores_like_its_base(gpt2_tok: Any,
                                                 mc_samples: list[Sample]) -> None:
    peft = pytest.importorskip("peft")
    model = _tiny_llama(gpt2_tok, seed=3).eval()
    base = score_choices(model, gpt2_tok, mc_samples[:3])
    wrapped = peft.get_peft_model(
        model, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    )  # LoRA B starts at zero: same function
    np.testing.assert_allclose(score_choices(wrapped, gpt2_tok, mc_samples[:3]), base,
                               rtol=1e-5, atol=1e-4)


def test_scoring_refuses_samples_without_choices(gpt2_tok: Any) -> None:
    model = _tiny_llama(gpt2_tok)
    with pytest.raises(ValueError, match="no choices"):
        score_choices(model, gpt2_tok, [Sample("g", "Q:", " a")])
    with pytest.raises(ValueError, match="at least one"):
        multiple_choice_accuracy(model, gpt2_tok, [])


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("the cat sat on the mat", "the cat sat on the mat", 1.0),
        ("the cat sat on the mat", "the cat on the mat", 10 / 11),  # LCS 5; P 5/6, R 1
        ("a b c", "c b a", 1 / 3),
        ("Paris.", " paris", 1.0),
        ("dog", "cat", 0.0),
        ("", "cat", 0.0),
        ("cat", "   ", 0.0),
        ("Zürich ist schön", "zürich schön", 0.8),  # LCS 2; P 2/3, R 1
    ],
)
def test_rouge_l_hand_cases(prediction: str, reference: str, expected: float) -> None:
    assert rouge_l(prediction, reference) == pytest.approx(expected)


def _greedy(model: Any, tok: Any, prompt: str, steps: int) -> list[int]:
    ids = encode_prompt(tok, prompt)
    new: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=torch.tensor([ids + new]), logits_to_keep=1).logits[0, -1]
            new.append(int(logits.argmax()))
    return new


def test_generation_is_greedy_and_batch_independent(gpt2_tok: Any) -> None:
    model = _tiny_gpt2(gpt2_tok, seed=4).eval()
    model.generation_config.eos_token_id = None  # random model: never stop early
    samples = load_task("nq_open")[:3] + load_task("trivia_qa")[:2]
    batched = generate_answers(model, gpt2_tok, samples, max_new_tokens=6, batch_size=5)
    single = generate_answers(model, gpt2_tok, samples, max_new_tokens=6, batch_size=1)
    assert batched == single
    gpt2_tok_eos = gpt2_tok.eos_token_id
    for sample, answer in zip(samples, batched, strict=True):
        ids = _greedy(model, gpt2_tok, sample.prompt, 6)
        if gpt2_tok_eos in ids:
            ids = ids[: ids.index(gpt2_tok_eos)]
        assert answer == gpt2_tok.decode(ids, skip_special_tokens=True)
    stopped = generate_answers(model, gpt2_tok, samples, max_new_tokens=6, stop=(" ",))
    for cut, whole in zip(stopped, batched, strict=True):
        assert whole.startswith(cut) and " " not in cut


def test_generation_rouge_l_is_the_mean_over_samples(gpt2_tok: Any) -> None:
    model = _tiny_llama(gpt2_tok, seed=5)
    samples = load_task("nq_open")[:4]
    answers = generate_answers(model, gpt2_tok, samples, max_new_tokens=4)
    result = generation_rouge_l(model, gpt2_tok, samples, max_new_tokens=4)
    expected = np.mean([rouge_l(a, s.answer) for a, s in zip(answers, samples, strict=True)])
    assert result == {"rouge_l": pytest.approx(expected), "n": 4}
    # a model that answers exactly scores 1: check the metric can reach its top
    assert rouge_l(samples[0].answer, samples[0].answer) == 1.0
