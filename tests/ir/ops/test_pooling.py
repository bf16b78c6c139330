"""Pooling (max_pool, avg_pool, global_avg_pool): shape rules with their errors, references
against torch and against a pixel-by-pixel loop, FLOP counts and the text round trip."""

import itertools
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ir
from ir import DType, GraphBuilder, ShapeError, TensorType, get_op

RNG = np.random.default_rng(1)


def T(text: str) -> TensorType:
    """`T("f32[2,3]")` is the tensor type written in the text form."""
    dtype, dims = text[:-1].split("[")
    return TensorType(tuple(int(d) for d in dims.split(",") if d), DType(dtype))


def infer(op: str, x: str, **attrs) -> str:
    definition = get_op(op)
    (result,) = definition.infer_types((T(x),), definition.normalize_attrs(attrs))
    return str(result)


def run_op(op: str, x: np.ndarray, oracle: bool = False, **attrs) -> np.ndarray:
    """Run `op` on `x` in a one-node graph, checking that the graph prints and parses back."""
    builder = GraphBuilder("t")
    graph = builder.build(builder.op(op, builder.input("x", x.shape, DType.from_numpy(x.dtype)), **attrs))
    assert str(ir.parse_graph(str(graph))) == str(graph)
    return ir.run(graph, [x], oracle=oracle)[0]


def floats(*shape: int, dtype=np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


def close(actual: np.ndarray, expected, rtol: float = 1e-6, atol: float = 1e-6) -> None:
    expected = expected.numpy() if isinstance(expected, torch.Tensor) else expected
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual.astype(np.float64), expected.astype(np.float64), rtol=rtol, atol=atol)


def pool_by_loop(x, reduce, kernel, strides, pads, dilations, out, include):
    """A pixel-by-pixel 2-D pool: `reduce(taps)` over the taps that `include(i, j, in_input)` admits."""
    result = np.empty((*x.shape[:2], *out), dtype=np.float64)
    for oi, oj in itertools.product(range(out[0]), range(out[1])):
        taps = []
        for ki, kj in itertools.product(range(kernel[0]), range(kernel[1])):
            i = oi * strides[0] - pads[0] + ki * dilations[0]
            j = oj * strides[1] - pads[1] + kj * dilations[1]
            inside = 0 <= i < x.shape[2] and 0 <= j < x.shape[3]
            if include(i, j, inside):
                taps.append(x[:, :, i, j] if inside else np.zeros(x.shape[:2]))
        result[:, :, oi, oj] = reduce(np.stack(taps))
    return result


