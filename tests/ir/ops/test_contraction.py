"""Contractions (matmul, gemm, conv, conv_transpose): shape rules with their errors, references
against torch, FLOP counts and the text round trip."""

import re
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ir
from ir import DType, GraphBuilder, ShapeError, TensorType, get_op

RNG = np.random.default_rng(0)


def T(text: str) -> TensorType:
    """`T("f32[2,3]")` is the tensor type written in the text form."""
    dtype, dims = text[:-1].split("[")
    return TensorType(tuple(int(d) for d in dims.split(",") if d), DType(dtype))


def infer(op: str, types: str, **attrs) -> str:
    """The printed output type of `op` on the types written as "f32[2,3] f32[3]"."""
    definition = get_op(op)
    (result,) = definition.infer_types(tuple(T(t) for t in types.split()), definition.normalize_attrs(attrs))
    return str(result)


def build(op: str, *arrays: np.ndarray, dtype: DType | None = None, **attrs) -> ir.Graph:
    """A one-node graph over `arrays` as inputs (of `dtype` if given), checked to print and parse back."""
    builder = GraphBuilder("t")
    inputs = [builder.input(f"x{i}", a.shape, dtype or DType.from_numpy(a.dtype)) for i, a in enumerate(arrays)]
    graph = builder.build(builder.op(op, *inputs, **attrs))
    assert str(ir.parse_graph(str(graph))) == str(graph)
    return graph


def run_op(op: str, *arrays: np.ndarray, oracle: bool = False, **attrs) -> np.ndarray:
    return ir.run(build(op, *arrays, **attrs), list(arrays), oracle=oracle)[0]


def floats(*shape: int, dtype=np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


def t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(array, dtype=np.float64 if array.dtype == np.float64 else np.float32))


def close(actual: np.ndarray, expected, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    expected = expected.numpy() if isinstance(expected, torch.Tensor) else expected
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual.astype(np.float64), expected.astype(np.float64), rtol=rtol, atol=atol)


# --- matmul -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("types", "expected"),
    [
        ("f32[2,3] f32[3,4]", "f32[2,4]"),
        ("f32[3] f32[3,4]", "f32[4]"),
        ("f32[2,3] f32[3]", "f32[2]"),
        ("f32[3] f32[3]", "f32[]"),
        ("f32[5,1,2,3] f32[4,3,6]", "f32[5,4,2,6]"),
        ("f16[7,2,3] f16[3]", "f16[7,2]"),
        ("i64[2,0] i64[0,4]", "i64[2,4]"),
    ],
)
def test_matmul_shapes(types, expected):
    assert infer("matmul", types) == expected


@pytest.mark.parametrize(
    ("types", "error"),
    [
        ("f32[2,3] f32[4,5]", "matmul: contracted dimensions differ (3 vs 4): f32[2,3] @ f32[4,5]"),
        ("f32[3] f32[4]", "matmul: contracted dimensions differ (3 vs 4)"),
        ("f32[2,3] f16[3,4]", "matmul: inputs must have one dtype, got f32[2,3], f16[3,4]"),
        ("f32[2,2,3] f32[3,3,4]", "matmul: cannot broadcast [2] with [3]"),
        ("f32[] f32[3]", "matmul: operands must have rank >= 1, got f32[] and f32[3]"),
        ("bool[2,2] bool[2,2]", "matmul does not take bool inputs"),
        ("i8[2,2] i8[2,2]", "matmul does not take i8 inputs"),
    ],
)
def test_matmul_shape_errors(types, error):
    with pytest.raises(ShapeError, match=re.escape(error)):
        infer("matmul", types)


@pytest.mark.parametrize(
    ("a", "b"),
    [((4, 5), (5, 3)), ((5,), (5, 3)), ((4, 5), (5,)), ((5,), (5,)), ((2, 1, 4, 5), (3, 5, 6)), ((2, 4, 5), (5, 2))],
)
def test_matmul_matches_torch(a, b):
    x, y = floats(*a), floats(*b)
    close(run_op("matmul", x, y), torch.matmul(t(x), t(y)))


def test_matmul_integers_are_exact():
    x = RNG.integers(-1000, 1000, (3, 4, 5), dtype=np.int64)
    y = RNG.integers(-1000, 1000, (5, 2), dtype=np.int64)
    result = run_op("matmul", x, y)
    assert result.dtype == np.int64
    np.testing.assert_array_equal(result, torch.matmul(torch.from_numpy(x), torch.from_numpy(y)).numpy())
    small = x.astype(np.int32), y.astype(np.int32)
    assert run_op("matmul", *small).dtype == np.int32


