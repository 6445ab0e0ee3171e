"""Tokenizer fingerprints: a sha256 that names a vocabulary, not a file or a class.

Two tokenizers get the same fingerprint iff they have the same raw token strings, the same
surface strings (what each token decodes to) and the same special ids. Knowledge chunks carry
the fingerprint so a receiver can reject knowledge made with another vocabulary, and vocab maps
are cached under the fingerprints of their two tokenizers.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from typing import Any

from fedmkt.align.canonical import raw_vocab, surface_vocab

FINGERPRINT_HEX_LENGTH = 64

_CACHE: weakref.WeakKeyDictionary[Any, tuple[int, str]] = weakref.WeakKeyDictionary()


def canonical_vocab_document(tokenizer: Any) -> bytes:
    """The bytes that are hashed: canonical JSON of raw strings, surface strings, special ids.

    Sorted keys, no spaces, ``ensure_ascii=False``. Surface strings may hold lone surrogates
    (partial UTF-8 byte tokens, see :mod:`fedmkt.align.canonical`); the document is encoded with
    ``surrogatepass``, which writes each of them as its own fixed 3-byte sequence — deterministic,
    and never equal to the encoding of a real character.
    """
    special = sorted({int(i) for i in getattr(tokenizer, "all_special_ids", [])})
    document = {"raw": raw_vocab(tokenizer), "surface": surface_vocab(tokenizer),
                "special": special}
    text = json.dumps(document, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8", errors="surrogatepass")


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 hex (64 characters) of :func:`canonical_vocab_document`; cached per object."""
    try:
        hit = _CACHE.get(tokenizer)
    except TypeError:
        hit = None
    if hit is not None and hit[0] == len(tokenizer):
        return hit[1]
    digest = hashlib.sha256(canonical_vocab_document(tokenizer)).hexdigest()
    try:
        _CACHE[tokenizer] = (len(tokenizer), digest)
    except TypeError:
        pass
    return digest


def is_fingerprint(value: object) -> bool:
    """True for a 64-character lowercase hex string (safe to use in a file name)."""
    return (
        isinstance(value, str)
        and len(value) == FINGERPRINT_HEX_LENGTH
        and all(c in "0123456789abcdef" for c in value)
    )
