"""Canonical token strings (surface and fate modes), word-boundary markers, fingerprints."""

from __future__ import annotations

import logging
import random

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from fedmkt.align.canonical import (
    CanonicalMode,
    canonical_vocab,
    fate_vocab,
    raw_vocab,
    surface_vocab,
    word_boundary_marker,
)
from fedmkt.align.fingerprint import is_fingerprint, tokenizer_fingerprint
from fedmkt.models.tokenizers import load_tokenizer, tokenizer_path

BUILTINS = ["gpt2", "mistral", "neox", "smollm2"]
# SentencePiece (Metaspace, prepend "first") adds a space before the first word of a text.
PREFIX_SPACE = {"gpt2": "", "mistral": " ", "neox": "", "smollm2": ""}
TEXTS = [
    "Hello world,\n  naïve café — 中文 emoji 🤖 tabs\t\tend.",
    "def f(x):\n    return x ** 2  # ünïcödé ✓\r\n",
    "Ελληνικά, русский, العربية, हिन्दी, 日本語のテキスト。",
]


def as_bytes(strings: list[str]) -> bytes:
    """Concatenated bytes of surface strings (partial UTF-8 bytes are surrogate-escaped)."""
    return b"".join(s.encode("utf-8", "surrogateescape") for s in strings)


@pytest.fixture(scope="module", params=BUILTINS)
def named(request: pytest.FixtureRequest) -> tuple[str, object]:
    return request.param, load_tokenizer(request.param)


# --------------------------------------------------------------------------- surface strings


def test_gpt2_byte_level_surface() -> None:
    tok = load_tokenizer("gpt2")
    surface = surface_vocab(tok)
    assert len(surface) == len(tok) == 50257
    assert surface[tok.convert_tokens_to_ids("Ġthe")] == " the"
    assert surface[tok.convert_tokens_to_ids("Ċ")] == "\n"
    assert surface[tok.convert_tokens_to_ids("ĊĊ")] == "\n\n"
    assert surface[tok.convert_tokens_to_ids("hello")] == "hello"
    assert surface[50256] == "<|endoftext|>"
    # Every one of the 256 bytes has its own token; bytes ≥ 0x80 are partial UTF-8: they stay
    # distinct (surrogate-escaped) and encode back to exactly that byte.
    single_bytes = {}
    for i, s in enumerate(surface):
        b = s.encode("utf-8", "surrogateescape")
        if len(b) == 1 and i < 256:
            single_bytes[b[0]] = s
    assert sorted(single_bytes) == list(range(256))
    assert len(set(single_bytes.values())) == 256
    assert single_bytes[0xE4] == "\udce4"
    assert len(set(surface)) == len(surface)  # byte-level BPE: no two tokens decode alike


def test_mistral_sentencepiece_surface() -> None:
    tok = load_tokenizer("mistral")
    surface = surface_vocab(tok)
    assert len(surface) == 32000
    assert tok.convert_ids_to_tokens(13) == "<0x0A>" and surface[13] == "\n"
    assert surface[tok.convert_tokens_to_ids("▁the")] == " the"
    assert surface[tok.convert_tokens_to_ids("▁")] == " "
    # byte fallback of a non-ASCII byte: one distinct, exact byte
    e4 = tok.convert_tokens_to_ids("<0xE4>")
    assert surface[e4] == "\udce4" and surface[e4].encode("utf-8", "surrogateescape") == b"\xe4"
    assert surface[:3] == ["<unk>", "<s>", "</s>"]


