"""Tensor codec: numpy/torch <-> fedmkt.v1.Tensor round trips and the checks on decode."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch

from fedmkt.wire import codec
from fedmkt.wire.errors import FAILED_PRECONDITION, INVALID_ARGUMENT, WireError, precondition
from fedmkt.wire.v1 import tensor_pb2

RNG = np.random.default_rng(1234)


def _reparse(tensor: tensor_pb2.Tensor) -> tensor_pb2.Tensor:
    out = tensor_pb2.Tensor()
    out.ParseFromString(tensor.SerializeToString())
    return out


def _torch_bf16_bits(values: np.ndarray) -> np.ndarray:
    as_bf16 = torch.from_numpy(values.copy()).to(torch.bfloat16)
    return as_bf16.view(torch.int16).numpy().view(np.uint16)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("np_dtype", ["int32", "int64", "float16", "float32"])
@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 5), (2, 0, 4), (2, 3, 4)])
def test_numpy_round_trip_is_exact(np_dtype: str, shape: tuple[int, ...]) -> None:
    values = (RNG.standard_normal(shape) * 1000).astype(np_dtype)
    tensor = _reparse(codec.encode(values))
    assert tensor.dtype == codec.dtype_from_name(np_dtype)
    assert tuple(tensor.shape) == shape
    assert len(tensor.data) == values.size * values.dtype.itemsize
    decoded = codec.decode(tensor)
    assert decoded.dtype == values.dtype and decoded.shape == shape
    np.testing.assert_array_equal(decoded, values)
    back = codec.decode_torch(tensor)
    np.testing.assert_array_equal(back.numpy(), values)


def test_wire_bytes_are_little_endian_row_major() -> None:
    values = np.array([[1, 2], [3, 258]], dtype=np.int32)
    tensor = codec.encode(values.T)  # a non-contiguous view: written in its own row-major order
    assert list(tensor.shape) == [2, 2]
    assert tensor.data == np.array([1, 3, 2, 258], dtype="<i4").tobytes()
    assert tensor.data[12:16] == b"\x02\x01\x00\x00"


@pytest.mark.parametrize("dtype", [">f4", ">i4", ">i8", ">f2"])
def test_big_endian_arrays_are_sent_little_endian(dtype: str) -> None:
    native = (RNG.standard_normal((4, 3)) * 100).astype(dtype.replace(">", "<"))
    big = native.astype(dtype)
    assert codec.encode(big).data == codec.encode(native).data
    np.testing.assert_array_equal(codec.decode(codec.encode(big)), native)


def test_decode_is_a_read_only_view() -> None:
    decoded = codec.decode(codec.encode(np.arange(6, dtype=np.int32)))
    assert not decoded.flags.writeable
    with pytest.raises(ValueError):
        decoded[0] = 1


def test_float32_to_float16_on_the_wire() -> None:
    values = RNG.standard_normal((5, 8)).astype(np.float32)
    tensor = codec.encode(values, "float16")
    assert tensor.dtype == tensor_pb2.DTYPE_FLOAT16 and len(tensor.data) == 5 * 8 * 2
    np.testing.assert_array_equal(codec.decode(tensor), values.astype(np.float16))


def test_float16_overflow_becomes_inf() -> None:
    decoded = codec.decode(codec.encode(np.array([70000.0, -1e6, 1.0], np.float32), "fp16"))
    assert decoded[0] == np.inf and decoded[1] == -np.inf and decoded[2] == 1.0


def test_int64_to_int32_checks_the_range() -> None:
    fits = np.array([-(2**31), 2**31 - 1], dtype=np.int64)
    np.testing.assert_array_equal(codec.decode(codec.encode(fits, "int32")), fits)
    with pytest.raises(WireError, match=r"do not fit in int32"):
        codec.encode(np.array([0, 2**31], dtype=np.int64), "int32")
    with pytest.raises(WireError, match="cannot encode float32 values as int32"):
        codec.encode(np.zeros(3, np.float32), "int32")


def test_unsupported_numpy_types_need_an_explicit_dtype() -> None:
    with pytest.raises(WireError, match="float64 is not a wire dtype"):
        codec.encode(np.zeros(3))
    with pytest.raises(WireError, match="bool"):
        codec.encode(np.zeros(3, dtype=bool), "float32")
    converted = codec.encode(np.array([0.5, 2.0]), "float32")
    np.testing.assert_array_equal(codec.decode(converted), np.array([0.5, 2.0], np.float32))
    ints_as_floats = codec.encode([1, 2, 3], "float16")
    np.testing.assert_array_equal(codec.decode(ints_as_floats), [1.0, 2.0, 3.0])


# --------------------------------------------------------------------------- bfloat16


def test_bfloat16_matches_torch_rounding_on_random_bits() -> None:
    bits = RNG.integers(0, 2**32, size=200_000, dtype=np.uint64).astype(np.uint32)
    values = bits.view(np.float32)
    tensor = codec.encode(values, "bfloat16")
    got = np.frombuffer(tensor.data, dtype="<u2")
    real = ~np.isnan(values)
    np.testing.assert_array_equal(got[real], _torch_bf16_bits(values)[real])
    assert np.isnan(codec.decode(tensor)[~real]).all()


def test_bfloat16_rounds_ties_to_even() -> None:
    one_ulp = 2.0**-7  # bfloat16 has 7 mantissa bits: spacing 2^-7 in [1, 2)
    values = np.array(
        [1 + one_ulp / 2, 1 + 3 * one_ulp / 2, 1 + one_ulp / 2 + 2.0**-20, 3.4e38, -0.0],
        dtype=np.float32,
    )
    decoded = codec.decode(codec.encode(values, "bf16"))
    expected = [1.0, 1 + 2 * one_ulp, 1 + one_ulp, np.inf, -0.0]
    np.testing.assert_array_equal(decoded, np.array(expected, np.float32))
    assert np.signbit(decoded[4])
    np.testing.assert_array_equal(
        np.frombuffer(codec.encode(values, "bf16").data, "<u2"), _torch_bf16_bits(values)
    )


def test_bfloat16_decodes_exactly_to_float32() -> None:
    values = torch.randn(64, 32).to(torch.bfloat16)
    tensor = _reparse(codec.encode(values))
    assert tensor.dtype == tensor_pb2.DTYPE_BFLOAT16
    decoded = codec.decode(tensor)
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, values.to(torch.float32).numpy())
    as_torch = codec.decode_torch(tensor)
    assert as_torch.dtype == torch.bfloat16
    assert torch.equal(as_torch, values)


# --------------------------------------------------------------------------- torch


def test_torch_tensors_encode_like_numpy() -> None:
    weights = torch.randn(4, 6, requires_grad=True)
    assert codec.encode(weights).data == codec.encode(weights.detach().numpy()).data
    assert codec.encode(weights, "fp16").data == codec.encode(weights.detach().numpy(), "fp16").data
    as_bf16 = codec.encode(weights, "bfloat16")
    assert as_bf16.data == codec.encode(weights.detach().numpy(), "bfloat16").data
    ids = torch.arange(10, dtype=torch.int64).reshape(2, 5)
    tensor = codec.encode(ids, "int32")
    back = codec.decode_torch(tensor)
    assert back.dtype == torch.int32 and torch.equal(back, ids.to(torch.int32))
    doubles = torch.linspace(0, 1, 5, dtype=torch.float64)
    np.testing.assert_array_equal(
        codec.decode(codec.encode(doubles, "float32")), doubles.numpy().astype(np.float32)
    )
    with pytest.raises(WireError, match="torch dtype torch.float64 is not a wire dtype"):
        codec.encode(doubles)


def test_torch_non_contiguous_and_bfloat16_to_float16() -> None:
    base = torch.randn(5, 7)
    assert codec.encode(base.T).data == codec.encode(base.T.contiguous()).data
    bf16 = base.to(torch.bfloat16)
    np.testing.assert_array_equal(
        codec.decode(codec.encode(bf16, "float16")),
        bf16.to(torch.float32).numpy().astype(np.float16),
    )


def test_decode_torch_is_writable() -> None:
    out = codec.decode_torch(codec.encode(np.arange(4, dtype=np.float32)))
    out += 1
    assert out.tolist() == [1.0, 2.0, 3.0, 4.0]


# --------------------------------------------------------------------------- decode checks


def _raw(dtype: int, shape: list[int], data: bytes) -> tensor_pb2.Tensor:
    return tensor_pb2.Tensor(dtype=dtype, shape=shape, data=data)


def test_unset_and_unknown_dtypes_are_rejected() -> None:
    with pytest.raises(WireError, match=r"topk_ids: dtype is not set \(DTYPE_UNSPECIFIED\)"):
        codec.decode(_raw(0, [1], b"\0\0\0\0"), name="topk_ids")
    tensor = _reparse(_raw(42, [1], b"\0\0\0\0"))
    with pytest.raises(WireError, match="unknown dtype 42") as info:
        codec.decode(tensor)
    assert info.value.code == INVALID_ARGUMENT


def test_byte_length_must_match_shape() -> None:
    with pytest.raises(WireError, match=r"3 bytes of data, expected 4"):
        codec.decode(_raw(tensor_pb2.DTYPE_FLOAT16, [2], b"\0\0\0"))  # odd length
    with pytest.raises(WireError, match=r"12 bytes of data, expected 8"):
        codec.decode(_raw(tensor_pb2.DTYPE_INT32, [2], bytes(12)))
    with pytest.raises(WireError, match=r"0 bytes of data, expected 24"):
        codec.decode(_raw(tensor_pb2.DTYPE_INT64, [3], b""))


def test_shape_checks() -> None:
    good = codec.encode(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(WireError, match=r"^topk_logits: expected 2 dims, got 3$"):
        codec.decode(good, expect_shape=(None, 4), name="topk_logits")
    with pytest.raises(WireError, match=r"topk_ids: dim 2 expected 16, got 4"):
        codec.decode(good, expect_shape=(2, None, 16), name="topk_ids")
    assert codec.decode(good, expect_shape=(None, 3, None)).shape == (2, 3, 4)
    with pytest.raises(WireError, match=r"dim 1 is negative \(-2\)"):
        codec.decode(_raw(tensor_pb2.DTYPE_INT32, [2, -2], b""))
    with pytest.raises(WireError, match=r"9 dims, at most 8"):
        codec.decode(_raw(tensor_pb2.DTYPE_INT32, [1] * 9, bytes(4)))


def test_dtype_and_size_limits() -> None:
    tensor = codec.encode(np.zeros((10, 10), np.float32))
    with pytest.raises(WireError, match=r"x: expected dtype int32, got float32"):
        codec.decode(tensor, expect_dtype="int32", name="x")
    with pytest.raises(WireError, match=r"expected dtype int32, float16 or bfloat16, got float32"):
        codec.decode(tensor, expect_dtype=["fp16", "bf16", codec.INT32])
    assert codec.decode(tensor, expect_dtype=("float16", "float32")).shape == (10, 10)
    with pytest.raises(WireError, match=r"100 elements .* exceed the limit of 99"):
        codec.decode(tensor, max_elements=99)
    assert codec.decode(tensor, max_elements=100).size == 100
    huge = _raw(tensor_pb2.DTYPE_INT32, [2**40, 2**40], b"")
    with pytest.raises(WireError, match="exceed the limit"):
        codec.decode(huge, max_elements=10**6)
    with pytest.raises(WireError, match="bytes of data"):
        codec.decode(huge)
    with pytest.raises(WireError):
        codec.decode_torch(huge)


# --------------------------------------------------------------------------- names and errors


def test_dtype_names() -> None:
    assert codec.dtype_from_name("float16") == tensor_pb2.DTYPE_FLOAT16
    assert codec.dtype_from_name("HALF") == tensor_pb2.DTYPE_FLOAT16
    assert codec.dtype_from_name("bf16") == tensor_pb2.DTYPE_BFLOAT16
    assert codec.dtype_from_name("DTYPE_FLOAT32") == tensor_pb2.DTYPE_FLOAT32
    assert codec.dtype_from_name("torch.int64") == tensor_pb2.DTYPE_INT64
    assert codec.dtype_name(tensor_pb2.DTYPE_INT32) == "int32"
    assert codec.dtype_name(17) == "dtype 17"
    assert codec.itemsize("bfloat16") == 2 and codec.itemsize(codec.INT64) == 8
    with pytest.raises(WireError, match="unknown dtype name 'float8'"):
        codec.dtype_from_name("float8")
    with pytest.raises(WireError, match="unsupported dtype 0"):
        codec.resolve_dtype(tensor_pb2.DTYPE_UNSPECIFIED)


def test_wire_error_codes() -> None:
    err = WireError("bad")
    assert isinstance(err, ValueError)
    assert err.code == INVALID_ARGUMENT and err.grpc_code == grpc.StatusCode.INVALID_ARGUMENT
    late = precondition("wrong round")
    assert late.code == FAILED_PRECONDITION
    assert late.grpc_code == grpc.StatusCode.FAILED_PRECONDITION
    assert late.message == "wrong round" and late.http_status == 400
    with pytest.raises(ValueError, match="unknown WireError code"):
        WireError("x", "NOT_FOUND")  # type: ignore[arg-type]
