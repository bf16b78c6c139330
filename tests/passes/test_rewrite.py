"""The rewrite engine: patterns match what they say (commutative ops in either order, a name
used twice binds one value, constants are `const` or `full`), the driver reaches a fixpoint,
keeps types, stops rule sets that loop with an error naming them, and prunes what it leaves dead."""

import numpy as np
import pytest
from hypothesis import given

import ir
from ir import DType, GraphBuilder
from ir.testing import assert_equivalent, graphs
from passes.prune_dead_nodes import PruneDeadNodes
from passes.rewrite import (
    RewriteError,
    RewriteLoopError,
    Rewriter,
    Rule,
    RuleTable,
    const,
    match,
    pat,
    rewrite_to_fixpoint,
    var,
)


def cancel_negations(rw: Rewriter, x: ir.Value) -> ir.Value:
    return x


NEG_NEG = RuleTable((Rule("neg_neg", pat("neg", pat("neg", var("x"))), cancel_negations),))


def _match_at_last_node(pattern, graph):
    """Captures of `pattern` at the graph's last node, looking producers up in the graph."""

    def is_constant(value):
        node = graph.producers.get(value)
        return node is not None and node.op in ("const", "full")

    return match(pattern, graph.nodes[-1], graph.producers.get, is_constant)


# -- patterns --------------------------------------------------------------------------------------


def test_commutative_ops_match_in_either_order_others_do_not():
    b = GraphBuilder("g")
    x = b.input("x", (2,))
    c = b.constant(np.ones(2, np.float32), "c")
    add, sub = b.build(b.add(c, x)), b.build(b.sub(c, x))
    captures = _match_at_last_node(pat("add", var("x"), const("c")), add)
    assert captures == {"x": x, "c": c}
    assert _match_at_last_node(pat("sub", var("x"), const("c")), sub) is None
    assert _match_at_last_node(pat("sub", const("c"), var("x")), sub) == {"c": c, "x": x}


def test_a_name_used_twice_binds_one_value():
    b = GraphBuilder("g")
    x, y = b.input("x", (2,)), b.input("y", (2,))
    same = pat("maximum", var("v"), var("v"))
    assert _match_at_last_node(same, b.build(b.maximum(x, x))) == {"v": x}
    assert _match_at_last_node(same, b.build(b.maximum(x, y))) is None


def test_node_patterns_capture_nodes_and_leaves_capture_values():
    b = GraphBuilder("g")
    x = b.input("x", (2, 3))
    graph = b.build(b.neg(b.transpose(x, perm=(1, 0))))
    captures = _match_at_last_node(pat("neg", pat("transpose", var("x"), name="t"), name="root"), graph)
    assert captures["x"] is x
    assert captures["t"].op == "transpose" and captures["t"].attrs["perm"] == (1, 0)
    assert captures["root"] is graph.nodes[-1]


def test_constants_are_const_and_full_nodes_not_inputs():
    b = GraphBuilder("g")
    x = b.input("x", (2,))
    full = b.full(shape=(2,), value=1.0, dtype=DType.f32)
    pattern = pat("mul", var("x"), const("c"))
    assert _match_at_last_node(pattern, b.build(b.mul(x, full))) == {"x": x, "c": full}
    y = b.input("y", (2,))
    assert _match_at_last_node(pattern, b.build(b.mul(x, y))) is None


def test_patterns_name_ops_of_the_table_and_rules_root_at_a_node():
    with pytest.raises(ValueError, match="unknown ops"):
        pat("frobnicate", var())
    with pytest.raises(ValueError, match="root of a pattern"):
        Rule("bad", var("x"), cancel_negations)


def test_a_pattern_of_several_ops_matches_each_and_only_if_all_commute_in_either_order():
    assert pat(("add", "mul"), var(), var()).commutative
    assert not pat(("add", "sub"), var(), var()).commutative
    assert not pat("add").commutative  # any inputs: nothing to swap


# -- tables ---------------------------------------------------------------------------------------


