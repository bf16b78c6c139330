"""fold_constants: exact, idempotent, folds everything constant within the cap and nothing else."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ir
from ir import DType, Graph, GraphBuilder, InterpreterError
from ir.testing import assert_equivalent, graphs, graphs_with_inputs
from passes import parse_pipeline
from passes.editing import keep
from passes.fold_constants import FoldConstants, evaluate_node

FOLD = FoldConstants()


def foldable_nodes_left(graph: Graph, max_elements: int) -> list[str]:
    """Nodes that read only constants, are no region and fit the cap: folding leaves none."""
    constant = {node.output for node in graph.nodes if node.op == "const"}
    return [
        node.op
        for node in graph.nodes
        if node.op not in ("const", "fused")
        and all(v in constant for v in node.inputs)
        and sum(v.type.numel for v in node.outputs) <= max_elements
    ]


def new_constants(before: Graph, after: Graph) -> dict[str, np.ndarray]:
    return {name: array for name, array in after.constants.items() if name not in before.constants}


@given(graphs())
def test_folding_is_exact_complete_and_idempotent(graph):
    folded = FOLD.run(graph)
    ir.verify(folded)
    assert_equivalent(graph, folded)
    assert foldable_nodes_left(folded, FOLD.max_elements) == [], ir.print_graph(folded)
    assert str(FOLD.run(folded)) == str(folded)


@st.composite
def graphs_with_constant_inputs(draw):
    """A drawn graph in which some inputs became constants holding drawn data, the arrays for
    the inputs left, and a cap: folding has whole subgraphs to evaluate."""
    graph, arrays = draw(graphs_with_inputs())
    as_constant = [draw(st.booleans()) for _ in graph.inputs]
    if len(as_constant) > 1 or draw(st.booleans()):
        as_constant[0] = True  # mostly at least one, sometimes all
    builder = GraphBuilder(graph.name)
    builder.adopt_inputs([v for v, c in zip(graph.inputs, as_constant) if not c])
    env = {v: v for v in graph.inputs}
    for value, array, constant in zip(graph.inputs, arrays, as_constant):
        if constant:
            env[value] = builder.constant(array, f"in_{value.name}")
    for node in graph.nodes:
        kept = keep(builder, graph, node, [env[v] for v in node.inputs])
        env.update(zip(node.outputs, kept.outputs))
    remaining = [a for a, c in zip(arrays, as_constant) if not c]
    cap = draw(st.sampled_from([FOLD.max_elements, 0, 1, 6, 64]))
    return builder.build(*(env[v] for v in graph.outputs)), remaining, cap


@given(graphs_with_constant_inputs())
def test_folding_constant_subgraphs_gives_the_bits_of_running_them_and_keeps_the_cap(case):
    graph, arrays, cap = case
    fold = FoldConstants(max_elements=cap)
    folded = fold.run(graph)
    ir.verify(folded)
    assert_equivalent(graph, folded, arrays)
    for name, array in new_constants(graph, folded).items():
        assert array.size <= cap, f"@{name} has {array.size} elements, the cap is {cap}"
    assert foldable_nodes_left(folded, cap) == [], ir.print_graph(folded)
    assert str(fold.run(folded)) == str(folded)


CHAIN_BEFORE = """\
graph @g(%x: f32[2]) -> (f32[2]) {
  %a = const @a : f32[2]
  %b = const @b : f32[2]
  %0 = add(%a, %b) : f32[2]
  %1 = mul(%0, %a) : f32[2]
  %2 = neg(%1) : f32[2]
  %3 = add(%x, %2) : f32[2]
  return %3
}

constants {
  @a : f32[2] = [1.0, 2.0]
  @b : f32[2] = [3.0, -4.0]
}
"""

# The whole chain becomes one constant; its inside and the constants only it read go.
CHAIN_EXPECTED = """\
graph @g(%x: f32[2]) -> (f32[2]) {
  %folded_neg = const @folded_neg : f32[2]
  %0 = add(%x, %folded_neg) : f32[2]
  return %0
}

