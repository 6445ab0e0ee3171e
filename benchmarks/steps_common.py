"""What the model-step benchmarks share: a real builtin model with LoRA, packaged samples
encoded for it, and a timer. Not a benchmark itself (no ``bench_`` prefix)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from fedmkt.data.tasks import load_task
from fedmkt.data.tokenize import encode_for_lm
from fedmkt.models.loading import load_model
from fedmkt.models.lora import LoraSettings, apply_lora
from fedmkt.participant.data import EncodedSplit


def lora_model(name: str, threads: int) -> tuple[Any, Any]:
    """Builtin model ``name`` (float32, CPU) with the default LoRA adapter, and its tokenizer."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    base, tokenizer = load_model(name, dtype="float32", device="cpu")
    return apply_lora(base, LoraSettings()), tokenizer


def encoded_samples(tokenizer: Any, task: str, count: int, max_length: int) -> EncodedSplit:
    """The first ``count`` samples of a packaged task that fit in ``max_length`` tokens."""
    samples, encoded = [], []
    for sample in load_task(task):
        try:
            enc = encode_for_lm(tokenizer, sample, max_length=max_length)
        except ValueError:
            continue
        if len(enc) < max_length:  # keep whole samples only: no truncated prompts
            samples.append(sample)
            encoded.append(enc)
        if len(encoded) == count:
            break
    return EncodedSplit("bench", samples, encoded)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out