def test_tables_add_filter_and_index_by_op():
    exact = Rule("a", pat("neg", var()), cancel_negations)
    inexact = Rule("b", pat(("neg", "abs"), var()), cancel_negations, exact=False)
    table = RuleTable((exact,)) + RuleTable((inexact,))
    assert [r.name for r in table] == ["a", "b"] and len(table) == 2
    assert table.by_op["neg"] == (exact, inexact) and table.by_op["abs"] == (inexact,)
    assert list(table.only_exact()) == [exact]
    assert list(table.without("a")) == [inexact]
    with pytest.raises(ValueError, match="no rules named"):
        table.without("c")
    with pytest.raises(ValueError, match="named twice"):
        table + RuleTable((exact,))


# -- the driver -----------------------------------------------------------------------------------


def test_a_chain_of_rewrites_reaches_the_fixpoint_and_dead_nodes_go():
    b = GraphBuilder("g")
    x = b.input("x", (2,))
    v = x
    for _ in range(5):
        v = b.neg(v)
    graph = b.build(b.exp(v))
    result = rewrite_to_fixpoint(graph, NEG_NEG)
    assert [n.op for n in result.nodes] == ["neg", "exp"]
    assert result.inputs == graph.inputs
    assert_equivalent(graph, result)


def test_without_pruning_the_rewritten_nodes_stay_behind():
    b = GraphBuilder("g")
    x = b.input("x", (2,))
    graph = b.build(b.neg(b.neg(x)))
    result = rewrite_to_fixpoint(graph, NEG_NEG, prune_dead=False)
    assert [n.op for n in result.nodes] == ["neg"] and result.outputs == (x,)


def test_a_rule_that_returns_none_lets_the_next_rule_try():
    def decline(rw, x):
        return None

    table = RuleTable((Rule("decline", pat("neg", pat("neg", var("x"))), decline),)) + NEG_NEG
    b = GraphBuilder("g")
    x = b.input("x", (2,))
    assert rewrite_to_fixpoint(b.build(b.neg(b.neg(x))), table).outputs == (x,)


@given(graphs())
def test_no_rules_change_nothing_but_dead_nodes(graph):
    result = rewrite_to_fixpoint(graph, RuleTable())
    assert str(result) == str(PruneDeadNodes().run(graph))
    assert_equivalent(graph, result)


@given(graphs())
def test_cancelling_negations_anywhere_is_exact(graph):
    result = rewrite_to_fixpoint(graph, NEG_NEG)
    ir.verify(result)
    assert_equivalent(graph, result)
    assert not any(
        n.op == "neg" and result.producers.get(n.inputs[0]) and result.producers[n.inputs[0]].op == "neg"
        for n in result.nodes
    )


def test_rules_that_undo_each_other_stop_with_an_error_naming_them():
    def swap(rw: Rewriter, node: ir.Node) -> ir.Value:
        a, b = node.inputs
        return rw.op("add", b, a)

    loop = RuleTable((Rule("swap_operands", pat("add", name="node"), swap),))
    b = GraphBuilder("g")
    x, y = b.input("x", (2,)), b.input("y", (2,))
    with pytest.raises(RewriteLoopError, match=r"fixpoint in 4 sweeps; still firing: swap_operands \(1x\)") as error:
        rewrite_to_fixpoint(b.build(b.add(x, y)), loop, max_sweeps=4)
    assert "add(%" in str(error.value)
    assert isinstance(error.value, ir.KilnError)


def test_a_rule_that_changes_a_type_is_an_error():
    def widen(rw: Rewriter, x: ir.Value) -> ir.Value:
        return rw.op("cast", x, dtype=DType.f64)

    table = RuleTable((Rule("widen", pat("neg", var("x")), widen),))
    b = GraphBuilder("g")
    x = b.input("x", (2,))
    with pytest.raises(RewriteError, match=r"rule widen replaced `%0 = neg\(%x\) : f32\[2\]` by .* f64\[2\]"):
        rewrite_to_fixpoint(b.build(b.neg(x)), table)


