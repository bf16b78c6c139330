"""fuse: exact, every non-const node in exactly one kernel, no cycles among kernels, and the
groups a kernel schedule expects (pointwise chains, reductions and contractions with their
prologue/epilogue, attention alone)."""

# ruff: noqa: E501  (the Expected texts hold the printer's lines: a fused node's first line is long)

from collections import Counter

import networkx as nx
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import ir
from ir import DType, GraphBuilder, OpKind
from ir.attributes import REQUIRED
from ir.testing import assert_equivalent, drawable_ops, graphs
from passes import make_pass
from passes.fuse import kernel_count
from passes.fusion_groups import SIBLING_REDUCTIONS, GroupKind, find_groups

FUSE = make_pass("fuse")

# Graphs with more nodes, all f32 and without opaque ops, so that more ops fit each other and
# chains, prologues and epilogues (and the refusals between them) are drawn often.
FUSIBLE_OPS = [name for name in drawable_ops() if ir.get_op(name).kind != OpKind.OPAQUE]
fusible_graphs = graphs(ops=FUSIBLE_OPS, max_nodes=12, dtypes={DType.f32})


def computing_nodes(graph: ir.Graph) -> list[ir.Node]:
    """The non-const nodes, those of `fused` nodes' bodies in their place."""
    found = []
    for node in graph.nodes:
        if node.op == "fused":
            found += computing_nodes(node.attrs["body"])
        elif node.op != "const":
            found.append(node)
    return found


def signature(node: ir.Node) -> tuple:
    """What identifies a node across the rewrite (bodies hold copies over new values)."""
    return node.op, node.attrs, node.source, tuple(v.type for v in node.inputs), tuple(v.type for v in node.outputs)


def groups_are_acyclic(graph: ir.Graph, groups) -> bool:
    """The graph of groups (an edge where a group reads another's value) has no cycle."""
    group_of = {node: index for index, group in enumerate(groups) for node in group.nodes}
    digraph = nx.DiGraph()
    digraph.add_nodes_from(range(len(groups)))
    for node, index in group_of.items():
        for value in node.inputs:
            producer = group_of.get(graph.producers.get(value))
            if producer is not None and producer != index:
                digraph.add_edge(producer, index)
    return nx.is_directed_acyclic_graph(digraph)


def check_fusion(graph: ir.Graph) -> ir.Graph:
    """Every property fusion promises, for one graph; returns the fused graph."""
    fused = FUSE.run(graph)
    ir.verify(fused)
    assert_equivalent(graph, fused)  # bitwise
    assert {node.op for node in fused.nodes} <= {"fused", "const"}, "a node was left outside the kernels"
    originals = Counter(map(signature, computing_nodes(graph)))
    assert Counter(map(signature, computing_nodes(fused))) == originals, "a node is missing or in two bodies"
    groups = find_groups(graph)
    grouped = [node for group in groups for node in group.nodes]
    assert len(grouped) == len(set(grouped)) == sum(1 for n in graph.nodes if n.op != "const")
    assert groups_are_acyclic(graph, groups)
    for group in groups:
        anchors = [n for n in group.nodes if ir.get_op(n.op).kind in (OpKind.REDUCTION, OpKind.CONTRACTION)]
        siblings = all(  # sibling reductions (one value, same axes) share a kernel: fusion_groups' rule
            n.op in SIBLING_REDUCTIONS and n.inputs[0] is anchors[0].inputs[0] and n.attrs == anchors[0].attrs
            for n in anchors
        )
        assert len(anchors) <= 1 or siblings, "two reductions or contractions in one kernel"
        if group.kind in (GroupKind.ATTENTION, GroupKind.OPAQUE, GroupKind.MOVEMENT):
            assert len(group.nodes) == 1
    assert str(FUSE.run(fused)) == str(fused), "fusing a fused graph changes it"
    return fused


@given(graphs())
def test_fusion_is_exact_and_puts_every_node_in_one_acyclic_kernel(graph):
    check_fusion(graph)