# --- max_pool -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "attrs", "expected"),
    [
        ("f32[1,3,8,8]", {"kernel": [2, 2], "strides": [2, 2]}, "f32[1,3,4,4]"),
        ("f32[1,3,8,8]", {"kernel": [3, 3]}, "f32[1,3,6,6]"),  # () strides are 1, as in ONNX
        ("f32[1,3,9,9]", {"kernel": [2, 2], "strides": [2, 2], "ceil_mode": True}, "f32[1,3,5,5]"),
        ("f32[1,3,8,8]", {"kernel": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, "f32[1,3,4,4]"),
        ("f32[2,1,10]", {"kernel": [3], "dilations": [2], "pads": [0, 4]}, "f32[2,1,10]"),
        ("i8[1,1,4,5,6]", {"kernel": [2, 2, 3], "strides": [2, 2, 3]}, "i8[1,1,2,2,2]"),
        # ceil_mode's extra window would start in the end padding, so it is dropped.
        (
            "f32[1,1,5,5]",
            {"kernel": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": True},
            "f32[1,1,3,3]",
        ),
    ],
)
def test_max_pool_shapes(x, attrs, expected):
    assert infer("max_pool", x, **attrs) == expected


@pytest.mark.parametrize(
    ("x", "attrs", "error"),
    [
        ("f32[3,8]", {"kernel": [2]}, "max_pool: x must be [N, C, *spatial] with 1 to 3 spatial dims, got f32[3,8]"),
        ("f32[1,3,8,8]", {"kernel": [2]}, "max_pool: kernel needs 2 values for x f32[1,3,8,8], got (2,)"),
        ("f32[1,3,8,8]", {"kernel": [0, 2]}, "max_pool: kernel sizes must be >= 1, got (0, 2)"),
        ("f32[1,3,8,8]", {"kernel": [2, 2], "strides": [2]}, "max_pool: strides needs 2 values"),
        ("f32[1,3,8,8]", {"kernel": [2, 2], "pads": [1, 1]}, "max_pool: pads needs 4 values (begins, then ends)"),
        ("f32[1,3,8,8]", {"kernel": [3, 3], "pads": [3, 0, 0, 0]}, "max_pool: pads (3, 0, 0, 0) must be smaller"),
        ("f32[1,3,8,8]", {"kernel": [3, 3], "dilations": [0, 1]}, "max_pool: dilations must be >= 1"),
        ("f32[1,3,2,8]", {"kernel": [3, 3]}, "max_pool: the kernel (3 with dilation 1) is larger than the padded"),
        ("bool[1,3,8,8]", {"kernel": [2, 2]}, "max_pool does not take bool inputs"),
    ],
)
def test_max_pool_shape_errors(x, attrs, error):
    with pytest.raises(ShapeError, match=re.escape(error)):
        infer("max_pool", x, **attrs)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation", "ceil_mode"),
    [
        (2, 2, 0, 1, False),
        (3, 2, 1, 1, False),
        (3, 2, 1, 1, True),
        ((3, 2), (2, 3), (1, 0), (1, 1), True),
        (3, 1, 1, 2, False),
        (2, 3, 1, (2, 1), True),
    ],
)
def test_max_pool2d_matches_torch(kernel, stride, padding, dilation, ceil_mode):
    x = floats(2, 3, 9, 10)
    expected = F.max_pool2d(torch.from_numpy(x), kernel, stride, padding, dilation, ceil_mode=ceil_mode)
    pair = lambda v: [v, v] if isinstance(v, int) else list(v)
    attrs = {
        "kernel": pair(kernel),
        "strides": pair(stride),
        "pads": pair(padding) * 2,
        "dilations": pair(dilation),
        "ceil_mode": ceil_mode,
    }
    close(run_op("max_pool", x, **attrs), expected)


def test_max_pool1d_and_3d_match_torch():
    x = floats(2, 3, 11)
    expected = F.max_pool1d(torch.from_numpy(x), 3, 2, 1, ceil_mode=True)
    close(run_op("max_pool", x, kernel=[3], strides=[2], pads=[1, 1], ceil_mode=True), expected)
    x = floats(1, 2, 5, 6, 7)
    expected = F.max_pool3d(torch.from_numpy(x), (2, 3, 2), (2, 1, 2), (1, 1, 0))
    close(run_op("max_pool", x, kernel=[2, 3, 2], strides=[2, 1, 2], pads=[1, 1, 0] * 2), expected)


def test_max_pool_padding_never_wins():
    x = -np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3) - 100  # all far below the zero a pad would be
    result = run_op("max_pool", x, kernel=[2, 2], pads=[1, 1, 1, 1])
    assert result.max() <= -101
    integers = (x + 100).astype(np.int8)
    result = run_op("max_pool", integers, kernel=[2, 2], pads=[1, 1, 1, 1])
    assert result.dtype == np.int8 and result.max() == -1


def test_max_pool_asymmetric_pads_match_loop():
    x = floats(1, 2, 7, 6)
    kernel, strides, pads, dilations = (3, 2), (2, 2), (2, 0, 1, 1), (1, 2)
    result = run_op("max_pool", x, kernel=kernel, strides=strides, pads=pads, dilations=dilations, ceil_mode=True)
    assert result.shape == (1, 2, 5, 3)

    def include(i, j, inside):  # padding and the ceil_mode overhang never take part in a max
        return inside

    expected = pool_by_loop(x, lambda taps: taps.max(0), kernel, strides, pads[:2], dilations, (5, 3), include)
    close(result, expected)


def test_max_pool_f16_and_oracle():
    x = floats(1, 2, 6, 6, dtype=np.float16)
    expected = F.max_pool2d(torch.from_numpy(x).float(), 2, 2)
    result = run_op("max_pool", x, kernel=[2, 2], strides=[2, 2])
    assert result.dtype == np.float16
    close(result, expected, rtol=0, atol=0)  # the max of f16 values is one of them, exactly
    oracle = run_op("max_pool", x, oracle=True, kernel=[2, 2], strides=[2, 2])
    assert oracle.dtype == np.float64
    close(oracle, expected, rtol=0, atol=0)


