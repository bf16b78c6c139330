"""lower_precision: the lowered graph verifies and keeps its signature, stays within a stated
tolerance of the f64 oracle, keeps the sensitive nodes in f32 and says why, never lets a value
overflow f16, and collapses cast chains. range_analysis: interval bounds are sound."""

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ir
from ir import DType, GraphBuilder
from ir.testing import assert_equivalent, drawable_ops, graphs, graphs_with_inputs, input_arrays
from passes import PassManager, make_pass, parse_pipeline
from passes.lower_precision import F16_MAX, LowerPrecision, lower_precision
from passes.range_analysis import interval_bounds

LOW = st.sampled_from([DType.bf16, DType.f16])
EPSILON = {DType.bf16: 2.0**-8, DType.f16: 2.0**-11}  # relative rounding error of one store


# -- properties over random graphs ----------------------------------------------------------------


@given(graphs_with_inputs(), LOW)
def test_any_graph_lowers_to_a_valid_graph_with_the_same_signature(drawn, dtype):
    """Every op and dtype the strategy draws (ints, bools, f16 and bf16 inputs included)."""
    graph, inputs = drawn
    lowered, report = lower_precision(graph, inputs, dtype=dtype)
    ir.verify(lowered)
    assert [v.type for v in lowered.inputs] == [v.type for v in graph.inputs]
    assert [v.type for v in lowered.outputs] == [v.type for v in graph.outputs]
    ir.run(lowered, inputs)  # runs
    assert len(report.errors) == sum(v.type.dtype.is_float for v in graph.outputs)


@given(graphs_with_inputs())
def test_keeping_every_op_in_f32_changes_no_value(drawn):
    graph, inputs = drawn
    keep_all = LowerPrecision(keep_f32=tuple(drawable_ops()), example_inputs=(inputs,))
    lowered, report = keep_all.run_with_report(graph)
    assert_equivalent(graph, lowered, inputs)
    assert all(e.max_abs == 0 for e in report.errors)


# Ops whose output error stays proportional to the rounding of their inputs: smooth functions
# with bounded slope, contractions, movement, and the reductions the pass keeps in f32. Left out,
# because a rounding step can move their result arbitrarily far (a relative tolerance would be
# dishonest and an absolute one flaky): discontinuous ops (floor, round, sign, comparisons,
# argmax, mod, casts to int), ops with unbounded slope (div, reciprocal, sqrt, rsqrt, log, pow)
# and the norms, which divide by a standard deviation that may be tiny (tested by hand below).
BOUNDED_OPS = [
    *("add", "sub", "mul", "neg", "abs", "relu", "tanh", "sigmoid", "gelu", "silu", "erf", "sin", "cos"),
    *("clip", "maximum", "minimum", "where", "exp"),
    *("matmul", "gemm", "conv", "conv_transpose", "scaled_dot_product_attention"),
    *("reshape", "transpose", "expand", "concat", "split", "slice", "gather", "squeeze", "unsqueeze"),
    *("flatten", "tile", "pad"),
    *("sum", "mean", "max", "min", "softmax", "log_softmax", "avg_pool", "max_pool", "global_avg_pool", "cumsum"),
]
TOLERANCE = 16
"""Error allowed, in units of `EPSILON[dtype] * S`, where S is the largest magnitude the f64
oracle sees anywhere in the graph (at least 1): each lowered value is rounded once (relative
error EPSILON), and the restricted ops pass an input error on scaled by at most the magnitudes
involved. Over 3,000 drawn graphs the largest error seen was 2.9 such units."""


@given(st.data(), LOW)
def test_lowered_outputs_stay_within_tolerance_of_the_oracle(data, dtype):
    graph = data.draw(graphs(ops=BOUNDED_OPS, dtypes={DType.f32, DType.bool}))
    inputs = data.draw(input_arrays(graph))
    lowered, _report = lower_precision(graph, inputs, dtype=dtype)
    oracle = ir.run_all(graph, inputs, oracle=True)
    scale = max(
        [1.0] + [float(np.abs(a[np.isfinite(a)]).max(initial=0)) for v, a in oracle.items() if v.type.dtype.is_float]
    )
    f32_outputs = ir.run(graph, inputs)
    for index, (value, low, f32) in enumerate(zip(graph.outputs, ir.run(lowered, inputs), f32_outputs)):
        exact = oracle[value]
        if not value.type.dtype.is_float:
            continue
        finite = np.isfinite(exact) & np.isfinite(f32)  # where the f32 graph itself has a value to approach
        low = low.astype(np.float64)
        assert np.isfinite(low[finite]).all(), f"output {index} overflowed in {dtype}:\n{lowered}"
        error = float(np.abs(low[finite] - exact[finite]).max(initial=0))
        assert error <= TOLERANCE * EPSILON[dtype] * scale, (
            f"output {index}: error {error:.3g} > {TOLERANCE} * {EPSILON[dtype]:.3g} * {scale:.3g}\n{graph}\n{lowered}"
        )