@given(fusible_graphs)
def test_fusion_of_op_chains_is_exact_and_acyclic(graph):
    check_fusion(graph)


@given(fusible_graphs)
def test_a_pointwise_value_read_once_by_a_pointwise_node_shares_its_kernel(graph):
    """Merging happens: a pointwise node whose only output only a pointwise node reads joins
    that node's kernel (no rule refuses it, and no path can run around it)."""
    groups = find_groups(graph)
    group_of = {node: group for group in groups for node in group.nodes}
    for node, group in group_of.items():
        if group.kind != GroupKind.POINTWISE or len(node.inputs) != 1:
            continue
        producer = graph.producers.get(node.inputs[0])
        if producer not in group_of or len(producer.outputs) != 1 or group_of[producer].kind != GroupKind.POINTWISE:
            continue
        if graph.users[node.inputs[0]] == (node,) and len(group_of[producer].nodes) == 1:
            assert group_of[producer] is group, f"{producer.op} -> {node.op} was not fused"


# Diamonds: a value reaches one consumer directly and through a middle node (a reduction, a
# contraction, an opaque op), the pattern where a naive merge of the two ends makes a cycle.
UNARY_POINTWISE = sorted(
    name
    for name, op in ir.OPS.items()
    if op.kind == OpKind.ELEMENTWISE and DType.f32 in op.dtypes and all(a.default is not REQUIRED for a in op.attrs)
)
MIDDLES = {
    "sum": lambda b, t: b.sum(t, axes=(1,), keepdims=True),
    "softmax": lambda b, t: b.softmax(t),
    "narrow matmul": lambda b, t: b.matmul(t, b.constant(np.full((8, 1), 0.5, np.float32), "w")),
    "square matmul": lambda b, t: b.matmul(t, b.constant(np.full((8, 8), 0.25, np.float32), "w")),
    "cumsum": lambda b, t: b.cumsum(t, axis=1),
    "sum of matmul": lambda b, t: b.sum(b.matmul(t, b.constant(np.eye(8, dtype=np.float32), "w")), axes=(1,)),
}


@st.composite
def diamonds(draw: st.DrawFn) -> ir.Graph:
    b = GraphBuilder("diamond")
    value = b.input("x", (4, 8))

    def chain(value, low):
        for name in draw(st.lists(st.sampled_from(UNARY_POINTWISE), min_size=low, max_size=2)):
            value = b.op(name, value)
        return value

    top = chain(value, 1)
    middle = MIDDLES[draw(st.sampled_from(sorted(MIDDLES)))](b, chain(top, 0))
    if middle.type.rank == 1:
        middle = b.unsqueeze(middle, axes=(1,))
    joined = b.op(draw(st.sampled_from(["add", "mul", "maximum"])), chain(top, 0), middle)
    outputs = [chain(joined, 0)] + ([top] if draw(st.booleans()) else [])
    return b.build(*outputs)


@given(diamonds())
def test_diamonds_fuse_without_cycles(graph):
    check_fusion(graph)


# -- targeted rewrites: Before and Expected text side by side ---------------------------------

MLP = """\
graph @mlp(%x: f32[4,8]) -> (f32[4,8]) {
  %w0 = const @w0 : f32[8,16]
  %b0 = const @b0 : f32[16]
  %w1 = const @w1 : f32[16,8]
  %b1 = const @b1 : f32[8]
  %0 = gemm(%x, %w0, %b0) : f32[4,16]
  %1 = gelu(%0) : f32[4,16]
  %2 = gemm(%1, %w1, %b1) : f32[4,8]
  %3 = add(%2, %x) : f32[4,8]
  return %3
}

constants {
  @w0 : f32[8,16] = splat(0.125)
  @b0 : f32[16] = splat(-0.5)
  @w1 : f32[16,8] = splat(0.25)
  @b1 : f32[8] = splat(1.0)
}
"""