@pytest.mark.parametrize("dtype", [DType.f16, DType.bf16])
def test_matmul_low_precision_accumulates_in_f32_and_rounds_once(dtype):
    x, y = floats(8, 64).astype(dtype.numpy), floats(64, 8).astype(dtype.numpy)
    result = run_op("matmul", x, y)
    assert result.dtype == dtype.numpy
    exact = x.astype(np.float32) @ y.astype(np.float32)
    np.testing.assert_array_equal(result, exact.astype(dtype.numpy))


def test_matmul_oracle_is_f64():
    x, y = floats(3, 7), floats(7, 2)
    result = run_op("matmul", x, y, oracle=True)
    assert result.dtype == np.float64
    np.testing.assert_allclose(result, x.astype(np.float64) @ y.astype(np.float64), rtol=1e-14)


@pytest.mark.parametrize(("types", "flops"), [("f32[2,3] f32[3,4]", 2 * 2 * 4 * 3), ("f32[5,2,3] f32[3]", 2 * 10 * 3)])
def test_matmul_flops(types, flops):
    inputs = tuple(T(x) for x in types.split())
    op = get_op("matmul")
    outputs = op.infer_types(inputs, op.normalize_attrs({}))
    assert op.cost_flops(inputs, outputs, op.normalize_attrs({})) == flops


# --- gemm ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("types", "attrs", "expected"),
    [
        ("f32[4,3] f32[3,5]", {}, "f32[4,5]"),
        ("f32[4,3] f32[5,3]", {"trans_b": True}, "f32[4,5]"),
        ("f32[3,4] f32[3,5]", {"trans_a": True}, "f32[4,5]"),
        ("f32[3,4] f32[5,3] f32[5]", {"trans_a": True, "trans_b": True}, "f32[4,5]"),
        ("f32[2,7,3] f32[5,3] f32[5]", {"trans_b": True}, "f32[2,7,5]"),
        ("f32[3] f32[3,5] f32[]", {}, "f32[5]"),
        ("f32[4,3] f32[3,5] f32[4,1]", {"alpha": 2.0, "beta": 0.5}, "f32[4,5]"),
    ],
)
def test_gemm_shapes(types, attrs, expected):
    assert infer("gemm", types, **attrs) == expected


@pytest.mark.parametrize(
    ("types", "attrs", "error"),
    [
        ("f32[4,3] f32[2,3,5]", {}, "gemm: b must have rank 2, got f32[2,3,5]"),
        ("f32[2,3,4] f32[3,5]", {"trans_a": True}, "gemm: a (with trans_a) must have rank 2, got f32[2,3,4]"),
        ("f32[] f32[3,5]", {}, "gemm: a must have rank >= 1, got f32[]"),
        ("f32[4,3] f32[3,5]", {"trans_b": True}, "gemm: contracted dimensions differ (3 vs 5)"),
        ("f32[4,3] f32[3,5] f32[4]", {}, "gemm: c f32[4] does not broadcast to the output f32[4,5]"),
        ("f32[4,3] f32[3,5] f32[2,4,5]", {}, "gemm: c f32[2,4,5] does not broadcast to the output f32[4,5]"),
        ("f32[4,3] f32[3,5] f16[5]", {}, "gemm: inputs must have one dtype"),
    ],
)
def test_gemm_shape_errors(types, attrs, error):
    with pytest.raises(ShapeError, match=re.escape(error)):
        infer("gemm", types, **attrs)


@pytest.mark.parametrize("x_shape", [(4, 6), (6,), (2, 3, 6)])
def test_gemm_is_torch_linear_with_trans_b(x_shape):
    x, w, bias = floats(*x_shape), floats(5, 6), floats(5)
    close(run_op("gemm", x, w, bias, trans_b=True), F.linear(t(x), t(w), t(bias)))
    close(run_op("gemm", x, w, trans_b=True), F.linear(t(x), t(w)))