@given(graphs_with_inputs())
def test_interval_bounds_hold_for_every_value(drawn):
    """Inputs are drawn in [-3, 3] (ints in [-5, 5]), so a bound of 3 on float inputs is sound."""
    graph, inputs = drawn
    bounds = interval_bounds(graph, input_bound=3.0)
    for value, array in ir.run_all(graph, inputs, oracle=True).items():
        finite = np.abs(array[np.isfinite(array)].astype(np.float64)) if value.type.dtype.is_float else array
        largest = float(np.abs(finite.astype(np.float64)).max(initial=0))
        assert largest <= bounds[value] * (1 + 1e-6) + 1e-9, f"{value}: {largest} > bound {bounds[value]}\n{graph}"


# -- targeted: what random graphs rarely show -----------------------------------------------------


def mlp(seed: int = 0, scale: float = 1.0) -> ir.Graph:
    """gemm -> gelu -> gemm -> softmax, with weights of magnitude ~`scale`."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder("mlp")
    x = b.input("x", (4, 8))
    w0 = b.constant((rng.normal(size=(8, 16)) * scale).astype(np.float32), "w0")
    b0 = b.constant(rng.normal(size=(16,)).astype(np.float32), "b0")
    w1 = b.constant((rng.normal(size=(16, 3)) / 4).astype(np.float32), "w1")
    hidden = b.gelu(b.gemm(x, w0, b0))
    return b.build(b.softmax(b.gemm(hidden, w1), axis=-1))


def test_an_mlp_in_bf16_keeps_softmax_in_f32_and_the_report_says_why():
    graph = mlp()
    inputs = [np.random.default_rng(1).normal(size=(4, 8)).astype(np.float32)]
    lowered, report = lower_precision(graph, inputs)
    ops = {node.op: node.outputs[0].type.dtype for node in lowered.nodes}
    assert ops["gemm"] == ops["gelu"] == DType.bf16
    assert ops["softmax"] == DType.f32
    assert report.lowered == 3 and list(report.kept_ops()) == ["softmax"]
    assert "reduction" in report.kept_ops()["softmax"]
    text = str(report)
    assert "softmax" in text and "because reduction" in text and "output 0 (f32[4,3])" in text
    (error,) = report.errors
    assert 0 < error.max_abs < 0.02 and error.max_rel < 0.02  # three significant digits, nearly
    assert_equivalent(graph, lowered, inputs, atol=0.02)


def test_f16_keeps_nodes_whose_values_reach_1e5_in_f32_by_sampled_range():
    graph = mlp(scale=3e4)  # the first gemm's results reach ~1e5: past f16's 65504
    inputs = [np.random.default_rng(1).normal(size=(4, 8)).astype(np.float32)]
    lowered, report = lower_precision(graph, inputs, dtype=DType.f16)
    kept = {k.op: k.reason for k in report.kept}
    assert kept["gemm"].startswith("range:") and "65504" in kept["gemm"]
    assert kept["gelu"].startswith("range:")
    for value, array in ir.run_all(lowered, inputs).items():
        assert np.isfinite(array.astype(np.float64)).all(), f"{value} overflowed:\n{lowered}"
    # With small weights everything but softmax fits in f16.
    _, small = lower_precision(mlp(), inputs, dtype=DType.f16)
    assert list(small.kept_ops()) == ["softmax"]


def test_f16_range_by_intervals_without_example_inputs():
    b = GraphBuilder("g")
    x = b.input("x", (2, 3))
    big = b.constant(np.full((3,), 1e5, np.float32), "big")
    shifted = b.add(b.tanh(x), big)  # tanh is bounded whatever x is; + 1e5 is not f16
    graph = b.build(b.mul(b.tanh(x), b.constant(np.float32(2.0), "two")), shifted)
    lowered, report = LowerPrecision(dtype=DType.f16).run_with_report(graph)
    kept = {k.node.split(" = ")[1].split("(")[0]: k.reason for k in report.kept}
    # x is unbounded, so tanh(x) reads a value f16 may not hold; the add makes ~1e5.
    assert "interval analysis" in report.ranges
    assert kept["tanh"].startswith("range: %x is unbounded") and "1e+05" in kept["add"]
    assert all(n.outputs[0].type.dtype != DType.f16 for n in lowered.nodes if n.op in ("tanh", "add"))
    # With a bound on the inputs, tanh and mul run in f16; the add still may not.
    _, bounded = LowerPrecision(dtype=DType.f16, input_bound=10.0).run_with_report(graph)
    assert [k.op for k in bounded.kept] == ["add"]


def test_a_cast_chain_costs_at_most_one_cast_each_way():
    before = ir.parse_graph(CHAIN_BEFORE)
    after = make_pass("lower_precision").run(before)
    assert str(after) == CHAIN_EXPECTED
    assert_equivalent(before, after, atol=0.02)


CHAIN_BEFORE = """\
graph @chain(%x: f32[3]) -> (f32[3]) {
  %0 = cast(%x) {dtype=bf16} : bf16[3]
  %1 = cast(%0) {dtype=f32} : f32[3]
  %2 = cast(%1) {dtype=bf16} : bf16[3]
  %3 = cast(%2) {dtype=f32} : f32[3]
  %4 = tanh(%3) : f32[3]
  %5 = sigmoid(%1) : f32[3]
  %6 = add(%4, %5) : f32[3]
  return %6
}
"""

# One cast down; tanh and sigmoid read it (the round trips were exact upcasts); one cast up.
CHAIN_EXPECTED = """\
graph @chain(%x: f32[3]) -> (f32[3]) {
  %0 = cast(%x) {dtype=bf16} : bf16[3]
  %1 = tanh(%0) : bf16[3]
  %2 = sigmoid(%0) : bf16[3]
  %3 = add(%1, %2) : bf16[3]
  %4 = cast(%3) {dtype=f32} : f32[3]
  return %4
}
"""


BEFORE = """\
graph @block(%x: f32[2,3], %y: f32[2,3]) -> (f32[2,3], i64[2], f32[2,3]) {
  %w = const @w : f32[3,3]
  %b = const @b : f32[3]
  %0 = matmul(%x, %w) : f32[2,3]
  %1 = add(%0, %b) : f32[2,3]
  %2 = relu(%1) : f32[2,3]
  %3 = layer_norm(%2, %b) : f32[2,3]
  %4 = tanh(%3) : f32[2,3]
  %5 = argmax(%2) {axis=1} : i64[2]
  %6 = transpose(%y) {perm=[1, 0]} : f32[3,2]
  %7 = transpose(%6) {perm=[1, 0]} : f32[2,3]
  %8 = mul(%7, %2) : f32[2,3]
  return %4, %5, %8
}

