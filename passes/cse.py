"""cse: common subexpression elimination. Nodes that compute the same thing become one.

Value numbering in one sweep over the nodes (in topological order, so a node's inputs are
already numbered): each node gets a key, and a node whose key was seen before is replaced by
the first node with that key; its readers read the first node's outputs instead.

- A node's key is its op, its inputs (by identity, after merging) and its attributes. Float
  attributes compare by their bits, so `full {value=-0.0}` and `full {value=0.0}` stay apart
  (`Attributes` compare by `==`, which finds them equal) and equal nans may merge.
- A commutative op (`Law.COMMUTATIVE` in the op table) with two inputs takes them in either
  order: `add(a, b)` and `add(b, a)` are one.
- A constant's key is its dtype, shape and bytes, so `-0.0` and `0.0`, or nans with different
  payloads, stay apart. The first name is kept.
- Regions (`fused`) are never merged: their bodies are graphs, which compare by identity, and
  fusion made each one on purpose.

Numerics: exact. A merged node is the same op on the same values with the same attributes, so it
computes the same bits. (One caveat of IEEE 754, not of this pass: when both inputs of a
commutative op are nan, which nan payload the result carries may depend on the operand order.
Every nan stays a nan.)
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Hashable, Sequence
from typing import Any

from ir import Graph, GraphBuilder, Law, Node, Value, get_op
from passes.editing import keep, map_nodes
from passes.manager import Numerics, Pass, register_pass


@register_pass
class CSE(Pass):
    """Merge nodes that apply the same op to the same inputs with the same attributes, and equal constants."""

    name = "cse"
    numerics = Numerics.EXACT

    def run(self, graph: Graph) -> Graph:
        seen: dict[Hashable, list[tuple[Node, tuple[Value, ...]]]] = {}

        def replace(node: Node, inputs: list[Value], builder: GraphBuilder) -> Sequence[Value]:
            key = node_key(graph, node, inputs)
            for first, outputs in seen.get(key, ()) if key is not None else ():
                if _same_constant(graph, node, first):
                    return outputs
            kept = keep(builder, graph, node, inputs)
            if key is not None:
                seen.setdefault(key, []).append((node, kept.outputs))
            return kept.outputs

        return map_nodes(graph, replace)


def node_key(graph: Graph, node: Node, inputs: Sequence[Value]) -> Hashable | None:
    """What two nodes must share to be merged; `None` for a node that is never merged."""
    if get_op(node.op).is_region:
        return None
    if node.op == "const":
        array = graph.constants[node.attrs["name"]]
        # A digest rather than the bytes themselves keeps the table small for big weights;
        # `_same_constant` compares the bytes before merging.
        return ("const", array.dtype, array.shape, hashlib.sha256(array.tobytes()).digest())
    if Law.COMMUTATIVE in get_op(node.op).laws and len(inputs) == 2:
        inputs = sorted(inputs, key=id)  # f(a, b) == f(b, a): one order for both
    return (node.op, tuple(inputs), tuple((name, exact_key(value)) for name, value in node.attrs.items()))


def exact_key(value: Any) -> Hashable:
    """An attribute value, with floats replaced by their bits: -0.0 is not 0.0, nan is nan."""
    if isinstance(value, float):
        return ("float", struct.pack("<d", value))
    if isinstance(value, tuple):
        return tuple(exact_key(v) for v in value)
    return value


def _same_constant(graph: Graph, node: Node, first: Node) -> bool:
    """Whether `node` may merge into `first`, given equal keys: for constants, their bytes are
    equal too (equal digests all but guarantee it; this makes it certain)."""
    if node.op != "const":
        return True
    return graph.constants[node.attrs["name"]].tobytes() == graph.constants[first.attrs["name"]].tobytes()