constants {
  @folded_neg : f32[2] = [-4.0, 4.0]
}
"""

# A constant that is still read stays; a value both read and folded further stays as well.
SHARED_BEFORE = """\
graph @g(%x: f32[2]) -> (f32[2], f32[2]) {
  %a = const @a : f32[2]
  %0 = exp(%a) : f32[2]
  %1 = neg(%0) : f32[2]
  %2 = mul(%x, %a) : f32[2]
  %3 = add(%2, %0) : f32[2]
  return %3, %1
}

constants {
  @a : f32[2] = [0.0, 1.0]
}
"""

SHARED_EXPECTED = """\
graph @g(%x: f32[2]) -> (f32[2], f32[2]) {
  %a = const @a : f32[2]
  %folded_exp = const @folded_exp : f32[2]
  %folded_neg = const @folded_neg : f32[2]
  %0 = mul(%x, %a) : f32[2]
  %1 = add(%0, %folded_exp) : f32[2]
  return %1, %folded_neg
}

constants {
  @a : f32[2] = [0.0, 1.0]
  @folded_exp : f32[2] = [1.0, 2.7182817]
  @folded_neg : f32[2] = [-1.0, -2.7182817]
}
"""

# Sources without inputs fold too: an iota and its cast become one f32 constant.
ARANGE_BEFORE = """\
graph @g(%x: f32[2,4]) -> (f32[2,4]) {
  %0 = arange() {limit=4.0} : i64[4]
  %1 = cast(%0) {dtype=f32} : f32[4]
  %2 = full() {dtype=f32, shape=[2, 1], value=0.5} : f32[2,1]
  %3 = mul(%1, %2) : f32[2,4]
  %4 = add(%x, %3) : f32[2,4]
  return %4
}
"""

ARANGE_EXPECTED = """\
graph @g(%x: f32[2,4]) -> (f32[2,4]) {
  %folded_mul = const @folded_mul : f32[2,4]
  %0 = add(%x, %folded_mul) : f32[2,4]
  return %0
}

constants {
  @folded_mul : f32[2,4] = [0.0, 0.5, 1.0, 1.5, 0.0, 0.5, 1.0, 1.5]
}
"""

# Over the cap (65536 elements by default) nothing is materialised, nor folded past it: the
# small expand folds, the big one and the sum over it stay.
CAP_BEFORE = """\
graph @g(%x: f32[4]) -> (f32[4], f32[1]) {
  %one = const @one : f32[1]
  %0 = expand(%one) {shape=[4]} : f32[4]
  %1 = add(%x, %0) : f32[4]
  %2 = expand(%one) {shape=[100000]} : f32[100000]
  %3 = sum(%2) {axes=[0], keepdims=true} : f32[1]
  return %1, %3
}

constants {
  @one : f32[1] = [1.0]
}
"""

CAP_EXPECTED = """\
graph @g(%x: f32[4]) -> (f32[4], f32[1]) {
  %one = const @one : f32[1]
  %folded_expand = const @folded_expand : f32[4]
  %0 = add(%x, %folded_expand) : f32[4]
  %1 = expand(%one) {shape=[100000]} : f32[100000]
  %2 = sum(%1) {axes=[0], keepdims=true} : f32[1]
  return %0, %2
}

constants {
  @one : f32[1] = [1.0]
  @folded_expand : f32[4] = splat(1.0)
}
"""

# Of a split's outputs, only the one still read becomes a constant.
SPLIT_BEFORE = """\
graph @g(%x: f32[2]) -> (f32[2]) {
  %c = const @c : f32[6]
  %0, %1, %2 = split(%c) {axis=0, sizes=[2, 2, 2]} : f32[2], f32[2], f32[2]
  %3 = mul(%1, %2) : f32[2]
  %4 = add(%x, %0) : f32[2]
  return %4
}

constants {
  @c : f32[6] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
}
"""

SPLIT_EXPECTED = """\
graph @g(%x: f32[2]) -> (f32[2]) {
  %folded_split = const @folded_split : f32[2]
  %0 = add(%x, %folded_split) : f32[2]
  return %0
}

