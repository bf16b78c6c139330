"""layout: constant GEMM weights re-laid [K, N] compute the same graph, and leave nothing behind."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from ir import DType, GraphBuilder
from ir.testing import assert_equivalent, graphs
from passes import make_pass, parse_pipeline

LAYOUT = make_pass("layout")


def _ops(graph: ir.Graph) -> list[str]:
    return [node.op for node in graph.nodes]


def _b_is_plain_constant(graph: ir.Graph) -> bool:
    """Every contraction reads B from a constant (maybe through casts), stored [K, N]."""
    for node in graph.nodes:
        if node.op not in ("gemm", "matmul"):
            continue
        producer = graph.producers.get(node.inputs[1])
        while producer is not None and producer.op == "cast":
            producer = graph.producers.get(producer.inputs[0])
        if producer is None or producer.op != "const" or (node.op == "gemm" and node.attrs["trans_b"]):
            return False
    return True


@st.composite
def weight_graphs(draw):
    """x @ W with W a constant read transposed: gemm{trans_b} (maybe with a bias, scales, a bf16
    cast of the weight, a second reader of W), or matmul of a transpose of a constant."""
    rows, depth, columns = (draw(st.integers(1, 9)) for _ in range(3))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    builder = GraphBuilder("weights")
    kind = draw(st.sampled_from(["linear", "gemm_of_transpose", "matmul_of_transpose", "batched"]))
    if kind == "batched":
        batch = draw(st.integers(1, 3))
        x = builder.input("x", (batch, rows, depth), DType.f32)
        weight = builder.constant(rng.standard_normal((batch, columns, depth)).astype(np.float32), "w")
        return builder.build(builder.matmul(x, builder.transpose(weight, perm=(0, 2, 1))))
    x = builder.input("x", (rows, depth), DType.f32)
    weight = builder.constant(rng.standard_normal((columns, depth)).astype(np.float32), "w")
    if kind == "matmul_of_transpose":
        return builder.build(builder.matmul(x, builder.transpose(weight, perm=(1, 0))))
    if kind == "gemm_of_transpose":
        return builder.build(builder.gemm(x, builder.transpose(weight, perm=(1, 0))))
    low = draw(st.booleans())
    if low:
        x, weight = builder.cast(x, dtype=DType.bf16), builder.cast(weight, dtype=DType.bf16)
    bias = [builder.constant(rng.standard_normal(columns).astype(np.float32), "bias")] if draw(st.booleans()) else []
    if low and bias:
        bias = [builder.cast(bias[0], dtype=DType.bf16)]
    alpha, beta = draw(st.sampled_from([(1.0, 1.0), (0.5, 2.0)]))
    outputs = [builder.gemm(x, weight, *bias, trans_b=True, alpha=alpha, beta=beta)]
    if draw(st.booleans()):  # W also read as it is: it must stay for that reader
        outputs.append(builder.sum(weight, axes=(1,), keepdims=False))
    return builder.build(*outputs)


@settings(max_examples=60, deadline=None)
@given(weight_graphs())
def test_relaid_weights_compute_the_same_and_are_read_as_they_are_stored(graph):
    after = LAYOUT.run(graph)
    ir.verify(after)
    assert_equivalent(graph, after)  # exact: the same numbers in another order in memory
    assert _b_is_plain_constant(after), ir.print_graph(after)
    assert "transpose" not in _ops(after)
    readers = {v for node in after.nodes for v in node.inputs} | set(after.outputs)
    dead = [node.attrs["name"] for node in after.nodes if node.op == "const" and node.output not in readers]
    assert dead == [], f"constants nothing reads: {dead}"
    assert str(LAYOUT.run(after)) == str(after)  # idempotent


@settings(max_examples=40, deadline=None)
@given(graphs(ops=["gemm", "matmul", "transpose", "cast", "add"], max_nodes=5))
def test_drawn_graphs_compute_the_same_after_layout(graph):
    after = LAYOUT.run(graph)
    ir.verify(after)
    assert_equivalent(graph, after)


def test_a_weight_shared_by_two_linears_becomes_one_constant():
    builder = GraphBuilder("shared")
    x = builder.input("x", (2, 3), DType.f32)
    weight = builder.constant(np.arange(12, dtype=np.float32).reshape(4, 3), "w")
    graph = builder.build(builder.gemm(x, weight, trans_b=True), builder.gemm(builder.relu(x), weight, trans_b=True))
    after = LAYOUT.run(graph)
    assert list(after.constants) == ["w_kn"]
    np.testing.assert_array_equal(after.constants["w_kn"], graph.constants["w"].T)
    assert all(not node.attrs["trans_b"] for node in after.nodes if node.op == "gemm")
    assert_equivalent(graph, after)


def test_inputs_and_weights_already_laid_out_are_left_alone():
    builder = GraphBuilder("plain")
    x, w = builder.input("x", (2, 3), DType.f32), builder.input("w", (4, 3), DType.f32)
    k_by_n = builder.constant(np.ones((3, 4), np.float32), "k_by_n")
    graph = builder.build(builder.gemm(x, w, trans_b=True), builder.matmul(x, k_by_n))
    assert LAYOUT.run(graph) is graph


def test_only_the_cpu_pipeline_runs_layout():
    from passes.pipelines import default_pipeline

    assert "layout" in [p.name for p in default_pipeline("cpu", 2)]
    assert "layout" not in [p.name for p in default_pipeline("reference", 2)]
    assert "layout" not in [p.name for p in default_pipeline("cpu", 1)]
    assert parse_pipeline("layout")[0].name == "layout"


def test_convolution_weights_are_left_as_stored():
    """The conv lowering reads a conv weight [Cout, Cin/g, *kernel] as its GEMM's A [M, K] in place
    (and a transposed conv's by index): the pass must not re-lay them."""
    builder = GraphBuilder("convs")
    x = builder.input("x", (1, 4, 6, 6), DType.f32)
    weight = builder.constant(np.ones((4, 4, 3, 3), np.float32), "w")
    up = builder.constant(np.ones((4, 2, 2, 2), np.float32), "up")
    y = builder.conv_transpose(builder.conv(x, weight, pads=(1, 1, 1, 1)), up, strides=(2, 2))
    graph = builder.build(y)
    assert str(LAYOUT.run(graph)) == str(graph)
