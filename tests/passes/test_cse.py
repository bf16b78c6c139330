"""cse: exact, idempotent, merges every duplicate it is given and nothing that differs."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ir
from ir import DType, Graph, GraphBuilder, Law, Node, Value
from ir.testing import assert_equivalent, graphs
from passes import parse_pipeline
from passes.cse import CSE, node_key
from passes.editing import keep

MERGE = CSE()


def duplicate_keys(graph: Graph) -> list[str]:
    """Ops of nodes whose key an earlier node has: CSE leaves none (constants: same bytes)."""
    seen, duplicates = set(), []
    for node in graph.nodes:
        key = node_key(graph, node, node.inputs)
        if key is not None and key in seen:
            duplicates.append(node.op)
        seen.add(key)
    return duplicates


@given(graphs())
def test_cse_is_exact_complete_and_idempotent(graph):
    merged = MERGE.run(graph)
    ir.verify(merged)
    assert_equivalent(graph, merged)
    assert duplicate_keys(merged) == [], ir.print_graph(merged)
    assert str(MERGE.run(merged)) == str(merged)


@st.composite
def graphs_with_duplicates(draw):
    """A drawn graph and the same graph with some nodes computed twice (commutative ones
    sometimes with their inputs swapped, constants under a second name), each reader reading
    either copy: CSE of both must give the same graph."""
    graph = draw(graphs())
    builder = GraphBuilder(graph.name)
    builder.adopt_inputs(graph.inputs)
    copies: dict[Value, list[Value]] = {v: [v] for v in graph.inputs}
    for node in graph.nodes:
        kept = keep(builder, graph, node, [draw(st.sampled_from(copies[v])) for v in node.inputs])
        for value, new in zip(node.outputs, kept.outputs):
            copies[value] = [new]
        if not draw(st.booleans()):
            continue
        if node.op == "const":
            twin = builder.constant(graph.constants[node.attrs["name"]], "twin")
            copies[node.output].append(twin)
            continue
        inputs = [draw(st.sampled_from(copies[v])) for v in node.inputs]
        if Law.COMMUTATIVE in ir.get_op(node.op).laws and len(inputs) == 2 and draw(st.booleans()):
            inputs.reverse()
        twin = Node(node.op, tuple(inputs), node.attrs, tuple(Value(v.type) for v in node.outputs), node.source)
        builder.append(twin)
        for value, new in zip(node.outputs, twin.outputs):
            copies[value].append(new)
    duplicated = builder.build(*(draw(st.sampled_from(copies[v])) for v in graph.outputs))
    return graph, duplicated


@given(graphs_with_duplicates())
def test_cse_merges_every_copy_of_a_node(case):
    graph, duplicated = case
    ir.verify(duplicated)
    merged = MERGE.run(duplicated)
    assert_equivalent(duplicated, merged)
    assert str(merged) == str(MERGE.run(graph))


SHARED_BEFORE = """\
graph @g(%x: f32[3], %y: f32[3]) -> (f32[3], f32[3]) {
  %0 = exp(%x) : f32[3]
  %1 = exp(%x) : f32[3]
  %2 = mul(%0, %y) : f32[3]
  %3 = mul(%1, %y) : f32[3]
  %4 = add(%2, %1) : f32[3]
  %5 = sum(%4) {axes=[0], keepdims=true} : f32[1]
  %6 = sum(%4) {axes=[0]} : f32[]
  %7 = sub(%3, %6) : f32[3]
  return %4, %7
}
"""

# The second exp goes, so the second mul reads the first exp and goes too (merges cascade);
# sums over the same axes with different keepdims stay apart, and so does the dead first one.
SHARED_EXPECTED = """\
graph @g(%x: f32[3], %y: f32[3]) -> (f32[3], f32[3]) {
  %0 = exp(%x) : f32[3]
  %1 = mul(%0, %y) : f32[3]
  %2 = add(%1, %0) : f32[3]
  %3 = sum(%2) {axes=[0], keepdims=true} : f32[1]
  %4 = sum(%2) {axes=[0]} : f32[]
  %5 = sub(%1, %4) : f32[3]
  return %2, %5
}
"""

# add and maximum are commutative: swapped inputs merge. sub and pow are not.
COMMUTATIVE_BEFORE = """\
graph @g(%x: f32[3], %y: f32[3]) -> (f32[3], f32[3], f32[3], f32[3], f32[3], f32[3], f32[3], f32[3]) {
  %0 = add(%x, %y) : f32[3]
  %1 = add(%y, %x) : f32[3]
  %2 = maximum(%y, %x) : f32[3]
  %3 = maximum(%x, %y) : f32[3]
  %4 = sub(%x, %y) : f32[3]
  %5 = sub(%y, %x) : f32[3]
  %6 = pow(%x, %y) : f32[3]
  %7 = pow(%y, %x) : f32[3]
  return %0, %1, %2, %3, %4, %5, %6, %7
}
"""

COMMUTATIVE_EXPECTED = """\
graph @g(%x: f32[3], %y: f32[3]) -> (f32[3], f32[3], f32[3], f32[3], f32[3], f32[3], f32[3], f32[3]) {
  %0 = add(%x, %y) : f32[3]
  %1 = maximum(%y, %x) : f32[3]
  %2 = sub(%x, %y) : f32[3]
  %3 = sub(%y, %x) : f32[3]
  %4 = pow(%x, %y) : f32[3]
  %5 = pow(%y, %x) : f32[3]
  return %0, %0, %1, %1, %2, %3, %4, %5
}
"""

# Equal constants merge under the first name; -0.0 is not 0.0, as bytes and as an attribute.
CONSTANTS_BEFORE = """\
graph @g(%x: f32[2]) -> (f32[2], f32[2], f32[2], f32[2], f32[2], f32[2], f32[2], f32[2]) {
  %a = const @a : f32[2]
  %a_again = const @a_again : f32[2]
  %a_other_shape = const @a_other_shape : f32[1,2]
  %zero = const @zero : f32[2]
  %minus_zero = const @minus_zero : f32[2]
  %0 = add(%x, %a) : f32[2]
  %1 = add(%x, %a_again) : f32[2]
  %2 = reshape(%a_other_shape) {shape=[2]} : f32[2]
  %3 = add(%x, %zero) : f32[2]
  %4 = add(%x, %minus_zero) : f32[2]
  %5 = full() {dtype=f32, shape=[2], value=0.0} : f32[2]
  %6 = full() {dtype=f32, shape=[2], value=-0.0} : f32[2]
  %7 = full() {dtype=f32, shape=[2], value=-0.0} : f32[2]
  return %0, %1, %2, %3, %4, %5, %6, %7
}

