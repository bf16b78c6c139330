"""Each loop-nest template against the op's numpy reference (through the graph interpreter), on
the attribute combinations that change its index arithmetic: windows with strides, dilations,
groups, asymmetric and ceil_mode padding; scans forwards, backwards and exclusive; scatter's
reductions with colliding indices; ties and nans of argmax. The kernel interpreter bounds-checks
every load and store, so each test also shows that padding never reads outside a buffer."""

from __future__ import annotations

import numpy as np
import pytest

import ir
from ir import DType, GraphBuilder
from tests.backends.lowering.lowered import assert_close, run_lowered

_RNG = np.random.default_rng(7)


def _random(shape, dtype: DType = DType.f32) -> np.ndarray:
    if dtype.is_float:
        return _RNG.uniform(-3, 3, shape).astype(dtype.numpy)
    return _RNG.integers(-5, 6, shape).astype(dtype.numpy)


def _check(op: str, arrays: list[np.ndarray], dtypes: list[DType] | None = None, **attrs) -> list[np.ndarray]:
    """One `op` node over graph inputs holding `arrays`: lowered and interpreted alike."""
    builder = GraphBuilder(op)
    dtypes = dtypes or [DType.f32] * len(arrays)
    inputs = [builder.input(f"x{i}", a.shape, d) for i, (a, d) in enumerate(zip(arrays, dtypes))]
    result = builder.op(op, *inputs, **attrs)
    graph = builder.build(*(result if isinstance(result, tuple) else (result,)))
    expected = ir.run(graph, arrays)
    actual = run_lowered(graph, arrays)
    for value, a, e in zip(graph.outputs, actual, expected):
        assert_close(a, e, value.type.dtype, f"{op} {attrs}")
    return actual


# -- convolutions --------------------------------------------------------------------------------

CONVS = [
    # x shape, w shape, attributes
    ((1, 2, 7), (3, 2, 3), dict(strides=(2,), pads=(1, 2), dilations=(1,))),
    ((2, 4, 5, 6), (4, 2, 3, 2), dict(groups=2, pads=(1, 0, 2, 1), strides=(2, 1), dilations=(1, 2))),
    ((1, 3, 6, 5), (6, 1, 3, 3), dict(groups=3, dilations=(2, 2), pads=(2, 2, 2, 2))),
    ((1, 2, 4, 3, 4), (2, 2, 2, 1, 3), dict(strides=(1, 2, 2), pads=(0, 1, 1, 1, 0, 0))),
]


@pytest.mark.parametrize("x_shape, w_shape, attrs", CONVS)
@pytest.mark.parametrize("bias", [False, True])
def test_conv_matches_reference(x_shape, w_shape, attrs, bias):
    arrays = [_random(x_shape), _random(w_shape)] + ([_random(w_shape[:1])] if bias else [])
    _check("conv", arrays, **attrs)


def test_conv_in_half_precision_accumulates_in_f32():
    arrays = [_random((1, 4, 6, 6), DType.f16), _random((2, 4, 3, 3), DType.f16), _random((2,), DType.f16)]
    _check("conv", arrays, [DType.f16] * 3, pads=(1, 1, 1, 1))


CONV_TRANSPOSES = [
    ((1, 2, 4), (2, 3, 3), dict(strides=(2,), pads=(1, 0), output_padding=(1,))),
    ((1, 4, 3, 3), (4, 1, 3, 2), dict(groups=2, strides=(2, 3), pads=(1, 2, 0, 1), dilations=(1, 2))),
    ((2, 2, 3, 2), (2, 2, 2, 2), dict(strides=(3, 2), output_padding=(2, 1), dilations=(2, 1))),
    ((1, 1, 2, 2, 2), (1, 2, 2, 2, 2), dict(strides=(2, 1, 2), pads=(1, 0, 0, 0, 1, 1))),
]


@pytest.mark.parametrize("x_shape, w_shape, attrs", CONV_TRANSPOSES)
@pytest.mark.parametrize("bias", [False, True])
def test_conv_transpose_matches_reference(x_shape, w_shape, attrs, bias):
    channels = w_shape[1] * attrs.get("groups", 1)
    arrays = [_random(x_shape), _random(w_shape)] + ([_random((channels,))] if bias else [])
    _check("conv_transpose", arrays, **attrs)


# -- pooling -------------------------------------------------------------------------------------