# --- avg_pool -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "attrs", "expected"),
    [
        ("f32[1,3,8,8]", {"kernel": [2, 2], "strides": [2, 2]}, "f32[1,3,4,4]"),
        ("f32[1,3,9,9]", {"kernel": [2, 2], "strides": [2, 2], "ceil_mode": True}, "f32[1,3,5,5]"),
        ("f16[2,4,7]", {"kernel": [3], "pads": [1, 1], "count_include_pad": True}, "f16[2,4,7]"),
        ("f32[1,1,4,5,6]", {"kernel": [2, 2, 2], "strides": [2, 1, 3]}, "f32[1,1,2,4,2]"),
    ],
)
def test_avg_pool_shapes(x, attrs, expected):
    assert infer("avg_pool", x, **attrs) == expected


@pytest.mark.parametrize(
    ("x", "attrs", "error"),
    [
        ("f32[1,3,8,8]", {"kernel": [2, 2, 2]}, "avg_pool: kernel needs 2 values for x f32[1,3,8,8], got (2, 2, 2)"),
        ("f32[1,3,8,8]", {"kernel": [2, 2], "pads": [0, 0, 2, 0]}, "avg_pool: pads (0, 0, 2, 0) must be smaller"),
        ("f32[1,3,8,8]", {"kernel": [2, 2], "pads": [0, 0, -1, 0]}, "avg_pool: pads must be >= 0"),
        ("f32[1,3,8,8]", {"kernel": [2, 2], "strides": [1, 0]}, "avg_pool: strides must be >= 1, got (1, 0)"),
        ("f32[1,3,8,1]", {"kernel": [2, 2]}, "avg_pool: the kernel (2 with dilation 1) is larger than the padded"),
        ("f32[8,8]", {"kernel": [2, 2]}, "avg_pool: x must be [N, C, *spatial]"),
        ("i32[1,3,8,8]", {"kernel": [2, 2]}, "avg_pool does not take i32 inputs"),
    ],
)
def test_avg_pool_shape_errors(x, attrs, error):
    with pytest.raises(ShapeError, match=re.escape(error)):
        infer("avg_pool", x, **attrs)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "ceil_mode", "count_include_pad"),
    [
        (2, 2, 0, False, False),
        (3, 2, 1, False, False),
        (3, 2, 1, False, True),
        (3, 2, 1, True, False),
        (3, 2, 1, True, True),
        ((3, 2), (2, 3), (1, 1), True, True),
        (2, 3, 1, True, False),
    ],
)
def test_avg_pool2d_matches_torch(kernel, stride, padding, ceil_mode, count_include_pad):
    x = floats(2, 3, 9, 10)
    expected = F.avg_pool2d(torch.from_numpy(x), kernel, stride, padding, ceil_mode, count_include_pad)
    pair = lambda v: [v, v] if isinstance(v, int) else list(v)
    attrs = {
        "kernel": pair(kernel),
        "strides": pair(stride),
        "pads": pair(padding) * 2,
        "ceil_mode": ceil_mode,
        "count_include_pad": count_include_pad,
    }
    close(run_op("avg_pool", x, **attrs), expected)


def test_avg_pool1d_and_3d_match_torch():
    x = floats(2, 3, 11)
    expected = F.avg_pool1d(torch.from_numpy(x), 4, 3, 2, ceil_mode=True, count_include_pad=False)
    close(run_op("avg_pool", x, kernel=[4], strides=[3], pads=[2, 2], ceil_mode=True), expected)
    x = floats(1, 2, 5, 6, 7)
    expected = F.avg_pool3d(torch.from_numpy(x), 3, 2, 1, count_include_pad=True)
    attrs = {"kernel": [3] * 3, "strides": [2] * 3, "pads": [1] * 6, "count_include_pad": True}
    close(run_op("avg_pool", x, **attrs), expected)