constants {
  @a : f32[2] = [1.5, 2.0]
  @a_again : f32[2] = [1.5, 2.0]
  @a_other_shape : f32[1,2] = [1.5, 2.0]
  @zero : f32[2] = splat(0.0)
  @minus_zero : f32[2] = splat(-0.0)
}
"""

CONSTANTS_EXPECTED = """\
graph @g(%x: f32[2]) -> (f32[2], f32[2], f32[2], f32[2], f32[2], f32[2], f32[2], f32[2]) {
  %a = const @a : f32[2]
  %a_other_shape = const @a_other_shape : f32[1,2]
  %zero = const @zero : f32[2]
  %minus_zero = const @minus_zero : f32[2]
  %0 = add(%x, %a) : f32[2]
  %1 = reshape(%a_other_shape) {shape=[2]} : f32[2]
  %2 = add(%x, %zero) : f32[2]
  %3 = add(%x, %minus_zero) : f32[2]
  %4 = full() {dtype=f32, shape=[2], value=0.0} : f32[2]
  %5 = full() {dtype=f32, shape=[2], value=-0.0} : f32[2]
  return %0, %0, %1, %2, %3, %4, %5, %5
}

constants {
  @a : f32[2] = [1.5, 2.0]
  @a_other_shape : f32[1,2] = [1.5, 2.0]
  @zero : f32[2] = splat(0.0)
  @minus_zero : f32[2] = splat(-0.0)
}
"""

# Two splits of one value are one split; readers of either one's outputs read the first's.
SPLIT_BEFORE = """\
graph @g(%x: f32[4]) -> (f32[2]) {
  %0, %1 = split(%x) {axis=0, sizes=[2, 2]} : f32[2], f32[2]
  %2, %3 = split(%x) {axis=0, sizes=[2, 2]} : f32[2], f32[2]
  %4, %5 = split(%x) {axis=0, sizes=[1, 3]} : f32[1], f32[3]
  %6 = mul(%0, %3) : f32[2]
  %7 = mul(%2, %1) : f32[2]
  %8 = sub(%6, %7) : f32[2]
  return %8
}
"""

SPLIT_EXPECTED = """\
graph @g(%x: f32[4]) -> (f32[2]) {
  %0, %1 = split(%x) {axis=0, sizes=[2, 2]} : f32[2], f32[2]
  %2, %3 = split(%x) {axis=0, sizes=[1, 3]} : f32[1], f32[3]
  %4 = mul(%0, %1) : f32[2]
  %5 = sub(%4, %4) : f32[2]
  return %5
}
"""


@pytest.mark.parametrize(
    ("before", "expected"),
    [
        (SHARED_BEFORE, SHARED_EXPECTED),
        (COMMUTATIVE_BEFORE, COMMUTATIVE_EXPECTED),
        (CONSTANTS_BEFORE, CONSTANTS_EXPECTED),
        (SPLIT_BEFORE, SPLIT_EXPECTED),
    ],
    ids=["shared_users", "commutative", "constants", "split"],
)
def test_cse(before, expected):
    graph = ir.parse_graph(before)
    merged = MERGE.run(graph)
    assert str(merged) == expected
    assert_equivalent(graph, merged)


def test_nans_with_different_payloads_stay_apart():
    quiet = np.array([np.nan], np.float32)
    payload = np.array([0x7FC00001], np.uint32).view(np.float32)
    b = GraphBuilder("g")
    first, same, other = b.constant(quiet, "n"), b.constant(quiet.copy(), "n"), b.constant(payload, "n")
    merged = MERGE.run(b.build(first, same, other))
    assert list(merged.constants) == ["n", "n_1"]
    assert merged.outputs[0] is merged.outputs[1] is not merged.outputs[2]


@pytest.mark.parametrize("dtype", [DType.bf16, DType.f16, DType.i64, DType.bool])
def test_constants_of_other_dtypes_merge_by_bytes(dtype):
    b = GraphBuilder("g")
    array = np.array([1, 0, 1], dtype.numpy)
    values = [b.constant(array, "c"), b.constant(array, "d")]
    values.append(b.constant(array.astype(np.float32), "e"))  # the same numbers in another dtype: stays
    merged = MERGE.run(b.build(*values))
    assert list(merged.constants) == ["c", "e"]


def test_regions_are_never_merged():
    body = GraphBuilder("fused_0")
    a = body.input("a", (3,))
    body_graph = body.build(body.exp(a))
    b = GraphBuilder("g")
    x = b.input("x", (3,))
    graph = b.build(
        b.op("fused", x, body=body_graph, kind="pointwise"), b.op("fused", x, body=body_graph, kind="pointwise")
    )
    merged = MERGE.run(graph)
    assert [node.op for node in merged.nodes] == ["fused", "fused"]
    assert_equivalent(graph, merged)


def test_cse_runs_from_pipeline_text():
    (step,) = parse_pipeline("cse")
    assert step == MERGE and step.purpose().startswith("Merge nodes")
