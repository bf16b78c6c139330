"""A graph at a glance: node counts by kind and op, FLOPs, bytes moved and constant bytes.

Read from the op table's costs; `irdump` prints it under the graph, and pass instrumentation
will print the difference a pass made.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ir.graph import Graph
from ir.ops import get_op


@dataclass(frozen=True)
class GraphSummary:
    nodes: int
    by_kind: dict[str, int]
    by_op: dict[str, int]
    flops: int
    bytes_moved: int
    """Bytes every node would read and write if each ran as its own kernel."""
    constant_bytes: int
    constant_count: int

    def __str__(self) -> str:
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(self.by_kind.items()))
        return (
            f"{self.nodes} nodes ({kinds or 'none'}); {format_count(self.flops)}FLOPs; "
            f"{format_count(self.bytes_moved)}B moved; "
            f"{self.constant_count} constants, {format_count(self.constant_bytes)}B"
        )


def summarize(graph: Graph) -> GraphSummary:
    by_kind: Counter[str] = Counter()
    by_op: Counter[str] = Counter()
    flops = moved = 0
    for node in graph.nodes:
        definition = get_op(node.op)
        by_kind[definition.kind.value] += 1
        by_op[node.op] += 1
        inputs = tuple(v.type for v in node.inputs)
        outputs = tuple(v.type for v in node.outputs)
        flops += definition.cost_flops(inputs, outputs, node.attrs)
        moved += definition.cost_bytes(inputs, outputs)
    return GraphSummary(
        nodes=len(graph.nodes),
        by_kind=dict(by_kind),
        by_op=dict(by_op),
        flops=flops,
        bytes_moved=moved,
        constant_bytes=sum(a.nbytes for a in graph.constants.values()),
        constant_count=len(graph.constants),
    )


def format_count(n: float) -> str:
    """1234567 -> '1.23 M' (SI prefixes, three significant digits); small numbers as they are."""
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {prefix}"
    return f"{n} "
