"""Tests of `ir.testing`: the graph strategy draws varied valid graphs from the whole op table,
the input strategies fit a graph's signature, and `assert_equivalent` tells equal graphs from
different ones with a useful message."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ir
from ir import DType, GraphBuilder
from ir.testing import assert_equivalent, drawable_ops, graphs, graphs_with_inputs, input_arrays, random_inputs

# -- what the graph strategy draws ---------------------------------------------------------


def _collect(strategy: st.SearchStrategy, count: int) -> list:
    """`count` values drawn as a test run would draw them (reproducibly), for statistics."""
    drawn = []

    @settings(max_examples=count, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(value) -> None:
        drawn.append(value)

    collect()
    return drawn


@pytest.fixture(scope="module")
def drawn_graphs() -> list[ir.Graph]:
    return _collect(graphs(), 300)


def test_draws_most_of_the_op_table(drawn_graphs):
    used = collections.Counter(node.op for g in drawn_graphs for node in g.nodes)
    assert len(set(used) - {"const"}) >= 30, sorted(used)
    missing = sorted(set(drawable_ops()) - set(used))
    assert len(missing) <= len(drawable_ops()) // 5, f"ops never drawn in 300 graphs: {missing}"


def test_draws_multiple_outputs_constants_and_shared_values(drawn_graphs):
    def shares_a_value(g: ir.Graph) -> bool:
        reads = collections.Counter(v for node in g.nodes for v in node.inputs)
        return any(count >= 2 for count in reads.values())

    stats = {
        "several outputs": sum(len(g.outputs) > 1 for g in drawn_graphs),
        "constants": sum(bool(g.constants) for g in drawn_graphs),
        "shared value": sum(shares_a_value(g) for g in drawn_graphs),
        "several inputs": sum(len(g.inputs) > 1 for g in drawn_graphs),
        "non-f32 input": sum(any(v.type.dtype != DType.f32 for v in g.inputs) for g in drawn_graphs),
        "rank-4 input": sum(any(v.type.rank == 4 for v in g.inputs) for g in drawn_graphs),
        "scalar input": sum(any(v.type.rank == 0 for v in g.inputs) for g in drawn_graphs),
        "source comment": sum(any(n.source for n in g.nodes) for g in drawn_graphs),
    }
    rare = {what: count for what, count in stats.items() if count < 10}
    assert not rare, f"too few of 300 graphs have: {rare}"


def test_draws_multi_output_nodes():
    # split is one op in ~80, so it is asked for here rather than counted in the mixed draws
    drawn = _collect(graphs(ops=["split", "neg"]), 50)
    with_split = [g for g in drawn if any(len(n.outputs) > 1 for n in g.nodes)]
    assert len(with_split) >= 10
    assert any(v in g.outputs for g in with_split for n in g.nodes for v in n.outputs if len(n.outputs) > 1)


def test_draws_several_dtypes(drawn_graphs):
    dtypes = {v.type.dtype for g in drawn_graphs for v in g.values()}
    assert {DType.f32, DType.f16, DType.bf16, DType.i32, DType.i64, DType.bool} <= dtypes


@given(graphs())
def test_drawn_graphs_are_valid_and_have_inputs_with_broadcasting_shapes(graph):
    ir.verify(graph)
    assert 1 <= len(graph.inputs) <= 3 and graph.outputs
    shapes = [v.type.shape for v in graph.inputs]
    assert all(len(s) <= 4 and all(1 <= d <= 5 for d in s) for s in shapes)
    np.broadcast_shapes(*shapes)  # raises if they do not broadcast


@given(graphs(ops=["add", "mul", "neg"], dtypes=[DType.f16], max_nodes=3, max_rank=2, max_dim=3, max_inputs=1))
def test_options_bound_what_is_drawn(graph):
    assert {n.op for n in graph.nodes} <= {"add", "mul", "neg", "const"}
    assert sum(n.op != "const" for n in graph.nodes) <= 3
    assert all(v.type.dtype == DType.f16 for v in graph.values())
    assert len(graph.inputs) == 1 and graph.inputs[0].type.rank <= 2 and max(graph.inputs[0].type.shape, default=1) <= 3


@given(graphs(constants=False, ops=["relu"]))
def test_constants_can_be_turned_off(graph):
    assert not graph.constants


@pytest.mark.parametrize("op", ["gather", "gather_elements", "scatter"])
def test_index_operands_are_in_range(op):
    if op not in ir.OPS:
        pytest.skip(f"{op} is not declared yet")
    for graph in _collect(graphs(ops=[op]), 40):
        for node in graph.nodes:
            if node.op != op:
                continue
            indices = graph.constants[graph.producers[node.inputs[1]].attrs["name"]]
            axis = node.attrs["axis"]
            size = node.inputs[0].type.shape[axis]
            assert ((-size <= indices) & (indices < size)).all(), (indices, size)
            if op == "scatter":  # no two updates of a line target one element
                targets = np.moveaxis(indices % size, axis, -1).reshape(-1, indices.shape[axis])
                assert all(len(set(line)) == len(line) for line in targets.tolist()), indices


@pytest.mark.parametrize("op", drawable_ops())
def test_every_op_can_be_drawn(op):
    counts = collections.Counter(n.op for g in _collect(graphs(ops=[op], max_nodes=3), 25) for n in g.nodes)
    assert counts[op] > 0


def test_unknown_ops_are_refused():
    with pytest.raises(ValueError, match=r"cannot draw ops \['no_such_op'\]"):
        _collect(graphs(ops=["no_such_op"]), 1)
    with pytest.raises(ValueError, match=r"cannot draw ops \['const'\]"):
        _collect(graphs(ops=["const"]), 1)


# -- inputs --------------------------------------------------------------------------------


@given(graphs_with_inputs())
def test_input_arrays_fit_the_signature_and_range(graph_and_inputs):
    graph, arrays = graph_and_inputs
    assert len(arrays) == len(graph.inputs)
    for value, array in zip(graph.inputs, arrays):
        assert array.shape == value.type.shape and array.dtype == value.type.dtype.numpy
        if value.type.dtype != DType.bool:
            assert np.all(np.abs(array.astype(np.float64)) <= 5)
    ir.run(graph, arrays)


def test_random_inputs_are_reproducible_and_typed():
    b = GraphBuilder("g")
    values = [b.input(n, (3, 4), t) for n, t in zip("abcde", (DType.f32, DType.bf16, DType.i32, DType.u8, DType.bool))]
    graph = b.build(*values)
    first, again, other = random_inputs(graph, 1), random_inputs(graph, 1), random_inputs(graph, 2)
    for value, array, same, different in zip(values, first, again, other):
        assert array.dtype == value.type.dtype.numpy and array.shape == (3, 4)
        assert np.array_equal(array, same) and not np.array_equal(array, different)
    assert first[0].min() >= -3 and first[0].max() <= 3
    assert first[3].min() >= 0 and first[2].min() >= -5 and first[2].max() <= 5
    assert first[4].dtype == np.bool_ and 0 < first[4].sum() < 12


def test_input_arrays_round_low_precision_floats():
    b = GraphBuilder("g")
    graph = b.build(b.input("x", (4,), DType.bf16), b.input("y", (), DType.f16))
    for x, y in _collect(input_arrays(graph), 10):
        assert x.dtype == DType.bf16.numpy and x.shape == (4,)
        assert y.dtype == np.float16 and y.shape == ()


# -- assert_equivalent ---------------------------------------------------------------------


def _binary(op: str, dtype: DType = DType.f32, shape=(2, 3)) -> ir.Graph:
    b = GraphBuilder(op)
    x, y = b.input("x", shape, dtype), b.input("y", shape, dtype)
    return b.build(b.op(op, x, y))


def test_checker_passes_identical_and_equivalent_graphs():
    outputs = assert_equivalent(_binary("add"), _binary("add"))
    assert len(outputs) == 1 and outputs[0].shape == (2, 3)
    b = GraphBuilder("swapped")  # a + b == b + a bitwise
    x, y = b.input("x", (2, 3)), b.input("y", (2, 3))
    assert_equivalent(_binary("add"), b.build(b.add(y, x)))


def test_checker_catches_a_real_difference():
    inputs = [np.ones((2, 3), np.float32), np.full((2, 3), 2, np.float32)]
    with pytest.raises(AssertionError) as error:
        assert_equivalent(_binary("add"), _binary("sub"), inputs)
    message = str(error.value)
    assert "output 0 of 1 (f32[2,3]) differs: 6 of 6 elements differ (bitwise); first at index [0, 0]" in message
    assert "before np.float32(3.0), after np.float32(-1.0) (|difference| 4.0)" in message
    # Both graphs are printed, and the inputs.
    assert "graph @add(%x: f32[2,3], %y: f32[2,3])" in message and "%0 = sub(%x, %y)" in message
    assert "%y = array([[2., 2., 2.]" in message


def test_checker_compares_bitwise_by_default():
    b = GraphBuilder("plus_zero")
    x = b.input("x", (3,))
    plus_zero = b.build(b.add(x, b.constant(np.zeros((), np.float32))))
    b = GraphBuilder("identity")
    x = b.input("x", (3,))
    identity = b.build(b.mul(x, b.constant(np.ones((), np.float32))))
    negative_zero = [np.array([-0.0, 1.0, np.nan], np.float32)]
    with pytest.raises(AssertionError, match=r"1 of 3 elements differ \(bitwise\); first at index \[0\]"):
        assert_equivalent(identity, plus_zero, negative_zero)  # -0.0 + 0.0 is +0.0: x + 0 -> x is not exact
    assert_equivalent(identity, plus_zero, negative_zero, atol=1e-6)  # but close; nan == nan
    assert_equivalent(identity, identity, negative_zero)


def test_checker_tolerances():
    b = GraphBuilder("scaled")
    x, y = b.input("x", (2, 3)), b.input("y", (2, 3))
    slightly_more = b.build(b.mul(b.add(x, y), b.constant(np.float32(1.0001))))
    inputs = [np.full((2, 3), 1, np.float32), np.full((2, 3), 2, np.float32)]
    assert_equivalent(_binary("add"), slightly_more, inputs, rtol=1e-3)
    with pytest.raises(AssertionError, match=r"rtol=1e-05, atol=0.0"):
        assert_equivalent(_binary("add"), slightly_more, inputs, rtol=1e-5)


def test_checker_compares_integers_and_bools_exactly():
    assert_equivalent(_binary("add", DType.i32), _binary("add", DType.i32), seed=3)
    inputs = [np.arange(6, dtype=np.int64).reshape(2, 3), np.full((2, 3), 4, np.int64)]
    with pytest.raises(AssertionError, match=r"1 of 6 elements differ \(bitwise\); first at index \[1, 1\]"):
        assert_equivalent(_binary("less", DType.i64), _binary("less_equal", DType.i64), inputs)


@pytest.mark.parametrize(
    ("after", "fragment"),
    [
        (_binary("add", DType.f16), "the graphs take different inputs: (f32[2,3], f32[2,3]) vs (f16[2,3], f16[2,3])"),
        (_binary("equal"), "output 0 of 1 has type f32[2,3] before but bool[2,3] after"),
    ],
)
def test_checker_reports_different_signatures(after, fragment):
    with pytest.raises(AssertionError) as error:
        assert_equivalent(_binary("add"), after)
    assert fragment in str(error.value)


def test_checker_reports_different_output_counts():
    b = GraphBuilder("twice")
    x, y = b.input("x", (2, 3)), b.input("y", (2, 3))
    total = b.add(x, y)
    with pytest.raises(AssertionError, match="the graphs return 1 vs 2 outputs"):
        assert_equivalent(_binary("add"), b.build(total, total))


def test_checker_rejects_an_invalid_graph():
    good = _binary("add")
    x, y = good.inputs
    wrong = ir.Node("add", (x, y), ir.get_op("add").normalize_attrs({}), (ir.Value(ir.TensorType((3,), DType.f32)),))
    broken = ir.Graph("broken", good.inputs, wrong.outputs, (wrong,))
    with pytest.raises(AssertionError, match="the graph after is invalid:\n  - %0 = add"):
        assert_equivalent(good, broken)


def test_checker_oracle_mode_runs_in_f64():
    outputs = assert_equivalent(_binary("add", DType.bf16), _binary("add", DType.bf16), oracle=True)
    assert outputs[0].dtype == np.float64
