"""prune_dead_nodes: exact, idempotent, and leaves only what the outputs need."""

import numpy as np
from hypothesis import given

import ir
from ir import GraphBuilder
from ir.testing import assert_equivalent, graphs
from passes import make_pass

PRUNE = make_pass("prune_dead_nodes")


@given(graphs())
def test_pruning_keeps_every_output_exactly_and_is_idempotent(graph):
    pruned = PRUNE.run(graph)
    assert_equivalent(graph, pruned)
    assert str(PRUNE.run(pruned)) == str(pruned)
    # Every node left feeds an output.
    live = set(pruned.outputs)
    for node in reversed(pruned.nodes):
        assert any(v in live for v in node.outputs), ir.print_graph(pruned)
        live.update(node.inputs)


BEFORE = """\
graph @g(%x: f32[2], %unused: f32[2]) -> (f32[2]) {
  %w = const @w : f32[2]
  %dead_w = const @dead_w : f32[2]
  %0 = mul(%x, %w) : f32[2]
  %1 = add(%unused, %dead_w) : f32[2]
  %2 = exp(%1) : f32[2]
  return %0
}

constants {
  @w : f32[2] = [1.0, 2.0]
  @dead_w : f32[2] = [3.0, 4.0]
}
"""

EXPECTED = """\
graph @g(%x: f32[2], %unused: f32[2]) -> (f32[2]) {
  %w = const @w : f32[2]
  %0 = mul(%x, %w) : f32[2]
  return %0
}

constants {
  @w : f32[2] = [1.0, 2.0]
}
"""


def test_dead_nodes_and_their_constants_go_inputs_stay():
    assert str(PRUNE.run(ir.parse_graph(BEFORE))) == EXPECTED


def test_a_graph_returning_its_input_keeps_nothing():
    b = GraphBuilder("g")
    x = b.input("x", (3,))
    b.exp(x)
    pruned = PRUNE.run(b.build(x))
    assert pruned.nodes == () and pruned.outputs == (x,)
    np.testing.assert_array_equal(ir.run(pruned, [np.ones(3, np.float32)])[0], np.ones(3))
