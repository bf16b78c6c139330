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


# -- float weights in panels ------------------------------------------------------------------------


def _packed_readers(graph: ir.Graph) -> list[ir.Node]:
    return [node for node in graph.nodes if node.op in ("gemm", "matmul") and node.attrs["packed_columns"]]


@st.composite
def wide_weight_graphs(draw):
    """x @ W with W a constant [K, N] (or [N, K] read transposed) up to 3 panels wide: matmul (maybe
    with a batched x), gemm{trans_b} with bias and scales, a bf16 cast of W, a second reader of W."""
    rows, depth = draw(st.integers(1, 7)), draw(st.integers(1, 9))
    columns = draw(st.integers(1, 200))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    builder = GraphBuilder("wide")
    batch = draw(st.sampled_from([(), (2,), (2, 1)]))
    x = builder.input("x", (*batch, rows, depth), DType.f32)
    transposed = draw(st.booleans())
    data = rng.standard_normal((columns, depth) if transposed else (depth, columns)).astype(np.float32)
    weight = builder.constant(data, "w")
    low = draw(st.booleans())
    if low:
        x = builder.cast(x, dtype=DType.bf16)

    def read(value):  # B of a matmul: W, or W's transpose (stored [N, K]), maybe cast to bf16
        value = builder.transpose(value, perm=(1, 0)) if transposed else value
        return builder.cast(value, dtype=DType.bf16) if low else value

    if draw(st.booleans()):
        alpha, beta = draw(st.sampled_from([(1.0, 1.0), (0.5, 2.0)]))
        bias = builder.cast(builder.constant(rng.standard_normal(columns).astype(np.float32), "b"), dtype=x.type.dtype)
        b = builder.cast(weight, dtype=DType.bf16) if low else weight
        y = builder.gemm(x, b, bias, trans_b=transposed, alpha=alpha, beta=beta)
    else:
        y = builder.matmul(x, read(weight))
    outputs = [y, builder.relu(builder.matmul(x, read(weight)))]
    if draw(st.booleans()):  # W also read as it is: it must stay for that reader
        outputs.append(builder.sum(weight, axes=(0,), keepdims=False))
    return builder.build(*outputs)


@settings(max_examples=40, deadline=None)
@given(wide_weight_graphs())
def test_weights_wider_than_a_panel_are_stored_in_panels_and_compute_the_same(graph):
    from ir.ops.contraction import unpack_panels
    from passes.layout import FLOAT_PANEL

    after = LAYOUT.run(graph)
    ir.verify(after)
    assert_equivalent(graph, after)  # exact: the interpreter unpacks the panels, the same numbers
    columns = graph.outputs[0].type.shape[-1]
    packed = _packed_readers(after)
    assert len(packed) == (2 if columns > FLOAT_PANEL else 0), ir.print_graph(after, max_constant_elements=0)
    panels = [after.constants[n.attrs["name"]] for n in after.nodes if n.op == "const" and n.output.type.rank == 3]
    # one per weight and way it is read (W itself, a transpose of W: two [K, N] constants)
    assert len(panels) <= 2 and bool(panels) == bool(packed)
    depth = graph.inputs[0].type.shape[-1]
    for stored in panels:
        assert stored.shape == (-(-columns // FLOAT_PANEL), depth, FLOAT_PANEL)
        np.testing.assert_array_equal(stored[-1, :, columns % FLOAT_PANEL or FLOAT_PANEL :], 0)  # zero padding
        assert unpack_panels(stored, columns).shape == (depth, columns)
    assert str(LAYOUT.run(after)) == str(after)  # idempotent


def test_panels_can_be_switched_off():
    builder = GraphBuilder("wide")
    x = builder.input("x", (2, 3), DType.f32)
    graph = builder.build(builder.matmul(x, builder.constant(np.ones((3, 100), np.float32), "w")))
    assert _packed_readers(make_pass("layout").run(graph))
    assert parse_pipeline("layout{panels=false}")[0].run(graph) is graph
