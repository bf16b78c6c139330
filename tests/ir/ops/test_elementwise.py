"""Elementwise and broadcasting ops: shape rules (with their errors) and references against torch."""

import math

import numpy as np
import pytest
import torch

import ir
from ir import DType, GraphBuilder, ShapeError

RNG = np.random.default_rng(0)


def run_op(op, *arrays, **attrs):
    """Build a one-node graph over `arrays` as inputs and run it in the interpreter."""
    builder = GraphBuilder("t")
    inputs = [builder.input(f"x{i}", a.shape, DType.from_numpy(a.dtype)) for i, a in enumerate(arrays)]
    graph = builder.build(builder.op(op, *inputs, **attrs))
    assert ir.parse_graph(str(graph)).__str__() == str(graph)
    return ir.run(graph, list(arrays))[0]


def floats(*shape, low=-3.0, high=3.0, dtype=np.float32):
    return RNG.uniform(low, high, size=shape).astype(dtype)


UNARY_TORCH = {
    "neg": torch.neg,
    "abs": torch.abs,
    "exp": torch.exp,
    "log": torch.log,
    "sqrt": torch.sqrt,
    "rsqrt": torch.rsqrt,
    "reciprocal": torch.reciprocal,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "silu": torch.nn.functional.silu,
    "erf": torch.erf,
    "sin": torch.sin,
    "cos": torch.cos,
    "floor": torch.floor,
    "ceil": torch.ceil,
    "round": torch.round,
    "sign": torch.sign,
}
POSITIVE_ONLY = {"log", "sqrt", "rsqrt"}


@pytest.mark.parametrize("op", sorted(UNARY_TORCH))
@pytest.mark.parametrize("shape", [(), (7,), (3, 4, 5)])
def test_unary_matches_torch(op, shape):
    x = floats(*shape, low=0.1 if op in POSITIVE_ONLY else -3.0)
    expected = UNARY_TORCH[op](torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_op(op, x), expected, rtol=2e-6, atol=1e-6)


def test_round_is_half_to_even():
    x = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49999997], dtype=np.float32)
    np.testing.assert_array_equal(run_op("round", x), [-2, -2, -0, 0, 2, 2, 0])


def test_special_values_follow_ieee():
    x = np.array([-1.0, 0.0, np.inf, np.nan], dtype=np.float32)
    np.testing.assert_array_equal(run_op("log", x), [np.nan, -np.inf, np.inf, np.nan])
    np.testing.assert_array_equal(run_op("sigmoid", np.array([-1000, 1000], np.float32)), [0, 1])
    np.testing.assert_array_equal(run_op("sign", x), [-1, 0, 1, np.nan])


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_matches_torch(approximate):
    x = floats(4, 9)
    expected = torch.nn.functional.gelu(torch.from_numpy(x), approximate=approximate).numpy()
    np.testing.assert_allclose(run_op("gelu", x, approximate=approximate), expected, rtol=1e-6, atol=1e-6)


def test_not():
    x = np.array([True, False, True])
    np.testing.assert_array_equal(run_op("not", x), [False, True, False])


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64])
def test_integer_unary_ops(dtype):
    x = np.array([-3, 0, 5], dtype=dtype)
    np.testing.assert_array_equal(run_op("neg", x), [3, 0, -5])
    np.testing.assert_array_equal(run_op("abs", x), [3, 0, 5])
    np.testing.assert_array_equal(run_op("relu", x), [0, 0, 5])
    np.testing.assert_array_equal(run_op("sign", x), [-1, 0, 1])
    assert run_op("neg", x).dtype == dtype


def test_unary_in_f16_rounds_once_from_f32():
    x = floats(64, dtype=np.float16)
    result = run_op("exp", x)
    assert result.dtype == np.float16
    np.testing.assert_array_equal(result, np.exp(x.astype(np.float32)).astype(np.float16))


def test_unary_in_bf16():
    x = floats(64).astype(DType.bf16.numpy)
    result = run_op("tanh", x)
    assert result.dtype == DType.bf16.numpy
    expected = torch.tanh(torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16)).float().numpy()
    np.testing.assert_allclose(result.astype(np.float32), expected, rtol=8e-3)


BINARY_TORCH = {
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "div": torch.div,
    "pow": torch.pow,
    "maximum": torch.maximum,
    "minimum": torch.minimum,
    "equal": torch.eq,
    "not_equal": torch.ne,
    "less": torch.lt,
    "less_equal": torch.le,
    "greater": torch.gt,
    "greater_equal": torch.ge,
}
BROADCAST_SHAPES = [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((1, 4), (3, 1)), ((), (2, 2)), ((5, 1, 3), (1, 2, 1))]


