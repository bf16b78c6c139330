"""The quantize pass: its graph, run in the interpreter, equals a numpy float simulation of the same
quantization (fake quant) exactly, in each mode, on drawn MLP-shaped graphs; it keeps what its
policy says with the reasons in the report; static mode needs calibration; drawn graphs stay valid."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ir
from ir import DType, GraphBuilder
from ir.testing import graphs, input_arrays
from passes import parse_pipeline
from passes.quantize import QuantizationError, Quantize, quantize

# -- the fake-quant simulation (numpy, written apart from the pass) --------------------------------


def fake_weight(w_kn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale = np.abs(w_kn).max(axis=0) / np.float32(127)
    scale = np.where(scale > 0, scale, np.float32(1)).astype(np.float32)
    return np.clip(np.rint(w_kn / scale), -127, 127), scale


def fake_layer(mode: str, x: np.ndarray, w_kn: np.ndarray, bias: np.ndarray, observed) -> np.ndarray:
    q_w, s_w = fake_weight(w_kn)
    if mode == "weight":
        dequantized = (q_w.astype(np.float32) * s_w).astype(np.float32)
        return np.matmul(x, np.ascontiguousarray(dequantized)) + bias
    if mode == "dynamic":
        s_x = (np.abs(x).max(axis=-1, keepdims=True) / np.float32(127)).astype(np.float32)
        with np.errstate(all="ignore"):
            q_x = np.nan_to_num(np.clip(np.rint(x / s_x), -128, 127))
        accumulated = q_x.astype(np.int64) @ q_w.astype(np.int64)
        return ((accumulated.astype(np.float32) * s_x) * s_w) + bias
    low, high = min(observed[0], 0.0), max(observed[1], 0.0)
    s_x = np.float32((high - low) / 255)
    z_x = np.clip(np.rint(-low / s_x), 0, 255)
    q_x = np.clip(np.rint(x / s_x) + z_x, 0, 255)
    accumulated = (q_x.astype(np.int64) - int(z_x)) @ q_w.astype(np.int64)
    return accumulated.astype(np.float32) * (s_x * s_w).astype(np.float32) + bias


def mlp(sizes: list[int], rows: int, seed: int, transposed: list[bool]) -> tuple[ir.Graph, list]:
    """x -> (gemm(trans_b) or matmul + bias, relu) per layer; returns the graph and its [K, N] weights and biases."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder("mlp")
    h = b.input("x", (rows, sizes[0]), DType.f32)
    layers = []
    for index, (k, n) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32) * np.float32(0.1)
        if transposed[index]:
            h = b.gemm(
                h, b.constant(np.ascontiguousarray(w.T), f"w{index}"), b.constant(bias, f"b{index}"), trans_b=True
            )
        else:
            h = b.add(b.matmul(h, b.constant(w, f"w{index}")), b.constant(bias, f"b{index}"))
        if index < len(sizes) - 2:
            h = b.relu(h)
        layers.append((w, bias))
    return b.build(h), layers


def simulate(mode: str, x: np.ndarray, layers: list, observed: list) -> np.ndarray:
    h = x
    for index, (w, bias) in enumerate(layers):
        h = fake_layer(mode, h, w, bias, observed[index] if observed else None).astype(np.float32)
        if index < len(layers) - 1:
            h = np.maximum(h, np.float32(0))
    return h


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mode=st.sampled_from(["weight", "dynamic", "static"]),
    sizes=st.lists(st.integers(1, 24), min_size=2, max_size=4),
    rows=st.integers(1, 6),
    seed=st.integers(0, 2**16),
    transposed=st.lists(st.booleans(), min_size=3, max_size=3),
)
def test_quantized_graph_equals_the_fake_quant_simulation_exactly(mode, sizes, rows, seed, transposed):
    graph, layers = mlp(sizes, rows, seed, transposed)
    rng = np.random.default_rng(seed + 1)
    calibration = [[(rng.standard_normal((rows, sizes[0])) * 2).astype(np.float32)] for _ in range(2)]
    x = (rng.standard_normal((rows, sizes[0])) * 2).astype(np.float32)
    quantized, report = quantize(graph, mode, keep_first_last=False, calibration=calibration)
    assert len(report.quantized) == len(layers)
    observed = []
    if mode == "static":  # min-max over the float graph's activations, as the observer sees them
        env = ir.run_all(graph, calibration[0]), ir.run_all(graph, calibration[1])
        contractions = [n for n in graph.nodes if n.op in ("matmul", "gemm")]
        observed = [
            (min(float(e[n.inputs[0]].min()) for e in env), max(float(e[n.inputs[0]].max()) for e in env))
            for n in contractions
        ]
    (got,) = ir.run(quantized, [x])
    np.testing.assert_array_equal(got, simulate(mode, x, layers, observed))