MLP_FUSED = """\
graph @mlp(%x: f32[4,8]) -> (f32[4,8]) {
  %w0 = const @w0 : f32[8,16]
  %b0 = const @b0 : f32[16]
  %w1 = const @w1 : f32[16,8]
  %b1 = const @b1 : f32[8]
  %0 = fused(%x, %w0, %b0) {body=graph @fused_0_gemm_gelu(%x: f32[4,8], %w0: f32[8,16], %b0: f32[16]) -> (f32[4,16]) {
    %0 = gemm(%x, %w0, %b0) : f32[4,16]
    %1 = gelu(%0) : f32[4,16]
    return %1
  }, kind="contraction"} : f32[4,16]
  %1 = fused(%0, %w1, %b1, %x) {body=graph @fused_1_gemm_add(%in0: f32[4,16], %w1: f32[16,8], %b1: f32[8], %x: f32[4,8]) -> (f32[4,8]) {
    %0 = gemm(%in0, %w1, %b1) : f32[4,8]
    %1 = add(%0, %x) : f32[4,8]
    return %1
  }, kind="contraction"} : f32[4,8]
  return %1
}

constants {
  @w0 : f32[8,16] = splat(0.125)
  @b0 : f32[16] = splat(-0.5)
  @w1 : f32[16,8] = splat(0.25)
  @b1 : f32[8] = splat(1.0)
}
"""

# The activation joins the first gemm, the residual add the second; weights stay arguments.
SOFTMAX = """\
graph @scores(%x: f32[4,8], %y: f32[4,8]) -> (f32[4,8]) {
  %scale = const @scale : f32[]
  %0 = mul(%x, %scale) : f32[4,8]
  %1 = softmax(%0) : f32[4,8]
  %2 = mul(%1, %y) : f32[4,8]
  %3 = cast(%2) {dtype=f16} : f16[4,8]
  %4 = cast(%3) {dtype=f32} : f32[4,8]
  return %4
}

constants {
  @scale : f32[] = [0.125]
}
"""

SOFTMAX_FUSED = """\
graph @scores(%x: f32[4,8], %y: f32[4,8]) -> (f32[4,8]) {
  %0 = fused(%x, %y) {body=graph @fused_0_mul_softmax_cast(%x: f32[4,8], %y: f32[4,8]) -> (f32[4,8]) {
    %scale = const @scale : f32[]
    %0 = mul(%x, %scale) : f32[4,8]
    %1 = softmax(%0) : f32[4,8]
    %2 = mul(%1, %y) : f32[4,8]
    %3 = cast(%2) {dtype=f16} : f16[4,8]
    %4 = cast(%3) {dtype=f32} : f32[4,8]
    return %4
  }

  constants {
    @scale : f32[] = [0.125]
  }, kind="reduction"} : f32[4,8]
  return %0
}
"""

# One kernel: the scaling prologue, the softmax, the multiply and casts epilogue; the scalar
# constant moves into the body, and the outer graph no longer needs it.
LAYER_NORM = """\
graph @norm(%x: f32[4,8], %y: f32[4,8]) -> (f32[4,8]) {
  %gamma = const @gamma : f32[8]
  %beta = const @beta : f32[8]
  %0 = add(%x, %y) : f32[4,8]
  %1 = layer_norm(%0, %gamma, %beta) : f32[4,8]
  %2 = relu(%1) : f32[4,8]
  return %2
}

constants {
  @gamma : f32[8] = splat(2.0)
  @beta : f32[8] = splat(0.5)
}
"""

LAYER_NORM_FUSED = """\
graph @norm(%x: f32[4,8], %y: f32[4,8]) -> (f32[4,8]) {
  %gamma = const @gamma : f32[8]
  %beta = const @beta : f32[8]
  %0 = fused(%x, %y, %gamma, %beta) {body=graph @fused_0_add_layer_norm_relu(%x: f32[4,8], %y: f32[4,8], %gamma: f32[8], %beta: f32[8]) -> (f32[4,8]) {
    %0 = add(%x, %y) : f32[4,8]
    %1 = layer_norm(%0, %gamma, %beta) : f32[4,8]
    %2 = relu(%1) : f32[4,8]
    return %2
  }, kind="reduction"} : f32[4,8]
  return %0
}

constants {
  @gamma : f32[8] = splat(2.0)
  @beta : f32[8] = splat(0.5)
}
"""