@pytest.mark.parametrize("op", sorted(BINARY_TORCH))
@pytest.mark.parametrize(("shape_a", "shape_b"), BROADCAST_SHAPES)
def test_binary_matches_torch_with_broadcasting(op, shape_a, shape_b):
    a = floats(*shape_a, low=0.5 if op == "pow" else -3.0)
    b = floats(*shape_b)
    if op in ("equal", "not_equal"):  # make some elements equal
        b = np.broadcast_to(a, np.broadcast_shapes(a.shape, b.shape)).copy()
        b.reshape(-1)[::2] += 1
    expected = BINARY_TORCH[op](torch.from_numpy(a), torch.from_numpy(b)).numpy()
    result = run_op(op, a, b)
    assert result.dtype == expected.dtype and result.shape == expected.shape
    np.testing.assert_allclose(result, expected, rtol=2e-6, atol=1e-6)


def test_integer_division_truncates_towards_zero():
    a = np.array([7, -7, 7, -7, 0, 5], dtype=np.int32)
    b = np.array([2, 2, -2, -2, 3, 0], dtype=np.int32)
    expected = torch.div(torch.from_numpy(a[:5]), torch.from_numpy(b[:5]), rounding_mode="trunc").numpy()
    result = run_op("div", a, b)
    np.testing.assert_array_equal(result[:5], expected)
    assert result[5] == 0  # x / 0 is defined as 0 for integers


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_mod_follows_the_divisor_sign_and_fmod_the_dividend(dtype):
    a = np.array([7, -7, 7, -7], dtype=dtype)
    b = np.array([3, 3, -3, -3], dtype=dtype)
    np.testing.assert_array_equal(run_op("mod", a, b), torch.remainder(torch.from_numpy(a), torch.from_numpy(b)))
    np.testing.assert_array_equal(run_op("mod", a, b, fmod=True), torch.fmod(torch.from_numpy(a), torch.from_numpy(b)))


def test_maximum_propagates_nan_like_torch():
    a = np.array([np.nan, 1.0], dtype=np.float32)
    b = np.array([0.0, np.nan], dtype=np.float32)
    np.testing.assert_array_equal(run_op("maximum", a, b), [np.nan, np.nan])


@pytest.mark.parametrize(("op", "fn"), [("and", np.logical_and), ("or", np.logical_or), ("xor", np.logical_xor)])
def test_logical(op, fn):
    a = np.array([[True, False]])
    b = np.array([[True], [False]])
    np.testing.assert_array_equal(run_op(op, a, b), fn(a, b))


def test_where_broadcasts_all_three():
    condition = RNG.uniform(size=(3, 1)) > 0.5
    a, b = floats(1, 4), floats(3, 4)
    expected = torch.where(torch.from_numpy(condition), torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_array_equal(run_op("where", condition, a, b), expected)


@pytest.mark.parametrize(("low", "high"), [(-1.0, 1.0), (None, 0.5), (0.0, None)])
def test_clip_matches_torch(low, high):
    x = floats(10)
    expected = torch.clamp(torch.from_numpy(x), low, high).numpy()
    np.testing.assert_array_equal(run_op("clip", x, min=low, max=high), expected)


def test_clip_without_bounds_is_identity():
    x = np.array([-np.inf, -1e30, 0.0, 1e30, np.inf], dtype=np.float32)
    np.testing.assert_array_equal(run_op("clip", x), x)


def test_clip_of_integers_rounds_bounds_inwards():
    x = np.arange(-3, 4, dtype=np.int32)
    np.testing.assert_array_equal(run_op("clip", x, min=-1.5, max=1.5), [-1, -1, -1, 0, 1, 1, 1])


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (np.float32, DType.i32),
        (np.float32, DType.f16),
        (np.float32, DType.bf16),
        (np.float32, DType.bool),
        (np.int64, DType.f32),
        (np.bool_, DType.f32),
        (np.float16, DType.f32),
        (np.int32, DType.i8),
    ],
)
def test_cast_matches_torch(source, target):
    x = (floats(32) * 40).astype(source) if source is not np.bool_ else RNG.uniform(size=32) > 0.5
    torch_dtype = {
        DType.i32: torch.int32,
        DType.f16: torch.float16,
        DType.bf16: torch.bfloat16,
        DType.bool: torch.bool,
        DType.f32: torch.float32,
        DType.i8: torch.int8,
    }[target]
    expected = torch.from_numpy(x).to(torch_dtype)
    result = run_op("cast", x, dtype=target)
    assert result.dtype == target.numpy
    np.testing.assert_array_equal(result.astype(np.float64), expected.to(torch.float64).numpy())


