"""Knowledge streams: chunk sizes, multi-part samples, reassembly and its errors."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import numpy as np
import pytest

from fedmkt.wire.chunking import (
    DEFAULT_MAX_BYTES,
    KnowledgeSample,
    SampleAssembler,
    chunk_knowledge,
    entry_size,
    iter_samples,
    varint_size,
)
from fedmkt.wire.errors import WireError
from fedmkt.wire.v1 import knowledge_pb2
from fedmkt.wire.validate import SampleData, SampleStats, decode_chunk

VOCAB = 50_000
RNG = np.random.default_rng(11)


def _header(top_k: int) -> dict[str, object]:
    return dict(run_id="run", round=1, source="client-a", tokenizer_fingerprint="fp", top_k=top_k)


def _sample(sample_id: str, length: int, k: int, *, start: int = 0) -> KnowledgeSample:
    positions = length - 1 - start
    ids = np.argsort(RNG.random((positions, VOCAB // 100)), axis=1)[:, :k].astype(np.int32) * 97
    return KnowledgeSample(
        sample_id=sample_id,
        token_ids=RNG.integers(0, VOCAB, length).astype(np.int32),
        topk_ids=ids,
        topk_logits=(RNG.standard_normal((positions, k)) * 4).astype(np.float32),
        position_start=start,
        loss=float(RNG.random() * 10),
        stats=SampleStats(positions=positions, aligned=positions - 1, fallback=1),
    )


def _wire(chunks: Iterator[knowledge_pb2.KnowledgeChunk]) -> list[knowledge_pb2.KnowledgeChunk]:
    """The chunks as a receiver gets them: serialized, size-checked, parsed."""
    out = []
    for chunk in chunks:
        data = chunk.SerializeToString()
        assert len(data) == chunk.ByteSize()
        parsed = knowledge_pb2.KnowledgeChunk()
        parsed.ParseFromString(data)
        out.append(parsed)
    return out


def _assert_same(got: KnowledgeSample, sent: KnowledgeSample, logit_dtype: type) -> None:
    assert got.sample_id == sent.sample_id and got.position_start == sent.position_start
    assert got.loss == sent.loss and got.stats == sent.stats
    np.testing.assert_array_equal(got.token_ids, sent.token_ids)
    np.testing.assert_array_equal(got.topk_ids, sent.topk_ids)
    expected = sent.topk_logits.astype(logit_dtype).astype(np.float32)
    np.testing.assert_array_equal(got.topk_logits, expected)
    assert got.topk_ids.dtype == np.int32 and got.topk_logits.dtype == np.float32


def _round_trip(samples, k, **kwargs):
    chunks = _wire(chunk_knowledge(samples, _header(k), **kwargs))
    return chunks, list(iter_samples(chunks, vocab_size=VOCAB, run_id="run", top_k=k))


# --------------------------------------------------------------------------- sizes


def test_varint_and_entry_sizes_match_protobuf() -> None:
    for size in (0, 1, 127, 128, 16_383, 16_384, 2**21, 2**28):
        msg = knowledge_pb2.KnowledgeHeader(run_id="x" * size) if size < 2**20 else None
        if msg is not None:
            chunk = knowledge_pb2.KnowledgeChunk(header=msg)
            assert chunk.ByteSize() == entry_size(msg.ByteSize())
        assert varint_size(size) == len(_varint(size))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def test_large_k128_sample_is_split_into_parts_under_the_limit() -> None:
    big = _sample("long", length=4097, k=128)  # 4096 × 128 × 6 B = 3 MiB: 4 parts
    small = _sample("short", length=50, k=128)
    chunks, received = _round_trip([big, small], 128)
    assert all(c.ByteSize() <= DEFAULT_MAX_BYTES for c in chunks)
    parts = [s for c in chunks for s in c.samples if s.sample_id == "long"]
    assert len(parts) >= 3
    assert [p.part_index for p in parts] == list(range(len(parts)))
    assert [p.last_part for p in parts] == [False] * (len(parts) - 1) + [True]
    assert [p.HasField("token_ids") for p in parts] == [True] + [False] * (len(parts) - 1)
    rows = [p.topk_ids.shape[0] for p in parts]
    assert [p.position_start for p in parts] == list(np.cumsum([0, *rows[:-1]]))
    assert sum(rows) == 4096
    assert all(p.loss == big.loss and p.stats.fallback == 1 for p in parts)
    assert [s.sample_id for s in received] == ["long", "short"]
    _assert_same(received[0], big, np.float16)
    _assert_same(received[1], small, np.float16)


@pytest.mark.parametrize("max_bytes", [2_000, 4_321, 65_536])
def test_many_samples_at_small_limits_round_trip(max_bytes: int) -> None:
    samples = [_sample(f"s{i}", length=int(RNG.integers(2, 200)), k=8) for i in range(30)]
    samples.append(_sample("late-start", length=120, k=8, start=17))
    chunks, received = _round_trip(samples, 8, max_bytes=max_bytes)
    assert all(c.ByteSize() <= max_bytes for c in chunks)
    assert len(received) == len(samples)
    for got, sent in zip(received, samples, strict=True):
        _assert_same(got, sent, np.float16)


def test_whole_samples_are_packed_until_the_next_would_not_fit() -> None:
    samples = [_sample(f"s{i}", length=int(RNG.integers(100, 400)), k=16) for i in range(60)]
    max_bytes = 200_000
    chunks = list(chunk_knowledge(samples, _header(16), max_bytes=max_bytes))
    assert len(chunks) > 3
    assert all(s.part_index == 0 and s.last_part for c in chunks for s in c.samples)
    assert [s.sample_id for c in chunks for s in c.samples] == [s.sample_id for s in samples]
    for chunk, following in zip(chunks, chunks[1:], strict=False):
        assert chunk.ByteSize() <= max_bytes
        next_entry = entry_size(following.samples[0].ByteSize())
        assert chunk.ByteSize() + next_entry > max_bytes  # it would not have fit


def test_every_chunk_carries_the_header() -> None:
    header = knowledge_pb2.KnowledgeHeader(**_header(4))
    chunks = list(chunk_knowledge([_sample(f"s{i}", 300, 4) for i in range(9)], header,
                                  max_bytes=8_000))  # fmt: skip
    assert len(chunks) > 5
    assert all(c.header == header for c in chunks)


def test_chunking_is_lazy() -> None:
    pulled = []

    def produce() -> Iterator[KnowledgeSample]:
        for i in range(1000):
            pulled.append(i)
            yield _sample(f"s{i}", 60, 4)

    stream = chunk_knowledge(produce(), _header(4), max_bytes=4096)
    first = next(stream)
    assert len(first.samples) >= 1
    assert len(pulled) < 20


@pytest.mark.parametrize(("logit_dtype", "np_dtype"), [("bfloat16", None), ("float32", np.float32)])
def test_other_logit_dtypes(logit_dtype: str, np_dtype: type | None) -> None:
    sample = _sample("x", 300, 16)
    _, (got,) = _round_trip([sample], 16, logit_dtype=logit_dtype, max_bytes=4096)
    if np_dtype is None:  # bfloat16: within half an ulp of 8 mantissa bits
        np.testing.assert_allclose(got.topk_logits, sample.topk_logits, rtol=2**-8)
        assert not np.array_equal(got.topk_logits, sample.topk_logits)
    else:
        np.testing.assert_array_equal(got.topk_logits, sample.topk_logits)


def test_padding_and_empty_samples_round_trip() -> None:
    padded = _sample("padded", 20, 6)
    padded.topk_ids[3, 4:] = -1
    empty = KnowledgeSample(
        sample_id="empty",
        token_ids=np.array([3], np.int32),
        topk_ids=np.zeros((0, 6), np.int32),
        topk_logits=np.zeros((0, 6), np.float32),
    )
    no_tokens = dataclasses.replace(_sample("no-tokens", 500, 6), token_ids=None)
    _, received = _round_trip([padded, empty, no_tokens], 6, max_bytes=3000)
    assert np.isneginf(received[0].topk_logits[3, 4:]).all()
    assert received[1].positions == 0 and math.isnan(received[1].loss)
    assert received[2].token_ids is None and received[2].positions == 499
    np.testing.assert_array_equal(received[2].topk_ids, no_tokens.topk_ids)


def test_received_arrays_are_writable() -> None:
    _, (got,) = _round_trip([_sample("x", 30, 4)], 4, logit_dtype="float32")
    got.topk_ids[0, 0] = 1
    got.topk_logits[0, 0] = 0.0
    got.token_ids[0] = 1


def test_sender_errors() -> None:
    with pytest.raises(ValueError, match="k = 4 but the header says top_k = 8"):
        list(chunk_knowledge([_sample("x", 10, 4)], _header(8)))
    bad = _sample("x", 10, 4)
    bad.topk_logits = bad.topk_logits[:, :3]
    with pytest.raises(ValueError, match="same \\[P, k\\] shape"):
        list(chunk_knowledge([bad], _header(4)))
    with pytest.raises(ValueError, match="token_ids and one position need more"):
        list(chunk_knowledge([_sample("x", 2000, 4)], _header(4), max_bytes=4096))
    only_tokens = KnowledgeSample("t", np.zeros(2000, np.int32), np.zeros((0, 4), np.int32),
                                  np.zeros((0, 4), np.float32))  # fmt: skip
    with pytest.raises(ValueError, match="its 2000 token_ids need more"):
        list(chunk_knowledge([only_tokens], _header(4), max_bytes=4096))
    with pytest.raises(ValueError, match="logit_dtype must be a float dtype"):
        list(chunk_knowledge([], _header(4), logit_dtype="int32"))
    with pytest.raises(ValueError, match="too small"):
        list(chunk_knowledge([], _header(4), max_bytes=100))
    assert list(chunk_knowledge([], _header(4))) == []


# --------------------------------------------------------------------------- assembler


def _parts(sample: KnowledgeSample, max_bytes: int = 2500) -> list[SampleData]:
    chunks = _wire(chunk_knowledge([sample], _header(sample.top_k), max_bytes=max_bytes))
    return [p for c in chunks for p in decode_chunk(c, vocab_size=VOCAB)]


def test_assembler_rejects_a_part_without_its_first() -> None:
    parts = _parts(_sample("a", 300, 4))
    assert len(parts) >= 3
    with pytest.raises(WireError, match="'a': part 1 arrived without part 0"):
        SampleAssembler().add(parts[1])


def test_assembler_rejects_parts_out_of_order() -> None:
    parts = _parts(_sample("a", 300, 4))
    assembler = SampleAssembler()
    assert assembler.add(parts[0]) is None and assembler.pending == "a"
    with pytest.raises(WireError, match="expected part 1, got part 2"):
        assembler.add(parts[2])
    assert assembler.pending is None  # reset after an error
    assert assembler.feed(parts)[0].positions == 299


def test_assembler_rejects_interleaved_samples() -> None:
    a, b = _parts(_sample("a", 300, 4)), _parts(_sample("b", 300, 4))
    assembler = SampleAssembler()
    assembler.add(a[0])
    with pytest.raises(WireError, match="'b' arrived while sample 'a' still awaits part 1"):
        assembler.add(b[0])


def test_assembler_rejects_gaps_and_changed_fields() -> None:
    parts = _parts(_sample("a", 300, 4))
    moved = dataclasses.replace(parts[1], position_start=parts[1].position_start + 1)
    assembler = SampleAssembler()
    assembler.add(parts[0])
    with pytest.raises(WireError, match="does not follow the previous part"):
        assembler.add(moved)
    assembler.add(parts[0])
    with pytest.raises(WireError, match="loss/stats differ from part 0"):
        assembler.add(dataclasses.replace(parts[1], loss=parts[0].loss + 1))


def test_assembler_rejects_duplicates_and_truncated_streams() -> None:
    parts = _parts(_sample("a", 300, 4))
    assembler = SampleAssembler()
    assert len(assembler.feed(parts)) == 1
    with pytest.raises(WireError, match="'a' was sent twice"):
        assembler.add(parts[0])
    truncated = SampleAssembler()
    assert truncated.feed(parts[:-1]) == []
    with pytest.raises(WireError, match="stream ended inside sample 'a'"):
        truncated.finish()
    assert SampleAssembler(reject_duplicates=False).feed(parts + parts)[1].sample_id == "a"


def test_assembler_checks_total_positions_against_tokens() -> None:
    parts = _parts(_sample("a", 300, 4))
    short = np.zeros(100, np.int32)
    first = dataclasses.replace(parts[0], token_ids=short)
    with pytest.raises(WireError, match="token_ids has 100 tokens"):
        SampleAssembler().feed([first, *parts[1:]])
    with pytest.raises(WireError, match="more than 100 positions"):
        SampleAssembler(max_positions=100).feed(parts)


def test_iter_samples_rejects_a_header_change() -> None:
    chunks = _wire(chunk_knowledge([_sample(f"s{i}", 100, 4) for i in range(6)], _header(4),
                                   max_bytes=3000))  # fmt: skip
    assert len(chunks) > 2
    chunks[2].header.round = 2
    with pytest.raises(WireError, match="header changed"):
        list(iter_samples(chunks, vocab_size=VOCAB))
    with pytest.raises(WireError, match="round 2 does not match"):
        list(iter_samples(chunks, vocab_size=VOCAB, round=1))
