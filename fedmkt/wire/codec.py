"""numpy / torch arrays to and from ``fedmkt.v1.Tensor`` (typed raw little-endian bytes).

``encode`` turns an array (numpy, or torch on any device) into a Tensor message, converting the
element type on the way if asked (float32 -> float16 or bfloat16 for logits). ``decode`` checks a
received Tensor against what the caller expects (dtype, shape, size) and returns a numpy view of
its bytes without copying them; bfloat16 decodes to float32, exactly. ``decode_torch`` returns a
torch tensor instead (bfloat16 stays bfloat16). Nothing here loops over elements in Python.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedmkt.wire.errors import WireError
from fedmkt.wire.v1 import tensor_pb2

if TYPE_CHECKING:
    import torch

DType = int  # a tensor_pb2.DType value
DTypeLike = int | str
ShapeSpec = Sequence[int | None]

INT32 = tensor_pb2.DTYPE_INT32
INT64 = tensor_pb2.DTYPE_INT64
FLOAT16 = tensor_pb2.DTYPE_FLOAT16
BFLOAT16 = tensor_pb2.DTYPE_BFLOAT16
FLOAT32 = tensor_pb2.DTYPE_FLOAT32

MAX_DIMS = 8  # no tensor of ours has more; bounds the work spent on a hostile shape


@dataclass(frozen=True)
class _Spec:
    """How one wire dtype is laid out: its name, bytes in numpy form, and torch's dtype name."""

    name: str
    wire: np.dtype  # little-endian numpy dtype of the raw bytes (bfloat16: uint16 bit patterns)
    torch_name: str


_SPECS: dict[int, _Spec] = {
    INT32: _Spec("int32", np.dtype("<i4"), "int32"),
    INT64: _Spec("int64", np.dtype("<i8"), "int64"),
    FLOAT16: _Spec("float16", np.dtype("<f2"), "float16"),
    BFLOAT16: _Spec("bfloat16", np.dtype("<u2"), "bfloat16"),
    FLOAT32: _Spec("float32", np.dtype("<f4"), "float32"),
}

_ALIASES: dict[str, int] = {
    "int32": INT32, "int": INT32, "i4": INT32,
    "int64": INT64, "long": INT64, "i8": INT64,
    "float16": FLOAT16, "half": FLOAT16, "fp16": FLOAT16, "f2": FLOAT16,
    "bfloat16": BFLOAT16, "bf16": BFLOAT16,
    "float32": FLOAT32, "float": FLOAT32, "fp32": FLOAT32, "f4": FLOAT32,
}  # fmt: skip

FLOAT_DTYPES: frozenset[int] = frozenset({FLOAT16, BFLOAT16, FLOAT32})
INT_DTYPES: frozenset[int] = frozenset({INT32, INT64})


# --------------------------------------------------------------------------- dtype helpers


def dtype_from_name(name: str) -> DType:
    """The wire dtype for a name: ``"float16"``/``"fp16"``/``"half"``, ``"bfloat16"``/``"bf16"``,
    ``"float32"``, ``"int32"``, ``"int64"``, or an enum name such as ``"DTYPE_FLOAT16"``."""
    key = name.strip().lower()
    key = key.removeprefix("dtype_").removeprefix("torch.").removeprefix("numpy.")
    if key in _ALIASES:
        return _ALIASES[key]
    known = ", ".join(spec.name for spec in _SPECS.values())
    raise WireError(f"unknown dtype name {name!r} (expected one of {known})")


def dtype_name(dtype: DType) -> str:
    """``"float16"`` for ``DTYPE_FLOAT16``, etc.; ``"dtype 7"`` for a value we do not know."""
    spec = _SPECS.get(int(dtype))
    return spec.name if spec else f"dtype {int(dtype)}"


def resolve_dtype(dtype: DTypeLike) -> DType:
    """A supported wire dtype from an enum value or a name (see ``dtype_from_name``)."""
    if isinstance(dtype, str):
        return dtype_from_name(dtype)
    value = int(dtype)
    if value not in _SPECS:
        raise WireError(f"unsupported dtype {value} (expected one of {_known_names()})")
    return value


