"""Canonical token strings: what each vocabulary entry of a tokenizer stands for (DESIGN §4).

Two ways to name a token:

* ``surface`` — the text the token contributes when decoded. Byte-level ``Ġ``/``Ċ``,
  SentencePiece ``▁`` and byte-fallback ``<0x0A>`` all become the real characters. The strings
  are derived from the tokenizer's own decoder pipeline (``tokenizer.backend_tokenizer``), so any
  Hugging Face fast tokenizer works without a table of known classes. A token that stands for
  bytes that are not valid UTF-8 on their own (a piece of a multi-byte character) is turned into
  a ``str`` with ``errors="surrogateescape"``: every byte token keeps a distinct, exact string.
* ``fate`` — the reference behaviour of FATE-LLM's FedMKT: raw token strings
  (``convert_ids_to_tokens``) with the source tokenizer's word-boundary marker replaced by the
  target's marker; target strings stay raw.
"""

from __future__ import annotations

import json
import logging
import re
import weakref
from collections.abc import Callable
from enum import StrEnum
from typing import Any

log = logging.getLogger(__name__)

BYTE_LEVEL_MARKER = "Ġ"
METASPACE_MARKER = "▁"

Piece = str | bytes
"""One token during decoding: text, or bytes once a byte-producing decoder step has run."""
Step = Callable[[list[Piece]], list[Piece]]


class CanonicalMode(StrEnum):
    """How token strings are compared when building a vocabulary map."""

    SURFACE = "surface"
    FATE = "fate"


class UnsupportedDecoderError(ValueError):
    """A decoder component we cannot apply token by token (the anchor fallback is used)."""


# --------------------------------------------------------------------------- raw tokens


