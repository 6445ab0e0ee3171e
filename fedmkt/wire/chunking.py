"""Knowledge streams: samples packed into ``KnowledgeChunk`` messages, and put back together.

A sender turns an iterable of ``KnowledgeSample`` into chunks with ``chunk_knowledge``: whole
samples are packed into a chunk until the next one would push it past ``max_bytes`` (1 MiB by
default, well under gRPC's 4 MiB receive limit); a sample too big for a chunk of its own is split
by position into parts, each in its own chunk. A receiver validates each chunk
(``fedmkt.wire.validate.decode_chunk``) and feeds the parts to a ``SampleAssembler``, which hands
back whole samples in stream order; ``iter_samples`` does both.

Wire layout of a split sample (see knowledge.proto): ``token_ids`` travel in part 0 only;
``loss`` and ``stats`` are repeated on every part; parts are numbered by ``part_index`` and
cover consecutive positions; the final part has ``last_part = True``.
"""

from __future__ import annotations

import math
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from fedmkt.wire import codec
from fedmkt.wire.errors import WireError
from fedmkt.wire.v1 import knowledge_pb2
from fedmkt.wire.validate import MAX_POSITIONS, SampleData, SampleStats, decode_chunk

DEFAULT_MAX_BYTES: Final = 1 << 20  # 1 MiB per chunk
_MIN_MAX_BYTES: Final = 1024
_PART_SLACK: Final = 40  # bytes a part may grow by beyond its rows: varints of sizes, last_part


@dataclass
class KnowledgeSample:
    """The top-k knowledge of one public sample, whole.

    Row j of ``topk_ids``/``topk_logits`` is the distribution predicted at position
    ``position_start + j``, i.e. over token ``position_start + j + 1`` of ``token_ids``.
    Ids ``-1`` are padding slots (received samples hold ``-inf`` logits there).
    """

    sample_id: str
    token_ids: np.ndarray | None  # int32 [L], the source tokenization; None if not sent
    topk_ids: np.ndarray  # int32 [P, k]
    topk_logits: np.ndarray  # float32 or float16 [P, k]
    position_start: int = 0
    loss: float = math.nan  # total NLL of the answer under the source model; NaN = not computed
    stats: SampleStats | None = None

    @property
    def positions(self) -> int:
        """P: the number of positions that carry a distribution."""
        return int(self.topk_ids.shape[0])

    @property
    def top_k(self) -> int:
        return int(self.topk_ids.shape[1])


# --------------------------------------------------------------------------- sizes


