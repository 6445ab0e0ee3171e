"""``TokenAligner``: sequence alignment and top-k projection between two tokenizers.

The object the aligner service and the CLI use. Built once per (source, target, mode, method) —
it precomputes both canonical vocabularies and the MinED vocabulary map source → target — and
then aligns any number of samples. The other direction is another aligner built the other way
round.

Canonical strings (DESIGN §4): in ``surface`` mode, the text each token stands for; in ``fate``
mode the reference's strings — source tokens raw with their word-boundary marker swapped for the
target's, target tokens raw — and, as in the reference, DTW costs are computed on those strings
with the marker removed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedmkt.align.canonical import (
    CanonicalMode,
    canonical_vocab,
    surface_vocab,
    word_boundary_marker,
)
from fedmkt.align.projection import Projection, project_topk, reached_rows
from fedmkt.align.sequence import Path, dtw_align, offsets_align
from fedmkt.align.vocab_map import vocab_map_for
from fedmkt.errors import InvalidArgument

METHODS = ("dtw", "offsets")
_SURROGATE = re.compile("[\ud800-\udfff]")


def printable_token(token: str) -> str:
    """``token`` as valid Unicode for protobuf and JSON: each escaped byte of a partial UTF-8
    token (a lone surrogate U+DC80..U+DCFF, from ``surrogateescape``) becomes ``<0xHH>``, any
    other lone surrogate U+FFFD."""
    return _SURROGATE.sub(_printable_char, token)


def _printable_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"<0x{code - 0xDC00:02X}>" if 0xDC80 <= code <= 0xDCFF else "\ufffd"


@dataclass(frozen=True)
class TextAlignment:
    """Both tokenizations of one text and how they align.

    ``source_tokens`` / ``target_tokens`` are the canonical strings of the tokens (surface strings
    may hold lone surrogates for tokens that are partial UTF-8 bytes: pass them through
    :func:`printable_token` before putting them in a protobuf or JSON message). ``path`` pairs
    ``(source index, target index)``. ``source_offsets`` / ``target_offsets`` are the tokenizer's
    character spans when the offsets method was used, else None.
    """

    source_ids: list[int]
    target_ids: list[int]
    source_tokens: list[str]
    target_tokens: list[str]
    path: Path
    source_offsets: list[tuple[int, int]] | None = None
    target_offsets: list[tuple[int, int]] | None = None


class _Side:
    """What the aligner keeps about one tokenizer: canonical strings and byte lengths by id."""

    def __init__(self, tokenizer: Any, canonical: list[str], dtw_strings: list[str]) -> None:
        self.tokenizer = tokenizer
        self.size = len(canonical)
        self.canonical = np.asarray(canonical, dtype=object)
        self.dtw = self.canonical if dtw_strings is canonical else np.asarray(dtw_strings,
                                                                               dtype=object)
        # The bytes each token contributes to the decoded text; special tokens contribute none.
        pieces = [s.encode("utf-8", "surrogateescape") for s in surface_vocab(tokenizer)]
        for special in getattr(tokenizer, "all_special_ids", None) or []:
            if 0 <= special < len(pieces):
                pieces[special] = b""
        self.text_bytes = np.asarray(pieces + [b""] * (self.size - len(pieces)), dtype=object)

    def ids(self, values: Sequence[int] | np.ndarray, name: str) -> np.ndarray:
        array = np.asarray(values)
        if array.size == 0:
            return np.zeros(0, dtype=np.int64)
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
            raise InvalidArgument(f"{name} must be a 1-D list of token ids")
        if array.min() < 0 or array.max() >= self.size:
            raise InvalidArgument(
                f"{name} out of range: ids in [{array.min()}, {array.max()}] but the tokenizer "
                f"has {self.size} ids"
            )
        return array.astype(np.int64, copy=False)


class TokenAligner:
    """Aligns tokenizations and projects top-k knowledge from ``source`` onto ``target``.

    ``vocab_map`` (int32 ``[source size]``, target id per source id) is computed with
    :func:`fedmkt.align.vocab_map.vocab_map_for` (using ``cache``) when not given.
    ``method`` is ``"dtw"`` (the paper's DTW on canonical strings) or ``"offsets"`` (the spans
    of text each token covers; exact, linear; DTW where the two sides spell different texts).
    ``max_dtw_cells`` bounds every DTW it runs, counted in tokens after tokenizing (source
    tokens x target tokens, 8 bytes of memory each): a pair over it is refused with
    ``InvalidArgument`` before any cell is computed; None = no bound.
    """

    def __init__(self, source_tokenizer: Any, target_tokenizer: Any,
                 mode: CanonicalMode | str = CanonicalMode.SURFACE, method: str = "dtw",
                 vocab_map: np.ndarray | None = None, cache: Any | None = None,
                 max_dtw_cells: int | None = None) -> None:
        if method not in METHODS:
            raise InvalidArgument(f"alignment method must be one of {METHODS}, got {method!r}")
        self.mode = CanonicalMode(mode)
        self.method = method
        self.max_dtw_cells = max_dtw_cells
        source = canonical_vocab(source_tokenizer, self.mode, counterpart=target_tokenizer)
        target = canonical_vocab(target_tokenizer, self.mode)
        source_dtw, target_dtw = source, target
        if self.mode is CanonicalMode.FATE:
            # The reference's DTW cost: edit distance with both markers removed. Source strings
            # already carry the target's marker.
            marker = word_boundary_marker(target_tokenizer)
            if marker:
                source_dtw = [s.replace(marker, "") for s in source]
                target_dtw = [t.replace(marker, "") for t in target]
        self.source = _Side(source_tokenizer, source, source_dtw)
        self.target = _Side(target_tokenizer, target, target_dtw)
        if vocab_map is None:
            vocab_map = vocab_map_for(source_tokenizer, target_tokenizer, self.mode,
                                      cache=cache).source_to_target
        self.vocab_map = self._checked_map(vocab_map)

    def _checked_map(self, vocab_map: np.ndarray) -> np.ndarray:
        array = np.asarray(vocab_map)
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
            raise InvalidArgument("vocab_map must be a 1-D integer array")
        if len(array) != self.source.size:
            raise InvalidArgument(
                f"vocab_map has {len(array)} entries for a source vocabulary of {self.source.size}"
            )
        if array.size and (array.min() < -1 or array.max() >= self.target.size):
            raise InvalidArgument(
                f"vocab_map values must be target ids in [0, {self.target.size}) or -1"
            )
        return array

    # -- alignment ----------------------------------------------------------------------
    def align_ids(self, source_ids: Sequence[int] | np.ndarray,
                  target_ids: Sequence[int] | np.ndarray) -> Path:
        """The path ``[(source index, target index), ...]`` between two tokenizations.

        With the offsets method, spans come from the bytes each token contributes to the text
        (special tokens contribute none). If the two sequences do not spell the same text —
        not even up to a prefix one of them has more, like SentencePiece's leading space — this
        falls back to DTW.
        """
        src = self.source.ids(source_ids, "source_ids")
        tgt = self.target.ids(target_ids, "target_ids")
        return self._path(src, tgt)

    def _path(self, src: np.ndarray, tgt: np.ndarray) -> Path:
        if self.method == "offsets":
            spans = _byte_spans(self.source.text_bytes[src], self.target.text_bytes[tgt])
            if spans is not None:
                return offsets_align(*spans)
        return self._dtw(src, tgt)

    def _dtw(self, src: np.ndarray, tgt: np.ndarray) -> Path:
        """DTW between two id sequences, refused when it would pass ``max_dtw_cells``."""
        cells = len(src) * len(tgt)
        if self.max_dtw_cells is not None and cells > self.max_dtw_cells:
            why = ("" if self.method == "dtw" else
                   " (the offsets method falls back to DTW because the two tokenizations do "
                   "not spell the same text)")
            raise InvalidArgument(
                f"{len(src)} x {len(tgt)} tokens is too long for DTW{why}: {cells:,} cells, the "
                f"limit is {self.max_dtw_cells:,}; send shorter texts"
                + (", or use the offsets alignment method" if self.method == "dtw" else "")
            )
        return dtw_align(self.source.dtw[src].tolist(), self.target.dtw[tgt].tolist())

    def align_text(self, text: str) -> TextAlignment:
        """Tokenize ``text`` with both tokenizers (no special tokens) and align the results.

        With the offsets method the spans are the bytes each token contributes (exact even for
        tokens that hold part of a character); if a tokenizer normalizes the text so that the two
        tokenizations spell different bytes, the tokenizers' character offsets are used instead.
        """
        if not isinstance(text, str):
            raise InvalidArgument("text must be a string")
        offsets = self.method == "offsets"
        src, src_offsets = _tokenize(self.source.tokenizer, text, offsets)
        tgt, tgt_offsets = _tokenize(self.target.tokenizer, text, offsets)
        src_ids = self.source.ids(src, "source_ids")
        tgt_ids = self.target.ids(tgt, "target_ids")
        spans = None
        if offsets:
            spans = _byte_spans(self.source.text_bytes[src_ids], self.target.text_bytes[tgt_ids])
            if spans is None and src_offsets is not None and tgt_offsets is not None:
                spans = (src_offsets, tgt_offsets)
        if spans is not None:
            path = offsets_align(*spans)
        else:
            path = self._dtw(src_ids, tgt_ids)
        return TextAlignment(
            source_ids=src_ids.tolist(), target_ids=tgt_ids.tolist(),
            source_tokens=self.source.canonical[src_ids].tolist(),
            target_tokens=self.target.canonical[tgt_ids].tolist(),
            path=path, source_offsets=src_offsets, target_offsets=tgt_offsets,
        )

    # -- projection ---------------------------------------------------------------------
    def project(self, source_ids: Sequence[int] | np.ndarray,
                target_ids: Sequence[int] | np.ndarray, topk_ids: np.ndarray,
                topk_logits: np.ndarray, position_start: int, k_out: int) -> Projection:
        """Project the source's top-k rows (positions ``position_start ..``) onto the target.

        See :mod:`fedmkt.align.projection` for the rule. Raises ``InvalidArgument`` on bad input.
        """
        src = self.source.ids(source_ids, "source_ids")
        tgt = self.target.ids(target_ids, "target_ids")
        path = self._path(src, tgt)
        try:
            projection = project_topk(
                src, tgt, topk_ids, topk_logits, position_start, path, self.vocab_map,
                self.source.canonical[src], self.target.canonical[tgt], k_out,
            )
        except InvalidArgument:
            raise
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from exc
        return projection.within(reached_rows(path, position_start, len(topk_ids), len(tgt)))


def _tokenize(tokenizer: Any, text: str,
              with_offsets: bool) -> tuple[list[int], list[tuple[int, int]] | None]:
    """Token ids without special tokens, and character spans when asked and available."""
    if with_offsets and getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(encoded["input_ids"]), [tuple(s) for s in encoded["offset_mapping"]]
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]), None


def _byte_spans(source: np.ndarray, target: np.ndarray
                ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]] | None:
    """Byte spans of two token sequences that spell the same text, else None.

    When one text is the other with a prefix added (a SentencePiece leading space, say), the
    other side's spans are shifted past that prefix so that both index the longer text.
    """
    src_text, tgt_text = b"".join(source), b"".join(target)
    if not src_text.endswith(tgt_text) and not tgt_text.endswith(src_text):
        return None
    src_shift = max(len(tgt_text) - len(src_text), 0)
    tgt_shift = max(len(src_text) - len(tgt_text), 0)
    return _spans(source, src_shift), _spans(target, tgt_shift)


def _spans(pieces: np.ndarray, shift: int) -> list[tuple[int, int]]:
    ends = np.cumsum([len(p) for p in pieces], dtype=np.int64) + shift
    starts = np.concatenate(([shift], ends[:-1])) if len(ends) else ends
    return list(zip(starts.tolist(), ends.tolist(), strict=True))