def test_neox_and_smollm2_surface() -> None:
    neox, smol = load_tokenizer("neox"), load_tokenizer("smollm2")
    ns, ss = surface_vocab(neox), surface_vocab(smol)
    assert len(ns) == 50280 and len(ss) == 49152
    assert ns[0] == "|||IP_ADDRESS|||" and ns[1] == "<|padding|>"
    assert ns[50254] == " " * 24  # an added whitespace token: its content as is
    assert ns[neox.convert_tokens_to_ids("Ġworld")] == " world"
    assert ss[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert ss[smol.convert_tokens_to_ids("Ġworld")] == " world"


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_of_encoded_text(named: tuple[str, object], text: str) -> None:
    name, tok = named
    surface = surface_vocab(tok)
    ids = tok.encode(text, add_special_tokens=False)
    assert as_bytes([surface[i] for i in ids]).decode("utf-8") == PREFIX_SPACE[name] + text


def test_random_tokens_match_the_tokenizers_own_decoder(named: tuple[str, object]) -> None:
    """For a few hundred random ids, each surface string equals what HF decodes the token to
    after an anchor token, and runs of random tokens concatenate to the decoded run."""
    name, tok = named
    surface = surface_vocab(tok)
    special = set(tok.all_special_ids) | set(tok.added_tokens_decoder)
    rng = random.Random(f"canonical-{name}")
    ids = [i for i in rng.sample(range(len(tok)), 400) if i not in special][:300]
    anchor = tok.encode("a", add_special_tokens=False)[-1]

    def decode(seq: list[int]) -> str:
        return tok.decode(seq, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    prefix = decode([anchor])
    checked = 0
    for i in ids:
        raw = surface[i].encode("utf-8", "surrogateescape")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:  # a partial UTF-8 byte token: HF shows U+FFFD instead
            assert decode([anchor, i]) == prefix + raw.decode("utf-8", errors="replace")
            continue
        assert decode([anchor, i]) == prefix + text
        checked += 1
    assert checked > 200
    for start in range(0, len(ids), 20):
        run = ids[start:start + 20]
        joined = as_bytes([surface[i] for i in run])
        expected = decode([anchor, *run])[len(prefix):]
        assert joined.decode("utf-8", errors="replace") == expected


def test_surface_is_cached_per_object_and_copied() -> None:
    tok = load_tokenizer("gpt2")
    first = surface_vocab(tok)
    first[0] = "changed"
    assert surface_vocab(tok)[0] == "!"


# --------------------------------------------------------------------------- other decoders


def _fast(tokenizer: Tokenizer, **special: str) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special)


def test_wordpiece_decoder() -> None:
    vocab = {"[UNK]": 0, "hello": 1, "##ing": 2, "play": 3, "[CLS]": 4}
    t = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.decoder = decoders.WordPiece()
    tok = _fast(t, unk_token="[UNK]", cls_token="[CLS]")
    assert surface_vocab(tok) == ["[UNK]", " hello", "ing", " play", "[CLS]"]
    assert word_boundary_marker(tok) == ""
    assert tok.decode([1, 3, 2]) == "".join(surface_vocab(tok)[i] for i in (1, 3, 2)).strip()


def test_metaspace_and_bpe_suffix_decoders() -> None:
    t = Tokenizer(models.WordLevel({"▁a": 0, "b": 1, "<unk>": 2}, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Metaspace()
    t.decoder = decoders.Metaspace()
    tok = _fast(t, unk_token="<unk>")
    assert surface_vocab(tok) == [" a", "b", "<unk>"]
    assert word_boundary_marker(tok) == "▁"

    t = Tokenizer(models.WordLevel({"lo</w>": 0, "w": 1, "<unk>": 2}, unk_token="<unk>"))
    t.decoder = decoders.BPEDecoder(suffix="</w>")
    tok = _fast(t, unk_token="<unk>")
    assert surface_vocab(tok) == ["lo ", "w", "<unk>"]
    assert word_boundary_marker(tok) == ""


def test_unknown_decoder_falls_back_to_anchor_decoding(caplog: pytest.LogCaptureFixture) -> None:
    t = Tokenizer(models.WordLevel({"a": 0, "b": 1, "<unk>": 2}, unk_token="<unk>"))
    t.decoder = decoders.CTC()  # merges repeats: a sequence-level decoder
    tok = _fast(t, unk_token="<unk>")
    with caplog.at_level(logging.WARNING):
        assert surface_vocab(tok) == ["a", "b", "<unk>"]
    assert "CTC" in caplog.text


# --------------------------------------------------------------------------- markers, fate mode


@pytest.mark.parametrize("name,marker", [("gpt2", "Ġ"), ("mistral", "▁"), ("neox", "Ġ"),
                                         ("smollm2", "Ġ")])
def test_word_boundary_marker(name: str, marker: str) -> None:
    assert word_boundary_marker(load_tokenizer(name)) == marker


def test_fate_mode_swaps_markers() -> None:
    mistral, gpt2, neox = load_tokenizer("mistral"), load_tokenizer("gpt2"), load_tokenizer("neox")
    raw = raw_vocab(mistral)
    the = mistral.convert_tokens_to_ids("▁the")
    swapped = fate_vocab(mistral, "Ġ")
    assert swapped[the] == "Ġthe"
    assert swapped[13] == "<0x0A>"  # raw strings: byte fallback is not decoded
    assert all("▁" not in s for s in swapped)
    assert [s.replace("Ġ", "▁") for s in swapped if "▁" in s or "Ġ" in s] == [
        s for s in raw if "▁" in s or "Ġ" in s
    ]
    assert canonical_vocab(mistral, CanonicalMode.FATE, gpt2) == swapped
    assert canonical_vocab(mistral, "fate") == raw  # the target side keeps raw strings
    assert canonical_vocab(gpt2, CanonicalMode.FATE, mistral)[gpt2.convert_tokens_to_ids(
        "Ġthe")] == "▁the"
    assert canonical_vocab(gpt2, CanonicalMode.FATE, neox) == raw_vocab(gpt2)  # same marker
    assert canonical_vocab(gpt2, "surface") == surface_vocab(gpt2)


def test_raw_vocab_matches_convert_ids_to_tokens(named: tuple[str, object]) -> None:
    _, tok = named
    assert raw_vocab(tok) == tok.convert_ids_to_tokens(list(range(len(tok))))


# --------------------------------------------------------------------------- fingerprints


def test_fingerprint_is_stable_and_sensitive() -> None:
    path = tokenizer_path("mistral")
    a, b = AutoTokenizer.from_pretrained(str(path)), AutoTokenizer.from_pretrained(str(path))
    fp = tokenizer_fingerprint(a)
    assert is_fingerprint(fp)
    assert tokenizer_fingerprint(b) == fp  # same files, another object
    assert tokenizer_fingerprint(load_tokenizer("neox")) != fp
    b.add_tokens(["zqxj-new-token"])
    assert tokenizer_fingerprint(b) != fp  # vocabulary changed
    c = AutoTokenizer.from_pretrained(str(path))
    c.add_special_tokens({"pad_token": "</s>"})  # already special: nothing changes
    assert tokenizer_fingerprint(c) == fp


def test_fingerprint_of_every_builtin_differs() -> None:
    fps = {tokenizer_fingerprint(load_tokenizer(n)) for n in BUILTINS}
    assert len(fps) == len(BUILTINS) and all(is_fingerprint(f) for f in fps)


def test_is_fingerprint_rejects_bad_values() -> None:
    assert is_fingerprint("0" * 64)
    for bad in ["0" * 63, "G" * 64, "A" * 64, "../" + "0" * 61, None, 7, "0" * 65]:
        assert not is_fingerprint(bad)