constants {
  @w : f32[3,3] = [0.5, -1.0, 2.0, 0.25, 1.5, -0.5, 1.0, 0.0, -2.0]
  @b : f32[3] = [1.0, 0.5, -0.25]
}
"""

# - matmul, add, relu, tanh, mul run in bf16; layer_norm stays f32 (a reduction), with casts
#   either side; argmax follows its bf16 input; the transposes of %y follow their f32 input.
# - @w has only bf16 readers, so it is converted in place; @b is read in f32 by layer_norm and
#   in bf16 by add, so it gets a bf16 twin.
# - the signature is unchanged: the outputs are cast back to f32, the i64 one is untouched.
EXPECTED = """\
graph @block(%x: f32[2,3], %y: f32[2,3]) -> (f32[2,3], i64[2], f32[2,3]) {
  %w = const @w : bf16[3,3]
  %b = const @b : f32[3]
  %0 = cast(%x) {dtype=bf16} : bf16[2,3]
  %1 = matmul(%0, %w) : bf16[2,3]
  %b_bf16 = const @b_bf16 : bf16[3]
  %2 = add(%1, %b_bf16) : bf16[2,3]
  %3 = relu(%2) : bf16[2,3]
  %4 = cast(%3) {dtype=f32} : f32[2,3]
  %5 = layer_norm(%4, %b) : f32[2,3]
  %6 = cast(%5) {dtype=bf16} : bf16[2,3]
  %7 = tanh(%6) : bf16[2,3]
  %8 = cast(%7) {dtype=f32} : f32[2,3]
  %9 = argmax(%3) {axis=1} : i64[2]
  %10 = transpose(%y) {perm=[1, 0]} : f32[3,2]
  %11 = transpose(%10) {perm=[1, 0]} : f32[2,3]
  %12 = cast(%11) {dtype=bf16} : bf16[2,3]
  %13 = mul(%12, %3) : bf16[2,3]
  %14 = cast(%13) {dtype=f32} : f32[2,3]
  return %8, %9, %14
}

