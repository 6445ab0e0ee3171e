"""Validation of received knowledge messages: one function per message type (DESIGN §3, §9).

``validate_header`` checks a ``KnowledgeHeader`` against what the receiver expects,
``decode_sample`` turns one ``SampleKnowledge`` (a whole sample or one part of it) into a
``SampleData`` of checked numpy arrays, and ``decode_chunk`` does both for a ``KnowledgeChunk``.
Everything raises ``WireError``: ``INVALID_ARGUMENT`` for a malformed message,
``FAILED_PRECONDITION`` for a well-formed one that does not belong to this receiver.
"""

from __future__ import annotations

import math
from collections.abc import Container
from dataclasses import dataclass
from typing import Final

import numpy as np

from fedmkt.wire import codec
from fedmkt.wire.errors import WireError, precondition
from fedmkt.wire.v1 import knowledge_pb2

MAX_ID_CHARS: Final = 256  # sample ids, run ids, participant names, fingerprints
MAX_TOP_K: Final = 1024
MAX_POSITIONS: Final = 1 << 16  # positions per sample (all parts together)

LOGIT_DTYPES: Final = (codec.FLOAT16, codec.BFLOAT16, codec.FLOAT32)


@dataclass(frozen=True)
class SampleStats:
    """Per-sample alignment statistics (``AlignmentStats`` on the wire)."""

    positions: int  # student positions that received a distribution
    aligned: int  # positions whose distribution was projected from the teacher
    fallback: int  # positions that fell back to a one-hot on the true next token


@dataclass
class SampleData:
    """One validated ``SampleKnowledge``: a whole sample or one part of a split one.

    Row j of ``topk_ids``/``topk_logits`` is the distribution predicted at position
    ``position_start + j`` (over token ``position_start + j + 1``). Ids ``-1`` are padding slots;
    their logits are ``-inf`` here. Arrays may be read-only views of the message's bytes.
    """

    sample_id: str
    token_ids: np.ndarray | None  # int32 [L]; only in the first part (and optional there)
    position_start: int
    topk_ids: np.ndarray  # int32 [P, k], -1 = padding slot
    topk_logits: np.ndarray  # float32 [P, k]
    loss: float  # total NLL of the answer under the source model; NaN = not computed
    last_part: bool
    part_index: int
    stats: SampleStats | None

    @property
    def positions(self) -> int:
        """P: the number of positions (rows) this part holds."""
        return int(self.topk_ids.shape[0])


# --------------------------------------------------------------------------- header


def validate_header(
    header: knowledge_pb2.KnowledgeHeader,
    *,
    run_id: str | None = None,
    round: int | None = None,
    source: str | None = None,
    fingerprint: str | None = None,
    top_k: int | None = None,
    max_top_k: int = MAX_TOP_K,
) -> None:
    """Check a knowledge header: well formed, and equal to each expected value that is given.

    Malformed (empty/oversized ids, negative round, top_k outside [1, max_top_k]) raises
    INVALID_ARGUMENT; a value other than the expected one raises FAILED_PRECONDITION.
    """
    _check_identifier(header.run_id, "knowledge header: run_id")
    _check_identifier(header.source, "knowledge header: source")
    _check_identifier(header.tokenizer_fingerprint, "knowledge header: tokenizer_fingerprint")
    if header.round < 0:
        raise WireError(f"knowledge header: round must be >= 0, got {header.round}")
    if not 1 <= header.top_k <= max_top_k:
        raise WireError(f"knowledge header: top_k must be in [1, {max_top_k}], got {header.top_k}")
    expected = (
        ("run_id", header.run_id, run_id, "this run"),
        ("round", header.round, round, "the current round"),
        ("source", header.source, source, "the expected source"),
        ("tokenizer_fingerprint", header.tokenizer_fingerprint, fingerprint, "the tokenizer"),
        ("top_k", header.top_k, top_k, "the configured top_k"),
    )
    for field, got, want, what in expected:
        if want is not None and got != want:
            raise precondition(
                f"knowledge header: {field} {got!r} does not match {what} ({want!r})"
            )