def test_policy_keeps_first_last_and_user_named_ops_with_reasons():
    graph, _ = mlp([8, 16, 16, 16, 4], 3, 0, [True, False, True, False])
    _, report = quantize(graph, "dynamic")
    assert len(report.quantized) == 2
    assert [("first or last" in k.reason) for k in report.kept] == [True, True]
    _, report = quantize(graph, "weight", keep_ops=("gemm",))
    assert len(report.quantized) == 1 and any("keep_ops" in k.reason for k in report.kept)
    assert "kept" in str(report) and "int8" in str(report)


def test_attention_scores_are_kept_because_their_weight_is_not_constant():
    b = GraphBuilder("scores")
    q, k = b.input("q", (4, 8)), b.input("k", (8, 4))
    graph = b.build(b.matmul(q, k))
    quantized, report = quantize(graph, "dynamic", keep_first_last=False)
    assert not report.quantized and "not a 2-D constant" in report.kept[0].reason
    assert [n.op for n in quantized.nodes] == [n.op for n in graph.nodes]


def test_report_measures_error_on_example_inputs():
    graph, _ = mlp([16, 32, 10], 6, 1, [True, True])
    x = np.random.default_rng(2).standard_normal((6, 16)).astype(np.float32)
    _, report = quantize(graph, "dynamic", keep_first_last=False, example_inputs=([x],))
    (accuracy,) = report.accuracy
    assert 0 < accuracy.max_abs < 0.1 and 0.99 < accuracy.cosine <= 1.0 + 1e-12 and accuracy.top1 > 0.5


def test_static_without_calibration_is_an_error_that_says_what_to_do():
    graph, _ = mlp([4, 4, 4], 2, 0, [True, True])
    with pytest.raises(QuantizationError, match="calibration=") as error:
        quantize(graph, "static")
    assert isinstance(error.value, ir.KilnError)


def test_pipeline_text_names_the_pass_and_its_options():
    (step,) = parse_pipeline("quantize{mode=static,keep_first_last=false,keep_ops=gemm}")
    assert step == Quantize(mode="static", keep_first_last=False, keep_ops=("gemm",))
    assert parse_pipeline(str(step)) == [step]
    with pytest.raises(ValueError, match="mode must be one of"):
        Quantize(mode="int4")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_drawn_graphs_stay_valid_and_keep_their_signature(data):
    graph = data.draw(graphs(ops=["matmul", "gemm", "relu", "add", "quantize_linear", "dequantize_linear"]))
    inputs = data.draw(input_arrays(graph))
    quantized, report = quantize(graph, data.draw(st.sampled_from(["weight", "dynamic"])), keep_first_last=False)
    ir.verify(quantized)
    assert [v.type for v in quantized.inputs] == [v.type for v in graph.inputs]
    assert [v.type for v in quantized.outputs] == [v.type for v in graph.outputs]
    got = ir.run(quantized, inputs)
    if not report.quantized:  # nothing to quantize: the same function, bit for bit
        for expected, actual in zip(ir.run(graph, inputs), got):
            np.testing.assert_array_equal(actual, expected)


