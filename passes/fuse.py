"""fuse: group nodes into kernels and make each group an explicit `fused` node.

The groups come from `passes.fusion_groups` (pointwise chains, reductions with prologue and
epilogue, contractions with their epilogue, attention alone; never a cycle, never a node in two
groups). Each group becomes one `fused` node whose `body` attribute holds the group's nodes and
whose `kind` names the schedule a backend lowers it with. Every non-const node lands in exactly
one group, single nodes included: a lone node becomes a one-node `fused` node, so a backend sees
exactly one kernel per `fused` node and nothing else to lower. Existing `fused` nodes are kept as
they are, so running the pass twice changes nothing.

Constants stay outside, as `const` nodes that the kernels take as arguments (weights are
buffers), except scalars (one element), which are copied into every body that reads them, so
a kernel can fold them into its code; an outer scalar constant that nothing else needs goes.

Numerics: exact. The interpreter runs a body value for value, each node with its own dtype,
so the outputs are bit-identical to the unfused graph's.
"""

from __future__ import annotations

from ir import Graph, GraphBuilder, Node, Value, get_op
from ir.graph import is_identifier
from passes.fusion_groups import FusionGroup, find_groups, group_outputs, is_region
from passes.manager import Pass, register_pass

_NAME_OPS = 3
"""A body's name lists this many of its distinct ops: enough to recognise a kernel in a dump."""


@register_pass
class Fuse(Pass):
    """Group nodes into kernels: each group becomes one `fused` node holding its nodes."""

    name = "fuse"
    max_movement_growth: int = 4
    """A movement op joins a pointwise group only if its output has at most this many times the
    elements it reads (a larger one would recompute its in-kernel producers per copy)."""

    def run(self, graph: Graph) -> Graph:
        return build_fused_graph(graph, find_groups(graph, self.max_movement_growth))


def build_fused_graph(graph: Graph, groups: list[FusionGroup]) -> Graph:
    """`graph` with each group replaced by one `fused` node; `groups` in an order to emit them.

    The `fused` nodes define the original values (the body works on copies), so graph outputs
    and readers in other groups keep their values. This is not `passes.editing.map_nodes`:
    that maps one node to values, while here many nodes become one node placed by the order
    of the groups, not of the nodes.
    """
    group_inputs = [external_inputs(graph, group) for group in groups]
    builder = GraphBuilder(graph.name)
    builder.adopt_inputs(graph.inputs)
    needed = set(graph.outputs).union(*group_inputs)
    for node in graph.nodes:
        if node.op == "const" and (node.outputs[0] in needed or not graph.users.get(node.outputs[0])):
            builder.append(node, graph.constants[node.attrs["name"]])  # kept; unused ones are not ours to drop
    for index, (group, inputs) in enumerate(zip(groups, group_inputs)):
        if len(group.nodes) == 1 and is_region(group.nodes[0]):
            builder.append(group.nodes[0])
            continue
        outputs = group_outputs(graph, group)
        body = make_body(graph, group, body_name(index, group), inputs, outputs)
        attrs = get_op("fused").normalize_attrs({"body": body, "kind": group.kind.value})
        builder.append(Node("fused", tuple(inputs), attrs, tuple(outputs)))
    return builder.build(*graph.outputs)


def is_scalar_constant(graph: Graph, value: Value) -> bool:
    node = graph.producers.get(value)
    return node is not None and node.op == "const" and value.type.numel == 1


def external_inputs(graph: Graph, group: FusionGroup) -> list[Value]:
    """What the kernel reads from outside, in order of first use: graph inputs, constants other
    than scalars, and other groups' outputs (an existing `fused` node: its inputs as they are)."""
    if len(group.nodes) == 1 and is_region(group.nodes[0]):
        return list(group.nodes[0].inputs)
    defined = {v for node in group.nodes for v in node.outputs}
    read = (v for node in group.nodes for v in node.inputs)
    return list(dict.fromkeys(v for v in read if v not in defined and not is_scalar_constant(graph, v)))


def body_name(index: int, group: FusionGroup) -> str:
    """`fused_<index>_<ops>`, e.g. fused_3_gemm_gelu."""
    ops = list(dict.fromkeys(node.op for node in group.nodes))[:_NAME_OPS]
    return "_".join(["fused", str(index), *ops])


def make_body(graph: Graph, group: FusionGroup, name: str, inputs: list[Value], outputs: list[Value]) -> Graph:
    """The group's nodes as a graph of their own, over copies of the values they read and define."""
    builder = GraphBuilder(name)
    copies: dict[Value, Value] = dict(zip(inputs, _body_inputs(inputs)))
    builder.adopt_inputs(list(copies.values()))
    for node in group.nodes:
        for value in node.inputs:
            if value not in copies and is_scalar_constant(graph, value):
                array = graph.constants[graph.producers[value].attrs["name"]]
                copies[value] = builder.constant(array, graph.producers[value].attrs["name"])
    for node in group.nodes:
        defined = tuple(Value(v.type, v.name) for v in node.outputs)
        copies.update(zip(node.outputs, defined))
        builder.append(Node(node.op, tuple(copies[v] for v in node.inputs), node.attrs, defined, node.source))
    return builder.build(*(copies[v] for v in outputs))


def _body_inputs(values: list[Value]) -> list[Value]:
    """Copies of `values` as body inputs, named after them (%x, %w) or in<k> when unnamed."""
    taken: set[str] = set()
    copies = []
    for index, value in enumerate(values):
        name, counter = value.name, index
        if not is_identifier(name) or name in taken:
            name = f"in{counter}"
            while name in taken or any(v.name == name for v in values):
                counter += 1
                name = f"in{counter}"
        taken.add(name)
        copies.append(Value(value.type, name))
    return copies


def kernel_count(graph: Graph) -> int:
    """How many kernels a fused graph launches: its `fused` nodes."""
    return sum(1 for node in graph.nodes if node.op == "fused")