def _check_identifier(value: str, what: str) -> None:
    if not value:
        raise WireError(f"{what} is empty")
    if len(value) > MAX_ID_CHARS:
        raise WireError(f"{what} has {len(value)} characters, at most {MAX_ID_CHARS} are accepted")
    if not value.isprintable():
        raise WireError(f"{what} {_short(value)} contains control characters")


def _short(value: str, limit: int = 40) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


# --------------------------------------------------------------------------- sample


def decode_sample(
    sample: knowledge_pb2.SampleKnowledge,
    *,
    vocab_size: int,
    top_k: int,
    known_sample_ids: Container[str] | None = None,
    max_positions: int = MAX_POSITIONS,
) -> SampleData:
    """Check one ``SampleKnowledge`` and return its contents as numpy arrays.

    ``vocab_size`` is the vocabulary of the tokenizer whose ids the message holds; ``top_k`` the
    number of slots per row; ``known_sample_ids`` (optional) the public samples this receiver
    has. Raises ``WireError`` (INVALID_ARGUMENT, or FAILED_PRECONDITION for an unknown sample id)
    naming the sample and field at fault.
    """
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    sample_id = _check_sample_id(sample.sample_id, known_sample_ids)
    where = f"sample {_short(sample_id)}"
    part_index = _check_part(sample, where)
    token_ids = _decode_token_ids(sample, where, vocab_size, max_positions)
    topk_ids = codec.decode(
        sample.topk_ids,
        expect_dtype=codec.INT32,
        expect_shape=(None, top_k),
        max_elements=max_positions * top_k,
        name=f"{where} topk_ids",
    )
    logits = codec.decode(
        sample.topk_logits,
        expect_dtype=LOGIT_DTYPES,
        expect_shape=topk_ids.shape,
        name=f"{where} topk_logits",
    )
    padding = _check_topk_ids(topk_ids, vocab_size, where)
    logits = _checked_logits(logits, padding, where, sample.topk_logits.dtype)
    positions = topk_ids.shape[0]
    _check_positions(sample, positions, token_ids, where, max_positions)
    return SampleData(
        sample_id=sample_id,
        token_ids=token_ids,
        position_start=sample.position_start,
        topk_ids=topk_ids,
        topk_logits=logits,
        loss=_check_loss(sample.loss, where),
        last_part=sample.last_part,
        part_index=part_index,
        stats=_decode_stats(sample, where, max_positions),
    )


def _check_sample_id(sample_id: str, known: Container[str] | None) -> str:
    _check_identifier(sample_id, "sample_id")
    if known is not None and sample_id not in known:
        raise precondition(f"sample {_short(sample_id)} is not a known public sample")
    return sample_id


def _check_part(sample: knowledge_pb2.SampleKnowledge, where: str) -> int:
    if sample.part_index < 0:
        raise WireError(f"{where}: part_index must be >= 0, got {sample.part_index}")
    if sample.part_index > 0 and sample.HasField("token_ids"):
        raise WireError(
            f"{where}: token_ids travel in the first part only, found in part {sample.part_index}"
        )
    return sample.part_index


def _decode_token_ids(
    sample: knowledge_pb2.SampleKnowledge, where: str, vocab_size: int, max_positions: int
) -> np.ndarray | None:
    if not sample.HasField("token_ids"):
        return None
    token_ids = codec.decode(
        sample.token_ids,
        expect_dtype=codec.INT32,
        expect_shape=(None,),
        max_elements=max_positions + 1,
        name=f"{where} token_ids",
    )
    if token_ids.size:
        low, high = int(token_ids.min()), int(token_ids.max())
        if low < 0 or high >= vocab_size:
            raise WireError(
                f"{where} token_ids: ids must be in [0, {vocab_size}), got values in "
                f"[{low}, {high}]"
            )
    return token_ids


def _check_topk_ids(ids: np.ndarray, vocab_size: int, where: str) -> np.ndarray:
    """Check ids (range, one real id per row, no repeats); return the padding mask."""
    padding = ids < 0
    if ids.size == 0:
        return padding
    low, high = int(ids.min()), int(ids.max())
    if low < -1 or high >= vocab_size:
        raise WireError(
            f"{where} topk_ids: ids must be in [-1, {vocab_size}) (-1 = padding), got values in "
            f"[{low}, {high}]"
        )
    empty_rows = np.flatnonzero(padding.all(axis=1))
    if empty_rows.size:
        raise WireError(
            f"{where} topk_ids: row {int(empty_rows[0])} has only padding (-1); "
            "every sent position needs at least one id"
        )
    if ids.shape[1] > 1:
        ordered = np.sort(ids, axis=1)
        repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
        rows = np.flatnonzero(repeated.any(axis=1))
        if rows.size:
            row = int(rows[0])
            token = int(ordered[row, 1:][repeated[row]][0])
            raise WireError(f"{where} topk_ids: row {row} lists id {token} more than once")
    return padding


