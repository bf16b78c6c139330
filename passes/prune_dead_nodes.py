"""prune_dead_nodes: remove every node no graph output depends on, and the constants only
they used.

Exact: the outputs are computed by the same nodes as before. Inputs stay, even when unused,
because they are the graph's signature; nodes that read them are pruned like any other.
"""

from __future__ import annotations

from ir import Graph
from passes.manager import Pass, register_pass


@register_pass
class PruneDeadNodes(Pass):
    """Remove nodes and constants that no output depends on."""

    name = "prune_dead_nodes"

    def run(self, graph: Graph) -> Graph:
        live = set(graph.outputs)
        kept = []
        for node in reversed(graph.nodes):
            if any(v in live for v in node.outputs):
                kept.append(node)
                live.update(node.inputs)
        kept.reverse()
        used = {node.attrs["name"] for node in kept if node.op == "const"}
        constants = {name: array for name, array in graph.constants.items() if name in used}
        return Graph(graph.name, graph.inputs, graph.outputs, tuple(kept), constants)