POOLS = [
    ((1, 2, 7), dict(kernel=(3,), strides=(2,), pads=(1, 1))),
    ((1, 1, 5, 6), dict(kernel=(2, 3), strides=(2, 2), pads=(1, 0, 0, 2), ceil_mode=True)),
    ((2, 2, 5, 5), dict(kernel=(3, 3), strides=(2, 2), ceil_mode=True)),
    ((1, 1, 3, 4, 5), dict(kernel=(2, 2, 3), strides=(1, 2, 2), pads=(1, 0, 1, 0, 1, 1))),
]


@pytest.mark.parametrize("shape, attrs", POOLS)
def test_max_pool_matches_reference(shape, attrs):
    _check("max_pool", [_random(shape)], **attrs)


@pytest.mark.parametrize("dtype", [DType.i32, DType.u8, DType.bf16])
def test_max_pool_padding_never_wins(dtype):
    # all-negative data (and u8's zeros) beside padding: a padded tap that read 0 would win
    x = -np.abs(_random((1, 1, 4, 5), dtype)) - (0 if dtype == DType.u8 else 1)
    x = x.astype(dtype.numpy)
    _check("max_pool", [x], [dtype], kernel=(3, 2), strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 2))


def test_max_pool_nan_wins():
    x = _random((1, 1, 4, 4))
    x[0, 0, 1, 2] = np.nan
    (y,) = _check("max_pool", [x], kernel=(2, 2), strides=(2, 2))
    assert np.isnan(y[0, 0, 0, 1]) and not np.isnan(y[0, 0, 1]).any()


@pytest.mark.parametrize("shape, attrs", [(s, {k: v for k, v in a.items() if k != "dilations"}) for s, a in POOLS])
@pytest.mark.parametrize("count_include_pad", [False, True])
def test_avg_pool_matches_reference(shape, attrs, count_include_pad):
    _check("avg_pool", [_random(shape)], count_include_pad=count_include_pad, **attrs)


def test_avg_pool_divisors_at_the_edges():
    # ones in, so each output is (taps on the input) / (taps counted): 1 unless padding is counted
    x = np.ones((1, 1, 5), np.float32)
    attrs = dict(kernel=(3,), strides=(2,), pads=(1, 1), ceil_mode=True)
    (excluded,) = _check("avg_pool", [x], count_include_pad=False, **attrs)
    (included,) = _check("avg_pool", [x], count_include_pad=True, **attrs)
    np.testing.assert_array_equal(excluded, [[[1, 1, 1]]])
    np.testing.assert_allclose(included, [[[2 / 3, 1, 2 / 3]]], rtol=1e-6)


def test_global_avg_pool_matches_reference():
    _check("global_avg_pool", [_random((2, 3, 4, 5))])
    _check("global_avg_pool", [_random((1, 2, 3), DType.bf16)], [DType.bf16])


# -- scans ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("exclusive", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_cumsum_variants(exclusive, reverse, axis):
    _check("cumsum", [_random((3, 4, 2))], axis=axis, exclusive=exclusive, reverse=reverse)


def test_cumsum_values_and_integer_wrap():
    x = np.array([100, 100, -50, 7], np.int8)
    (y,) = _check("cumsum", [x], [DType.i8], axis=0, exclusive=True)
    np.testing.assert_array_equal(y, np.array([0, 100, -56, -106], np.int8))  # 200 wraps to -56
    (y,) = _check("cumsum", [x], [DType.i8], axis=0, reverse=True)
    np.testing.assert_array_equal(y, np.array([-99, 57, -43, 7], np.int8))


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
@pytest.mark.parametrize("axis", [0, 1])
def test_scatter_reductions_with_colliding_indices(reduction, axis):
    x = _random((3, 4))
    indices = np.array([[0, -1, 2], [2, 0, 2]] if axis == 1 else [[0, 2, 1], [-3, 2, 0]], np.int64)  # -1: last
    updates = _random(indices.shape)
    _check("scatter", [x, indices, updates], [DType.f32, DType.i64, DType.f32], axis=axis, reduction=reduction)


def test_scatter_in_order_and_in_low_precision():
    x = np.zeros(4, np.float32)
    indices = np.array([1, 1, 3, 1], np.int32)
    updates = np.array([1, 2, 3, 4], np.float32)
    (y,) = _check("scatter", [x, indices, updates], [DType.f32, DType.i32, DType.f32], reduction="none")
    np.testing.assert_array_equal(y, [0, 4, 0, 3])  # the last update of a position wins
    halves = [x.astype(np.float16), indices, np.full(4, 1 + 2**-11, np.float16) * np.float16(1000)]
    _check("scatter", halves, [DType.f16, DType.i32, DType.f16], reduction="add")  # rounded once, at the end


