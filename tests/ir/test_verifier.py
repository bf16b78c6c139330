"""Tests of the verifier: it accepts every graph the strategy draws (and their parsed text), and it
rejects graphs broken by hand, saying what is wrong and quoting the node."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given

import ir
from ir import Attributes, DType, Graph, Node, TensorType, Value, VerificationError, get_op, verify
from ir.testing import graphs

F2 = TensorType((2,), DType.f32)


@given(graphs())
def test_accepts_every_drawn_graph(graph):
    verify(graph)
    verify(ir.parse_graph(ir.print_graph(graph)))


def _node(op: str, inputs: tuple[Value, ...], output_type: TensorType = F2, **attrs) -> Node:
    return Node(op, inputs, get_op(op).normalize_attrs(attrs), (Value(output_type),))


def _graph(nodes, outputs=None, inputs=None, constants=None) -> Graph:
    nodes = tuple(nodes)
    return Graph("broken", inputs if inputs is not None else (X,), outputs or nodes[-1].outputs, nodes, constants or {})


X = Value(F2, "x")


def dangling_value():
    return _graph([_node("neg", (Value(F2),))])


def use_before_definition():
    first = _node("neg", (X,))
    second = _node("abs", (first.output,))
    return _graph([second, first], outputs=second.outputs)


def cycle():
    # %0 = add(%x, %1); %1 = neg(%0): each node reads the other's output
    later = Value(F2)
    add = Node("add", (X, later), get_op("add").normalize_attrs({}), (Value(F2),))
    neg = Node("neg", (add.output,), get_op("neg").normalize_attrs({}), (later,))
    return _graph([add, neg])


def wrong_output_type():
    return _graph([_node("sum", (X,), F2, axes=[0])])


def output_defined_twice():
    first = _node("neg", (X,))
    second = Node("abs", (X,), get_op("abs").normalize_attrs({}), first.outputs)
    return _graph([first, second])


def input_redefined_by_a_node():
    return _graph([Node("neg", (X,), get_op("neg").normalize_attrs({}), (X,))])


def missing_constant():
    const = Node("const", (), get_op("const").normalize_attrs({"name": "w"}), (Value(F2, "w"),))
    return _graph([const], constants={"other": np.zeros(2, np.float32)})


def constant_of_another_type():
    const = Node("const", (), get_op("const").normalize_attrs({"name": "w"}), (Value(F2, "w"),))
    return _graph([const], constants={"w": np.zeros(3, np.float32)})


def returns_an_undefined_value():
    return _graph([_node("neg", (X,))], outputs=(Value(F2),))


def attributes_not_normalised():
    return _graph([Node("clip", (X,), Attributes({}), (Value(F2),))])


def bad_attribute_value():
    return _graph([Node("gelu", (X,), Attributes({"approximate": "fast"}), (Value(F2),))])


def shapes_that_do_not_broadcast():
    return _graph([_node("add", (X, Value(TensorType((3,), DType.f32), "y")))], inputs=(X,))


def wrong_arity():
    return _graph([_node("neg", (X, X))])


def several_problems():
    return _graph([_node("neg", (Value(F2),)), _node("sum", (X,), F2, axes=[0])])


BROKEN = [
    (dangling_value, "%0 = neg(%?) : f32[2]: uses a value but nothing defines it"),
    (use_before_definition, "%0 = abs(%1) : f32[2]: uses a value before it is defined"),
    (use_before_definition, "nodes are not in topological order"),
    (cycle, "%0 = add(%x, %1) : f32[2]: uses a value before it is defined"),
    (cycle, "the graph has a cycle: %0 -> %1 -> %0"),
    (wrong_output_type, "%0 = sum(%x) {axes=[0]} : f32[2]: output types (f32[2]) differ from the op's rule (f32[])"),
    # The printer names a value after its last definition, hence %1 and %0 (see the report).
    (output_defined_twice, "%0 is defined twice (values are SSA): %0 = abs(%x) : f32[2]"),
    (input_redefined_by_a_node, "%x is defined twice (values are SSA): %x = neg(%x) : f32[2]"),
    (missing_constant, "%w = const @w : f32[2]: constant @w is not in the graph's constants"),
    (constant_of_another_type, "%w = const @w : f32[2]: output types (f32[2]) differ from the op's rule (f32[3])"),
    (returns_an_undefined_value, "the graph returns %?, which nothing defines"),
    (attributes_not_normalised, "%0 = clip(%x) : f32[2]: attributes are not normalised"),
    (bad_attribute_value, "gelu: attribute 'approximate' must be one of 'none', 'tanh', got 'fast'"),
    (shapes_that_do_not_broadcast, "add: cannot broadcast [2] with [3] (axis -1 has sizes [2, 3])"),
    (wrong_arity, "neg takes 1 input(s) (x), got 2"),
    (several_problems, "uses a value but nothing defines it\n  - %1 = sum(%x) {axes=[0]} : f32[2]: output types"),
]


@pytest.mark.parametrize(("make_graph", "fragment"), BROKEN, ids=[f"{m.__name__}" for m, _ in BROKEN])
def test_rejects_broken_graphs(make_graph, fragment):
    with pytest.raises(VerificationError) as error:
        verify(make_graph())
    message = str(error.value)
    assert message.startswith("graph @broken is invalid:\n  - ")
    assert fragment in message


# Bugs found while writing these tests (see the report): the verifier crashes or stays silent.


def unknown_op():
    return _graph([Node("frobnicate", (X,), Attributes({}), (Value(F2),))])


def unknown_attribute():
    return _graph([Node("add", (X, X), Attributes({"alpha": 2.0}), (Value(F2),))])


def const_without_a_name():
    return _graph([Node("const", (), Attributes({}), (Value(F2),))])


def two_inputs_of_one_name():
    y = Value(F2, "x")
    return _graph([_node("add", (X, y))], inputs=(X, y))


CRASHES = [
    (unknown_op, "unknown op 'frobnicate'"),
    (unknown_attribute, "add: unknown attribute(s) alpha"),
    (const_without_a_name, "attribute 'name' (str) is required"),
    (two_inputs_of_one_name, "%x"),
]


@pytest.mark.parametrize(("make_graph", "fragment"), CRASHES[:3], ids=[m.__name__ for m, _ in CRASHES[:3]])
def test_rejects_nodes_the_printer_cannot_print(make_graph, fragment):
    with pytest.raises(VerificationError, match="graph @broken is invalid") as error:
        verify(make_graph())
    assert fragment in str(error.value)


def test_rejects_two_inputs_of_one_name():
    graph = two_inputs_of_one_name()
    with pytest.raises(VerificationError, match="%x"):
        verify(graph)