constants {
  @folded_split : f32[2] = [1.0, 2.0]
}
"""

# A constant nothing read before folding is dead code, left to prune_dead_nodes.
DEAD_BEFORE = """\
graph @g(%x: f32[2]) -> (f32[2]) {
  %unused = const @unused : f32[2]
  %0 = neg(%x) : f32[2]
  return %0
}

constants {
  @unused : f32[2] = [1.0, 2.0]
}
"""


@pytest.mark.parametrize(
    ("before", "expected"),
    [
        (CHAIN_BEFORE, CHAIN_EXPECTED),
        (SHARED_BEFORE, SHARED_EXPECTED),
        (ARANGE_BEFORE, ARANGE_EXPECTED),
        (CAP_BEFORE, CAP_EXPECTED),
        (SPLIT_BEFORE, SPLIT_EXPECTED),
        (DEAD_BEFORE, DEAD_BEFORE),
    ],
    ids=["chain", "shared", "arange_cast", "cap", "split", "dead_constant"],
)
def test_folding(before, expected):
    graph = ir.parse_graph(before)
    folded = FOLD.run(graph)
    assert str(folded) == expected
    assert_equivalent(graph, folded)


def test_the_cap_is_an_option_of_the_pipeline_text():
    (fold,) = parse_pipeline("fold_constants{max_elements=100000}")
    assert fold == FoldConstants(max_elements=100000)
    folded = fold.run(ir.parse_graph(CAP_BEFORE))
    assert sorted(node.op for node in folded.nodes) == ["add", "const", "const"]  # the sum folded too
    assert_equivalent(ir.parse_graph(CAP_BEFORE), folded)


@pytest.mark.parametrize("dtype", [DType.f16, DType.bf16])
def test_low_precision_results_are_rounded_as_at_run_time(dtype):
    # exp(x) * 3 computes in f32 and rounds to f16/bf16 after each op; folding must round the
    # same way, not once at the end.
    b = GraphBuilder("g")
    x = b.input("x", (5,), dtype)
    c = b.constant(np.linspace(-2, 2, 5).astype(dtype.numpy), "c")
    three = b.constant(np.full(5, 3, dtype.numpy), "three")
    graph = b.build(b.add(x, b.mul(b.exp(c), three)))
    folded = FOLD.run(graph)
    assert [node.op for node in folded.nodes] == ["const", "add"]
    assert folded.constants["folded_mul"].dtype == dtype.numpy
    assert_equivalent(graph, folded)


def test_an_evaluation_that_fails_stays_and_fails_at_run_time():
    b = GraphBuilder("g")
    x = b.input("x", (2,))
    table = b.constant(np.arange(3, dtype=np.float32), "table")
    index = b.constant(np.array([0, 7], np.int64), "index")
    graph = b.build(b.add(x, b.gather(table, index, axis=0)))
    folded = FOLD.run(graph)
    assert str(folded) == str(graph)
    with pytest.raises(InterpreterError, match="gather"):
        ir.run(folded, [np.zeros(2, np.float32)])


def test_regions_are_not_folded():
    body = GraphBuilder("fused_0")
    a = body.input("a", (3,))
    body_graph = body.build(body.exp(a))
    b = GraphBuilder("g")
    c = b.constant(np.ones(3, np.float32), "c")
    graph = b.build(b.op("fused", c, body=body_graph, kind="pointwise"))
    folded = FOLD.run(graph)
    assert [node.op for node in folded.nodes] == ["const", "fused"]
    assert_equivalent(graph, folded)


def test_evaluate_node_gives_every_output():
    b = GraphBuilder("g")
    c = b.constant(np.arange(4, dtype=np.int32), "c")
    b.split(c, axis=0, sizes=(1, 3))
    graph = b.build(c)
    low, high = evaluate_node(graph.nodes[-1], [graph.constants["c"]])
    np.testing.assert_array_equal(low, [0])
    np.testing.assert_array_equal(high, [1, 2, 3])
    assert high.dtype == np.int32