# The residual sum is also returned (as a transformer's residual stream is read again), so it
# is no private prologue: it gets its own kernel, whose output the norm's kernel reads.
LAYER_NORM_RESIDUAL = LAYER_NORM.replace("-> (f32[4,8])", "-> (f32[4,8], f32[4,8])").replace(
    "return %2", "return %2, %0"
)

LAYER_NORM_RESIDUAL_FUSED = """\
graph @norm(%x: f32[4,8], %y: f32[4,8]) -> (f32[4,8], f32[4,8]) {
  %gamma = const @gamma : f32[8]
  %beta = const @beta : f32[8]
  %0 = fused(%x, %y) {body=graph @fused_0_add(%x: f32[4,8], %y: f32[4,8]) -> (f32[4,8]) {
    %0 = add(%x, %y) : f32[4,8]
    return %0
  }, kind="pointwise"} : f32[4,8]
  %1 = fused(%0, %gamma, %beta) {body=graph @fused_1_layer_norm_relu(%in0: f32[4,8], %gamma: f32[8], %beta: f32[8]) -> (f32[4,8]) {
    %0 = layer_norm(%in0, %gamma, %beta) : f32[4,8]
    %1 = relu(%0) : f32[4,8]
    return %1
  }, kind="reduction"} : f32[4,8]
  return %1, %0
}

constants {
  @gamma : f32[8] = splat(2.0)
  @beta : f32[8] = splat(0.5)
}
"""

ATTENTION = """\
graph @attention(%q: f32[2,4,8], %k: f32[2,6,8], %v: f32[2,6,8]) -> (f32[2,4,8]) {
  %0 = neg(%q) : f32[2,4,8]
  %1 = scaled_dot_product_attention(%0, %k, %v) {causal=true} : f32[2,4,8]
  %2 = add(%1, %q) : f32[2,4,8]
  return %2
}
"""

ATTENTION_FUSED = """\
graph @attention(%q: f32[2,4,8], %k: f32[2,6,8], %v: f32[2,6,8]) -> (f32[2,4,8]) {
  %0 = fused(%q) {body=graph @fused_0_neg(%q: f32[2,4,8]) -> (f32[2,4,8]) {
    %0 = neg(%q) : f32[2,4,8]
    return %0
  }, kind="pointwise"} : f32[2,4,8]
  %1 = fused(%0, %k, %v) {body=graph @fused_1_scaled_dot_product_attention(%in0: f32[2,4,8], %k: f32[2,6,8], %v: f32[2,6,8]) -> (f32[2,4,8]) {
    %0 = scaled_dot_product_attention(%in0, %k, %v) {causal=true} : f32[2,4,8]
    return %0
  }, kind="attention"} : f32[2,4,8]
  %2 = fused(%1, %q) {body=graph @fused_2_add(%in0: f32[2,4,8], %q: f32[2,4,8]) -> (f32[2,4,8]) {
    %0 = add(%in0, %q) : f32[2,4,8]
    return %0
  }, kind="pointwise"} : f32[2,4,8]
  return %2
}
"""

# relu -> matmul -> add and relu -> add: the add may not take the matmul as an epilogue (it
# computes on 8 times the matmul's elements), and fusing relu with add would put the matmul
# both after and before that kernel. So three kernels.
DIAMOND = """\
graph @diamond(%x: f32[4,8]) -> (f32[4,8]) {
  %w = const @w : f32[8,1]
  %0 = relu(%x) : f32[4,8]
  %1 = matmul(%0, %w) : f32[4,1]
  %2 = add(%0, %1) : f32[4,8]
  return %2
}

constants {
  @w : f32[8,1] = splat(0.5)
}
"""