def _checked_logits(
    logits: np.ndarray, padding: np.ndarray, where: str, wire_dtype: int
) -> np.ndarray:
    """float32 logits, finite at every real slot, ``-inf`` at every padding slot."""
    logits = logits.astype(np.float32, copy=False)
    bad = ~(np.isfinite(logits) | padding)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        value = float(logits[row, col])
        hint = ""
        if wire_dtype == codec.FLOAT16 and math.isinf(value):
            hint = " (float16 overflows past ±65504: send bfloat16 or float32 logits)"
        raise WireError(
            f"{where} topk_logits: non-finite value {value} at row {row}, slot {col}{hint}"
        )
    if padding.any():
        logits = np.where(padding, np.float32(-np.inf), logits)
    return logits


def _check_positions(
    sample: knowledge_pb2.SampleKnowledge,
    positions: int,
    token_ids: np.ndarray | None,
    where: str,
    max_positions: int,
) -> None:
    start = sample.position_start
    if start < 0:
        raise WireError(f"{where}: position_start must be >= 0, got {start}")
    if start + positions > max_positions:
        raise WireError(
            f"{where}: positions {start}..{start + positions - 1} exceed the limit of "
            f"{max_positions} per sample"
        )
    if positions == 0 and not (sample.part_index == 0 and sample.last_part):
        raise WireError(f"{where}: part {sample.part_index} holds no positions")
    if token_ids is not None and start + positions > token_ids.size - 1:
        raise WireError(
            f"{where}: rows predict tokens {start + 1}..{start + positions} but token_ids has "
            f"{token_ids.size} tokens (position_start + P must be <= L - 1)"
        )


def _check_loss(loss: float, where: str) -> float:
    if math.isnan(loss):
        return math.nan
    if math.isinf(loss) or loss < 0:
        raise WireError(f"{where}: loss must be finite and >= 0 (NaN = not computed), got {loss}")
    return float(loss)


def _decode_stats(
    sample: knowledge_pb2.SampleKnowledge, where: str, max_positions: int
) -> SampleStats | None:
    if not sample.HasField("stats"):
        return None
    stats = SampleStats(sample.stats.positions, sample.stats.aligned, sample.stats.fallback)
    if min(stats.positions, stats.aligned, stats.fallback) < 0:
        raise WireError(f"{where} stats: counts must be >= 0, got {stats}")
    if stats.positions > max_positions or stats.aligned + stats.fallback > stats.positions:
        raise WireError(
            f"{where} stats: aligned + fallback must be <= positions <= {max_positions}, "
            f"got {stats}"
        )
    return stats


# --------------------------------------------------------------------------- chunk


def decode_chunk(
    chunk: knowledge_pb2.KnowledgeChunk,
    *,
    vocab_size: int,
    run_id: str | None = None,
    round: int | None = None,
    source: str | None = None,
    fingerprint: str | None = None,
    top_k: int | None = None,
    known_sample_ids: Container[str] | None = None,
    max_positions: int = MAX_POSITIONS,
) -> list[SampleData]:
    """Validate a chunk's header (against the given expectations) and decode its samples.

    ``top_k=None`` accepts the header's own top_k (after checking it is in range).
    """
    if not chunk.HasField("header"):
        raise WireError("knowledge chunk has no header")
    validate_header(
        chunk.header,
        run_id=run_id,
        round=round,
        source=source,
        fingerprint=fingerprint,
        top_k=top_k,
    )
    return [
        decode_sample(
            sample,
            vocab_size=vocab_size,
            top_k=chunk.header.top_k,
            known_sample_ids=known_sample_ids,
            max_positions=max_positions,
        )
        for sample in chunk.samples
    ]