def varint_size(value: int) -> int:
    """Bytes protobuf uses to encode a non-negative ``value`` as a varint."""
    return max(1, (value.bit_length() + 6) // 7)


def entry_size(message_size: int) -> int:
    """Bytes a sub-message of ``message_size`` bytes adds to its parent (fields 1..15)."""
    return 1 + varint_size(message_size) + message_size


def header_overhead(header: knowledge_pb2.KnowledgeHeader) -> int:
    """Bytes of a chunk that holds ``header`` and no samples."""
    return entry_size(header.ByteSize())


# --------------------------------------------------------------------------- sender


def chunk_knowledge(
    samples: Iterable[KnowledgeSample],
    header: knowledge_pb2.KnowledgeHeader | Mapping[str, Any],
    *,
    logit_dtype: codec.DTypeLike = "float16",
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Iterator[knowledge_pb2.KnowledgeChunk]:
    """Chunks of at most ``max_bytes`` serialized bytes carrying ``samples`` in order.

    ``header`` (a KnowledgeHeader or a mapping of its fields) is copied into every chunk; its
    ``top_k`` must equal every sample's k. Logits are sent as ``logit_dtype``. Samples are read
    one at a time: the stream is never held whole. Raises ``ValueError`` for a malformed sample or
    one whose single position (or whose token_ids) cannot fit in ``max_bytes``.
    """
    header_pb = _as_header(header)
    logit_wire = codec.resolve_dtype(logit_dtype)
    if logit_wire not in codec.FLOAT_DTYPES:
        raise ValueError(f"logit_dtype must be a float dtype, got {codec.dtype_name(logit_wire)}")
    overhead = header_overhead(header_pb)
    if max_bytes < max(_MIN_MAX_BYTES, overhead + _PART_SLACK):
        raise ValueError(f"max_bytes={max_bytes} is too small for a knowledge chunk")
    budget = max_bytes - overhead  # for the sample entries of one chunk
    chunk, size = knowledge_pb2.KnowledgeChunk(header=header_pb), overhead
    for sample in samples:
        _check_sample(sample, header_pb.top_k)
        for part in _sample_parts(sample, logit_wire, budget):
            added = entry_size(part.ByteSize())
            if size + added > max_bytes and chunk.samples:
                yield chunk
                chunk, size = knowledge_pb2.KnowledgeChunk(header=header_pb), overhead
            chunk.samples.append(part)
            size += added
    if chunk.samples:
        yield chunk


def _as_header(
    header: knowledge_pb2.KnowledgeHeader | Mapping[str, Any],
) -> knowledge_pb2.KnowledgeHeader:
    if isinstance(header, knowledge_pb2.KnowledgeHeader):
        copy = knowledge_pb2.KnowledgeHeader()
        copy.CopyFrom(header)
        return copy
    return knowledge_pb2.KnowledgeHeader(**dict(header))


def _check_sample(sample: KnowledgeSample, top_k: int) -> None:
    ids, logits = sample.topk_ids, sample.topk_logits
    name = f"sample {sample.sample_id!r}"
    if len(ids.shape) != 2 or tuple(ids.shape) != tuple(logits.shape):
        raise ValueError(
            f"{name}: topk_ids {tuple(ids.shape)} and topk_logits {tuple(logits.shape)} must "
            "have the same [P, k] shape"
        )
    if ids.shape[1] != top_k:
        raise ValueError(f"{name}: k = {ids.shape[1]} but the header says top_k = {top_k}")
    if sample.token_ids is not None and len(sample.token_ids.shape) != 1:
        shape = tuple(sample.token_ids.shape)
        raise ValueError(f"{name}: token_ids must be 1-D, got shape {shape}")
    if sample.position_start < 0:
        raise ValueError(f"{name}: position_start must be >= 0, got {sample.position_start}")


def _sample_parts(
    sample: KnowledgeSample, logit_dtype: int, budget: int
) -> Iterator[knowledge_pb2.SampleKnowledge]:
    """The sample as one part if it fits ``budget`` bytes of chunk, else as several."""
    positions = sample.positions
    row_bytes = sample.top_k * (4 + codec.itemsize(logit_dtype))
    tokens = 0 if sample.token_ids is None else int(sample.token_ids.shape[0])
    if positions * row_bytes + tokens * 4 + _PART_SLACK < budget:
        whole = _build_part(sample, 0, positions, 0, logit_dtype)
        if entry_size(whole.ByteSize()) <= budget:
            yield whole
            return
    if positions == 0:
        raise ValueError(
            f"sample {sample.sample_id!r}: its {tokens} token_ids need more than the {budget} "
            "bytes a chunk has room for; raise max_bytes"
        )
    start, index = 0, 0
    while start < positions:
        stop = _fit_rows(sample, start, index, logit_dtype, budget, row_bytes)
        part = _build_part(sample, start, stop, index, logit_dtype)
        if entry_size(part.ByteSize()) > budget:  # _PART_SLACK covers every varint's growth
            raise AssertionError(f"part of {entry_size(part.ByteSize())} bytes > {budget}")
        yield part
        start, index = stop, index + 1


def _fit_rows(
    sample: KnowledgeSample, start: int, index: int, logit_dtype: int, budget: int, row_bytes: int
) -> int:
    """The end row of the part that starts at row ``start``: as many rows as fit ``budget``."""
    empty = entry_size(_build_part(sample, start, start, index, logit_dtype).ByteSize())
    rows = min(sample.positions - start, (budget - empty - _PART_SLACK) // row_bytes)
    if rows < 1:
        what = "its token_ids and one position" if index == 0 else "one position"
        raise ValueError(
            f"sample {sample.sample_id!r}: {what} need more than the {budget} bytes a chunk "
            "has room for; raise max_bytes"
        )
    return start + rows


def _build_part(
    sample: KnowledgeSample, start: int, stop: int, index: int, logit_dtype: int
) -> knowledge_pb2.SampleKnowledge:
    """Rows [start, stop) of ``sample`` as part ``index`` (token_ids only in part 0)."""
    name = f"sample {sample.sample_id!r}"
    part = knowledge_pb2.SampleKnowledge(
        sample_id=sample.sample_id,
        position_start=sample.position_start + start,
        topk_ids=codec.encode(sample.topk_ids[start:stop], "int32", name=f"{name} topk_ids"),
        topk_logits=codec.encode(
            sample.topk_logits[start:stop], logit_dtype, name=f"{name} topk_logits"
        ),
        loss=sample.loss,
        last_part=stop == sample.positions,
        part_index=index,
    )
    if index == 0 and sample.token_ids is not None:
        part.token_ids.CopyFrom(codec.encode(sample.token_ids, "int32", name=f"{name} token_ids"))
    if sample.stats is not None:
        stats = sample.stats
        part.stats.CopyFrom(
            knowledge_pb2.AlignmentStats(
                positions=stats.positions, aligned=stats.aligned, fallback=stats.fallback
            )
        )
    return part


# --------------------------------------------------------------------------- receiver


class SampleAssembler:
    """Puts validated parts (``SampleData``) back into whole ``KnowledgeSample`` objects.

    Parts must arrive in stream order: a sample's parts consecutively, numbered from 0, covering
    consecutive positions. Only the sample being assembled is held (plus the ids of finished
    samples, to reject one sent twice). Anything else raises ``WireError`` (INVALID_ARGUMENT)
    and resets the assembler; the stream should then be abandoned.
    Returned arrays are writable and owned: int32 ids, float32 logits.
    """

    def __init__(self, *, max_positions: int = MAX_POSITIONS, reject_duplicates: bool = True):
        self.max_positions = max_positions
        self._done: set[str] | None = set() if reject_duplicates else None
        self._parts: list[SampleData] = []
        self._positions = 0

    @property
    def pending(self) -> str | None:
        """The id of the sample whose remaining parts are awaited, if any."""
        return self._parts[0].sample_id if self._parts else None

    def add(self, part: SampleData) -> KnowledgeSample | None:
        """Take one part; return the sample it completes, or None while parts are missing."""
        try:
            self._accept(part)
        except WireError:
            self._parts, self._positions = [], 0
            raise
        self._parts.append(part)
        self._positions += part.positions
        if not part.last_part:
            return None
        parts, self._parts, self._positions = self._parts, [], 0
        sample = _join(parts)
        if self._done is not None:
            self._done.add(sample.sample_id)
        return sample

    def feed(self, parts: Iterable[SampleData]) -> list[KnowledgeSample]:
        """Take several parts (e.g. one decoded chunk); return the samples they complete."""
        done = []
        for part in parts:
            sample = self.add(part)
            if sample is not None:
                done.append(sample)
        return done

    def finish(self) -> None:
        """Declare the stream ended: raise if a sample is still missing parts."""
        if self._parts:
            last = self._parts[-1]
            sample_id = last.sample_id
            self._parts, self._positions = [], 0
            raise WireError(
                f"stream ended inside sample {sample_id!r}: got parts 0..{last.part_index}, "
                "the part with last_part was never sent"
            )

    def _accept(self, part: SampleData) -> None:
        where = f"sample {part.sample_id!r}"
        if not self._parts:
            if part.part_index != 0:
                raise WireError(f"{where}: part {part.part_index} arrived without part 0")
            if self._done is not None and part.sample_id in self._done:
                raise WireError(f"{where} was sent twice in this stream")
            return
        first, last = self._parts[0], self._parts[-1]
        if part.sample_id != first.sample_id:
            raise WireError(
                f"{where} arrived while sample {first.sample_id!r} still awaits part "
                f"{last.part_index + 1}: parts of different samples must not interleave"
            )
        if part.part_index != last.part_index + 1:
            raise WireError(
                f"{where}: expected part {last.part_index + 1}, got part {part.part_index}"
            )
        expected_start = last.position_start + last.positions
        if part.position_start != expected_start:
            raise WireError(
                f"{where} part {part.part_index}: position_start {part.position_start} does not "
                f"follow the previous part (expected {expected_start})"
            )
        _check_same_fields(first, part, where)
        if self._positions + part.positions > self.max_positions:
            raise WireError(f"{where}: more than {self.max_positions} positions")


def _check_same_fields(first: SampleData, part: SampleData, where: str) -> None:
    same_loss = first.loss == part.loss or (math.isnan(first.loss) and math.isnan(part.loss))
    if not same_loss or first.stats != part.stats:
        raise WireError(f"{where} part {part.part_index}: loss/stats differ from part 0")
    if first.topk_ids.shape[1] != part.topk_ids.shape[1]:
        raise WireError(
            f"{where} part {part.part_index}: k = {part.topk_ids.shape[1]}, part 0 had "
            f"k = {first.topk_ids.shape[1]}"
        )


def _join(parts: list[SampleData]) -> KnowledgeSample:
    first = parts[0]
    if len(parts) == 1:
        ids, logits = _owned(first.topk_ids), _owned(first.topk_logits)
    else:
        ids = np.concatenate([p.topk_ids for p in parts])
        logits = np.concatenate([p.topk_logits for p in parts])
    token_ids = None if first.token_ids is None else _owned(first.token_ids)
    if token_ids is not None and first.position_start + ids.shape[0] > token_ids.size - 1:
        raise WireError(
            f"sample {first.sample_id!r}: rows predict tokens up to "
            f"{first.position_start + ids.shape[0]} but token_ids has {token_ids.size} tokens"
        )
    return KnowledgeSample(
        sample_id=first.sample_id,
        token_ids=token_ids,
        topk_ids=ids,
        topk_logits=logits,
        position_start=first.position_start,
        loss=first.loss,
        stats=first.stats,
    )


def _owned(arr: np.ndarray) -> np.ndarray:
    return arr if arr.flags.writeable and arr.flags.owndata else arr.copy()


def iter_samples(
    chunks: Iterable[knowledge_pb2.KnowledgeChunk],
    *,
    vocab_size: int,
    run_id: str | None = None,
    round: int | None = None,
    source: str | None = None,
    fingerprint: str | None = None,
    top_k: int | None = None,
    known_sample_ids: Container[str] | None = None,
    max_positions: int = MAX_POSITIONS,
) -> Iterator[KnowledgeSample]:
    """Validate a received chunk stream and yield its whole samples in order.

    Every chunk is checked with ``decode_chunk`` (same keyword arguments); a stream whose header
    changes between chunks, or that ends inside a sample, raises ``WireError``.
    """
    assembler = SampleAssembler(max_positions=max_positions)
    first_header: knowledge_pb2.KnowledgeHeader | None = None
    for chunk in chunks:
        parts = decode_chunk(
            chunk,
            vocab_size=vocab_size,
            run_id=run_id,
            round=round,
            source=source,
            fingerprint=fingerprint,
            top_k=top_k,
            known_sample_ids=known_sample_ids,
            max_positions=max_positions,
        )
        if first_header is None:
            first_header = knowledge_pb2.KnowledgeHeader()
            first_header.CopyFrom(chunk.header)
        elif chunk.header != first_header:
            raise WireError("knowledge stream: the chunk header changed in the middle of a stream")
        yield from assembler.feed(parts)
    assembler.finish()
