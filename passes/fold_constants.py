"""fold_constants: evaluate at compile time every node whose inputs are all constants, and put a
constant in its place.

A node folds when it is not a region (`fused`) and each of its inputs is a `const` or the output
of a node folded before; ops without inputs (`full`, `arange`) fold too. Chains fold in one
sweep, since nodes are in topological order. A node whose outputs hold more than `max_elements`
elements in all stays, so a `full` of a huge shape or an `expand` of a small constant is never
materialised: folding grows the constant table by at most `max_elements` elements per node. A
node that the interpreter cannot evaluate (an index out of range, say) stays too, so the error
keeps happening where it did, at run time.

Only values that something still reads become constants (named `folded_<op>`): the inside of a
folded chain leaves nothing behind, and a `const` whose readers were all folded goes with them.
Dead code that folding did not touch is left to `prune_dead_nodes`.

Numerics: exact. Each node is evaluated by the reference interpreter itself (`ir.run` on a
one-node graph), which rounds every result to its declared dtype, as it does at run time, so a
folded constant holds the very bits the node would have produced.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ir import Graph, GraphBuilder, KilnError, Node, Value, get_op, run
from passes.editing import map_nodes
from passes.manager import Numerics, Pass, register_pass


@register_pass
class FoldConstants(Pass):
    """Evaluate nodes whose inputs are all constants at compile time."""

    name = "fold_constants"
    numerics = Numerics.EXACT

    max_elements: int = 1 << 16
    """The most elements a folded node's outputs may hold together; larger ones stay as they are."""

    def run(self, graph: Graph) -> Graph:
        folded = fold_values(graph, self.max_elements)
        if not folded:
            return graph
        needed = _values_still_read(graph, folded)

        def replace(node: Node, inputs: list[Value], builder: GraphBuilder) -> Sequence[Value] | None:
            if node.op == "const":
                # Keep a constant that is still read, and one nothing ever read (dead code is
                # prune_dead_nodes' business, and keeping it makes a second run change nothing).
                value = node.output
                return None if value in needed or value not in graph.users else node.outputs
            if node not in folded:
                return None
            # An output nothing reads any more maps to itself: no node of the new graph refers
            # to it, so it simply disappears.
            return [
                builder.constant(array, f"folded_{node.op}") if v in needed else v
                for v, array in zip(node.outputs, folded[node])
            ]

        return map_nodes(graph, replace)


def fold_values(graph: Graph, max_elements: int) -> dict[Node, list[np.ndarray]]:
    """The nodes that fold, each with the arrays of its outputs."""
    known: dict[Value, np.ndarray] = {}  # every constant value: `const` outputs and folded ones
    folded: dict[Node, list[np.ndarray]] = {}
    for node in graph.nodes:
        if node.op == "const":
            known[node.output] = graph.constants[node.attrs["name"]]
            continue
        if not _can_fold(node, known, max_elements):
            continue
        try:
            results = evaluate_node(node, [known[v] for v in node.inputs])
        except KilnError:
            continue  # e.g. a gather index out of range: leave the failure to run time
        known.update(zip(node.outputs, results))
        folded[node] = results
    return folded


def _can_fold(node: Node, known: dict[Value, np.ndarray], max_elements: int) -> bool:
    # A region stays whole: folding it would undo the grouping that fusion chose for it.
    return (
        not get_op(node.op).is_region
        and all(v in known for v in node.inputs)
        and sum(v.type.numel for v in node.outputs) <= max_elements
    )


def evaluate_node(node: Node, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """`node`'s outputs for these input arrays, exactly as the interpreter computes them in a
    graph: a one-node graph over constants, run by `ir.run`.

    (An `ir`-level helper would serve better; until there is one, this is it.)"""
    builder = GraphBuilder("fold")
    inputs = tuple(builder.constant(array, f"in{i}") for i, array in enumerate(arrays))
    builder.append(Node(node.op, inputs, node.attrs, node.outputs))
    return run(builder.build(*node.outputs), [])


def _values_still_read(graph: Graph, folded: dict[Node, list[np.ndarray]]) -> set[Value]:
    """Constant values (`const` outputs or folded) that a node left in the graph reads, or that
    the graph returns: exactly those need a `const` node after folding."""
    needed = set(graph.outputs)
    for node in graph.nodes:
        if node.op != "const" and node not in folded:
            needed.update(node.inputs)
    return needed
