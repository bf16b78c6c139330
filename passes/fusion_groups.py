"""Fusion groups: which nodes of a graph one kernel computes. The analysis half of `fuse`
(`passes.fuse` turns the groups into `fused` nodes).

Every node but `const` gets a role from its op's table entry: pointwise (ELEMENTWISE, BROADCAST,
and MOVEMENT ops that do not grow their data much), reduction, contraction, attention (the
composite contraction), movement (a MOVEMENT op too large to fuse) or opaque. Each node starts
as a group of its own; a driver then merges a producer group into a consumer group wherever
a rule of `RULES` allows it, sweeping the graph until nothing merges:

- pointwise + pointwise: one loop over the elements, intermediates never reach memory;
- pointwise prologue + reduction: work that only the reduction reads is done as it loads;
- reduction + pointwise epilogue: applied to the reduction's results (softmax's divide, a
  norm's scale and shift) on at most the elements the reduction reads;
- contraction + pointwise epilogue: applied to each output tile before it is stored (bias,
  activation, residual add, cast, an int8 GEMM's dequantizing scales) on exactly the
  contraction's output elements;
- the one contraction prologue: an int8 weight's dequantization (weight-only int8), which the
  GEMM applies as it reads B instead of a kernel writing the f32 weight every run;
- reduction + reduction of the same value over the same axes (min and max of a dynamic
  quantization): one pass over the value.

Attention, movement and opaque nodes, and existing `fused` nodes, stay groups of their own.
A merge is refused when a path between the two groups runs through a third group (merging
would make a cycle; checked with networkx over the graph of groups). No node is ever copied
into two groups, so no work is done twice; a value that another group or the graph's result
reads becomes an output of its group. A group holds at most one reduction or contraction, or
sibling reductions (same input, same axes).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import networkx as nx

from ir import Graph, Node, OpKind, Value, get_op


class GroupKind(enum.Enum):
    """What a group computes, named by the kernel schedule that a backend uses for it; the
    value is the `kind` attribute of its `fused` node."""

    POINTWISE = "pointwise"
    REDUCTION = "reduction"
    CONTRACTION = "contraction"
    ATTENTION = "attention"
    MOVEMENT = "movement"
    """A movement op whose output is much larger than what it reads: a copy kernel alone."""
    OPAQUE = "opaque"


_KIND_OF_OP = {
    OpKind.ELEMENTWISE: GroupKind.POINTWISE,
    OpKind.BROADCAST: GroupKind.POINTWISE,
    OpKind.REDUCTION: GroupKind.REDUCTION,
    OpKind.CONTRACTION: GroupKind.CONTRACTION,
    OpKind.OPAQUE: GroupKind.OPAQUE,
}
GEMM_COMPOSITES = frozenset({"matmul_integer"})
"""Composite contractions whose decomposition is one GEMM of operands read element by element (the
integer GEMM's widened bytes minus zero points): contractions, whose epilogues (the dequantizing
scale, bias, activation) fuse into the kernel like any matmul's."""
_ANCHORS = frozenset({GroupKind.REDUCTION, GroupKind.CONTRACTION})
"""Kinds whose op sets the kernel's loop structure; a group holds one such node (or sibling reductions)."""


@dataclass(frozen=True)
class FusionGroup:
    """Nodes that one kernel computes, in graph order."""

    kind: GroupKind
    nodes: tuple[Node, ...]


def is_region(node: Node) -> bool:
    """Whether `node` already holds a body graph (a `fused` node): it is a kernel as it is."""
    return get_op(node.op).is_region


def size(node: Node) -> int:
    """Elements a node writes: the sum over its outputs (a split writes what it reads)."""
    return sum(v.type.numel for v in node.outputs)


def node_kind(node: Node, max_movement_growth: int) -> GroupKind | None:
    """The role of `node` in a kernel; None for `const`, which stays outside every group."""
    op = get_op(node.op)
    if node.op == "const":
        return None
    if is_region(node):
        return GroupKind.OPAQUE
    if op.kind == OpKind.CONTRACTION and op.decompose is not None and node.op not in GEMM_COMPOSITES:
        return GroupKind.ATTENTION  # a composite contraction: a flash-style kernel matches it whole
    if op.kind == OpKind.MOVEMENT:
        # A fused movement op is an index computation; one that fans a few values out to many
        # outputs would recompute in-kernel producers once per copy, so a large one stands alone.
        # Ops with no inputs (full, arange) generate their values and are always cheap.
        read = sum(v.type.numel for v in node.inputs)
        cheap = not node.inputs or size(node) <= max_movement_growth * max(read, 1)
        return GroupKind.POINTWISE if cheap else GroupKind.MOVEMENT
    return _KIND_OF_OP[op.kind]