DIAMOND_FUSED = """\
graph @diamond(%x: f32[4,8]) -> (f32[4,8]) {
  %w = const @w : f32[8,1]
  %0 = fused(%x) {body=graph @fused_0_relu(%x: f32[4,8]) -> (f32[4,8]) {
    %0 = relu(%x) : f32[4,8]
    return %0
  }, kind="pointwise"} : f32[4,8]
  %1 = fused(%0, %w) {body=graph @fused_1_matmul(%in0: f32[4,8], %w: f32[8,1]) -> (f32[4,1]) {
    %0 = matmul(%in0, %w) : f32[4,1]
    return %0
  }, kind="contraction"} : f32[4,1]
  %2 = fused(%0, %1) {body=graph @fused_2_add(%in0: f32[4,8], %in1: f32[4,1]) -> (f32[4,8]) {
    %0 = add(%in0, %in1) : f32[4,8]
    return %0
  }, kind="pointwise"} : f32[4,8]
  return %2
}

constants {
  @w : f32[8,1] = splat(0.5)
}
"""

# The first matmul's result feeds its own epilogue and the second matmul: it becomes a second
# output of the first kernel instead of being computed twice.
SHARED = """\
graph @shared(%x: f32[4,8]) -> (f32[4,8], f32[4,8]) {
  %w = const @w : f32[8,8]
  %0 = matmul(%x, %w) : f32[4,8]
  %1 = tanh(%0) : f32[4,8]
  %2 = matmul(%0, %w) : f32[4,8]
  return %1, %2
}

constants {
  @w : f32[8,8] = splat(0.5)
}
"""

SHARED_FUSED = """\
graph @shared(%x: f32[4,8]) -> (f32[4,8], f32[4,8]) {
  %w = const @w : f32[8,8]
  %0, %1 = fused(%x, %w) {body=graph @fused_0_matmul_tanh(%x: f32[4,8], %w: f32[8,8]) -> (f32[4,8], f32[4,8]) {
    %0 = matmul(%x, %w) : f32[4,8]
    %1 = tanh(%0) : f32[4,8]
    return %0, %1
  }, kind="contraction"} : f32[4,8], f32[4,8]
  %2 = fused(%0, %w) {body=graph @fused_1_matmul(%in0: f32[4,8], %w: f32[8,8]) -> (f32[4,8]) {
    %0 = matmul(%in0, %w) : f32[4,8]
    return %0
  }, kind="contraction"} : f32[4,8]
  return %1, %2
}

constants {
  @w : f32[8,8] = splat(0.5)
}
"""

CASES = {
    "mlp: two contraction kernels with their epilogues": (MLP, MLP_FUSED),
    "softmax with prologue and epilogue: one reduction kernel": (SOFTMAX, SOFTMAX_FUSED),
    "layer norm with its residual add and activation: one kernel": (LAYER_NORM, LAYER_NORM_FUSED),
    "layer norm whose residual is returned: two kernels": (LAYER_NORM_RESIDUAL, LAYER_NORM_RESIDUAL_FUSED),
    "attention: a kernel of its own": (ATTENTION, ATTENTION_FUSED),
    "diamond: no fusion that would make a cycle": (DIAMOND, DIAMOND_FUSED),
    "a value two kernels read: an output of its kernel": (SHARED, SHARED_FUSED),
}


@given(st.sampled_from(sorted(CASES)))
def test_before_and_expected(case):
    before, expected = CASES[case]
    graph = ir.parse_graph(before)
    fused = check_fusion(graph)
    assert str(fused) == expected
    assert str(ir.parse_graph(expected)) == expected  # the fused text parses back


# -- other behaviour --------------------------------------------------------------------------


