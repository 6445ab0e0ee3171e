"""Tiny builtin models for tests and demo clients: real tokenizers, random weights.

Each tiny model pairs a builtin tokenizer (``fedmkt.models.tokenizers``) with the architecture
that tokenizer usually comes with, shrunk to hidden size 64 and 2 layers. The input and output
embeddings are tied, because with 32k–262k vocabularies the embedding matrix is almost all of
the parameters. Weights are drawn from a fixed seed, so every machine builds the same model.
A forward + backward pass on 512 tokens takes a fraction of a second on one CPU core (except
``tiny-gemma3``: its 262k vocabulary makes it about ten times slower).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
FFN = 256
MAX_POSITIONS = 1024
SEED = 20240603


@dataclass(frozen=True)
class TinyModel:
    """A tiny builtin: its name, the builtin tokenizer it uses, and how to make its config."""

    name: str
    tokenizer: str
    architecture: str
    make_config: Callable[[int, dict[str, int | None]], Any]


def _special_ids(tokenizer: Any) -> dict[str, int | None]:
    """bos/eos/pad ids of ``tokenizer``; pad falls back to eos (models need one for batches)."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": eos, "pad_token_id": pad}


def _gpt2(vocab: int, ids: dict[str, int | None]) -> Any:
    from transformers import GPT2Config

    return GPT2Config(vocab_size=vocab, n_positions=MAX_POSITIONS, n_embd=HIDDEN, n_layer=LAYERS,
                      n_head=HEADS, n_inner=FFN, tie_word_embeddings=True, **ids)


def _mistral(vocab: int, ids: dict[str, int | None]) -> Any:
    from transformers import MistralConfig

    return MistralConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=FFN,
                         num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                         num_key_value_heads=KV_HEADS, max_position_embeddings=MAX_POSITIONS,
                         sliding_window=None, tie_word_embeddings=True, **ids)


def _llama(vocab: int, ids: dict[str, int | None]) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=FFN,
                       num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                       num_key_value_heads=KV_HEADS, max_position_embeddings=MAX_POSITIONS,
                       tie_word_embeddings=True, **ids)


def _neox(vocab: int, ids: dict[str, int | None]) -> Any:
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=FFN,
                         num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                         max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=True, **ids)


def _gemma3(vocab: int, ids: dict[str, int | None]) -> Any:
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=FFN,
                            num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                            num_key_value_heads=1, head_dim=HIDDEN // HEADS,
                            max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=True,
                            **ids)


TINY_MODELS: dict[str, TinyModel] = {
    t.name: t
    for t in [
        TinyModel("tiny-gpt2", "gpt2", "GPT-2", _gpt2),
        TinyModel("tiny-mistral", "mistral", "Mistral", _mistral),
        TinyModel("tiny-neox", "neox", "GPT-NeoX", _neox),
        TinyModel("tiny-smollm2", "smollm2", "Llama", _llama),
        TinyModel("tiny-gemma3", "gemma3", "Gemma-3 (text)", _gemma3),
    ]
}


def build_tiny(name: str, dest: Path) -> None:
    """Write tiny model ``name`` (config, safetensors weights, tokenizer files) into ``dest``."""
    import torch
    from transformers import AutoModelForCausalLM

    from fedmkt.models.tokenizers import load_tokenizer

    spec = TINY_MODELS[name]
    tokenizer = load_tokenizer(spec.tokenizer)
    config = spec.make_config(len(tokenizer), _special_ids(tokenizer))
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state untouched
        torch.manual_seed(SEED)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(str(dest))
    tokenizer.save_pretrained(str(dest))