def test_oracle_mode_computes_in_f64():
    builder = GraphBuilder("t")
    x = builder.input("x", (3,), DType.f16)
    graph = builder.build(builder.cast(builder.mul(x, x), dtype=DType.f16))
    x_value = np.array([300.0, 0.1, -2.0], dtype=np.float16)
    faithful = ir.run(graph, [x_value])[0]
    oracle = ir.run(graph, [x_value], oracle=True)[0]
    assert faithful.dtype == np.float16 and oracle.dtype == np.float64
    assert faithful[0] == np.inf  # 90000 overflows f16
    np.testing.assert_allclose(oracle, x_value.astype(np.float64) ** 2)


def f32(*shape):
    return ir.TensorType(shape, DType.f32)


SHAPE_ERRORS = [
    ("add", [f32(2, 3), f32(4)], {}, r"cannot broadcast \[2,3\] with \[4\]"),
    ("add", [f32(2), ir.TensorType((2,), DType.i32)], {}, "must have one dtype"),
    ("mul", [f32(2)], {}, "takes 2 input"),
    ("exp", [ir.TensorType((2,), DType.i32)], {}, "does not take i32"),
    ("not", [f32(2)], {}, "does not take f32"),
    ("and", [f32(2), f32(2)], {}, "does not take f32"),
    ("pow", [ir.TensorType((2,), DType.i64), ir.TensorType((2,), DType.i64)], {}, "does not take i64"),
    ("where", [ir.TensorType((2,), DType.bool), f32(2), ir.TensorType((2,), DType.f16)], {}, "one dtype"),
    ("where", [ir.TensorType((3,), DType.bool), f32(2), f32(2)], {}, "cannot broadcast"),
    ("equal", [f32(2), ir.TensorType((2,), DType.i64)], {}, "must have one dtype"),
]


@pytest.mark.parametrize(("op", "types", "attrs", "message"), SHAPE_ERRORS)
def test_shape_rule_rejects(op, types, attrs, message):
    definition = ir.get_op(op)
    with pytest.raises(ShapeError, match=message):
        definition.infer_types(tuple(types), definition.normalize_attrs(attrs))


ATTRIBUTE_ERRORS = [
    ("gelu", {"approximate": "fast"}, "must be one of 'none', 'tanh'"),
    ("cast", {}, "'dtype' .* is required"),
    ("cast", {"dtype": "f128"}, "expects dtype"),
    ("clip", {"min": "low"}, "expects float"),
    ("mod", {"fmod": 1}, "expects bool"),
    ("relu", {"alpha": 0.1}, "unknown attribute"),
]


@pytest.mark.parametrize(("op", "attrs", "message"), ATTRIBUTE_ERRORS)
def test_attributes_are_checked(op, attrs, message):
    with pytest.raises(ir.OpAttributeError, match=message):
        ir.get_op(op).normalize_attrs(attrs)


@pytest.mark.parametrize(
    ("op", "types", "expected"),
    [
        ("add", [f32(2, 1), f32(3)], f32(2, 3)),
        ("less", [f32(4), f32(1)], ir.TensorType((4,), DType.bool)),
        ("exp", [f32()], f32()),
        ("cast", [f32(2)], ir.TensorType((2,), DType.bf16)),
    ],
)
def test_shape_rule_gives(op, types, expected):
    definition = ir.get_op(op)
    attrs = definition.normalize_attrs({"dtype": DType.bf16} if op == "cast" else {})
    assert definition.infer_types(tuple(types), attrs) == (expected,)


def test_costs():
    definition = ir.get_op("add")
    out = (f32(4, 8),)
    assert definition.cost_flops((f32(4, 8), f32(8)), out, definition.normalize_attrs({})) == 32
    assert definition.cost_bytes((f32(4, 8), f32(8)), out) == 4 * (32 + 8 + 32)
    assert ir.get_op("exp").flops_per_element > ir.get_op("add").flops_per_element
    assert math.isclose(ir.get_op("gelu").flops_per_element, 8)
