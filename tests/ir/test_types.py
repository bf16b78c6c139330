"""DType and TensorType: names, numpy counterparts, sizes and their validation."""

import ml_dtypes
import numpy as np
import pytest

from ir import DType, TensorType
from ir.types import tensor_type_of


@pytest.mark.parametrize("dtype", list(DType))
def test_every_dtype_round_trips_through_numpy_and_text(dtype):
    assert DType.from_numpy(dtype.numpy) is dtype
    assert DType.parse(str(dtype)) is dtype
    assert dtype.itemsize == np.dtype(dtype.numpy).itemsize


def test_bf16_is_ml_dtypes_bfloat16():
    assert DType.bf16.numpy == np.dtype(ml_dtypes.bfloat16)
    assert DType.bf16.itemsize == 2 and DType.bf16.is_float


def test_classification():
    assert DType.f16.is_float and not DType.f16.is_integer
    assert DType.u8.is_integer and not DType.u8.is_signed
    assert not DType.bool.is_integer and not DType.bool.is_float


def test_unknown_dtypes_are_named_in_the_error():
    with pytest.raises(ValueError, match="unknown dtype 'f128'"):
        DType.parse("f128")
    with pytest.raises(TypeError, match="complex64 has no IR dtype"):
        DType.from_numpy(np.complex64)


def test_tensor_type_text_and_sizes():
    t = TensorType((32, 1024), DType.f16)
    assert str(t) == "f16[32,1024]" and t.rank == 2 and t.numel == 32768 and t.nbytes == 65536
    assert str(TensorType((), DType.bool)) == "bool[]" and TensorType((), DType.f32).numel == 1
    assert t.with_dtype(DType.f32) == TensorType((32, 1024), DType.f32)
    assert hash(t) == hash(TensorType([32, 1024], DType.f16))  # lists become tuples


@pytest.mark.parametrize("shape", [(-1,), (2.0,), (True,), ("3",)])
def test_tensor_type_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match="non-negative ints"):
        TensorType(shape, DType.f32)


def test_tensor_type_of_array():
    assert tensor_type_of(np.zeros((2, 3), np.int8)) == TensorType((2, 3), DType.i8)