def test_new_nodes_carry_the_source_of_the_node_they_replace():
    def to_neg(rw: Rewriter, x: ir.Value) -> ir.Value:
        return rw.op("neg", x)

    table = RuleTable((Rule("sub_from_zero", pat("sub", const(), var("x")), to_neg),))
    b = GraphBuilder("g")
    x = b.input("x", (2,))
    zero = b.full(shape=(2,), value=0.0, dtype=DType.f32)
    graph = b.build(b.op("sub", zero, x, source="model.py:7"))
    result = rewrite_to_fixpoint(graph, table)
    assert [(n.op, n.source) for n in result.nodes] == [("neg", "model.py:7")]


def _absorb_into_gemm(rw: Rewriter, node: ir.Node, product: ir.Node, bias: ir.Value):
    if not rw.only_used_here(product.output):
        return None
    return rw.op("gemm", *product.inputs, bias)


ABSORB = RuleTable(
    (Rule("absorb", pat("add", pat("matmul", name="product"), var("bias"), name="node"), _absorb_into_gemm),)
)


def _matmul_plus_bias(also_return_product: bool, second_reader: bool = False) -> ir.Graph:
    b = GraphBuilder("g")
    x, w, bias = b.input("x", (2, 3)), b.input("w", (3, 4)), b.input("bias", (4,))
    product = b.matmul(x, w)
    outputs = [b.add(product, bias)]
    if second_reader:
        outputs.append(b.exp(product))
    if also_return_product:
        outputs.append(product)
    return b.build(*outputs)


@pytest.mark.parametrize(
    ("graph", "absorbed"),
    [
        (_matmul_plus_bias(also_return_product=False), True),
        (_matmul_plus_bias(also_return_product=True), False),
        (_matmul_plus_bias(also_return_product=False, second_reader=True), False),
    ],
    ids=["only reader", "also an output", "read twice"],
)
def test_only_used_here_keeps_rules_from_computing_a_node_twice(graph, absorbed):
    result = rewrite_to_fixpoint(graph, ABSORB)
    assert ("matmul" not in [n.op for n in result.nodes]) is absorbed
    assert_equivalent(graph, result)


def test_rules_read_and_make_constants():
    def fold_scale(rw: Rewriter, node: ir.Node, x: ir.Value, c: ir.Value):
        inner = rw.producer(x)
        if inner is None or inner.op != "mul" or rw.array(inner.inputs[1]) is None:
            return None
        scale = rw.array(inner.inputs[1]) * rw.array(c)
        return rw.op("mul", inner.inputs[0], rw.constant(scale, "scale"))

    table = RuleTable((Rule("fold_scale", pat("mul", var("x"), const("c"), name="node"), fold_scale),))
    b = GraphBuilder("g")
    x = b.input("x", (2,))
    two = b.constant(np.full(2, 2, np.float32), "two")
    three = b.full(shape=(2,), value=3.0, dtype=DType.f32)
    graph = b.build(b.mul(b.mul(b.mul(x, two), three), two))
    result = rewrite_to_fixpoint(graph, table)
    assert [n.op for n in result.nodes] == ["const", "mul"]
    np.testing.assert_array_equal(result.constants[result.nodes[0].attrs["name"]], [12, 12])
    assert_equivalent(graph, result)


def test_a_rule_declining_one_match_is_tried_on_the_others():
    def drop_ones(rw: Rewriter, x: ir.Value, c: ir.Value):
        return x if np.all(rw.array(c) == 1) else None

    table = RuleTable((Rule("mul_by_one", pat("mul", var("x"), const("c")), drop_ones),))
    b = GraphBuilder("g")
    ones = b.constant(np.ones(2, np.float32), "ones")
    k = b.constant(np.full(2, 5, np.float32), "k")
    # The first match reads x = ones, c = k and is declined; the swapped one is taken.
    assert rewrite_to_fixpoint(b.build(b.mul(ones, k)), table).outputs == (k,)