def test_avg_pool_by_hand():
    x = np.array([[[1, 2, 3, 4]]], dtype=np.float32)
    # windows over [pad, 1, 2, 3, 4, pad] with stride 2: {pad, 1}, {2, 3}, {4, pad}
    np.testing.assert_array_equal(run_op("avg_pool", x, kernel=[2], strides=[2], pads=[1, 1])[0, 0], [1, 2.5, 4])
    included = run_op("avg_pool", x, kernel=[2], strides=[2], pads=[1, 1], count_include_pad=True)
    np.testing.assert_array_equal(included[0, 0], [0.5, 2.5, 2])


@pytest.mark.parametrize("count_include_pad", [False, True])
def test_avg_pool_asymmetric_pads_match_loop(count_include_pad):
    x = floats(1, 2, 7, 6)
    kernel, strides, pads = (3, 2), (2, 2), (2, 0, 1, 1)
    attrs = {"kernel": kernel, "strides": strides, "pads": pads, "count_include_pad": count_include_pad}
    result = run_op("avg_pool", x, **attrs)

    def include(i, j, inside):  # a padded tap counts when count_include_pad; there is no ceil_mode overhang here
        return inside or count_include_pad

    expected = pool_by_loop(x, lambda taps: taps.mean(0), kernel, strides, pads[:2], (1, 1), result.shape[2:], include)
    close(result, expected)


def test_avg_pool_bf16_and_oracle():
    x = floats(1, 2, 6, 6).astype(DType.bf16.numpy)
    expected = F.avg_pool2d(torch.from_numpy(x.astype(np.float32)), 3, 1, 1, count_include_pad=False)
    result = run_op("avg_pool", x, kernel=[3, 3], pads=[1] * 4)
    assert result.dtype == DType.bf16.numpy
    close(result, expected, rtol=1e-2, atol=1e-2)
    close(run_op("avg_pool", x, oracle=True, kernel=[3, 3], pads=[1] * 4), expected)


# --- global_avg_pool ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "expected"),
    [("f32[2,3,7,7]", "f32[2,3,1,1]"), ("f16[1,4,9]", "f16[1,4,1]"), ("f32[1,2,3,4,5]", "f32[1,2,1,1,1]")],
)
def test_global_avg_pool_shapes(x, expected):
    assert infer("global_avg_pool", x) == expected


@pytest.mark.parametrize(
    ("x", "error"),
    [
        ("f32[2,3]", "global_avg_pool: x must be [N, C, *spatial] with spatial dims, got f32[2,3]"),
        ("i64[2,3,4]", "global_avg_pool does not take i64 inputs"),
    ],
)
def test_global_avg_pool_shape_errors(x, error):
    with pytest.raises(ShapeError, match=re.escape(error)):
        infer("global_avg_pool", x)


def test_global_avg_pool_matches_torch():
    x = floats(2, 3, 7, 5)
    close(run_op("global_avg_pool", x), F.adaptive_avg_pool2d(torch.from_numpy(x), 1))
    x = floats(2, 3, 9)
    close(run_op("global_avg_pool", x), F.adaptive_avg_pool1d(torch.from_numpy(x), 1))
    x = floats(1, 2, 3, 4, 5)
    close(run_op("global_avg_pool", x), F.adaptive_avg_pool3d(torch.from_numpy(x), 1))


def test_global_avg_pool_f16_and_oracle():
    x = floats(1, 3, 16, 16, dtype=np.float16)
    expected = F.adaptive_avg_pool2d(torch.from_numpy(x).float(), 1)
    result = run_op("global_avg_pool", x)
    assert result.dtype == np.float16
    close(result, expected, rtol=1e-3, atol=1e-3)
    close(run_op("global_avg_pool", x, oracle=True), expected)


# --- costs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "x", "attrs", "flops"),
    [
        ("max_pool", "f32[1,3,8,8]", {"kernel": [2, 2], "strides": [2, 2]}, 3 * 16 * 4),
        ("avg_pool", "f32[1,3,8,8]", {"kernel": [3, 3]}, 3 * 36 * 9),
        ("global_avg_pool", "f32[2,3,7,7]", {}, 2 * 3 * 49),
    ],
)
def test_pool_flops(op, x, attrs, flops):
    definition = get_op(op)
    normalized = definition.normalize_attrs(attrs)
    outputs = definition.infer_types((T(x),), normalized)
    assert definition.cost_flops((T(x),), outputs, normalized) == flops
