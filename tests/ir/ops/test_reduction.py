"""The reduction ops (`ir/ops/reduction.py`): their type rules, their numpy references checked
against torch and hand-computed values, and their text form."""

from __future__ import annotations

import numpy as np
import pytest

import ir
from ir import DType, GraphBuilder, OpAttributeError, OpKind, ShapeError, TensorType

torch = pytest.importorskip("torch")

REDUCTIONS = ("sum", "mean", "prod", "max", "min")


def random_array(shape, dtype: DType = DType.f32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype.is_float:
        return rng.standard_normal(shape).astype(np.float32).astype(dtype.numpy)
    return rng.integers(-5, 6, shape).astype(dtype.numpy)


def run_op(op: str, *arrays: np.ndarray, oracle: bool = False, **attrs) -> np.ndarray:
    builder = GraphBuilder("t")
    inputs = [builder.input(f"x{i}", a.shape, DType.from_numpy(a.dtype)) for i, a in enumerate(arrays)]
    (result,) = ir.run(builder.build(builder.op(op, *inputs, **attrs)), list(arrays), oracle=oracle)
    return result


def infer(op: str, x: TensorType, **attrs) -> TensorType:
    builder = GraphBuilder("t")
    return builder.op(op, builder.input("x", x), **attrs).type


def t(text: str) -> TensorType:
    """`t("f32[2,3]")`: a tensor type from its text form."""
    dtype, dims = text.rstrip("]").split("[")
    return TensorType(tuple(int(d) for d in dims.split(",") if d), DType.parse(dtype))


# ---- type rules ---------------------------------------------------------------------------

INFER_CASES = [
    ("sum", "f32[2,3,4]", {}, "f32[]"),
    ("sum", "f32[2,3,4]", {"keepdims": True}, "f32[1,1,1]"),
    ("sum", "i8[2,3,4]", {"axes": (1,)}, "i8[2,4]"),
    ("mean", "f16[2,3,4]", {"axes": (-1, 0)}, "f16[3]"),
    ("prod", "i32[2,3,4]", {"axes": (0, 2), "keepdims": True}, "i32[1,3,1]"),
    ("max", "bf16[5]", {"axes": (-1,)}, "bf16[]"),
    ("min", "u8[2,3]", {"axes": (1,), "keepdims": True}, "u8[2,1]"),
    ("sum", "f32[]", {}, "f32[]"),
    ("sum", "f32[2,0]", {"axes": (1,)}, "f32[2]"),
    ("max", "f32[0,3]", {"axes": (1,)}, "f32[0]"),
    ("argmax", "f32[2,3,4]", {}, "i64[3,4]"),
    ("argmax", "i8[2,3,4]", {"axis": -1, "keepdims": True}, "i64[2,3,1]"),
    ("argmin", "f16[2,3]", {"axis": 1, "select_last_index": True}, "i64[2]"),
    ("softmax", "f32[2,3]", {}, "f32[2,3]"),
    ("log_softmax", "bf16[2,3,4]", {"axis": 0}, "bf16[2,3,4]"),
    ("cumsum", "i64[2,3]", {"axis": -1, "exclusive": True, "reverse": True}, "i64[2,3]"),
]


@pytest.mark.parametrize(("op", "x", "attrs", "expected"), INFER_CASES)
def test_infer_gives_the_reduced_type(op, x, attrs, expected):
    assert infer(op, t(x), **attrs) == t(expected)


INFER_ERRORS = [
    ("sum", "f32[2,3]", {"axes": (2,)}, "sum: axis 2 is out of range for rank 2"),
    ("mean", "f32[2,3]", {"axes": (-3,)}, "mean: axis -3 is out of range for rank 2"),
    ("prod", "f32[2,3]", {"axes": (0, -2)}, r"prod: repeated axis in \(0, -2\)"),
    ("sum", "bool[2,3]", {}, "sum does not take bool inputs"),
    ("mean", "i32[2,3]", {}, "mean does not take i32 inputs"),
    ("max", "f32[2,0]", {"axes": (1,)}, r"max: cannot reduce over axis 1 of size 0 \(no identity\), got f32\[2,0\]"),
    ("min", "i8[0,3]", {}, "min: cannot reduce over axis 0 of size 0"),
    ("argmax", "f32[2,3]", {"axis": 2}, "argmax: axis 2 is out of range for rank 2"),
    ("argmin", "f32[]", {}, "argmin: axis 0 is out of range for rank 0"),
    ("argmax", "f32[2,0]", {"axis": -1}, r"argmax: axis 1 has size 0, so there is no index to return, got f32\[2,0\]"),
    ("argmin", "bool[2]", {}, "argmin does not take bool inputs"),
    ("softmax", "f32[2,3]", {"axis": 2}, "softmax: axis 2 is out of range for rank 2"),
    ("log_softmax", "f32[]", {}, "log_softmax: axis -1 is out of range for rank 0"),
    ("softmax", "i32[2,3]", {}, "softmax does not take i32 inputs"),
    ("cumsum", "f32[2,3]", {"axis": -3}, "cumsum: axis -3 is out of range for rank 2"),
    ("cumsum", "bool[4]", {"axis": 0}, "cumsum does not take bool inputs"),
]


@pytest.mark.parametrize(("op", "x", "attrs", "message"), INFER_ERRORS)
def test_infer_rejects_bad_inputs(op, x, attrs, message):
    with pytest.raises(ShapeError, match=message):
        infer(op, t(x), **attrs)


def test_cumsum_requires_an_axis():
    with pytest.raises(OpAttributeError, match=r"cumsum: attribute 'axis' \(int\) is required"):
        infer("cumsum", t("f32[3]"))


def test_table_entries_declare_kind_and_cost():
    for op in (*REDUCTIONS, "argmax", "argmin", "softmax", "log_softmax"):
        assert ir.get_op(op).kind is OpKind.REDUCTION, op
    assert ir.get_op("cumsum").kind is OpKind.OPAQUE
    x, attrs = t("f32[4,8]"), ir.get_op("sum").normalize_attrs({"axes": (1,)})
    assert ir.get_op("sum").cost_flops((x,), (t("f32[4]"),), attrs) == 32
    assert ir.get_op("argmax").cost_flops((x,), (t("i64[8]"),), ir.get_op("argmax").normalize_attrs({})) == 32


# ---- references: sum, mean, prod, max, min -------------------------------------------------


def torch_reduce(op: str, x: torch.Tensor, axes: tuple[int, ...], keepdims: bool) -> torch.Tensor:
    dims = axes or tuple(range(x.ndim))
    if op == "prod":  # torch.prod takes one dim at a time; reduce the highest first so indices hold
        for dim in sorted((d % x.ndim for d in dims), reverse=True):
            x = torch.prod(x, dim=dim, keepdim=keepdims)
        return x
    function = {"sum": torch.sum, "mean": torch.mean, "max": torch.amax, "min": torch.amin}[op]
    return function(x, dim=dims, keepdim=keepdims)


REDUCE_SHAPES_AXES = [
    ((7,), ()),
    ((7,), (0,)),
    ((3, 5), ()),
    ((3, 5), (1,)),
    ((3, 5), (-2,)),
    ((2, 3, 4), (0, 2)),
    ((2, 3, 4), (-1, -3)),
    ((2, 3, 4, 5), (1, 2, 3)),
]


@pytest.mark.parametrize("op", REDUCTIONS)
@pytest.mark.parametrize(("shape", "axes"), REDUCE_SHAPES_AXES)
@pytest.mark.parametrize("keepdims", [False, True])
def test_reduction_matches_torch_f32(op, shape, axes, keepdims):
    x = random_array(shape, seed=len(shape))
    result = run_op(op, x, axes=axes, keepdims=keepdims)
    expected = torch_reduce(op, torch.from_numpy(x), axes, keepdims).numpy()
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op", ("sum", "prod", "max", "min"))
@pytest.mark.parametrize("dtype", (DType.i64, DType.i32, DType.i8, DType.u8))
def test_integer_reduction_matches_torch(op, dtype):
    x = np.random.default_rng(1).integers(0, 4, (3, 4)).astype(dtype.numpy)
    result = run_op(op, x, axes=(1,))
    # torch widens small integer sums to i64; narrowing back is the wrap the op promises.
    expected = torch_reduce(op, torch.from_numpy(x.astype(np.int64)), (1,), False).numpy().astype(dtype.numpy)
    assert result.dtype == dtype.numpy
    np.testing.assert_array_equal(result, expected)


def test_integer_sum_and_prod_wrap_in_the_input_dtype():
    x = np.array([100, 100, 100], dtype=np.int8)
    assert run_op("sum", x) == np.int8(44)  # 300 - 256
    assert run_op("prod", x) == np.int8(64)  # 10**6 mod 256 = 64
    assert run_op("sum", np.array([200, 100], dtype=np.uint8)) == np.uint8(44)
    big = np.array([2**31 - 1, 1], dtype=np.int32)
    assert run_op("sum", big) == np.int32(-(2**31))


@pytest.mark.parametrize(("op", "attrs"), [("sum", {}), ("prod", {}), ("cumsum", {"axis": 0})])
def test_integer_references_accumulate_in_the_input_dtype(op, attrs):
    # Constant folding may call a reference directly, without the interpreter's cast to the
    # declared type, so the reference itself must not widen i8 to i64 as numpy does.
    definition = ir.get_op(op)
    (result,) = definition.run_reference([np.array([100, 100, 100], np.int8)], definition.normalize_attrs(attrs))
    assert result.dtype == np.int8


@pytest.mark.parametrize("dtype", (DType.f16, DType.bf16))
@pytest.mark.parametrize("op", REDUCTIONS)
def test_low_precision_reduction_computes_in_f32_and_rounds(op, dtype):
    x = random_array((4, 6), dtype, seed=2)
    result = run_op(op, x, axes=(1,))
    expected = torch_reduce(op, torch.from_numpy(x.astype(np.float32)), (1,), False).numpy()
    assert result.dtype == dtype.numpy
    rtol = 1e-3 if dtype == DType.f16 else 8e-3  # half an ulp of the result type
    np.testing.assert_allclose(result.astype(np.float32), expected, rtol=rtol, atol=1e-3)


@pytest.mark.parametrize("op", REDUCTIONS)
def test_oracle_reduction_is_f64(op):
    x = random_array((3, 4, 5), seed=3)
    result = run_op(op, x, oracle=True, axes=(0, 2), keepdims=True)
    expected = torch_reduce(op, torch.from_numpy(x.astype(np.float64)), (0, 2), True).numpy()
    assert result.dtype == np.float64
    np.testing.assert_allclose(result, expected, rtol=1e-12)


def test_reductions_of_empty_and_scalar_inputs():
    empty = np.zeros((2, 0), dtype=np.float32)
    np.testing.assert_array_equal(run_op("sum", empty, axes=(1,)), [0.0, 0.0])
    np.testing.assert_array_equal(run_op("prod", empty, axes=(1,)), [1.0, 1.0])
    assert np.isnan(run_op("mean", empty, axes=(1,))).all()
    assert run_op("max", np.zeros((0, 3), np.float32), axes=(1,)).shape == (0,)
    scalar = np.array(2.5, dtype=np.float32)
    for op in REDUCTIONS:
        assert run_op(op, scalar) == np.float32(2.5), op


def test_max_and_min_propagate_nan():
    x = np.array([[1.0, np.nan, 3.0], [1.0, 2.0, 3.0]], dtype=np.float32)
    for op, last in (("max", 3.0), ("min", 1.0)):
        result = run_op(op, x, axes=(1,))
        assert np.isnan(result[0]) and result[1] == last, op


# ---- references: argmax, argmin ----------------------------------------------------------


@pytest.mark.parametrize("op", ("argmax", "argmin"))
@pytest.mark.parametrize(
    ("shape", "axis", "keepdims"),
    [((7,), 0, False), ((3, 5), 1, False), ((3, 5), -2, True), ((2, 3, 4), 1, True), ((2, 3, 4), -1, False)],
)
@pytest.mark.parametrize("dtype", (DType.f32, DType.i32))
def test_arg_reduction_matches_torch_first_of_ties(op, shape, axis, keepdims, dtype):
    # Few distinct values, so most rows hold ties and the first-occurrence rule is exercised.
    x = np.random.default_rng(4).integers(0, 3, shape).astype(dtype.numpy)
    result = run_op(op, x, axis=axis, keepdims=keepdims)
    expected = getattr(torch, op)(torch.from_numpy(x.astype(np.float32)), dim=axis, keepdim=keepdims).numpy()
    assert result.dtype == np.int64
    np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize("op", ("argmax", "argmin"))
@pytest.mark.parametrize(("shape", "axis"), [((9,), 0), ((4, 6), 1), ((4, 6), 0), ((2, 3, 5), -1)])
def test_arg_reduction_select_last_index(op, shape, axis):
    x = np.random.default_rng(5).integers(0, 3, shape).astype(np.float32)
    result = run_op(op, x, axis=axis, select_last_index=True)
    # The last extreme of x is the first extreme of x reversed along the axis, counted from the end.
    flipped = getattr(torch, op)(torch.from_numpy(np.flip(x, axis).copy()), dim=axis).numpy()
    np.testing.assert_array_equal(result, x.shape[axis] - 1 - flipped)


def test_arg_reduction_hand_computed():
    x = np.array([[1.0, 3.0, 3.0, 0.0, 0.0]], dtype=np.float32)
    assert run_op("argmax", x, axis=1).tolist() == [1]
    assert run_op("argmax", x, axis=1, select_last_index=True).tolist() == [2]
    assert run_op("argmin", x, axis=1).tolist() == [3]
    assert run_op("argmin", x, axis=1, select_last_index=True, keepdims=True).tolist() == [[4]]


def test_arg_reduction_of_f16_and_oracle():
    x = random_array((5, 7), DType.f16, seed=6)
    expected = torch.argmax(torch.from_numpy(x), dim=1).numpy()
    np.testing.assert_array_equal(run_op("argmax", x, axis=1), expected)
    oracle = run_op("argmin", x, axis=0, oracle=True)
    assert oracle.dtype == np.int64
    np.testing.assert_array_equal(oracle, torch.argmin(torch.from_numpy(x), dim=0).numpy())


# ---- references: softmax, log_softmax ----------------------------------------------------


@pytest.mark.parametrize("op", ("softmax", "log_softmax"))
@pytest.mark.parametrize(("shape", "axis"), [((7,), -1), ((3, 5), -1), ((3, 5), 0), ((2, 3, 4), 1), ((2, 3, 4), -3)])
def test_softmax_matches_torch_f32(op, shape, axis):
    x = random_array(shape, seed=7) * 4
    result = run_op(op, x, axis=axis)
    expected = getattr(torch, op)(torch.from_numpy(x), dim=axis).numpy()
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op", ("softmax", "log_softmax"))
def test_softmax_is_stable_for_large_inputs(op):
    x = np.array([[1000.0, 1001.0, 1002.0], [-1000.0, -1001.0, -1002.0]], dtype=np.float32)
    result = run_op(op, x)
    expected = getattr(torch, op)(torch.from_numpy(x.astype(np.float64)), dim=-1).numpy()
    assert np.isfinite(result).all()
    np.testing.assert_allclose(result, expected, rtol=1e-5)


def test_softmax_rows_sum_to_one():
    result = run_op("softmax", random_array((4, 9), seed=8) * 10, axis=1)
    np.testing.assert_allclose(result.sum(axis=1), np.ones(4), rtol=1e-6)


@pytest.mark.parametrize("op", ("softmax", "log_softmax"))
@pytest.mark.parametrize("dtype", (DType.f16, DType.bf16))
def test_low_precision_softmax(op, dtype):
    x = random_array((3, 8), dtype, seed=9)
    result = run_op(op, x, axis=1)
    expected = getattr(torch, op)(torch.from_numpy(x.astype(np.float32)), dim=1).numpy()
    assert result.dtype == dtype.numpy
    rtol = 1e-3 if dtype == DType.f16 else 8e-3
    np.testing.assert_allclose(result.astype(np.float32), expected, rtol=rtol, atol=1e-3)


@pytest.mark.parametrize("op", ("softmax", "log_softmax"))
def test_oracle_softmax_is_f64(op):
    x = random_array((3, 6), seed=10)
    result = run_op(op, x, oracle=True, axis=0)
    expected = getattr(torch, op)(torch.from_numpy(x.astype(np.float64)), dim=0).numpy()
    assert result.dtype == np.float64
    np.testing.assert_allclose(result, expected, rtol=1e-12)


# ---- references: cumsum ----------------------------------------------------------------------


def torch_cumsum(x: np.ndarray, axis: int, exclusive: bool, reverse: bool) -> np.ndarray:
    tensor = torch.from_numpy(x.astype(np.float64))
    if reverse:
        tensor = torch.flip(tensor, (axis,))
    sums = torch.cumsum(tensor, dim=axis)
    if exclusive:
        sums = sums - tensor  # exact here: f64 sums of f32 values far from cancellation
    if reverse:
        sums = torch.flip(sums, (axis,))
    return sums.numpy()


@pytest.mark.parametrize(("shape", "axis"), [((6,), 0), ((3, 5), 1), ((3, 5), -2), ((2, 3, 4), 1), ((2, 3, 4), -1)])
@pytest.mark.parametrize("exclusive", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_cumsum_matches_torch(shape, axis, exclusive, reverse):
    x = random_array(shape, seed=11)
    result = run_op("cumsum", x, axis=axis, exclusive=exclusive, reverse=reverse)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, torch_cumsum(x, axis, exclusive, reverse), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("exclusive", "reverse", "expected"),
    [(False, False, [1, 3, 6]), (True, False, [0, 1, 3]), (False, True, [6, 5, 3]), (True, True, [5, 3, 0])],
)
def test_cumsum_onnx_examples(exclusive, reverse, expected):
    x = np.array([1, 2, 3], dtype=np.int32)
    result = run_op("cumsum", x, axis=0, exclusive=exclusive, reverse=reverse)
    assert result.dtype == np.int32
    assert result.tolist() == expected


def test_cumsum_integers_wrap_and_low_precision_and_oracle():
    np.testing.assert_array_equal(run_op("cumsum", np.array([100, 100, 100], np.int8), axis=0), [100, -56, 44])
    x = random_array((4, 5), DType.f16, seed=12)
    result = run_op("cumsum", x, axis=1, reverse=True)
    assert result.dtype == np.float16
    expected = torch_cumsum(x.astype(np.float32), 1, False, True)
    np.testing.assert_allclose(result.astype(np.float32), expected, rtol=1e-3, atol=2e-3)
    oracle = run_op("cumsum", x, axis=0, exclusive=True, oracle=True)
    assert oracle.dtype == np.float64
    np.testing.assert_allclose(oracle, torch_cumsum(x.astype(np.float64), 0, True, False), rtol=1e-12)


# ---- text form ---------------------------------------------------------------------------


ROUND_TRIP_CASES = [
    ("sum", {"axes": (-1, 0), "keepdims": True}),
    ("mean", {}),
    ("prod", {"axes": (1,)}),
    ("max", {"axes": (2,), "keepdims": False}),
    ("min", {"keepdims": True}),
    ("argmax", {"axis": -1, "keepdims": True, "select_last_index": True}),
    ("argmin", {"axis": 1}),
    ("softmax", {"axis": 0}),
    ("log_softmax", {}),
    ("cumsum", {"axis": -2, "exclusive": True, "reverse": True}),
]


@pytest.mark.parametrize(("op", "attrs"), ROUND_TRIP_CASES)
def test_graph_prints_and_parses_back(op, attrs):
    builder = GraphBuilder("t")
    x = builder.input("x", (2, 3, 4), DType.f32)
    graph = builder.build(builder.op(op, x, **attrs))
    text = str(graph)
    assert f"= {op}(%x)" in text
    assert str(ir.parse_graph(text)) == text
