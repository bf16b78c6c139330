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

A constant float weight wider than one tile (N > 64) is then stored in the panels the micro-kernel
computes with: [N / 64, K, 64], the last panel zero-padded (`pack_float_weights`, the op's
`packed_columns` attribute; the reference unpacks them, so the graph means what it did), and the
GEMM reads each K x 64 panel in place instead of copying it out of a [K, N] matrix on every run
(benchmarks: an MLP 32x768 -> 3072 -> 1000, 1.1x on one thread and 1.4x on two). `layout{panels=false}`
leaves them [K, N].

Constant int8 GEMM weights (`matmul_integer`'s B, from `passes.quantize`) are stored as the int8
GEMM reads them: four bytes along K to an i32 word, in panels of 64 columns (`pack_int8_weights`,
read back by the op `unpack_bytes`), so its run-time packing disappears.

Convolution weights are left as they are stored: the CPU's implicit GEMM
(`backends.lowering.templates_conv`) takes the weight as the micro-kernel's A, and a conv weight
[Cout, Cin/g, *kernel] already is row-major [M, K] (a transposed conv's is read by index
arithmetic once per k step); B is the input, gathered into a panel while the kernel runs.

Numerics: exact. A transposed or panelled copy holds the same numbers; every product and sum is the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ir import DType, Graph, GraphBuilder, Node, Value
from ir.ops.contraction import pack_panels
from ir.ops.quantization import pack_bytes
from passes.editing import map_nodes
from passes.manager import Numerics, Pass, register_pass
from passes.prune_dead_nodes import PruneDeadNodes


@register_pass
class Layout(Pass):
    """Store constant GEMM weights [K, N], contiguous along N, for the CPU micro-kernel."""

    name = "layout"
    numerics = Numerics.EXACT

    panels: bool = True
    """Store constant float weights wider than a tile as `pack_panels` panels (`pack_float_weights`)."""

    def run(self, graph: Graph) -> Graph:
        graph = self._transpose_weights(graph)
        return pack_int8_weights(pack_float_weights(graph) if self.panels else graph)

    def _transpose_weights(self, graph: Graph) -> Graph:
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


# -- int8 weights, packed four bytes to a word ------------------------------------------------------

INT8_PANEL = 64
"""Columns per packed panel: the int8 GEMM's widest tile (64 i32 lanes: four zmm of `vpdpbusd`); its
narrower tiles (AVX2's 16) read a whole number of them out of one panel."""


def pack_int8_weights(graph: Graph) -> Graph:
    """matmul_integer(a, W) with W a constant i8 [K, N] and no zero point of its own ->
    matmul_integer(a, W'){packed_columns=N}, W' = W's bytes as i32 words [N / 64, K / 4, 64], the
    int8 GEMM's panels (`backends.lowering.templates_quant` loads them whole: no packing at run time;
    the op's decomposition unpacks them with `unpack_bytes`, so the graph means what it did)."""
    packed: dict[Value, Value] = {}  # one packed constant per weight, however many read it

    def replace(node: Node, inputs: list[Value], builder: GraphBuilder) -> Sequence[Value] | None:
        weight = _int8_weight(graph, node)
        if weight is None:
            return None
        if node.inputs[1] not in packed:
            name = graph.producers[node.inputs[1]].attrs["name"]
            words = pack_bytes(weight, min(INT8_PANEL, weight.shape[1]))
            packed[node.inputs[1]] = builder.constant(words, f"{name}_words")
        attrs = {**node.attrs, "packed_columns": weight.shape[1]}
        return [builder.op(node.op, inputs[0], packed[node.inputs[1]], *inputs[2:], source=node.source, **attrs)]

    result = map_nodes(graph, replace)
    return PruneDeadNodes().run(result) if packed else graph


def _int8_weight(graph: Graph, node: Node) -> np.ndarray | None:
    """The i8 [K, N] constant B of a matmul_integer without a B zero point (or a zero one)."""
    if node.op != "matmul_integer" or node.attrs["packed_columns"] or node.inputs[1].type.rank != 2:
        return None
    if node.inputs[1].type.dtype != DType.i8:
        return None
    producer = graph.producers.get(node.inputs[1])
    if producer is None or producer.op != "const":
        return None
    if len(node.inputs) > 3:
        point = graph.producers.get(node.inputs[3])
        if point is None or point.op != "const" or np.any(graph.constants[point.attrs["name"]]):
            return None
    return graph.constants[producer.attrs["name"]]


# -- float weights, in panels of the GEMM's tile width ----------------------------------------------

FLOAT_PANEL = 64
"""Columns per panel of a packed float weight: the f32 GEMM's widest tile (`choose_tiles`' NR with
AVX-512, 4 zmm of 16 lanes; passes may not import backends, so a test checks the two agree). A
narrower tile (AVX2's 16) reads a whole number of them out of one panel in place."""


def pack_float_weights(graph: Graph) -> Graph:
    """matmul/gemm(a, W) with W (maybe through casts) a constant float [K, N], N > FLOAT_PANEL ->
    the same op{packed_columns=N} reading W' = `pack_panels`(W, FLOAT_PANEL), [N / 64, K, 64]: each
    K x 64 panel the micro-kernel computes with is one contiguous block, read in place, so the GEMM
    copies no panel at run time (`backends.lowering.templates_gemm`). A narrower W already is its
    one panel, and is left as it is."""
    packed: dict[Value, Value] = {}  # one packed constant per weight ...
    read: dict[Value, Value] = {}  # ... and one chain of casts per B, however many read them

    def replace(node: Node, inputs: list[Value], builder: GraphBuilder) -> Sequence[Value] | None:
        found = _float_weight(graph, node)
        if found is None:
            return None
        constant, casts = found
        array = graph.constants[graph.producers[constant].attrs["name"]]
        if node.inputs[1] not in read:
            if constant not in packed:
                name = graph.producers[constant].attrs["name"]
                packed[constant] = builder.constant(pack_panels(array, FLOAT_PANEL), f"{name}_panels")
            weight = packed[constant]
            for cast in casts:  # the casts between the constant and B, applied again
                weight = builder.op("cast", weight, **cast)
            read[node.inputs[1]] = weight
        attrs = {**node.attrs, "packed_columns": array.shape[1]}
        return [builder.op(node.op, inputs[0], read[node.inputs[1]], *inputs[2:], source=node.source, **attrs)]

    result = map_nodes(graph, replace)
    return PruneDeadNodes().run(result) if packed else graph


def _float_weight(graph: Graph, node: Node) -> tuple[Value, list[dict]] | None:
    """(the constant, the casts on it, innermost first) that B of a float matmul/gemm reads, if B is
    a [K, N] constant wider than a panel, read as stored (not transposed, not packed yet)."""
    if node.op not in ("gemm", "matmul") or node.attrs["packed_columns"] or node.inputs[1].type.rank != 2:
        return None
    if not node.output.type.dtype.is_float or (node.op == "gemm" and node.attrs["trans_b"]):
        return None
    if node.inputs[1].type.shape[1] <= FLOAT_PANEL:
        return None
    casts: list[dict] = []
    current = node.inputs[1]
    while (producer := graph.producers.get(current)) is not None and producer.op == "cast":
        casts.insert(0, dict(producer.attrs))
        current = producer.inputs[0]
    if producer is None or producer.op != "const":
        return None
    return current, casts
