"""The LM head at chosen rows (fedmkt.models.heads) equals the model's own forward pass, and the
training losses computed from it equal the losses computed from the full logits (values and
gradients), on tiny models of every architecture we use, LoRA-wrapped as the participants are."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
)

from fedmkt.knowledge.kd_loss import TeacherTargets, combined_loss
from fedmkt.models.heads import SelectiveHead, compact_positions
from fedmkt.models.lora import LoraSettings, apply_lora
from fedmkt.participant.distill import forward_rows

VOCAB = 97
SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "max_position_embeddings": 64}

CONFIGS = {
    "llama": lambda: LlamaConfig(vocab_size=VOCAB, num_key_value_heads=2, **SMALL),
    "mistral": lambda: MistralConfig(vocab_size=VOCAB, num_key_value_heads=2, sliding_window=None,
                                     **SMALL),
    "qwen2": lambda: Qwen2Config(vocab_size=VOCAB, num_key_value_heads=2,
                                 tie_word_embeddings=True, **SMALL),
    "gemma3": lambda: Gemma3TextConfig(vocab_size=VOCAB, num_key_value_heads=1, head_dim=8,
                                       **SMALL),
    "gemma3-softcap": lambda: Gemma3TextConfig(vocab_size=VOCAB, num_key_value_heads=1,
                                               head_dim=8, final_logit_softcapping=3.0, **SMALL),
    "gpt2": lambda: GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2,
                               n_head=4, n_inner=64),
    "neox": lambda: GPTNeoXConfig(vocab_size=VOCAB, **SMALL),
}


def build(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(CONFIGS[kind](), dtype=torch.float32)
    model = apply_lora(base, LoraSettings(r=4, alpha=8, dropout=0.0))
    # LoRA B starts at zero; make the adapter matter so that gradients are compared for real.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return model


def batch() -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(1)
    lengths, prompts = [9, 5, 12], [4, 2, 7]
    width = max(lengths)
    ids = torch.zeros((3, width), dtype=torch.long)
    mask = torch.zeros((3, width), dtype=torch.long)
    labels = torch.full((3, width), -100, dtype=torch.long)
    for b, (n, p) in enumerate(zip(lengths, prompts, strict=True)):
        row = torch.from_numpy(rng.integers(0, VOCAB, n))
        ids[b, :n], mask[b, :n] = row, 1
        labels[b, p:n] = row[p:]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_rows_equal_the_forward_pass(kind: str) -> None:
    model = build(kind).eval()
    head = SelectiveHead.for_model(model)
    assert head.fast, f"{kind}: the body/head split should be found and agree"
    b = batch()
    with torch.no_grad():
        full = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        wanted = b["attention_mask"].bool()
        index, valid = compact_positions(wanted)
        rows = head.logits_at(b["input_ids"], b["attention_mask"], index)
    expected = full.gather(1, index.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
    torch.testing.assert_close(rows[valid], expected[valid], rtol=1e-5, atol=1e-5)


def test_compact_positions_keeps_order_and_pads() -> None:
    wanted = torch.tensor([[False, True, False, True], [False, False, False, False],
                           [True, True, True, False]])
    index, valid = compact_positions(wanted)
    assert index.tolist() == [[1, 3, 0], [0, 0, 0], [0, 1, 2]]
    assert valid.tolist() == [[True, True, False], [False, False, False], [True, True, True]]


def teacher(b: dict[str, torch.Tensor], seed: int, k: int = 5) -> TeacherTargets:
    gen = torch.Generator().manual_seed(seed)
    shape = (*b["input_ids"].shape, k)
    ids = torch.randint(0, VOCAB, shape, generator=gen)
    ids[..., -1] = -1  # a padding slot
    logits = torch.randn(shape, generator=gen)
    mask = torch.zeros(b["input_ids"].shape, dtype=torch.bool)
    mask[:, :-1] = b["labels"][:, 1:] != -100
    mask[0, 0] = True  # a prompt position: rows beyond CE's are taken too
    return TeacherTargets(ids, logits, mask)


@pytest.mark.parametrize("kind", ["llama", "gemma3", "gpt2"])
def test_losses_and_gradients_equal_the_full_head(kind: str) -> None:
    b = batch()
    teachers = [teacher(b, 1), teacher(b, 2, k=3)]
    weights = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.0, 0.0]])

    def grads(model: torch.nn.Module) -> list[torch.Tensor]:
        out = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        model.zero_grad(set_to_none=True)
        return out

    model = build(kind).train()
    for module in model.modules():  # deterministic: no dropout anywhere
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    full = combined_loss(logits, b["labels"], teachers, weights, kd_alpha=0.7)
    full.loss.backward()
    expected = grads(model)

    from fedmkt.knowledge.kd_loss import combined_loss_at

    rows = forward_rows(SelectiveHead.for_model(model), b, [t.mask for t in teachers])
    ours = combined_loss_at(rows.logits, rows.next_token,
                            [rows.take_teacher(t) for t in teachers], weights, kd_alpha=0.7)
    ours.loss.backward()
    torch.testing.assert_close(ours.loss, full.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.ce, full.ce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.kd, full.kd, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads(model), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)

    real = int(b["attention_mask"].sum())
    assert rows.work.floor.forward_tokens == real
    assert rows.work.done.forward_tokens == b["input_ids"].numel()
    wanted = (rows.next_token != -100) | rows.valid
    assert rows.work.floor.head_positions == int(rows.valid.sum()) == int(wanted.sum())
    assert rows.work.done.head_positions == rows.index.numel()


def test_a_model_whose_forward_differs_falls_back_to_the_full_head() -> None:
    model = build("llama").eval()

    class Scaled(torch.nn.Module):  # a logit transform the body/head split does not know
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.config = inner.config

        def forward(self, **kwargs):
            out = self.inner(**kwargs)
            out.logits = out.logits * 2.0
            return out

        def get_base_model(self):
            return self.inner.get_base_model()

    wrapped = Scaled(model)
    head = SelectiveHead.for_model(wrapped)
    assert not head.fast
    b = batch()
    index, _ = compact_positions(b["attention_mask"].bool())
    with torch.no_grad():
        rows = head.logits_at(b["input_ids"], b["attention_mask"], index)
        full = wrapped(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    expected = full.gather(1, index.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
    torch.testing.assert_close(rows, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["llama", "gemma3", "qwen2"])
def test_cuda_bf16_rows_and_losses_match_the_full_head(kind: str) -> None:
    """The same paths on a GPU, under the bf16 autocast the training loop uses there."""
    model = build(kind).cuda().train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    b = {k: v.cuda() for k, v in batch().items()}
    target = teacher({k: v.cpu() for k, v in b.items()}, 1)
    target = TeacherTargets(*(x.cuda() for x in target))
    weights = torch.tensor([[1.0], [0.0], [1.0]], device="cuda")
    from fedmkt.knowledge.kd_loss import combined_loss_at

    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        full = combined_loss(logits, b["labels"], [target], weights)
        rows = forward_rows(SelectiveHead.for_model(model), b, [target.mask])
        ours = combined_loss_at(rows.logits, rows.next_token, [rows.take_teacher(target)],
                                weights)
    torch.testing.assert_close(ours.loss.float(), full.loss.float(), rtol=2e-2, atol=2e-2)