class _Grouping:
    """The groups while they are merged: each node's group id, each group's kind, nodes and
    anchor, and the graph of groups (an edge where one group reads another's value)."""

    def __init__(self, graph: Graph, max_movement_growth: int) -> None:
        self.graph = graph
        self.order = {node: index for index, node in enumerate(graph.nodes)}
        self.returned = frozenset(graph.outputs)
        self.group_of: dict[Node, int] = {}
        self.kind: dict[int, GroupKind] = {}
        self.members: dict[int, list[Node]] = {}
        self.anchor: dict[int, Node | None] = {}
        self.groups = nx.DiGraph()
        for node in graph.nodes:
            kind = node_kind(node, max_movement_growth)
            if kind is None:
                continue
            group = len(self.kind)
            self.group_of[node] = group
            self.kind[group], self.members[group] = kind, [node]
            self.anchor[group] = node if kind in _ANCHORS else None
            self.groups.add_node(group)
        for node, group in self.group_of.items():
            for producer in self.producer_groups(node):
                if producer != group:
                    self.groups.add_edge(producer, group)

    def producer_groups(self, node: Node) -> list[int]:
        """The groups whose values `node` reads, once each, in input order."""
        producers = self.graph.producers
        found = (self.group_of.get(producers.get(v)) for v in node.inputs)
        return list(dict.fromkeys(g for g in found if g is not None))

    def readers_outside(self, group: int) -> Iterable[Node]:
        """Nodes of other groups that read a value of `group`."""
        users = self.graph.users
        for node in self.members[group]:
            for value in node.outputs:
                yield from (u for u in users.get(value, ()) if self.group_of.get(u) != group)

    def returns_a_value(self, group: int) -> bool:
        return any(v in self.returned for node in self.members[group] for v in node.outputs)

    def creates_cycle(self, producer: int, consumer: int) -> bool:
        """Merging would close a cycle when the producer reaches the consumer through a third group."""
        return any(
            nx.has_path(self.groups, middle, consumer)
            for middle in self.groups.successors(producer)
            if middle != consumer
        )

    def merge(self, producer: int, consumer: int, kind: GroupKind) -> None:
        """The consumer group takes the producer's nodes; the producer group disappears."""
        for node in self.members[producer]:
            self.group_of[node] = consumer
        self.members[consumer] = sorted(self.members[consumer] + self.members[producer], key=self.order.__getitem__)
        self.anchor[consumer] = self.anchor[consumer] or self.anchor[producer]
        self.kind[consumer] = kind
        for source in self.groups.predecessors(producer):
            if source != consumer:
                self.groups.add_edge(source, consumer)
        for target in self.groups.successors(producer):
            if target != consumer:
                self.groups.add_edge(consumer, target)
        self.groups.remove_node(producer)
        for table in (self.kind, self.members, self.anchor):
            del table[producer]

    def result(self) -> list[FusionGroup]:
        """The groups in an order to emit them: producers first, else by their first node."""
        if not nx.is_directed_acyclic_graph(self.groups):
            raise AssertionError("fusion made a cycle among groups")  # merge refuses those; a bug if seen
        first = {group: self.order[nodes[0]] for group, nodes in self.members.items()}
        ordered = nx.lexicographical_topological_sort(self.groups, key=first.__getitem__)
        return [FusionGroup(self.kind[g], tuple(self.members[g])) for g in ordered]


# -- the rules -------------------------------------------------------------------------------
# Each rule says when a producer group may join a consumer group it feeds, and the kind of the
# merged group. Conditions keep each kernel's work on the elements its schedule iterates over.


def _always(grouping: _Grouping, producer: int, consumer: int) -> bool:
    return True


def _private_prologue(grouping: _Grouping, producer: int, consumer: int) -> bool:
    """Only the reduction's group reads the prologue, so its values never need storing, and
    the prologue computes on no more elements than the reduction reads."""
    if grouping.returns_a_value(producer):
        return False
    if any(grouping.group_of.get(reader) != consumer for reader in grouping.readers_outside(producer)):
        return False
    domain = max(v.type.numel for v in grouping.anchor[consumer].inputs)
    return all(size(node) <= domain for node in grouping.members[producer])


def _reduction_epilogue(grouping: _Grouping, producer: int, consumer: int) -> bool:
    """A reduction kernel walks its input; an epilogue on more elements would repeat the reduction."""
    domain = max(v.type.numel for v in grouping.anchor[producer].inputs)
    return all(size(node) <= domain for node in grouping.members[consumer])


def _contraction_epilogue(grouping: _Grouping, producer: int, consumer: int) -> bool:
    """A contraction kernel applies its epilogue to each output tile in registers, so every
    epilogue node works on exactly the contraction's output elements."""
    domain = size(grouping.anchor[producer])
    return all(size(node) == domain for node in grouping.members[consumer])


WEIGHT_PROLOGUE_OPS = frozenset({"dequantize_linear", "cast", "reshape", "transpose"})
"""What a weight's prologue may hold (`_dequantizing_prologue`): an int8 weight widened and scaled."""


