"""Ops without tensor inputs: const, full, arange."""

import numpy as np
import pytest
import torch

import ir
from ir import DType, GraphBuilder, ShapeError


def run_nullary(op, **attrs):
    builder = GraphBuilder("t")
    graph = builder.build(builder.op(op, **attrs))
    assert str(ir.parse_graph(str(graph))) == str(graph)
    return ir.run(graph, [])[0]


@pytest.mark.parametrize(
    ("start", "limit", "delta", "dtype"),
    [
        (0, 10, 1, DType.i64),
        (2, -3, -1, DType.i32),
        (0.5, 2.0, 0.25, DType.f32),
        (0, 1, 0.1, DType.f32),
        (5, 5, 1, DType.i64),
        (-2, 1, 0.5, DType.f16),
    ],
)
def test_arange_matches_torch(start, limit, delta, dtype):
    torch_dtype = {DType.i64: torch.int64, DType.i32: torch.int32, DType.f32: torch.float32, DType.f16: torch.float16}
    expected = torch.arange(start, limit, delta, dtype=torch_dtype[dtype]).numpy()
    result = run_nullary("arange", start=start, limit=limit, delta=delta, dtype=dtype)
    assert result.dtype == dtype.numpy
    np.testing.assert_allclose(result, expected, rtol=1e-6)


def test_arange_past_its_limit_is_empty_like_onnx_range():
    assert run_nullary("arange", start=0, limit=-1, delta=1, dtype=DType.i64).shape == (0,)


def test_full():
    result = run_nullary("full", shape=(2, 3), value=1.5, dtype=DType.f16)
    np.testing.assert_array_equal(result, np.full((2, 3), 1.5, np.float16))
    assert run_nullary("full", shape=(), value=-2, dtype=DType.i8).dtype == np.int8


@pytest.mark.parametrize(
    ("op", "attrs", "message"),
    [
        ("arange", {"limit": 4.0, "delta": 0.0}, "delta must not be 0"),
        ("full", {"shape": (2, -1), "value": 0.0, "dtype": DType.f32}, "negative dimension"),
    ],
)
def test_shape_errors(op, attrs, message):
    definition = ir.get_op(op)
    with pytest.raises(ShapeError, match=message):
        definition.infer_types((), definition.normalize_attrs(attrs))


def test_const_type_comes_from_the_table_only():
    definition = ir.get_op("const")
    with pytest.raises(ShapeError, match="constant table"):
        definition.infer_types((), definition.normalize_attrs({"name": "w"}))
    builder = GraphBuilder("t")
    with pytest.raises(ValueError, match=r"GraphBuilder\.constant"):
        builder.op("const", name="w")
