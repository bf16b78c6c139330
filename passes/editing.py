"""Rebuilding a graph node by node: the one loop that passes which replace nodes share.

`map_nodes(graph, replace)` walks the nodes in order. For each node, `replace(node, inputs,
builder)` sees the node, its inputs as already rewritten, and a `GraphBuilder` holding the new
graph so far. It returns `None` to keep the node (re-pointed at the rewritten inputs), or the
values that stand for the node's outputs (new nodes it appended, or existing values). Values
that nothing replaced keep their identity, so a pass that changes nothing returns an
equivalent graph with the same input values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ir import Graph, GraphBuilder, Node, Value

Replace = Callable[[Node, list[Value], GraphBuilder], Sequence[Value] | Value | None]


def map_nodes(graph: Graph, replace: Replace) -> Graph:
    builder = GraphBuilder(graph.name)
    builder.adopt_inputs(graph.inputs)
    env: dict[Value, Value] = {v: v for v in graph.inputs}
    for node in graph.nodes:
        inputs = [env[v] for v in node.inputs]
        replacement = replace(node, inputs, builder)
        if replacement is None:
            kept = keep(builder, graph, node, inputs)
            env.update(zip(node.outputs, kept.outputs))
        else:
            values = (replacement,) if isinstance(replacement, Value) else tuple(replacement)
            if len(values) != len(node.outputs):
                raise ValueError(f"{node.op}: {len(values)} replacement(s) for {len(node.outputs)} output(s)")
            env.update(zip(node.outputs, values))
    return builder.build(*(env[v] for v in graph.outputs))


def keep(builder: GraphBuilder, graph: Graph, node: Node, inputs: Sequence[Value]) -> Node:
    """Append `node` to `builder`, reading `inputs`; returns the node appended."""
    if node.op == "const":
        return builder.append(node, graph.constants[node.attrs["name"]])
    if all(a is b for a, b in zip(inputs, node.inputs)):
        return builder.append(node)
    # Same op and attributes over inputs of the same types: the outputs keep their types (and
    # identity); anything else must be rebuilt with builder.op by the pass.
    if any(a.type != b.type for a, b in zip(inputs, node.inputs)):
        raise ValueError(f"{node.op}: inputs changed type; rebuild the node with builder.op")
    return builder.append(Node(node.op, tuple(inputs), node.attrs, node.outputs, node.source))