def transformer_block(seq: int = 8, width: int = 16, heads: int = 2) -> ir.Graph:
    """Pre-norm transformer block: attention with q/k/v/out projections, then an MLP, each with
    a residual add."""
    b = GraphBuilder("block")
    rng = np.random.default_rng(0)
    x = b.input("x", (seq, width))

    def weight(shape, name):
        return b.constant((rng.standard_normal(shape) * 0.1).astype(np.float32), name)

    def split_heads(t):
        return b.transpose(b.reshape(t, shape=(seq, heads, width // heads)), perm=(1, 0, 2))

    h = b.layer_norm(x, weight((width,), "ln1_w"), weight((width,), "ln1_b"))
    q, k, v = (b.gemm(h, weight((width, width), f"w{n}"), weight((width,), f"b{n}")) for n in "qkv")
    attended = b.scaled_dot_product_attention(split_heads(q), split_heads(k), split_heads(v))
    merged = b.reshape(b.transpose(attended, perm=(1, 0, 2)), shape=(seq, width))
    residual = b.add(x, b.gemm(merged, weight((width, width), "wo"), weight((width,), "bo")))
    h = b.layer_norm(residual, weight((width,), "ln2_w"), weight((width,), "ln2_b"))
    h = b.gelu(b.gemm(h, weight((width, 4 * width), "w1"), weight((4 * width,), "b1")))
    h = b.gemm(h, weight((4 * width, width), "w2"), weight((width,), "b2"))
    return b.build(b.add(residual, h))


def test_a_transformer_block_takes_ten_kernels():
    graph = transformer_block()
    fused = check_fusion(graph)
    kinds = [node.attrs["kind"] for node in fused.nodes if node.op == "fused"]
    # ln1 | q, k, v projections (with their head split) | attention | head merge |
    # out projection + residual | ln2 | up projection + gelu | down projection + residual
    assert (
        kinds
        == ["reduction", *["contraction"] * 3, "attention", "pointwise", "contraction", "reduction"]
        + ["contraction"] * 2
    )
    assert kernel_count(fused) == 10


def test_single_nodes_become_one_node_kernels_and_fused_nodes_stay():
    b = GraphBuilder("g")
    x = b.input("x", (3, 4))
    graph = b.build(b.cumsum(x, axis=1))
    fused = check_fusion(graph)
    (node,) = fused.nodes
    assert node.op == "fused" and node.attrs["kind"] == "opaque"
    assert [n.op for n in node.attrs["body"].nodes] == ["cumsum"]
    assert FUSE.run(fused).nodes == fused.nodes


def test_a_fused_node_reading_a_scalar_constant_keeps_it():
    b = GraphBuilder("g")
    x = b.input("x", (3,))
    inner = GraphBuilder("fused_0_mul")
    a, s = inner.input("a", (3,)), inner.input("s", ())
    body = inner.build(inner.mul(a, s))
    scale = b.constant(np.float32(0.5), "scale")
    graph = b.build(b.exp(b.op("fused", x, scale, body=body, kind="pointwise")))
    fused = check_fusion(graph)
    assert [node.op for node in fused.nodes] == ["const", "fused", "fused"]
    assert fused.nodes[1] is graph.nodes[1]


def test_a_movement_op_that_fans_out_stands_alone_unless_allowed():
    b = GraphBuilder("g")
    x = b.input("x", (1, 4))
    graph = b.build(b.relu(b.expand(b.exp(x), shape=(16, 4))))
    kinds = [node.attrs["kind"] for node in check_fusion(graph).nodes]
    assert kinds == ["pointwise", "movement", "pointwise"]  # expand writes 16x what it reads
    generous = make_pass("fuse", {"max_movement_growth": "16"}).run(graph)
    assert [node.attrs["kind"] for node in generous.nodes] == ["pointwise"]
    assert_equivalent(graph, generous)


def test_dead_nodes_are_kept_in_a_kernel():
    b = GraphBuilder("g")
    x = b.input("x", (3,))
    b.exp(b.neg(x))  # nothing reads it: fusion groups it anyway, pruning is another pass's job
    graph = b.build(b.abs(x))
    fused = check_fusion(graph)
    assert kernel_count(fused) == 2