def test_scatter_of_bools_combines_logically():
    x = np.array([False, True, False])
    indices = np.array([0, 0, 2], np.int64)
    updates = np.array([True, True, False])
    for reduction in ("add", "mul", "max", "min"):
        _check("scatter", [x, indices, updates], [DType.bool, DType.i64, DType.bool], reduction=reduction)


# -- reductions, norms, softmax --------------------------------------------------------------------


def test_group_norm_matches_reference():
    _check("group_norm", [_random((2, 6, 3, 2)), _random((6,)), _random((6,))], num_groups=3, epsilon=1e-3)
    _check("group_norm", [_random((2, 4, 5)), _random((4,)), _random((4,))], num_groups=4)
    _check("group_norm", [_random((1, 4)), _random((4,)), _random((4,))], num_groups=1)


def test_argmax_ties_and_nan():
    x = np.array([[1, 3, 3, 0], [2, np.nan, 5, np.nan], [-1, -1, -1, -1]], np.float32)
    (first,) = _check("argmax", [x], axis=1, keepdims=False)
    (last,) = _check("argmax", [x], axis=1, keepdims=False, select_last_index=True)
    (lowest,) = _check("argmin", [x], axis=1, keepdims=True)
    np.testing.assert_array_equal(first, [1, 1, 0])  # the first of equal maxima; nan beats any number
    np.testing.assert_array_equal(last, [2, 3, 3])
    np.testing.assert_array_equal(lowest, [[3], [1], [0]])


def test_softmax_on_a_middle_axis():
    _check("softmax", [_random((2, 5, 3))], axis=1)
    _check("log_softmax", [_random((2, 5, 3))], axis=-2)
    _check("softmax", [_random((3, 4, 2), DType.bf16)], [DType.bf16], axis=1)


@pytest.mark.parametrize("affine", [0, 1, 2])
def test_layer_norm_with_and_without_affine_inputs(affine):
    shape = (2, 3, 4)
    arrays = [_random(shape)] + [_random(shape[1:]) for _ in range(affine)]
    _check("layer_norm", arrays, axis=1, epsilon=1e-4)
    _check("rms_norm", arrays[:2], axis=-2)


def test_reductions_over_axis_sets():
    x = _random((2, 3, 4))
    for op in ("sum", "mean", "prod", "max", "min"):
        _check(op, [x], axes=(0, 2), keepdims=True)
        _check(op, [x], axes=(), keepdims=False)


# -- contractions --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a_shape, b_shape", [((4,), (4,)), ((4,), (4, 3)), ((2, 4), (4,)), ((2, 1, 3, 4), (3, 4, 2)), ((3, 4), (4, 5))]
)
def test_matmul_vectors_and_batch_broadcast(a_shape, b_shape):
    _check("matmul", [_random(a_shape), _random(b_shape)])


def test_matmul_of_integers_is_exact():
    _check("matmul", [_random((2, 3, 4), DType.i32), _random((4, 2), DType.i32)], [DType.i32, DType.i32])


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_transpose_flags_and_scales(trans_a, trans_b):
    a = _random((4, 3) if trans_a else (3, 4))
    b = _random((5, 4) if trans_b else (4, 5))
    _check("gemm", [a, b, _random((5,))], trans_a=trans_a, trans_b=trans_b, alpha=0.5, beta=2.0)
    _check("gemm", [a, b], trans_a=trans_a, trans_b=trans_b)


def test_integer_gemm_with_a_float_scale_truncates_like_numpy():
    arrays = [_random((2, 3), DType.i64), _random((3, 2), DType.i64), _random((2,), DType.i64)]
    _check("gemm", arrays, [DType.i64] * 3, alpha=0.5, beta=0.25)


@pytest.mark.parametrize("exclusive", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_cumsum_keeps_the_sign_of_zero_like_numpy(exclusive, reverse):
    # numpy's running sum starts at the first element itself: a leading -0.0 stays -0.0
    b = GraphBuilder("g")
    x = b.input("x", (3,))
    graph = b.build(b.cumsum(x, axis=0, exclusive=exclusive, reverse=reverse))
    value = np.array([-0.0, -0.0, -0.0], np.float32)
    (expected,) = ir.run(graph, [value])
    (actual,) = run_lowered(graph, [value])
    np.testing.assert_array_equal(np.signbit(actual), np.signbit(expected))