def itemsize(dtype: DTypeLike) -> int:
    """Bytes per element of a wire dtype."""
    return _SPECS[resolve_dtype(dtype)].wire.itemsize


def _known_names() -> str:
    return ", ".join(spec.name for spec in _SPECS.values())


def _names(dtypes: Iterable[int]) -> str:
    names = [dtype_name(d) for d in dtypes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _format_shape(shape: Iterable[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


# --------------------------------------------------------------------------- encode


def encode(
    array: Any, dtype: DTypeLike | None = None, *, name: str = "tensor"
) -> tensor_pb2.Tensor:
    """A Tensor message holding ``array`` (numpy array, array-like, or torch tensor on any device).

    ``dtype`` converts on the way (``None`` keeps the array's own type, which must then be one of
    int32, int64, float16, bfloat16, float32). Numbers convert to floats with numpy's rounding
    (float16 overflows to inf), to bfloat16 by round-to-nearest-even of the float32 bits, as
    torch does. Integers convert to int32/int64 only when every value fits; floats never do.
    """
    target = None if dtype is None else resolve_dtype(dtype)
    if _is_torch_tensor(array):
        return _encode_torch(array, target, name)
    arr = np.asarray(array)
    target = _numpy_wire_dtype(arr, name) if target is None else target
    data = _numpy_to_wire_bytes(arr, target, name)
    return tensor_pb2.Tensor(dtype=target, shape=arr.shape, data=data)


def _is_torch_tensor(obj: Any) -> bool:
    torch = sys.modules.get("torch")  # if torch was never imported, obj cannot be a tensor
    return torch is not None and isinstance(obj, torch.Tensor)


def _is_ml_bfloat16(arr: np.ndarray) -> bool:
    """Whether ``arr`` holds ``ml_dtypes.bfloat16`` (cheaper than ``dtype.name``)."""
    return arr.dtype.type.__name__ == "bfloat16"


def _numpy_wire_dtype(arr: np.ndarray, name: str) -> DType:
    """The wire dtype that holds ``arr``'s values as they are (float64 etc. are not supported)."""
    if _is_ml_bfloat16(arr):  # ml_dtypes.bfloat16, if a caller uses it
        return BFLOAT16
    key = arr.dtype.newbyteorder("<").str  # e.g. "<f4", whatever the array's byte order
    for dtype, spec in _SPECS.items():
        if dtype != BFLOAT16 and spec.wire.str == key:
            return dtype
    raise WireError(
        f"{name}: numpy dtype {arr.dtype} is not a wire dtype ({_known_names()}); "
        "pass dtype= to convert"
    )


def _numpy_to_wire_bytes(arr: np.ndarray, target: DType, name: str) -> bytes:
    """The raw little-endian, row-major bytes of ``arr``'s values as wire type ``target``."""
    if _is_ml_bfloat16(arr):  # ml_dtypes: same bits as ours, or exact float32 values
        if target == BFLOAT16:
            return arr.view(np.uint16).astype("<u2", copy=False).tobytes()
        arr = arr.astype(np.float32)
    kind = arr.dtype.kind
    if target in INT_DTYPES:
        if kind not in "iu":
            raise WireError(f"{name}: cannot encode {arr.dtype} values as {dtype_name(target)}")
        return _int_bytes(arr, _SPECS[target].wire, name)
    if kind not in "iuf":
        raise WireError(f"{name}: cannot encode {arr.dtype} values as {dtype_name(target)}")
    if target == BFLOAT16:
        return float32_to_bfloat16_bits(arr.astype(np.float32, copy=False)).tobytes()
    with np.errstate(over="ignore"):  # float16 overflow -> inf, as documented
        return arr.astype(_SPECS[target].wire, copy=False).tobytes()


def _int_bytes(arr: np.ndarray, wire: np.dtype, name: str) -> bytes:
    if arr.size and not np.can_cast(arr.dtype, wire, casting="safe"):
        info = np.iinfo(wire)
        low, high = int(arr.min()), int(arr.max())
        if low < info.min or high > info.max:
            raise WireError(f"{name}: values in [{low}, {high}] do not fit in {wire.name}")
    return arr.astype(wire, copy=False).tobytes()


def float32_to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) of float32 ``values``: round to nearest, ties to even.

    Same bits as torch's ``tensor.to(torch.bfloat16)`` for every non-NaN value (values past the
    largest bfloat16 round to inf); NaN becomes the quiet NaN ``0x7FC0``, as torch's scalar
    conversion does (its vectorised one writes ``0xFFFF``, also a NaN).
    """
    floats = np.ascontiguousarray(values, dtype=np.float32)
    bits = floats.view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    out = (rounded >> np.uint32(16)).astype("<u2")
    nan = np.isnan(floats)
    if nan.any():
        out[nan] = 0x7FC0
    return out


def bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """float32 values of bfloat16 bit patterns (exact: bfloat16 is float32's upper half)."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def _encode_torch(tensor: torch.Tensor, target: DType | None, name: str) -> tensor_pb2.Tensor:
    import torch

    target = _torch_wire_dtype(tensor, name) if target is None else target
    t = tensor.detach().to("cpu").resolve_conj().resolve_neg()
    shape = tuple(t.shape)
    if target == BFLOAT16:  # torch's own rounding (round to nearest even)
        bits = t.to(torch.bfloat16).contiguous().view(torch.int16).numpy()
        data = bits.astype("<i2", copy=False).tobytes()
    else:
        if t.dtype == torch.bfloat16:
            t = t.to(torch.float32)  # exact
        data = _numpy_to_wire_bytes(t.numpy(), target, name)
    return tensor_pb2.Tensor(dtype=target, shape=shape, data=data)


def _torch_wire_dtype(tensor: torch.Tensor, name: str) -> DType:
    torch_name = str(tensor.dtype).removeprefix("torch.")
    for dtype, spec in _SPECS.items():
        if spec.torch_name == torch_name:
            return dtype
    raise WireError(
        f"{name}: torch dtype {tensor.dtype} is not a wire dtype ({_known_names()}); "
        "pass dtype= to convert"
    )


# --------------------------------------------------------------------------- decode


def check_tensor(
    tensor: tensor_pb2.Tensor,
    *,
    expect_dtype: DTypeLike | Iterable[DTypeLike] | None = None,
    expect_shape: ShapeSpec | None = None,
    max_elements: int | None = None,
    name: str = "tensor",
) -> tuple[DType, tuple[int, ...]]:
    """Check a received Tensor's header against its bytes and the caller's expectations.

    Returns its dtype and shape; raises ``WireError`` (INVALID_ARGUMENT) naming ``name`` when the
    dtype is unset or unknown, a dimension is negative, there are too many dimensions or
    elements, the byte length is not prod(shape) × itemsize, or dtype/shape differ from
    ``expect_dtype`` (one dtype or several) / ``expect_shape`` (ints, ``None`` = any size).
    """
    dtype, shape, _ = _checked(tensor, expect_dtype, expect_shape, max_elements, name)
    return dtype, shape


def _checked(
    tensor: tensor_pb2.Tensor,
    expect_dtype: DTypeLike | Iterable[DTypeLike] | None,
    expect_shape: ShapeSpec | None,
    max_elements: int | None,
    name: str,
) -> tuple[DType, tuple[int, ...], bytes]:
    """``check_tensor``, also returning the data (each read of ``tensor.data`` copies it)."""
    dtype = int(tensor.dtype)
    if dtype == tensor_pb2.DTYPE_UNSPECIFIED:
        raise WireError(f"{name}: dtype is not set (DTYPE_UNSPECIFIED)")
    if dtype not in _SPECS:
        raise WireError(f"{name}: unknown dtype {dtype} (expected one of {_known_names()})")
    if expect_dtype is not None:
        allowed = _allowed_dtypes(expect_dtype)
        if dtype not in allowed:
            raise WireError(
                f"{name}: expected dtype {_names(sorted(allowed))}, got {dtype_name(dtype)}"
            )
    shape = tuple(int(d) for d in tensor.shape)
    _check_shape(shape, expect_shape, name)
    count = math.prod(shape)
    if max_elements is not None and count > max_elements:
        raise WireError(
            f"{name}: {count} elements (shape {_format_shape(shape)}) exceed the limit of "
            f"{max_elements}"
        )
    size = _SPECS[dtype].wire.itemsize
    data = tensor.data
    if len(data) != count * size:
        raise WireError(
            f"{name}: {len(data)} bytes of data, expected {count * size} "
            f"({count} {dtype_name(dtype)} elements for shape {_format_shape(shape)})"
        )
    return dtype, shape, data


def _allowed_dtypes(expect: DTypeLike | Iterable[DTypeLike]) -> frozenset[int]:
    if isinstance(expect, int | str):
        return frozenset({resolve_dtype(expect)})
    return frozenset(resolve_dtype(d) for d in expect)


def _check_shape(shape: tuple[int, ...], expect: ShapeSpec | None, name: str) -> None:
    if len(shape) > MAX_DIMS:
        raise WireError(f"{name}: {len(shape)} dims, at most {MAX_DIMS} are accepted")
    for axis, dim in enumerate(shape):
        if dim < 0:
            raise WireError(f"{name}: dim {axis} is negative ({dim}) in shape {list(shape)}")
    if expect is None:
        return
    if len(shape) != len(expect):
        raise WireError(f"{name}: expected {len(expect)} dims, got {len(shape)}")
    for axis, (dim, want) in enumerate(zip(shape, expect, strict=True)):
        if want is not None and dim != want:
            raise WireError(
                f"{name}: dim {axis} expected {want}, got {dim} "
                f"(shape {_format_shape(shape)}, expected {_format_shape(expect)})"
            )


def decode(
    tensor: tensor_pb2.Tensor,
    *,
    expect_dtype: DTypeLike | Iterable[DTypeLike] | None = None,
    expect_shape: ShapeSpec | None = None,
    max_elements: int | None = None,
    name: str = "tensor",
) -> np.ndarray:
    """The numpy array a received Tensor holds, after ``check_tensor``'s checks.

    Integer and float16/float32 tensors come back as read-only views of the message's bytes
    (no copy; ``.copy()`` to write); bfloat16 comes back as a new float32 array (exact).
    """
    dtype, shape, data = _checked(tensor, expect_dtype, expect_shape, max_elements, name)
    raw = np.frombuffer(data, dtype=_SPECS[dtype].wire)
    if dtype == BFLOAT16:
        return bfloat16_bits_to_float32(raw).reshape(shape)
    return _native(raw).reshape(shape)


def decode_torch(
    tensor: tensor_pb2.Tensor,
    *,
    expect_dtype: DTypeLike | Iterable[DTypeLike] | None = None,
    expect_shape: ShapeSpec | None = None,
    max_elements: int | None = None,
    name: str = "tensor",
) -> torch.Tensor:
    """Like ``decode``, as a (writable, CPU) torch tensor; bfloat16 stays ``torch.bfloat16``."""
    import torch

    dtype, shape, data = _checked(tensor, expect_dtype, expect_shape, max_elements, name)
    if dtype == BFLOAT16:
        bits = np.frombuffer(data, dtype="<i2").astype(np.int16)  # native, own copy
        return torch.from_numpy(bits).view(torch.bfloat16).reshape(shape)
    raw = np.frombuffer(data, dtype=_SPECS[dtype].wire)
    return torch.from_numpy(_native(raw).copy()).reshape(shape)


def _native(arr: np.ndarray) -> np.ndarray:
    """``arr`` in the machine's byte order (a no-op view on little-endian machines)."""
    return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))