constants {
  @w : bf16[3,3] = [0.5, -1.0, 2.0, 0.25, 1.5, -0.5, 1.0, 0.0, -2.0]
  @b : f32[3] = [1.0, 0.5, -0.25]
  @b_bf16 : bf16[3] = [1.0, 0.5, -0.25]
}
"""


def test_before_expected_small_block():
    before = ir.parse_graph(BEFORE)
    after = make_pass("lower_precision").run(before)
    assert str(after) == EXPECTED
    assert_equivalent(before, after, atol=0.1, rtol=0.02)


def test_every_reader_of_a_value_shares_one_cast():
    b = GraphBuilder("g")
    x = b.input("x", (4,))
    graph = b.build(b.add(b.tanh(x), b.sigmoid(x)), b.exp(b.neg(x)))
    lowered = make_pass("lower_precision").run(graph)
    casts = [n for n in lowered.nodes if n.op == "cast"]
    down = [n for n in casts if n.inputs[0] is lowered.inputs[0]]
    assert len(down) == 1, lowered  # tanh, sigmoid and neg read one bf16 x
    assert {n.op: n.outputs[0].type.dtype for n in lowered.nodes}["exp"] == DType.f32


def test_user_policy_keeps_named_ops_and_options_read_from_pipeline_text():
    (step,) = parse_pipeline("lower_precision{dtype=f16,keep_f32=gelu+gemm,input_bound=4}")
    assert step == LowerPrecision(dtype=DType.f16, keep_f32=("gelu", "gemm"), input_bound=4.0)
    assert str(step) == "lower_precision{dtype=f16,keep_f32=gelu+gemm,input_bound=4.0}"
    # Example inputs are data, not pipeline text.
    assert str(dataclasses.replace(step, example_inputs=([np.zeros((4, 8), np.float32)],))) == str(step)
    _, report = step.run_with_report(mlp())
    assert report.kept_ops()["gelu"] == "user policy: keep_f32 names this op"
    assert [k.op for k in report.kept] == ["gemm", "gelu", "gemm", "softmax"]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"dtype": DType.f32}, "dtype must be f16 or bf16"),
        ({"keep_f32": ("no_such_op",)}, "unknown op 'no_such_op'"),
        ({"range_margin": 0.5}, "range_margin must be at least 1"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ir.KilnError if "unknown" in message else ValueError, match=message):
        LowerPrecision(**options)


def test_integer_bool_and_f64_values_are_untouched():
    b = GraphBuilder("g")
    x = b.input("x", (3,))
    n = b.input("n", (3,), DType.i32)
    d = b.input("d", (3,), DType.f64)
    counted = b.add(n, b.cast(b.greater(x, b.constant(np.zeros(3, np.float32), "zero")), dtype=DType.i32))
    graph = b.build(b.tanh(x), counted, b.tanh(d))
    lowered = PassManager([make_pass("lower_precision")], verify_each=True).run(graph)
    types = [(n.op, n.outputs[0].type.dtype) for n in lowered.nodes]
    assert ("add", DType.i32) in types and ("tanh", DType.f64) in types and ("tanh", DType.bf16) in types
    inputs = [np.array([-1, 0.5, 2], np.float32), np.array([1, 2, 3], np.int32), np.array([0.1, 0.2, 0.3])]
    assert_equivalent(graph, lowered, inputs, atol=0.01)


def test_contractions_read_and_write_low_precision_and_the_interpreter_accumulates_in_f32():
    # A sum of 1024 ones: a bf16 accumulator stalls at 256 (256 + 1 rounds back to 256, bf16's
    # spacing there being 2); an f32 one sums exactly and rounds once, and 1024 is a bf16 value.
    b = GraphBuilder("g")
    x = b.input("x", (1, 1024))
    graph = b.build(b.matmul(x, b.constant(np.ones((1024, 1), np.float32), "ones")))
    lowered = make_pass("lower_precision").run(graph)
    (matmul,) = [n for n in lowered.nodes if n.op == "matmul"]
    assert all(v.type.dtype == DType.bf16 for v in (*matmul.inputs, *matmul.outputs))
    assert float(ir.run(lowered, [np.ones((1, 1024), np.float32)])[0][0, 0]) == 1024.0


def test_no_f16_value_overflows_where_the_f32_graph_has_none():
    b = GraphBuilder("g")
    x = b.input("x", (8,))
    y = b.mul(b.mul(x, x), b.constant(np.float32(1e4), "gain"))  # up to 9e4 for |x| <= 3
    graph = b.build(b.relu(y))
    inputs = [np.linspace(-3, 3, 8, dtype=np.float32)]
    lowered, report = lower_precision(graph, inputs, dtype=DType.f16)
    assert math.isfinite(report.errors[0].max_abs) and report.errors[0].max_rel < 1e-3
    assert max(float(np.abs(a.astype(np.float64)).max()) for a in ir.run_all(lowered, inputs).values()) < math.inf
    assert F16_MAX == 65504.0
