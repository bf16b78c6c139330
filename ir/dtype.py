"""Element types of tensors in the graph IR, and their numpy counterparts.

numpy has no bfloat16; `ml_dtypes` (which onnx already depends on) provides one that numpy
can store, cast and compare, so every IR dtype has a real numpy dtype.
"""

from __future__ import annotations

import enum

import ml_dtypes
import numpy as np


class DType(enum.Enum):
    """An element type. The value is its name in the text form (`f32[2,3]`)."""

    f64 = "f64"
    f32 = "f32"
    f16 = "f16"
    bf16 = "bf16"
    i64 = "i64"
    i32 = "i32"
    i8 = "i8"
    u8 = "u8"
    bool = "bool"

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return f"DType.{self.value}"

    @property
    def numpy(self) -> np.dtype:
        """The numpy dtype that stores values of this type."""
        return _TO_NUMPY[self]

    @property
    def itemsize(self) -> int:
        return self.numpy.itemsize

    @property
    def is_float(self) -> bool:
        return self in FLOAT_DTYPES

    @property
    def is_integer(self) -> bool:
        return self in INTEGER_DTYPES

    @property
    def is_signed(self) -> bool:
        return self not in (DType.u8, DType.bool)

    @staticmethod
    def from_numpy(dtype: np.dtype | type) -> DType:
        """The IR dtype of a numpy dtype; raises `TypeError` for one the IR lacks."""
        try:
            return _FROM_NUMPY[np.dtype(dtype)]
        except KeyError:
            supported = ", ".join(str(np.dtype(d)) for d in _FROM_NUMPY)
            raise TypeError(f"numpy dtype {np.dtype(dtype)} has no IR dtype (supported: {supported})") from None

    @staticmethod
    def parse(text: str) -> DType:
        try:
            return DType(text)
        except ValueError:
            names = ", ".join(d.value for d in DType)
            raise ValueError(f"unknown dtype {text!r} (expected one of {names})") from None


_TO_NUMPY: dict[DType, np.dtype] = {
    DType.f64: np.dtype(np.float64),
    DType.f32: np.dtype(np.float32),
    DType.f16: np.dtype(np.float16),
    DType.bf16: np.dtype(ml_dtypes.bfloat16),
    DType.i64: np.dtype(np.int64),
    DType.i32: np.dtype(np.int32),
    DType.i8: np.dtype(np.int8),
    DType.u8: np.dtype(np.uint8),
    DType.bool: np.dtype(np.bool_),
}
_FROM_NUMPY: dict[np.dtype, DType] = {v: k for k, v in _TO_NUMPY.items()}

FLOAT_DTYPES = frozenset({DType.f64, DType.f32, DType.f16, DType.bf16})
INTEGER_DTYPES = frozenset({DType.i64, DType.i32, DType.i8, DType.u8})
NUMERIC_DTYPES = FLOAT_DTYPES | INTEGER_DTYPES
SIGNED_NUMERIC_DTYPES = NUMERIC_DTYPES - {DType.u8}
ALL_DTYPES = frozenset(DType)
INDEX_DTYPES = frozenset({DType.i64, DType.i32})
LOW_PRECISION_FLOATS = frozenset({DType.f16, DType.bf16})