def raw_vocab(tokenizer: Any) -> list[str]:
    """The raw token string of every id in ``range(len(tokenizer))`` ("" for an unused id)."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return [t if isinstance(t, str) else "" for t in tokens]


def added_token_contents(tokenizer: Any) -> dict[int, str]:
    """Added and special tokens by id: their literal content."""
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return {int(i): str(getattr(t, "content", t)) for i, t in decoder.items()}


# --------------------------------------------------------------------------- decoder steps


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character table used by byte-level BPE."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_LEVEL_ALPHABET = _bytes_to_unicode()
# Translating a byte-level token with this table gives one latin-1 character per byte.
_BYTE_LEVEL_TO_LATIN1 = str.maketrans({c: chr(b) for b, c in _BYTE_LEVEL_ALPHABET.items()})
_NOT_BYTE_LEVEL = re.compile(
    "[^" + "".join(re.escape(c) for c in _BYTE_LEVEL_ALPHABET.values()) + "]"
)
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_level(pieces: list[Piece]) -> list[Piece]:
    """Byte-level characters → the bytes they encode; a token with any other character is kept
    as its UTF-8 bytes (what the Rust ``ByteLevel`` decoder does)."""
    out: list[Piece] = []
    for p in pieces:
        if isinstance(p, bytes):
            out.append(p)
        elif _NOT_BYTE_LEVEL.search(p):
            out.append(p.encode("utf-8"))
        else:
            out.append(p.translate(_BYTE_LEVEL_TO_LATIN1).encode("latin-1"))
    return out


def _byte_fallback(pieces: list[Piece]) -> list[Piece]:
    """``<0xHH>`` tokens → the single byte HH."""
    out: list[Piece] = []
    for p in pieces:
        if isinstance(p, str) and len(p) == 6 and p.startswith("<0x"):
            m = _BYTE_FALLBACK.fullmatch(p)
            out.append(bytes([int(m.group(1), 16)]) if m else p)
        else:
            out.append(p)
    return out


def _replace_step(pattern: dict[str, str], content: str) -> Step:
    if "String" in pattern:
        old = pattern["String"]

        def replace_string(pieces: list[Piece]) -> list[Piece]:
            old_b, new_b = old.encode("utf-8"), content.encode("utf-8")
            return [
                p.replace(old, content) if isinstance(p, str) else p.replace(old_b, new_b)
                for p in pieces
            ]

        return replace_string
    if "Regex" in pattern:
        try:
            regex = re.compile(pattern["Regex"])
        except re.error as exc:
            raise UnsupportedDecoderError(f"Replace regex {pattern['Regex']!r}: {exc}") from exc

        def replace_regex(pieces: list[Piece]) -> list[Piece]:
            texts = (p if isinstance(p, str) else p.decode("utf-8", "surrogateescape")
                     for p in pieces)
            return [regex.sub(lambda _: content, t) for t in texts]  # content is literal

        return replace_regex
    raise UnsupportedDecoderError(f"Replace pattern {pattern!r}")


def _metaspace_step(replacement: str) -> Step:
    def metaspace(pieces: list[Piece]) -> list[Piece]:
        return [p.replace(replacement, " ") if isinstance(p, str) else p for p in pieces]

    return metaspace


def _wordpiece_step(prefix: str) -> Step:
    """Continuation tokens (``##x``) lose the prefix; other tokens start a word: a space."""

    def wordpiece(pieces: list[Piece]) -> list[Piece]:
        out: list[Piece] = []
        for p in pieces:
            if isinstance(p, bytes):
                out.append(p)
            elif p.startswith(prefix):
                out.append(p[len(prefix):])
            else:
                out.append(" " + p)
        return out

    return wordpiece


def _suffix_step(suffix: str) -> Step:
    def bpe_suffix(pieces: list[Piece]) -> list[Piece]:
        return [p.replace(suffix, " ") if isinstance(p, str) else p for p in pieces]

    return bpe_suffix


def _identity(pieces: list[Piece]) -> list[Piece]:
    return pieces


def _compile_decoder(config: dict[str, Any] | None) -> list[Step]:
    """The per-token steps of a ``tokenizers`` decoder config, in order.

    Sequence-level components (``Fuse``, ``Strip``, WordPiece ``cleanup``) do not change what
    a single token stands for inside a text and are skipped.
    """
    if config is None:
        return []
    kind = config.get("type")
    if kind == "Sequence":
        return [step for sub in config.get("decoders", []) for step in _compile_decoder(sub)]
    if kind == "ByteLevel":
        return [_byte_level]
    if kind == "ByteFallback":
        return [_byte_fallback]
    if kind == "Replace":
        return [_replace_step(config["pattern"], config.get("content", ""))]
    if kind == "Metaspace":
        return [_metaspace_step(config.get("replacement", METASPACE_MARKER))]
    if kind == "WordPiece":
        return [_wordpiece_step(config.get("prefix", "##"))]
    if kind == "BPEDecoder":
        return [_suffix_step(config.get("suffix", "</w>"))]
    if kind in ("Fuse", "Strip"):
        return [_identity]
    raise UnsupportedDecoderError(f"decoder component {kind!r}")


PIPELINE_PARTS = ("decoder", "pre_tokenizer", "normalizer")


def pipeline_config(tokenizer: Any) -> dict[str, Any] | None:
    """The decoder, pre-tokenizer and normalizer configs of a fast tokenizer (None: slow).

    Read component by component (their JSON state); the whole ``tokenizer.json`` with its
    vocabulary is only parsed when that is not possible.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        config: dict[str, Any] = {}
        for part in PIPELINE_PARTS:
            component = getattr(backend, part)
            config[part] = None if component is None else json.loads(component.__getstate__())
        return config
    except (AttributeError, TypeError, ValueError):
        pass
    try:
        full = json.loads(backend.to_str())
    except (AttributeError, TypeError, ValueError):
        return None
    return {part: full.get(part) for part in PIPELINE_PARTS}


# --------------------------------------------------------------------------- surface strings


def _surface_from_decoder(tokenizer: Any, config: dict[str, Any]) -> list[str]:
    steps = _compile_decoder(config.get("decoder"))
    pieces: list[Piece] = list(raw_vocab(tokenizer))
    for step in steps:
        pieces = step(pieces)
    return [p.decode("utf-8", "surrogateescape") if isinstance(p, bytes) else p for p in pieces]


def _surface_by_anchor(tokenizer: Any) -> list[str]:
    """Fallback: ``decode([anchor, id])`` minus ``decode([anchor])`` for every id.

    The anchor (the token of "a"; of "b" for the anchor itself, so that a decoder that merges
    repeats cannot swallow it) keeps a leading space of the decoded token from being stripped
    as a sequence start. Bytes that are not valid UTF-8 alone come back as U+FFFD, so partial
    byte tokens are not distinct here; this path is slow (one decode per id) and only used for
    slow tokenizers or decoder components we cannot apply per token.
    """
    n = len(tokenizer)

    def last_id(text: str, default: int) -> int:
        ids = tokenizer.encode(text, add_special_tokens=False)
        return int(ids[-1]) if ids else default

    def decode(seq: list[int]) -> str:
        return tokenizer.decode(seq, skip_special_tokens=False,
                                clean_up_tokenization_spaces=False)

    first = last_id("a", 0)
    second = last_id("b", (first + 1) % n)
    if second == first:
        second = (first + 1) % n
    prefixes = {first: decode([first]), second: decode([second])}
    out = []
    for i in range(n):
        anchor = second if i == first else first
        text, prefix = decode([anchor, i]), prefixes[anchor]
        out.append(text[len(prefix):] if text.startswith(prefix) else decode([i]))
    return out


_SURFACE_CACHE: weakref.WeakKeyDictionary[Any, tuple[int, list[str]]] = (
    weakref.WeakKeyDictionary()
)


def _cached(tokenizer: Any, compute: Callable[[Any], list[str]],
            cache: weakref.WeakKeyDictionary[Any, tuple[int, list[str]]]) -> list[str]:
    """``compute(tokenizer)``, remembered per tokenizer object while its size is unchanged."""
    try:
        hit = cache.get(tokenizer)
    except TypeError:  # not weak-referenceable / not hashable: no caching
        return compute(tokenizer)
    if hit is not None and hit[0] == len(tokenizer):
        return list(hit[1])
    value = compute(tokenizer)
    cache[tokenizer] = (len(tokenizer), value)
    return list(value)


def _compute_surface(tokenizer: Any) -> list[str]:
    config = pipeline_config(tokenizer)
    surface: list[str] | None = None
    if config is not None:
        try:
            surface = _surface_from_decoder(tokenizer, config)
        except UnsupportedDecoderError as exc:
            log.warning("%s; decoding every token with an anchor instead (slower)", exc)
    if surface is None:
        surface = _surface_by_anchor(tokenizer)
    for i, content in added_token_contents(tokenizer).items():
        if 0 <= i < len(surface):
            surface[i] = content
    return surface


def surface_vocab(tokenizer: Any) -> list[str]:
    """For every id in ``range(len(tokenizer))``, the text the token contributes when decoded.

    Added and special tokens are their content as is. Partial UTF-8 byte tokens are exact and
    distinct (``surrogateescape``). Cached per tokenizer object.
    """
    return _cached(tokenizer, _compute_surface, _SURFACE_CACHE)


# --------------------------------------------------------------------------- markers, fate mode


def _marker_in(config: dict[str, Any] | None) -> str | None:
    """The word-boundary marker a decoder / pre-tokenizer / normalizer config implies."""
    if not config:
        return None
    kind = config.get("type")
    if kind == "ByteLevel":
        return BYTE_LEVEL_MARKER
    if kind == "Metaspace":
        return str(config.get("replacement", METASPACE_MARKER))
    if kind == "Replace":
        pattern = config.get("pattern", {})
        old, new = pattern.get("String"), config.get("content")
        if old is not None and (old, new) in (("▁", " "), (" ", "▁")):
            return METASPACE_MARKER
        return None
    for key in ("decoders", "pretokenizers", "normalizers"):
        for sub in config.get(key) or []:
            found = _marker_in(sub)
            if found is not None:
                return found
    return None


def word_boundary_marker(tokenizer: Any) -> str:
    """"Ġ" for byte-level BPE, "▁" for SentencePiece/Metaspace style, "" when there is none.

    Derived from the decoder, then the pre-tokenizer, then the normalizer of the fast
    tokenizer's config; for a slow tokenizer, from how it tokenizes " a".
    """
    config = pipeline_config(tokenizer)
    if config is not None:
        for key in ("decoder", "pre_tokenizer", "normalizer"):
            found = _marker_in(config.get(key))
            if found is not None:
                return found
        return ""
    pieces = tokenizer.tokenize("x a")
    last = pieces[-1] if pieces else ""
    return last[0] if len(last) == 2 and last.endswith("a") and not last[0].isalnum() else ""


def fate_vocab(tokenizer: Any, counterpart_marker: str) -> list[str]:
    """Raw token strings with this tokenizer's word-boundary marker replaced by
    ``counterpart_marker`` (FATE-LLM's ``x.replace(blending_marker, base_marker)``).

    A tokenizer without a marker keeps its raw strings (the reference has no entry for it).
    """
    raw = raw_vocab(tokenizer)
    own = word_boundary_marker(tokenizer)
    if not own or own == counterpart_marker:
        return raw
    return [t.replace(own, counterpart_marker) for t in raw]


def canonical_vocab(tokenizer: Any, mode: CanonicalMode | str,
                    counterpart: Any | None = None) -> list[str]:
    """The canonical string of every id of ``tokenizer`` in ``mode``.

    In fate mode, a source vocabulary takes the counterpart (target) tokenizer's marker; with
    ``counterpart=None`` (the target side) the raw strings are returned.
    """
    mode = CanonicalMode(mode)
    if mode is CanonicalMode.SURFACE:
        return surface_vocab(tokenizer)
    if counterpart is None:
        return raw_vocab(tokenizer)
    return fate_vocab(tokenizer, word_boundary_marker(counterpart))