def _dequantizing_prologue(grouping: _Grouping, producer: int, consumer: int) -> bool:
    """A weight-only int8 weight, `dequantize_linear(q, s, z)` of constants, that only the GEMM's
    B operand reads: the GEMM dequantizes as it reads B, so the f32 weight is never written and
    read back each run. The one prologue allowed: it reads no run-time value, costs a convert and
    a multiply per element read, and the GEMM reads B once per tile of rows (GPU: while staging a
    shared-memory tile; CPU: per row tile), against the weight's bytes read four times over."""
    anchor = grouping.anchor[consumer]
    members = grouping.members[producer]
    if anchor is None or anchor.op not in ("matmul", "gemm") or grouping.returns_a_value(producer):
        return False
    if not any(n.op == "dequantize_linear" for n in members) or any(n.op not in WEIGHT_PROLOGUE_OPS for n in members):
        return False
    producers = grouping.graph.producers
    for value in (v for node in members for v in node.inputs):
        source = producers.get(value)
        if source is None or (source.op != "const" and grouping.group_of.get(source) != producer):
            return False  # it reads a run-time value (a graph input, another kernel's): an activation
    weight = anchor.inputs[1]
    produced = {v for node in members for v in node.outputs}
    return all(set(reader.inputs) & produced == {weight} and reader is anchor
               for reader in grouping.readers_outside(producer))  # fmt: skip


SIBLING_REDUCTIONS = frozenset({"min", "max", "sum", "mean"})
"""Reductions that share a pass over their input when they reduce the same value the same way."""


def _sibling_reduction(grouping: _Grouping, producer: int, consumer: int) -> bool:
    """Two reductions of one value over the same axes (ONNX's DynamicQuantizeLinear: min(x) and
    max(x), then the scale and zero point from both): one kernel reads x for both, the first's
    epilogue on the few elements of its result. The GPU row template reduces both per row."""
    first, second = grouping.anchor[producer], grouping.anchor[consumer]
    if first.op not in SIBLING_REDUCTIONS or second.op not in SIBLING_REDUCTIONS:
        return False
    if first.inputs[0] is not second.inputs[0] or first.attrs != second.attrs:
        return False
    domain = size(first)
    return all(size(node) <= domain for node in grouping.members[producer] if node is not first)


@dataclass(frozen=True)
class MergeRule:
    """`producer` group feeding a `consumer` group may merge into a `result` group when `allows`."""

    producer: GroupKind
    consumer: GroupKind
    result: GroupKind
    allows: Callable[[_Grouping, int, int], bool]


P, R, C = GroupKind.POINTWISE, GroupKind.REDUCTION, GroupKind.CONTRACTION
RULES: dict[tuple[GroupKind, GroupKind], MergeRule] = {
    (rule.producer, rule.consumer): rule
    for rule in (
        MergeRule(P, P, P, _always),  # exp(x) * y -> one loop
        MergeRule(P, R, R, _private_prologue),  # sum(exp(x - m)) -> loads x, computes exp, sums
        MergeRule(R, P, R, _reduction_epilogue),  # softmax(x) * v, mean(x) / n -> after the reduction
        MergeRule(C, P, C, _contraction_epilogue),  # gelu(x @ w + b) -> on each output tile
        MergeRule(P, C, C, _dequantizing_prologue),  # x @ dequantize(q, s) -> B dequantized as read
        MergeRule(R, R, R, _sibling_reduction),  # min(x), max(x) -> one kernel over x
        # No other contraction prologue: a contraction reads each operand element many times
        # (once per output tile), so a prologue would be recomputed; no other rule for two
        # anchors (reductions of different values, reduction + contraction) in one kernel.
    )
}
del P, R, C


def find_groups(graph: Graph, max_movement_growth: int = 4) -> list[FusionGroup]:
    """Partition the non-const nodes of `graph` into kernels, in an order to emit them."""
    grouping = _Grouping(graph, max_movement_growth)
    changed = True
    while changed:  # a merge can enable another (a prologue becomes private once its readers merged)
        changed = False
        for node in graph.nodes:
            if node not in grouping.group_of:
                continue
            # Anchored producers first, so that a node becomes an epilogue before it merges with
            # pointwise side inputs that the epilogue rules might refuse.
            producers = sorted(grouping.producer_groups(node), key=lambda g: grouping.anchor[g] is None)
            for producer in producers:
                consumer = grouping.group_of[node]
                if producer != consumer and _try_merge(grouping, producer, consumer):
                    changed = True
    return grouping.result()


def _try_merge(grouping: _Grouping, producer: int, consumer: int) -> bool:
    rule = RULES.get((grouping.kind[producer], grouping.kind[consumer]))
    if rule is None or not rule.allows(grouping, producer, consumer):
        return False
    if grouping.creates_cycle(producer, consumer):
        return False
    grouping.merge(producer, consumer, rule.result)
    return True


def group_outputs(graph: Graph, group: FusionGroup) -> list[Value]:
    """The values of `group` that other nodes or the graph's result read, in definition order;
    for a group nothing reads (dead code that fusion keeps), its last node's outputs."""
    inside = set(group.nodes)
    returned = set(graph.outputs)
    users = graph.users
    read = [
        v
        for node in group.nodes
        for v in node.outputs
        if v in returned or any(u not in inside for u in users.get(v, ()))
    ]
    return read or list(group.nodes[-1].outputs)
