"""LoRA: default target modules per architecture, only LoRA trainable, counts that add up."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, BloomConfig, OPTConfig

from fedmkt.models.lora import (
    LoraSettings,
    LoraTargetError,
    apply_lora,
    count_parameters,
    default_target_modules,
)
from fedmkt.models.tiny import TINY_MODELS

VOCAB = 128
IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}


def _tiny(arch: str):
    """A tiny model of one of our builtin architectures with a small vocabulary."""
    torch.manual_seed(0)
    config = TINY_MODELS[arch].make_config(VOCAB, IDS)
    return AutoModelForCausalLM.from_config(config)


def _other(kind: str):
    torch.manual_seed(0)
    if kind == "opt":
        config = OPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, ffn_dim=64, word_embed_proj_dim=32,
                           max_position_embeddings=64)
    else:
        config = BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4)
    return AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("tiny-gpt2", ["c_attn"]),
        ("tiny-mistral", ["q_proj", "k_proj", "v_proj", "o_proj"]),
        ("tiny-smollm2", ["q_proj", "k_proj", "v_proj", "o_proj"]),
        ("tiny-neox", ["query_key_value"]),
        ("tiny-gemma3", ["q_proj", "k_proj", "v_proj", "o_proj"]),
    ],
)
def test_default_targets_exist_and_get_adapters(arch: str, expected: list[str]) -> None:
    model = _tiny(arch)
    assert default_target_modules(model) == expected
    peft_model = apply_lora(model)
    adapted = {name.rsplit(".", 1)[-1] for name, module in peft_model.named_modules()
               if hasattr(module, "lora_A") and len(module.lora_A) > 0}
    assert adapted == set(expected)


@pytest.mark.parametrize(("kind", "expected"),
                         [("opt", ["q_proj", "v_proj"]), ("bloom", ["query_key_value"])])
def test_other_architectures(kind: str, expected: list[str]) -> None:
    model = _other(kind)
    assert default_target_modules(model) == expected
    apply_lora(model)  # the names exist in the real architecture


def test_only_lora_parameters_are_trainable_and_counts_add_up() -> None:
    model = _tiny("tiny-mistral")
    base_total = count_parameters(model).total
    shapes = {name: module.weight.shape for name, module in model.named_modules()
              if name.rsplit(".", 1)[-1] in default_target_modules(model)}
    settings = LoraSettings(r=4)
    peft_model = apply_lora(model, settings)
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    expected_lora = sum(settings.r * (shape[0] + shape[1]) for shape in shapes.values())
    counts = count_parameters(peft_model)
    assert counts.trainable == expected_lora
    assert counts.total == base_total + expected_lora


def test_gpt2_conv1d_adapter_has_the_right_orientation() -> None:
    model = _tiny("tiny-gpt2")
    hidden = model.config.n_embd
    peft_model = apply_lora(model, LoraSettings(r=8))
    attn = peft_model.base_model.model.transformer.h[0].attn.c_attn
    assert tuple(attn.lora_A["default"].weight.shape) == (8, hidden)
    assert tuple(attn.lora_B["default"].weight.shape) == (3 * hidden, 8)


def test_fresh_lora_leaves_outputs_unchanged_and_training_changes_them() -> None:
    model = _tiny("tiny-smollm2")
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(input_ids=ids).logits.clone()
    peft_model = apply_lora(model, LoraSettings(dropout=0.0))
    peft_model.eval()
    with torch.no_grad():
        assert torch.allclose(peft_model(input_ids=ids).logits, before, atol=1e-6)
    peft_model.train()
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    loss = peft_model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    peft_model.eval()
    with torch.no_grad():
        assert not torch.allclose(peft_model(input_ids=ids).logits, before, atol=1e-6)


def test_unknown_architecture_needs_an_override() -> None:
    with pytest.raises(LoraTargetError, match="target_modules"):
        default_target_modules(SimpleNamespace(config=SimpleNamespace(model_type="mamba")))
    model = _tiny("tiny-gpt2")
    model.config.model_type = "something-new"
    peft_model = apply_lora(model, LoraSettings(target_modules=["c_proj"]))
    assert any(".c_proj.lora_A." in n for n, _ in peft_model.named_parameters())


def test_missing_target_module_is_a_clear_error() -> None:
    with pytest.raises(LoraTargetError, match="cannot apply LoRA"):
        apply_lora(_tiny("tiny-neox"), LoraSettings(target_modules=["no_such_proj"]))


@pytest.mark.parametrize("bad", [{"r": 0}, {"alpha": 0}, {"dropout": 1.0},
                                 {"target_modules": []}, {"target_modules": [""]}])
def test_settings_validation(bad: dict) -> None:
    with pytest.raises(ValueError):
        LoraSettings(**bad)


def test_paper_defaults() -> None:
    settings = LoraSettings()
    assert (settings.r, settings.alpha, settings.dropout) == (8, 16, 0.05)
