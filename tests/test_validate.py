"""Validation of knowledge headers, samples and chunks as a receiver sees them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from fedmkt.wire import codec
from fedmkt.wire.errors import FAILED_PRECONDITION, INVALID_ARGUMENT, WireError
from fedmkt.wire.v1 import knowledge_pb2, tensor_pb2
from fedmkt.wire.validate import (
    MAX_ID_CHARS,
    SampleStats,
    decode_chunk,
    decode_sample,
    validate_header,
)

VOCAB = 1000
K = 4
RNG = np.random.default_rng(7)


def _header(**overrides: Any) -> knowledge_pb2.KnowledgeHeader:
    fields = dict(run_id="run-1", round=2, source="client-a", tokenizer_fingerprint="fp1", top_k=K)
    fields.update(overrides)
    return knowledge_pb2.KnowledgeHeader(**fields)


def _arrays(positions: int = 5, length: int = 8) -> dict[str, np.ndarray]:
    ids = np.stack([RNG.permutation(VOCAB)[:K] for _ in range(positions)]).astype(np.int32)
    return {
        "token_ids": RNG.integers(0, VOCAB, length).astype(np.int32),
        "topk_ids": ids.reshape(positions, K),
        "topk_logits": RNG.standard_normal((positions, K)).astype(np.float32),
    }


def _sample(
    *, logit_dtype: str = "float16", arrays: dict[str, Any] | None = None, **fields: Any
) -> knowledge_pb2.SampleKnowledge:
    arrays = _arrays() if arrays is None else arrays
    msg = knowledge_pb2.SampleKnowledge(
        sample_id=fields.pop("sample_id", "rte-1"),
        position_start=fields.pop("position_start", 0),
        loss=fields.pop("loss", 2.5),
        last_part=fields.pop("last_part", True),
        part_index=fields.pop("part_index", 0),
        topk_ids=codec.encode(arrays["topk_ids"]),
        topk_logits=codec.encode(arrays["topk_logits"], logit_dtype),
        **fields,
    )
    if arrays.get("token_ids") is not None:
        msg.token_ids.CopyFrom(codec.encode(arrays["token_ids"]))
    return msg


def _decode(msg: knowledge_pb2.SampleKnowledge, **kwargs: Any):
    kwargs.setdefault("vocab_size", VOCAB)
    kwargs.setdefault("top_k", K)
    wire = knowledge_pb2.SampleKnowledge()
    wire.ParseFromString(msg.SerializeToString())
    return decode_sample(wire, **kwargs)


def _rejects(msg: knowledge_pb2.SampleKnowledge, pattern: str, **kwargs: Any) -> WireError:
    with pytest.raises(WireError, match=pattern) as info:
        _decode(msg, **kwargs)
    return info.value


# --------------------------------------------------------------------------- header


def test_header_that_matches_passes() -> None:
    validate_header(
        _header(), run_id="run-1", round=2, source="client-a", fingerprint="fp1", top_k=K
    )
    validate_header(_header())  # nothing pinned: only well-formedness is checked


@pytest.mark.parametrize(
    ("expect", "field"),
    [
        ({"run_id": "run-2"}, "run_id"),
        ({"round": 3}, "round"),
        ({"source": "client-b"}, "source"),
        ({"fingerprint": "fp2"}, "tokenizer_fingerprint"),
        ({"top_k": 8}, "top_k"),
    ],
)
def test_header_mismatch_is_a_failed_precondition(expect: dict[str, Any], field: str) -> None:
    with pytest.raises(WireError, match=f"knowledge header: {field} .* does not match") as info:
        validate_header(_header(), **expect)
    assert info.value.code == FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"run_id": ""}, "run_id is empty"),
        ({"source": ""}, "source is empty"),
        ({"tokenizer_fingerprint": ""}, "tokenizer_fingerprint is empty"),
        ({"run_id": "x" * (MAX_ID_CHARS + 1)}, "at most 256"),
        ({"source": "a\nb"}, "control characters"),
        ({"round": -1}, "round must be >= 0"),
        ({"top_k": 0}, r"top_k must be in \[1, 1024\], got 0"),
        ({"top_k": 5000}, "top_k must be in"),
    ],
)
def test_malformed_header_is_invalid(overrides: dict[str, Any], pattern: str) -> None:
    with pytest.raises(WireError, match=pattern) as info:
        validate_header(_header(**overrides), run_id="run-1")
    assert info.value.code == INVALID_ARGUMENT


# --------------------------------------------------------------------------- good samples


@pytest.mark.parametrize("logit_dtype", ["float16", "bfloat16", "float32"])
def test_valid_sample_decodes_to_its_arrays(logit_dtype: str) -> None:
    arrays = _arrays()
    stats = knowledge_pb2.AlignmentStats(positions=5, aligned=4, fallback=1)
    data = _decode(_sample(arrays=arrays, logit_dtype=logit_dtype, stats=stats))
    assert data.sample_id == "rte-1" and data.part_index == 0 and data.last_part
    assert data.loss == 2.5 and data.position_start == 0 and data.positions == 5
    assert data.stats == SampleStats(positions=5, aligned=4, fallback=1)
    np.testing.assert_array_equal(data.token_ids, arrays["token_ids"])
    np.testing.assert_array_equal(data.topk_ids, arrays["topk_ids"])
    assert data.topk_ids.dtype == np.int32 and data.topk_logits.dtype == np.float32
    sent = codec.decode(codec.encode(arrays["topk_logits"], logit_dtype)).astype(np.float32)
    np.testing.assert_array_equal(data.topk_logits, sent)


def test_padding_slots_may_hold_anything_and_come_back_as_minus_inf() -> None:
    arrays = _arrays()
    arrays["topk_ids"][1, 2:] = -1
    arrays["topk_logits"][1, 2] = np.nan
    arrays["topk_logits"][1, 3] = np.inf
    data = _decode(_sample(arrays=arrays))
    assert np.isneginf(data.topk_logits[1, 2:]).all()
    assert np.isfinite(data.topk_logits[arrays["topk_ids"] >= 0]).all()


def test_optional_fields() -> None:
    arrays = _arrays()
    arrays["token_ids"] = None
    data = _decode(_sample(arrays=arrays, loss=math.nan))
    assert data.token_ids is None and math.isnan(data.loss) and data.stats is None
    assert _decode(_sample(loss=0.0)).loss == 0.0


def test_rows_may_reach_the_last_token_but_not_beyond() -> None:
    arrays = _arrays(positions=7, length=8)  # rows predict tokens 1..7 of 0..7
    assert _decode(_sample(arrays=arrays)).positions == 7
    _rejects(_sample(arrays=arrays, position_start=1), r"position_start \+ P must be <= L - 1")
    short = _arrays(positions=3, length=8)
    assert _decode(_sample(arrays=short, position_start=4)).position_start == 4


def test_empty_single_part_sample_is_accepted() -> None:
    arrays = {
        "token_ids": np.array([5], np.int32),
        "topk_ids": np.zeros((0, K), np.int32),
        "topk_logits": np.zeros((0, K), np.float32),
    }
    assert _decode(_sample(arrays=arrays)).positions == 0
    _rejects(_sample(arrays=arrays, last_part=False), "part 0 holds no positions")


# --------------------------------------------------------------------------- bad samples


def test_wrong_k_is_rejected() -> None:
    err = _rejects(_sample(), r"sample 'rte-1' topk_ids: dim 1 expected 8, got 4", top_k=8)
    assert err.code == INVALID_ARGUMENT


@pytest.mark.parametrize(("value", "shown"), [(VOCAB, f"{VOCAB}"), (-2, "-2")])
def test_topk_ids_out_of_range(value: int, shown: str) -> None:
    arrays = _arrays()
    arrays["topk_ids"][3, 1] = value
    _rejects(_sample(arrays=arrays), rf"topk_ids: ids must be in \[-1, {VOCAB}\).*{shown}")


def test_token_ids_out_of_range_or_badly_typed() -> None:
    arrays = _arrays()
    arrays["token_ids"][0] = -1
    _rejects(_sample(arrays=arrays), r"token_ids: ids must be in \[0, 1000\)")
    arrays = _arrays()
    arrays["token_ids"] = arrays["token_ids"].astype(np.int64)
    _rejects(_sample(arrays=arrays), "token_ids: expected dtype int32, got int64")
    arrays = _arrays()
    arrays["token_ids"] = arrays["token_ids"].reshape(2, 4)
    _rejects(_sample(arrays=arrays), "token_ids: expected 1 dims, got 2")


def test_row_of_padding_only_is_rejected() -> None:
    arrays = _arrays()
    arrays["topk_ids"][2] = -1
    _rejects(_sample(arrays=arrays), "row 2 has only padding")


def test_repeated_id_in_a_row_is_rejected() -> None:
    arrays = _arrays()
    arrays["topk_ids"][4, 3] = arrays["topk_ids"][4, 0]
    _rejects(_sample(arrays=arrays), f"row 4 lists id {arrays['topk_ids'][4, 0]} more than once")
    arrays["topk_ids"][4, 2:] = -1  # repeated padding is fine
    arrays["topk_ids"][4, 1] = (arrays["topk_ids"][4, 0] + 1) % VOCAB
    assert _decode(_sample(arrays=arrays)).positions == 5


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_logits_are_rejected(bad: float) -> None:
    arrays = _arrays()
    arrays["topk_logits"][3, 1] = bad
    _rejects(_sample(arrays=arrays, logit_dtype="float32"), "non-finite value .* row 3, slot 1")


def test_float16_overflow_is_rejected_with_a_hint() -> None:
    arrays = _arrays()
    arrays["topk_logits"][0, 0] = 1e5
    _rejects(_sample(arrays=arrays), "float16 overflows past")
    assert _decode(_sample(arrays=arrays, logit_dtype="bfloat16")).topk_logits[0, 0] > 9e4


def test_logits_must_match_ids() -> None:
    arrays = _arrays()
    msg = _sample(arrays=arrays)
    msg.topk_logits.CopyFrom(codec.encode(arrays["topk_logits"][:4], "float16"))
    _rejects(msg, r"topk_logits: dim 0 expected 5, got 4")
    msg.topk_logits.CopyFrom(codec.encode(arrays["topk_ids"]))
    _rejects(msg, "topk_logits: expected dtype float16, bfloat16 or float32, got int32")
    msg.topk_logits.CopyFrom(tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT16, shape=[5, K]))
    _rejects(msg, "topk_logits: 0 bytes of data, expected 40")


def test_sample_ids() -> None:
    err = _rejects(_sample(sample_id="other"), "'other' is not a known public sample",
                   known_sample_ids={"rte-1"})  # fmt: skip
    assert err.code == FAILED_PRECONDITION
    assert _decode(_sample(), known_sample_ids={"rte-1", "rte-2"}).sample_id == "rte-1"
    _rejects(_sample(sample_id=""), "sample_id is empty")
    _rejects(_sample(sample_id="s" * 257), "257 characters, at most 256")


@pytest.mark.parametrize(("loss", "pattern"), [(math.inf, "inf"), (-0.5, "-0.5")])
def test_bad_losses(loss: float, pattern: str) -> None:
    _rejects(_sample(loss=loss), f"loss must be finite and >= 0.*{pattern}")


def test_part_rules() -> None:
    _rejects(_sample(part_index=1), "token_ids travel in the first part only")
    _rejects(_sample(part_index=-1), "part_index must be >= 0")
    _rejects(_sample(position_start=-3), "position_start must be >= 0")
    later = _arrays()
    later["token_ids"] = None
    data = _decode(_sample(arrays=later, part_index=3, position_start=100, last_part=False))
    assert data.part_index == 3 and data.position_start == 100 and not data.last_part


def test_position_limit() -> None:
    arrays = _arrays(positions=5, length=8)
    _rejects(_sample(arrays=arrays), r"token_ids: 8 elements .* limit of 7", max_positions=6)
    arrays["token_ids"] = None
    _rejects(_sample(arrays=arrays), r"topk_ids: 20 elements .* limit of 16", max_positions=4)
    _rejects(_sample(arrays=arrays, position_start=2), "positions 2..6 exceed", max_positions=6)


def test_stats_must_be_consistent() -> None:
    stats = knowledge_pb2.AlignmentStats(positions=5, aligned=4, fallback=2)
    _rejects(_sample(stats=stats), "aligned \\+ fallback must be <= positions")
    stats = knowledge_pb2.AlignmentStats(positions=-1)
    _rejects(_sample(stats=stats), "counts must be >= 0")


def test_vocab_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        _decode(_sample(), vocab_size=0)


# --------------------------------------------------------------------------- chunk


def test_decode_chunk_checks_header_then_samples() -> None:
    chunk = knowledge_pb2.KnowledgeChunk(header=_header(), samples=[_sample(), _sample()])
    chunk.samples[1].sample_id = "rte-2"
    parts = decode_chunk(chunk, vocab_size=VOCAB, run_id="run-1", round=2)
    assert [p.sample_id for p in parts] == ["rte-1", "rte-2"]
    with pytest.raises(WireError, match="round 2 does not match") as info:
        decode_chunk(chunk, vocab_size=VOCAB, round=1)
    assert info.value.code == FAILED_PRECONDITION
    with pytest.raises(WireError, match="knowledge chunk has no header"):
        decode_chunk(knowledge_pb2.KnowledgeChunk(samples=[_sample()]), vocab_size=VOCAB)
    wrong_k = knowledge_pb2.KnowledgeChunk(header=_header(top_k=8), samples=[_sample()])
    with pytest.raises(WireError, match="dim 1 expected 8, got 4"):
        decode_chunk(wrong_k, vocab_size=VOCAB)  # the header's own top_k applies
    with pytest.raises(WireError, match="ids must be in"):
        decode_chunk(chunk, vocab_size=10)
