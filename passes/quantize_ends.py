"""Which contractions are a model's ends, the ones `passes.quantize` keeps in float by default
(`keep_first_last`): the stem, whose activation is a graph input (raw pixels or features, not a
norm's or another layer's output), and the head, whose result is a graph output (the logits). A
contraction that is merely first or last in a graph that is one layer of a model (a transformer
block compiled on its own: its first reads a norm, its last adds to the residual stream) is neither.
"""

from __future__ import annotations

from ir import Graph, Node, OpKind, Value, get_op

_PASS_THROUGH_KINDS = (OpKind.MOVEMENT, OpKind.ELEMENTWISE, OpKind.BROADCAST)


def _follows_constants(graph: Graph, node: Node, through: Value) -> bool:
    """`node` moves or scales `through` by constants only (a reshape, a cast, a bias add, a
    normalizing sub/div of the input by constants), so it changes no activation's range."""
    if get_op(node.op).kind not in _PASS_THROUGH_KINDS:
        return False
    others = [v for v in node.inputs if v is not through]
    return all(graph.producers.get(v) is not None and graph.producers[v].op == "const" for v in others)


def reads_raw_input(graph: Graph, node: Node) -> bool:
    """The contraction's activation is a graph input, up to movement and ops by constants: the stem
    of a model, which sees raw pixels or features (not the output of a norm or of another layer)."""
    value = node.inputs[0]
    while (producer := graph.producers.get(value)) is not None:
        if producer.op == "const" or not producer.inputs or not _follows_constants(graph, producer, producer.inputs[0]):
            return False
        value = producer.inputs[0]
    return value in graph.inputs


def makes_outputs(graph: Graph, node: Node) -> bool:
    """A graph output is the contraction's result up to movement, ops by constants (bias, scale) and a
    final softmax: the head that makes a model's logits (not a layer whose result is, say, added to
    a residual stream before it leaves the graph)."""
    if any(graph.producers.get(v) is None or graph.producers[v].op != "const" for v in node.inputs[2:]):
        return False  # a gemm whose C is an activation: canonicalize's form of a residual add
    frontier, outputs = [node.output], set(graph.outputs)
    while frontier:
        value = frontier.pop()
        if value in outputs:
            return True
        for user in graph.users.get(value, ()):
            if user.op in ("softmax", "log_softmax") or _follows_constants(graph, user, value):
                frontier.extend(user.outputs)
    return False