@pytest.mark.parametrize(("trans_a", "trans_b"), [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_transposes_and_scales(trans_a, trans_b):
    a = floats(3, 4) if trans_a else floats(4, 3)
    b = floats(5, 3) if trans_b else floats(3, 5)
    c = floats(4, 1)
    ta, tb = (t(a).T if trans_a else t(a)), (t(b).T if trans_b else t(b))
    expected = 1.5 * (ta @ tb) - 0.25 * t(c)
    close(run_op("gemm", a, b, c, trans_a=trans_a, trans_b=trans_b, alpha=1.5, beta=-0.25), expected)


def test_gemm_integers_are_exact():
    a = RNG.integers(-100, 100, (4, 3), dtype=np.int32)
    b = RNG.integers(-100, 100, (3, 5), dtype=np.int32)
    c = RNG.integers(-100, 100, (5,), dtype=np.int32)
    result = run_op("gemm", a, b, c)
    assert result.dtype == np.int32
    np.testing.assert_array_equal(result, a @ b + c)


def test_gemm_f16_and_oracle():
    a, b, c = (floats(*s).astype(np.float16) for s in ((4, 32), (6, 32), (6,)))
    expected = F.linear(t(a), t(b), t(c))
    result = run_op("gemm", a, b, c, trans_b=True)
    assert result.dtype == np.float16
    close(result, expected, rtol=2e-3, atol=2e-3)
    oracle = run_op("gemm", a, b, c, trans_b=True, oracle=True)
    assert oracle.dtype == np.float64
    close(oracle, expected, rtol=1e-5, atol=1e-5)


def test_gemm_flops_count_the_epilogue():
    op = get_op("gemm")
    inputs = (T("f32[4,3]"), T("f32[5,3]"), T("f32[5]"))
    attrs = op.normalize_attrs({"trans_b": True, "alpha": 2.0})
    outputs = op.infer_types(inputs, attrs)
    assert op.cost_flops(inputs, outputs, attrs) == (2 * 3 + 1 + 2) * 20


# --- conv ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("types", "attrs", "expected"),
    [
        ("f32[1,3,8,8] f32[4,3,3,3]", {}, "f32[1,4,6,6]"),
        ("f32[1,3,8,8] f32[4,3,3,3] f32[4]", {"pads": [1, 1, 1, 1]}, "f32[1,4,8,8]"),
        ("f32[2,4,9,9] f32[6,2,3,3]", {"strides": [2, 2], "groups": 2}, "f32[2,6,4,4]"),
        ("f32[1,3,10] f32[5,3,3]", {"dilations": [2], "pads": [1, 3]}, "f32[1,5,10]"),
        ("f32[1,2,5,6,7] f32[3,2,1,2,3]", {"strides": [1, 2, 3]}, "f32[1,3,5,3,2]"),
        ("f16[1,1,4,4] f16[1,1,4,4]", {}, "f16[1,1,1,1]"),
        ("f32[0,3,8,8] f32[4,3,3,3]", {}, "f32[0,4,6,6]"),
    ],
)
def test_conv_shapes(types, attrs, expected):
    assert infer("conv", types, **attrs) == expected


@pytest.mark.parametrize(
    ("types", "attrs", "error"),
    [
        ("f32[3,8] f32[4,3,3]", {}, "conv: x must be [N, C, *spatial] with 1 to 3 spatial dims, got f32[3,8]"),
        ("f32[1,1,2,2,2,2] f32[1,1,1,1,1,1]", {}, "conv: x must be [N, C, *spatial] with 1 to 3 spatial dims"),
        ("f32[1,3,8,8] f32[4,3,3]", {}, "conv: w must have rank 4 like x f32[1,3,8,8], got f32[4,3,3]"),
        ("f32[1,3,8,8] f32[4,2,3,3]", {}, "conv: w f32[4,2,3,3] takes 2 channels per group, x f32[1,3,8,8] has 3"),
        ("f32[1,4,8,8] f32[3,2,3,3]", {"groups": 2}, "conv: groups=2 does not divide the 3 output channels"),
        ("f32[1,3,8,8] f32[3,1,3,3]", {"groups": 2}, "conv: groups=2 does not divide the 3 channels of x"),
        ("f32[1,3,8,8] f32[3,3,3,3]", {"groups": 0}, "conv: groups must be >= 1, got 0"),
        ("f32[1,3,8,8] f32[4,3,3,3] f32[3]", {}, "conv: bias must be [4] (one per output channel), got f32[3]"),
        ("f32[1,3,8,8] f32[4,3,3,3]", {"strides": [1]}, "conv: strides needs 2 values for 2 spatial dims, got (1,)"),
        ("f32[1,3,8,8] f32[4,3,3,3]", {"strides": [0, 1]}, "conv: strides must be >= 1, got (0, 1)"),
        ("f32[1,3,8,8] f32[4,3,3,3]", {"dilations": [1, 1, 1]}, "conv: dilations needs 2 values"),
        ("f32[1,3,8,8] f32[4,3,3,3]", {"pads": [1, 1]}, "conv: pads needs 4 values (begins, then ends)"),
        ("f32[1,3,8,8] f32[4,3,3,3]", {"pads": [0, -1, 0, 0]}, "conv: pads must be >= 0, got (0, -1, 0, 0)"),
        ("f32[1,3,2,8] f32[4,3,3,3]", {}, "conv: the kernel (3 with dilation 1) is larger than the padded input"),
        ("f32[1,3,8,8] f32[4,3,3,3]", {"dilations": [4, 1]}, "(3 with dilation 4) is larger than the padded input"),
        ("f32[1,3,8,8] f16[4,3,3,3]", {}, "conv: inputs must have one dtype"),
        ("i32[1,3,8,8] i32[4,3,3,3]", {}, "conv does not take i32 inputs"),
    ],
)
def test_conv_shape_errors(types, attrs, error):
    with pytest.raises(ShapeError, match=re.escape(error)):
        infer("conv", types, **attrs)


CONV2D_CASES = [
    # (x shape, w shape, bias, strides, padding, dilation, groups)
    ((2, 3, 9, 11), (4, 3, 3, 3), True, (1, 1), (0, 0), (1, 1), 1),
    ((1, 3, 9, 11), (4, 3, 3, 2), False, (2, 1), (1, 2), (1, 1), 1),
    ((2, 4, 10, 10), (6, 2, 3, 3), True, (2, 2), (1, 1), (2, 2), 2),
    ((1, 6, 7, 7), (6, 1, 3, 3), True, (1, 1), (1, 1), (1, 1), 6),  # depthwise
    ((1, 4, 8, 9), (8, 4, 1, 1), False, (3, 2), (0, 0), (1, 1), 1),
]


@pytest.mark.parametrize(("x_shape", "w_shape", "bias", "strides", "padding", "dilation", "groups"), CONV2D_CASES)
def test_conv2d_matches_torch(x_shape, w_shape, bias, strides, padding, dilation, groups):
    x, w = floats(*x_shape), floats(*w_shape)
    b = floats(w_shape[0]) if bias else None
    expected = F.conv2d(t(x), t(w), None if b is None else t(b), strides, padding, dilation, groups)
    attrs = {"strides": strides, "pads": padding * 2, "dilations": dilation, "groups": groups}
    close(run_op("conv", x, w, *([b] if bias else []), **attrs), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("stride", "padding", "dilation", "groups"), [(1, 0, 1, 1), (2, 1, 1, 1), (1, 2, 3, 2), (3, 0, 2, 4)]
)
def test_conv1d_matches_torch(stride, padding, dilation, groups):
    x, w, b = floats(2, 4, 17), floats(8, 4 // groups, 3), floats(8)
    expected = F.conv1d(t(x), t(w), t(b), stride, padding, dilation, groups)
    attrs = {"strides": [stride], "pads": [padding, padding], "dilations": [dilation], "groups": groups}
    close(run_op("conv", x, w, b, **attrs), expected, rtol=1e-4, atol=1e-4)


def test_conv3d_matches_torch():
    x, w, b = floats(1, 2, 5, 6, 7), floats(4, 2, 2, 3, 3), floats(4)
    expected = F.conv3d(t(x), t(w), t(b), stride=(1, 2, 1), padding=(1, 0, 1), dilation=(2, 1, 1))
    attrs = {"strides": [1, 2, 1], "pads": [1, 0, 1, 1, 0, 1], "dilations": [2, 1, 1]}
    close(run_op("conv", x, w, b, **attrs), expected, rtol=1e-4, atol=1e-4)


def test_conv_asymmetric_pads_equal_explicit_padding():
    x, w = floats(1, 2, 6, 7), floats(3, 2, 3, 3)
    # ONNX layout: [top, left, bottom, right]; F.pad takes (left, right, top, bottom).
    expected = F.conv2d(F.pad(t(x), (2, 0, 0, 1)), t(w), stride=2)
    close(run_op("conv", x, w, strides=[2, 2], pads=[0, 2, 1, 0]), expected, rtol=1e-5, atol=1e-5)


def test_conv_by_hand():
    x = np.arange(5, dtype=np.float32).reshape(1, 1, 5)  # [0, 1, 2, 3, 4]
    w = np.array([[[1, 0, -1]]], dtype=np.float32)
    # y[i] = x[i] - x[i + 2] over the zero-padded [0, 0, 1, 2, 3, 4, 0]
    np.testing.assert_array_equal(run_op("conv", x, w, pads=[1, 1])[0, 0], [-1, -2, -2, -2, 3])


def test_conv_and_conv_transpose_take_an_empty_batch():
    w = floats(4, 3, 3, 3)
    assert run_op("conv", np.zeros((0, 3, 8, 8), np.float32), w).shape == (0, 4, 6, 6)
    assert run_op("conv_transpose", np.zeros((0, 4, 5, 5), np.float32), w).shape == (0, 3, 7, 7)


def test_conv_f16_and_oracle():
    x, w, b = floats(1, 8, 6, 6).astype(np.float16), floats(4, 8, 3, 3).astype(np.float16), floats(4)
    b = b.astype(np.float16)
    expected = F.conv2d(t(x), t(w), t(b), padding=1)
    result = run_op("conv", x, w, b, pads=[1, 1, 1, 1])
    assert result.dtype == np.float16
    close(result, expected, rtol=5e-3, atol=5e-3)
    oracle = run_op("conv", x, w, b, pads=[1, 1, 1, 1], oracle=True)
    assert oracle.dtype == np.float64
    close(oracle, expected, rtol=1e-5, atol=1e-5)


def test_conv_reference_is_fast_on_a_resnet_layer():
    x, w = floats(1, 64, 56, 56), floats(64, 64, 3, 3)
    graph = build("conv", x, w, pads=[1, 1, 1, 1])
    start = time.perf_counter()
    (result,) = ir.run(graph, [x, w])
    elapsed = time.perf_counter() - start
    close(result, F.conv2d(t(x), t(w), padding=1), rtol=1e-3, atol=1e-3)
    assert elapsed < 1.0, f"conv reference took {elapsed:.2f} s"


def test_conv_flops():
    op = get_op("conv")
    inputs = (T("f32[1,4,8,8]"), T("f32[6,2,3,3]"), T("f32[6]"))
    attrs = op.normalize_attrs({"groups": 2})
    outputs = op.infer_types(inputs, attrs)
    assert outputs == (T("f32[1,6,6,6]"),)
    assert op.cost_flops(inputs, outputs, attrs) == (2 * 2 * 9 + 1) * 6 * 36


# --- conv_transpose -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("types", "attrs", "expected"),
    [
        ("f32[1,4,5,5] f32[4,3,3,3]", {}, "f32[1,3,7,7]"),
        ("f32[1,4,5,5] f32[4,3,3,3] f32[6]", {"groups": 2, "strides": [2, 2]}, "f32[1,6,11,11]"),
        ("f32[1,4,5,5] f32[4,3,3,3]", {"strides": [2, 2], "pads": [1] * 4, "output_padding": [1, 1]}, "f32[1,3,10,10]"),
        ("f32[2,2,7] f32[2,5,4]", {"dilations": [2], "pads": [0, 3]}, "f32[2,5,10]"),
        ("f32[1,2,3,3,3] f32[2,1,2,2,2]", {"strides": [2, 1, 3]}, "f32[1,1,6,4,8]"),
    ],
)
def test_conv_transpose_shapes(types, attrs, expected):
    assert infer("conv_transpose", types, **attrs) == expected


@pytest.mark.parametrize(
    ("types", "attrs", "error"),
    [
        ("f32[1,4,5,5] f32[3,3,3,3]", {}, "conv_transpose: w f32[3,3,3,3] must be [C, M/groups, *kernel] with C = 4"),
        ("f32[1,4,5,5] f32[4,3,3]", {}, "conv_transpose: w must have rank 4 like x"),
        ("f32[4,5] f32[4,3,3]", {}, "conv_transpose: x must be [N, C, *spatial] with 1 to 3 spatial dims"),
        ("f32[1,3,5,5] f32[3,3,3,3]", {"groups": 2}, "conv_transpose: groups=2 does not divide the 3 channels"),
        ("f32[1,4,5,5] f32[4,3,3,3] f32[3]", {"groups": 2}, "conv_transpose: bias must be [6]"),
        ("f32[1,4,5,5] f32[4,3,3,3]", {"output_padding": [1, 0]}, "output_padding (1, 0) must be >= 0 and smaller"),
        ("f32[1,4,5,5] f32[4,3,3,3]", {"output_padding": [1]}, "conv_transpose: output_padding needs 2 values"),
        ("f32[1,4,1,1] f32[4,3,1,1]", {"pads": [1, 0, 0, 0]}, "conv_transpose: pads (1, 0, 0, 0) leave no output"),
        ("f32[1,4,5,5] f32[4,3,3,3]", {"strides": [2]}, "conv_transpose: strides needs 2 values"),
    ],
)
def test_conv_transpose_shape_errors(types, attrs, error):
    with pytest.raises(ShapeError, match=re.escape(error)):
        infer("conv_transpose", types, **attrs)


@pytest.mark.parametrize(
    ("stride", "padding", "output_padding", "dilation", "groups"),
    [(1, 0, 0, 1, 1), (2, 1, 1, 1, 1), (3, 2, 2, 1, 2), (2, 0, 1, 2, 1), (1, 1, 1, 2, 4)],
)
def test_conv_transpose2d_matches_torch(stride, padding, output_padding, dilation, groups):
    x, w, b = floats(2, 4, 5, 6), floats(4, 3, 3, 2), floats(3 * groups)
    expected = F.conv_transpose2d(t(x), t(w), t(b), stride, padding, output_padding, groups, dilation)
    attrs = {
        "strides": [stride] * 2,
        "pads": [padding] * 4,
        "output_padding": [output_padding] * 2,
        "dilations": [dilation] * 2,
        "groups": groups,
    }
    close(run_op("conv_transpose", x, w, b, **attrs), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("stride", "padding", "output_padding", "groups"), [(1, 0, 0, 1), (2, 1, 1, 2), (4, 3, 3, 1)])
def test_conv_transpose1d_matches_torch(stride, padding, output_padding, groups):
    x, w = floats(2, 4, 9), floats(4, 3, 5)
    expected = F.conv_transpose1d(t(x), t(w), None, stride, padding, output_padding, groups)
    attrs = {"strides": [stride], "pads": [padding] * 2, "output_padding": [output_padding], "groups": groups}
    close(run_op("conv_transpose", x, w, **attrs), expected, rtol=1e-4, atol=1e-4)


def test_conv_transpose3d_matches_torch():
    x, w = floats(1, 2, 3, 4, 3), floats(2, 3, 2, 3, 2)
    expected = F.conv_transpose3d(t(x), t(w), stride=(2, 1, 2), padding=(0, 1, 1))
    attrs = {"strides": [2, 1, 2], "pads": [0, 1, 1] * 2}
    close(run_op("conv_transpose", x, w, **attrs), expected, rtol=1e-4, atol=1e-4)


def test_conv_transpose_asymmetric_pads_trim_each_side():
    x, w = floats(1, 2, 4, 5), floats(2, 3, 3, 3)
    full = F.conv_transpose2d(t(x), t(w), stride=2)
    # ONNX layout [top, left, bottom, right]: trim 1 row at the top, 2 columns on the right.
    close(run_op("conv_transpose", x, w, strides=[2, 2], pads=[1, 0, 0, 2]), full[:, :, 1:, :-2])


def test_conv_transpose_is_the_gradient_of_conv():
    x = torch.from_numpy(floats(1, 3, 7, 8)).requires_grad_()
    w, grad = floats(4, 3, 3, 3), floats(1, 4, 4, 4)
    F.conv2d(x, t(w), stride=2, padding=1).backward(t(grad))
    result = run_op("conv_transpose", grad, w, strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[0, 1])
    close(result, x.grad, rtol=1e-5, atol=1e-5)


def test_conv_transpose_bf16_and_oracle():
    x, w, b = (floats(*s).astype(DType.bf16.numpy) for s in ((1, 4, 3, 3), (4, 2, 3, 3), (2,)))
    expected = F.conv_transpose2d(t(x), t(w), t(b), stride=2)
    result = run_op("conv_transpose", x, w, b, strides=[2, 2])
    assert result.dtype == DType.bf16.numpy
    close(result, expected, rtol=2e-2, atol=2e-2)
    close(run_op("conv_transpose", x, w, b, strides=[2, 2], oracle=True), expected, rtol=1e-5, atol=1e-5)


def test_conv_transpose_flops():
    op = get_op("conv_transpose")
    inputs = (T("f32[1,4,5,5]"), T("f32[4,3,3,3]"))
    attrs = op.normalize_attrs({"groups": 2})
    outputs = op.infer_types(inputs, attrs)
    assert outputs == (T("f32[1,6,7,7]"),)
    assert op.cost_flops(inputs, outputs, attrs) == 2 * 100 * 3 * 9