def test_compile_takes_int8_precisions_and_calibration_and_reports_in_stats():
    import compiler

    graph, _ = mlp([8, 16, 16, 4], 2, 3, [True, False, True])
    x = np.random.default_rng(4).standard_normal((2, 8)).astype(np.float32)
    compiled = compiler.compile(graph, (x,), precision="int8-static", calibration=[(x,), (2 * x,)])
    report = compiled.stats["quantization"]
    assert report.mode == "static" and len(report.quantized) == 1 and "calibration" in report.measured_on
    with pytest.raises(QuantizationError, match="calibration"):
        compiler.compile(graph, (x,), precision="int8-static")
    with pytest.raises(ValueError, match="calibration= is for int8"):
        compiler.compile(graph, (x,), calibration=[(x,)])


def _residual_block(norm: bool) -> ir.Graph:
    """x (-> layer_norm) -> matmul -> gelu -> matmul -> + x: a transformer MLP on its own."""
    rng = np.random.default_rng(5)
    b = GraphBuilder("block")
    x = b.input("x", (6, 16), DType.f32)
    h = (
        b.layer_norm(x, b.constant(np.ones(16, np.float32), "g"), b.constant(np.zeros(16, np.float32), "s"))
        if norm
        else x
    )
    h = b.gelu(b.matmul(h, b.constant(rng.standard_normal((16, 32)).astype(np.float32), "w1")))
    return b.build(b.add(b.matmul(h, b.constant(rng.standard_normal((32, 16)).astype(np.float32), "w2")), x))


@pytest.mark.parametrize(("norm", "kept"), [(True, 0), (False, 1)])
def test_keep_first_last_keeps_the_stem_on_raw_inputs_and_the_head_only(norm, kept):
    """The first contraction is kept only when it reads a graph input (a stem), the last only when it
    makes an output (a head): a block whose first reads a norm and whose last adds to the residual
    stream is quantized whole, as ONNX Runtime's quantize_dynamic does."""
    _, report = quantize(_residual_block(norm), "dynamic")
    assert len(report.kept) == kept and len(report.quantized) == 2 - kept
    assert all("reads raw inputs" in k.reason for k in report.kept)
    graph, _ = mlp([8, 16, 4], 3, 0, [False, True])  # x -> matmul + bias -> relu -> gemm: stem and head
    _, report = quantize(graph, "dynamic")
    assert sorted(k.reason.split(": ")[-1] for k in report.kept) == ["it makes the outputs", "it reads raw inputs"]


def test_dynamic_activations_are_uint8_codes_and_their_quantization_is_one_kernel():
    """Dynamic int8 stores the symmetric codes as uint8 + 128 (the int8 GEMM then loads four bytes as one
    word) and takes max |x| as max(max(x), -min(x)), so that fusion puts both reductions and the
    quantize_linear in one kernel and no |x| is written to memory."""
    from passes import PassManager
    from passes.pipelines import default_pipeline

    graph = _residual_block(norm=True)
    quantized, _ = quantize(graph, "dynamic")
    integer = [n for n in quantized.nodes if n.op == "matmul_integer"]
    assert [n.inputs[0].type.dtype for n in integer] == [DType.u8, DType.u8]
    points = [quantized.constants[quantized.producers[n.inputs[2]].attrs["name"]] for n in integer]
    assert all(p.dtype == np.uint8 and int(p) == 128 for p in points)
    fused = PassManager(default_pipeline("cpu", 2, precision="int8-dynamic")).run(graph)
    bodies = [{n.op for n in node.attrs["body"].nodes} for node in fused.nodes if node.op == "fused"]
    assert not any("abs" in ops for ops in bodies)
    quantizing = [ops for ops in bodies if "quantize_linear" in ops]
    assert len(quantizing) == 2 and all({"max", "min"} <= ops for ops in quantizing)
    x = np.random.default_rng(6).standard_normal((6, 16)).astype(np.float32)
    np.testing.assert_array_equal(ir.run(fused, [x])[0], ir.run(quantized, [x])[0])
