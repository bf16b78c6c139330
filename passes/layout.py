"""layout: store constant GEMM weights in the layout the CPU's GEMM micro-kernel reads fastest,
at compile time.

The micro-kernel (`backends.lowering.templates_gemm`) reads B, the [K, N] operand, one row of
NR contiguous columns per k step: a vector load. A weight stored [N, K] (torch's `nn.Linear`,
ONNX `Gemm` with transB=1) would be read across its rows instead, one element per lane (a
gather). So where B is known at compile time, this pass stores it transposed once:

    gemm(x, W){trans_b=true}                ->  gemm(x, W'){trans_b=false}     W' = W.T, a new constant
    gemm(x, transpose(W)){trans_b=false}     ->  gemm(x, W'){}                  W' = W.T (the transpose, done now)
    matmul(x, transpose(W, swapping the last two axes))  ->  matmul(x, W')     W' = the transpose, done now

where W may also be reached through a `cast` (a weight lowered to bf16 by `lower_precision`): the
cast stays and reads the re-laid constant. A constant that nothing else reads any more is
dropped. Only the CPU pipeline runs this pass (`passes.pipelines`): other targets read B their
own way.

Convolution weights are left as they are stored: the CPU's implicit GEMM
(`backends.lowering.templates_conv`) takes the weight as the micro-kernel's A, and a conv weight
[Cout, Cin/g, *kernel] already is row-major [M, K] (a transposed conv's is read by index
arithmetic once per k step); B is the input, gathered into a panel while the kernel runs.

Numerics: exact. A transposed copy holds the same numbers; every product and sum is the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ir import Graph, GraphBuilder, Node, Value
from passes.editing import map_nodes
from passes.manager import Numerics, Pass, register_pass


@register_pass
class Layout(Pass):
    """Store constant GEMM weights [K, N], contiguous along N, for the CPU micro-kernel."""

    name = "layout"
    numerics = Numerics.EXACT

    def run(self, graph: Graph) -> Graph:
        plans = {node: plan for node in graph.nodes if (plan := _plan(graph, node)) is not None}
        if not plans:
            return graph
        dropped = _dead_after(graph, plans)
        made: dict[tuple[Value, bool], Value] = {}  # one new constant per weight, however many read it

        def replace(node: Node, inputs: list[Value], builder: GraphBuilder) -> Sequence[Value] | None:
            if node in dropped:
                return node.outputs  # nothing reads it any more: it disappears
            plan = plans.get(node)
            if plan is None:
                return None
            if plan.key not in made:
                made[plan.key] = builder.constant(plan.array, f"{plan.name}_kn")
            weight = made[plan.key]
            for cast in plan.casts:  # the casts between the constant and B, applied again
                weight = builder.op("cast", weight, **cast)
            attrs = dict(node.attrs)
            if node.op == "gemm":
                attrs["trans_b"] = False
            return [builder.op(node.op, inputs[0], weight, *inputs[2:], source=node.source, **attrs)]

        return map_nodes(graph, replace)


def _dead_after(graph: Graph, plans: dict[Node, _Plan]) -> set[Node]:
    """The consts, casts and transposes that only the rewritten contractions' B reads (directly or
    through each other): they go, since their data now lives in the new constants."""
    dropped: set[Node] = set()
    for node in reversed(graph.nodes):
        if node.op not in ("const", "cast", "transpose") or node.output in graph.outputs:
            continue
        users = graph.users.get(node.output, ())
        if users and all(u in dropped or _reads_only_as_b(u, node.output, plans) for u in users):
            dropped.add(node)
    return dropped


def _reads_only_as_b(user: Node, value: Value, plans: dict[Node, _Plan]) -> bool:
    return user in plans and user.inputs[1] is value and value not in (user.inputs[0], *user.inputs[2:])


@dataclass(frozen=True)
class _Plan:
    """B of one contraction re-laid: the new constant's data and name, and the casts that the
    old B applied on top of its constant (applied again on top of the new one)."""

    key: tuple[Value, bool]
    """(the constant or transpose B comes from, trans_b): equal keys make equal constants."""
    array: np.ndarray
    name: str
    casts: list[dict]


def _plan(graph: Graph, node: Node) -> _Plan | None:
    """B of `node` laid out [..., K, N] as a new constant, if B is a constant (stored transposed,
    trans_b) or a transpose of one (any permutation: done now instead of on every read)."""
    if node.op not in ("gemm", "matmul") or node.inputs[1].type.rank < 2:
        return None
    trans_b = node.op == "gemm" and node.attrs["trans_b"]
    producers = graph.producers
    casts: list[dict] = []  # B = cast(...(cast(W))): the casts, innermost first
    current = node.inputs[1]
    while (producer := producers.get(current)) is not None and producer.op == "cast":
        casts.insert(0, dict(producer.attrs))
        current = producer.inputs[0]
    producer = producers.get(current)
    if producer is None:
        return None
    if producer.op == "const" and trans_b:
        array = graph.constants[producer.attrs["name"]]
        name = producer.attrs["name"]
    elif producer.op == "transpose" and (base := producers.get(producer.inputs[0])) is not None and base.op == "const":
        array = np.transpose(graph.constants[base.attrs["name"]], producer.attrs["perm"])
        name = base.attrs["name"]
    else:
        return None
    if trans_b:
        array = np.swapaxes(array, -1, -2)
    return _Plan((current, trans_b), np.ascontiguousarray(array), name, casts)
