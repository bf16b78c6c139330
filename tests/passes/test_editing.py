"""map_nodes: the rebuild loop passes share."""

import numpy as np
from hypothesis import given

from ir import GraphBuilder
from ir.testing import assert_equivalent, graphs
from passes.editing import map_nodes


@given(graphs())
def test_keeping_every_node_gives_the_same_graph(graph):
    rebuilt = map_nodes(graph, lambda node, inputs, builder: None)
    assert str(rebuilt) == str(graph)
    assert rebuilt.inputs == graph.inputs
    assert_equivalent(graph, rebuilt)


def test_replacing_a_node_repoints_its_users():
    b = GraphBuilder("g")
    x = b.input("x", (2,))
    graph = b.build(b.exp(b.neg(b.neg(x))))

    def drop_double_negation(node, inputs, builder):
        if node.op == "neg" and inputs[0] is not x:  # the outer neg: -(-x) -> x
            return x
        return None

    result = map_nodes(graph, drop_double_negation)
    assert [n.op for n in result.nodes] == ["neg", "exp"]
    assert result.nodes[1].inputs == (x,)
    value = np.array([0.5, -1.0], np.float32)
    assert_equivalent(graph, result, [value])


def test_constants_keep_their_names_unless_taken():
    b = GraphBuilder("g")
    c = b.constant(np.ones(2, np.float32), "w")
    graph = b.build(c)

    def make_a_w_first(node, inputs, builder):
        if node.op == "const":
            builder.constant(np.zeros(2, np.float32), "w")
        return None

    result = map_nodes(graph, make_a_w_first)
    assert list(result.constants) == ["w", "w_0"]
    np.testing.assert_array_equal(result.constants["w_0"], np.ones(2))
