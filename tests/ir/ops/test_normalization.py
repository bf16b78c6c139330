"""The normalisation ops (`ir/ops/normalization.py`): their type rules, their numpy references
checked against torch.nn.functional, and their text form."""

from __future__ import annotations

import numpy as np
import pytest

import ir
from ir import DType, GraphBuilder, OpAttributeError, OpKind, ShapeError, TensorType

torch = pytest.importorskip("torch")
F = torch.nn.functional


def random_array(shape, dtype: DType = DType.f32, seed: int = 0, low: float | None = None) -> np.ndarray:
    """Standard normal values, or uniform in [low, low + 1] (for variances) when `low` is given."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(shape) if low is None else low + rng.random(shape)
    return values.astype(np.float32).astype(dtype.numpy)


def run_op(op: str, *arrays: np.ndarray, oracle: bool = False, **attrs) -> np.ndarray:
    builder = GraphBuilder("t")
    inputs = [builder.input(f"x{i}", a.shape, DType.from_numpy(a.dtype)) for i, a in enumerate(arrays)]
    (result,) = ir.run(builder.build(builder.op(op, *inputs, **attrs)), list(arrays), oracle=oracle)
    return result


def infer(op: str, *types: TensorType, **attrs) -> TensorType:
    builder = GraphBuilder("t")
    inputs = [builder.input(f"x{i}", x) for i, x in enumerate(types)]
    return builder.op(op, *inputs, **attrs).type


def t(text: str) -> TensorType:
    """`t("f32[2,3]")`: a tensor type from its text form."""
    dtype, dims = text.rstrip("]").split("[")
    return TensorType(tuple(int(d) for d in dims.split(",") if d), DType.parse(dtype))


def as_torch(array: np.ndarray, dtype=torch.float64) -> torch.Tensor:
    return torch.from_numpy(array.astype(np.float64)).to(dtype)


# ---- type rules ---------------------------------------------------------------------------

INFER_CASES = [
    ("batch_norm", ["f32[2,3]", "f32[3]", "f32[3]", "f32[3]", "f32[3]"], {}),
    ("batch_norm", ["f16[2,4,5,5]", "f16[4]", "f16[4]", "f16[4]", "f16[4]"], {"epsilon": 1e-3}),
    ("layer_norm", ["f32[2,3,4]"], {}),
    ("layer_norm", ["f32[2,3,4]", "f32[4]"], {}),
    ("layer_norm", ["bf16[2,3,4]", "bf16[3,4]", "bf16[3,4]"], {"axis": -2}),
    ("layer_norm", ["f32[2,3,4]", "f32[2,3,4]", "f32[2,3,4]"], {"axis": 0}),
    ("group_norm", ["f32[2,6,5]", "f32[6]", "f32[6]"], {"num_groups": 3}),
    ("group_norm", ["f64[1,4]", "f64[4]", "f64[4]"], {"num_groups": 4}),
    ("rms_norm", ["f32[2,3,4]"], {}),
    ("rms_norm", ["f16[2,3,4]", "f16[3,4]"], {"axis": 1, "epsilon": 1e-5}),
]


@pytest.mark.parametrize(("op", "inputs", "attrs"), INFER_CASES)
def test_infer_gives_the_type_of_x(op, inputs, attrs):
    types = [t(x) for x in inputs]
    assert infer(op, *types, **attrs) == types[0]


BN = ["f32[2,3,4]", "f32[3]", "f32[3]", "f32[3]", "f32[3]"]

INFER_ERRORS = [
    ("batch_norm", ["f32[3]", "f32[3]", "f32[3]", "f32[3]", "f32[3]"], {}, r"batch_norm: x must have rank >= 2"),
    (
        "batch_norm",
        [BN[0], "f32[4]", *BN[2:]],
        {},
        r"batch_norm: scale must be f32\[3\] \(one per channel, axis 1, of x: f32\[2,3,4\]\), got f32\[4\]",
    ),
    ("batch_norm", [*BN[:4], "f32[3,1]"], {}, r"batch_norm: var must be f32\[3\] .* got f32\[3,1\]"),
    ("batch_norm", [*BN[:3], "f16[3]", BN[4]], {}, r"batch_norm: mean must be f32\[3\] .* got f16\[3\]"),
    ("batch_norm", ["i32[2,3]", "i32[3]", "i32[3]", "i32[3]", "i32[3]"], {}, "batch_norm does not take i32"),
    ("batch_norm", BN[:4], {}, r"batch_norm takes 5 input\(s\) \(x, scale, bias, mean, var\), got 4"),
    ("layer_norm", ["f32[2,3]"], {"axis": 2}, "layer_norm: axis 2 is out of range for rank 2"),
    ("layer_norm", ["f32[]"], {}, "layer_norm: axis -1 is out of range for rank 0"),
    (
        "layer_norm",
        ["f32[2,3,4]", "f32[4]"],
        {"axis": 1},
        r"layer_norm: weight must be f32\[3,4\] \(the normalised dims 1..2 of x: f32\[2,3,4\]\), got f32\[4\]",
    ),
    ("layer_norm", ["f32[2,3]", "f32[3]", "f32[2]"], {}, r"layer_norm: bias must be f32\[3\] .* got f32\[2\]"),
    ("layer_norm", ["f32[2,3]", "bf16[3]"], {}, r"layer_norm: weight must be f32\[3\] .* got bf16\[3\]"),
    ("layer_norm", ["i64[2,3]"], {}, "layer_norm does not take i64"),
    ("group_norm", ["f32[6]", "f32[6]", "f32[6]"], {"num_groups": 2}, "group_norm: x must have rank >= 2"),
    (
        "group_norm",
        ["f32[2,6,5]", "f32[6]", "f32[6]"],
        {"num_groups": 4},
        r"group_norm: the 6 channels of x: f32\[2,6,5\] do not split into num_groups=4 equal groups",
    ),
    ("group_norm", ["f32[2,6]", "f32[6]", "f32[6]"], {"num_groups": 0}, "group_norm: num_groups must be at least 1"),
    ("group_norm", ["f32[2,6]", "f32[6]", "f32[3]"], {"num_groups": 3}, r"group_norm: bias must be f32\[6\]"),
    ("group_norm", ["f32[2,6]", "f32[6]"], {"num_groups": 3}, r"group_norm takes 3 input\(s\)"),
    ("rms_norm", ["f32[2,3]"], {"axis": -3}, "rms_norm: axis -3 is out of range for rank 2"),
    (
        "rms_norm",
        ["f32[2,3,4]", "f32[4]"],
        {"axis": 0},
        r"rms_norm: weight must be f32\[2,3,4\] \(the normalised dims 0..2 of x: f32\[2,3,4\]\), got f32\[4\]",
    ),
    ("rms_norm", ["f32[2,3]", "f32[3]", "f32[3]"], {}, r"rms_norm takes 1 to 2 input\(s\)"),
    ("rms_norm", ["u8[2,3]"], {}, "rms_norm does not take u8"),
]


@pytest.mark.parametrize(("op", "inputs", "attrs", "message"), INFER_ERRORS)
def test_infer_rejects_bad_inputs(op, inputs, attrs, message):
    with pytest.raises(ShapeError, match=message):
        infer(op, *(t(x) for x in inputs), **attrs)


def test_group_norm_requires_num_groups():
    with pytest.raises(OpAttributeError, match=r"group_norm: attribute 'num_groups' \(int\) is required"):
        infer("group_norm", t("f32[2,4]"), t("f32[4]"), t("f32[4]"))


def test_table_entries_declare_kind_and_cost():
    assert ir.get_op("batch_norm").kind is OpKind.BROADCAST
    for op in ("layer_norm", "group_norm", "rms_norm"):
        assert ir.get_op(op).kind is OpKind.REDUCTION, op
    x = t("f32[4,8]")
    layer_norm = ir.get_op("layer_norm")
    attrs = layer_norm.normalize_attrs({})
    # each affine input adds one multiply or add per element
    assert layer_norm.cost_flops((x,), (x,), attrs) < layer_norm.cost_flops((x, t("f32[8]")), (x,), attrs)
    assert layer_norm.cost_flops((x, t("f32[8]"), t("f32[8]")), (x,), attrs) == 7 * 32


# ---- references ----------------------------------------------------------------------------


def batch_norm_inputs(shape, dtype: DType = DType.f32, seed: int = 0) -> list[np.ndarray]:
    channels = shape[1]
    return [
        random_array(shape, dtype, seed),
        random_array((channels,), dtype, seed + 1),
        random_array((channels,), dtype, seed + 2),
        random_array((channels,), dtype, seed + 3),
        random_array((channels,), dtype, seed + 4, low=0.5),
    ]


def torch_batch_norm(x, scale, bias, mean, var, epsilon, dtype=torch.float64) -> np.ndarray:
    x, scale, bias, mean, var = (as_torch(a, dtype) for a in (x, scale, bias, mean, var))
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=epsilon).numpy()


@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 5), (1, 4, 3, 3), (2, 2, 2, 2, 2)])
@pytest.mark.parametrize("epsilon", [1e-5, 0.1])
def test_batch_norm_matches_torch(shape, epsilon):
    arrays = batch_norm_inputs(shape, seed=len(shape))
    result = run_op("batch_norm", *arrays, epsilon=epsilon)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, torch_batch_norm(*arrays, epsilon), rtol=1e-5, atol=1e-5)


def torch_layer_norm(x, weight, bias, axis, epsilon, dtype=torch.float64) -> np.ndarray:
    weight = None if weight is None else as_torch(weight, dtype)
    bias = None if bias is None else as_torch(bias, dtype)
    return F.layer_norm(as_torch(x, dtype), x.shape[axis:], weight, bias, eps=epsilon).numpy()


@pytest.mark.parametrize(("shape", "axis"), [((7,), -1), ((3, 5), -1), ((3, 5), 0), ((2, 3, 4), 1), ((2, 3, 4), -2)])
@pytest.mark.parametrize("affine", ["none", "weight", "both"])
@pytest.mark.parametrize("epsilon", [1e-5, 0.5])
def test_layer_norm_matches_torch(shape, axis, affine, epsilon):
    x = random_array(shape, seed=1) * 3 + 1
    weight = random_array(shape[axis:], seed=2) if affine != "none" else None
    bias = random_array(shape[axis:], seed=3) if affine == "both" else None
    params = [a for a in (weight, bias) if a is not None]
    result = run_op("layer_norm", x, *params, axis=axis, epsilon=epsilon)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, torch_layer_norm(x, weight, bias, axis, epsilon), rtol=1e-4, atol=1e-5)


def test_layer_norm_hand_computed():
    # mean 2, biased variance 2/3: (x - 2) / sqrt(2/3) = x' * sqrt(3/2)
    result = run_op("layer_norm", np.array([1.0, 2.0, 3.0], np.float32), epsilon=0.0)
    np.testing.assert_allclose(result, np.array([-1.0, 0.0, 1.0]) * np.sqrt(1.5), rtol=1e-6)


@pytest.mark.parametrize(
    ("shape", "num_groups"), [((2, 6), 3), ((2, 6, 5), 1), ((2, 6, 5), 2), ((1, 4, 3, 3), 4), ((3, 8, 2, 2, 2), 4)]
)
@pytest.mark.parametrize("epsilon", [1e-5, 0.25])
def test_group_norm_matches_torch(shape, num_groups, epsilon):
    x = random_array(shape, seed=4) * 2 - 1
    weight, bias = random_array(shape[1:2], seed=5), random_array(shape[1:2], seed=6)
    result = run_op("group_norm", x, weight, bias, num_groups=num_groups, epsilon=epsilon)
    expected = F.group_norm(as_torch(x), num_groups, as_torch(weight), as_torch(bias), eps=epsilon).numpy()
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-5)


def torch_rms_norm(x, weight, axis, epsilon, dtype=torch.float64) -> np.ndarray:
    weight = None if weight is None else as_torch(weight, dtype)
    return F.rms_norm(as_torch(x, dtype), x.shape[axis:], weight, eps=epsilon).numpy()


@pytest.mark.parametrize(("shape", "axis"), [((7,), -1), ((3, 5), -1), ((3, 5), -2), ((2, 3, 4), 1), ((2, 3, 4), 0)])
@pytest.mark.parametrize("with_weight", [False, True])
@pytest.mark.parametrize("epsilon", [1e-6, 0.5])
def test_rms_norm_matches_torch(shape, axis, with_weight, epsilon):
    x = random_array(shape, seed=7) + 0.5
    weight = random_array(shape[axis:], seed=8) if with_weight else None
    result = run_op("rms_norm", x, *([weight] if with_weight else []), axis=axis, epsilon=epsilon)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, torch_rms_norm(x, weight, axis, epsilon), rtol=1e-5, atol=1e-6)


def test_rms_norm_hand_computed():
    # mean of squares (9 + 16) / 2 = 12.5, so y = x / sqrt(12.5 + 0.0) * weight
    x, weight = np.array([3.0, -4.0], np.float32), np.array([2.0, 0.5], np.float32)
    result = run_op("rms_norm", x, weight, epsilon=0.0)
    np.testing.assert_allclose(result, [6.0 / np.sqrt(12.5), -2.0 / np.sqrt(12.5)], rtol=1e-6)


# ---- low precision and oracle mode ---------------------------------------------------------

LOW_PRECISION = [(DType.f16, 1e-3), (DType.bf16, 8e-3)]  # about half an ulp of the result type


def cases(dtype: DType):
    """(op, inputs, attrs, torch result on the inputs widened to f64) for each op."""
    x = random_array((2, 4, 3), dtype, seed=9)
    w, b = random_array((4,), dtype, seed=10), random_array((4,), dtype, seed=11)
    trailing_w, trailing_b = random_array((3,), dtype, seed=12), random_array((3,), dtype, seed=13)
    bn = batch_norm_inputs((2, 4, 3), dtype, seed=14)
    return [
        ("batch_norm", bn, {}, torch_batch_norm(*bn, 1e-5)),
        ("layer_norm", [x, trailing_w, trailing_b], {}, torch_layer_norm(x, trailing_w, trailing_b, -1, 1e-5)),
        (
            "group_norm",
            [x, w, b],
            {"num_groups": 2},
            F.group_norm(as_torch(x), 2, as_torch(w), as_torch(b), eps=1e-5).numpy(),
        ),
        ("rms_norm", [x, trailing_w], {}, torch_rms_norm(x, trailing_w, -1, 1e-6)),
    ]


@pytest.mark.parametrize(("dtype", "rtol"), LOW_PRECISION)
@pytest.mark.parametrize("index", range(4))
def test_low_precision_normalisation_rounds_to_the_declared_type(dtype, rtol, index):
    op, arrays, attrs, expected = cases(dtype)[index]
    result = run_op(op, *arrays, **attrs)
    assert result.dtype == dtype.numpy, op
    np.testing.assert_allclose(result.astype(np.float64), expected, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("index", range(4))
def test_oracle_normalisation_is_f64(index):
    op, arrays, attrs, expected = cases(DType.f32)[index]
    result = run_op(op, *arrays, oracle=True, **attrs)
    assert result.dtype == np.float64, op
    np.testing.assert_allclose(result, expected, rtol=1e-10, atol=1e-12)


# ---- text form ---------------------------------------------------------------------------

ROUND_TRIP_CASES = [
    ("batch_norm", ["f32[2,3,4]", "f32[3]", "f32[3]", "f32[3]", "f32[3]"], {"epsilon": 0.001}),
    ("batch_norm", ["f16[2,3]", "f16[3]", "f16[3]", "f16[3]", "f16[3]"], {}),
    ("layer_norm", ["f32[2,3,4]"], {}),
    ("layer_norm", ["bf16[2,3,4]", "bf16[3,4]", "bf16[3,4]"], {"axis": -2, "epsilon": 1e-12}),
    ("group_norm", ["f32[2,6,4]", "f32[6]", "f32[6]"], {"num_groups": 3, "epsilon": 2.5e-4}),
    ("rms_norm", ["f32[2,3,4]", "f32[4]"], {"epsilon": 1e-5}),
    ("rms_norm", ["f32[2,3,4]"], {"axis": 0}),
]


@pytest.mark.parametrize(("op", "inputs", "attrs"), ROUND_TRIP_CASES)
def test_graph_prints_and_parses_back(op, inputs, attrs):
    builder = GraphBuilder("t")
    values = [builder.input(f"x{i}", t(x)) for i, x in enumerate(inputs)]
    graph = builder.build(builder.op(op, *values, **attrs))
    text = str(graph)
    assert f"= {op}(" in text
    assert str(ir.parse_graph(text)) == text
