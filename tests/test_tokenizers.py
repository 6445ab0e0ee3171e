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
