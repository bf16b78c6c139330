"""ONNX's quantized ops through the ONNX frontend, checked against ONNX Runtime: one-node models of
each op (exactly equal where the decomposition is exact, within one quantum for the QLinear ops,
whose requantization rounds a combined scale), and an MLP quantized by ONNX Runtime's own
`quantize_dynamic`, on the reference and CPU targets."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import compiler  # noqa: E402

RNG = np.random.default_rng(7)
_ELEM = {
    np.float32: TensorProto.FLOAT,
    np.int8: TensorProto.INT8,
    np.uint8: TensorProto.UINT8,
    np.int32: TensorProto.INT32,
}


def _model(op: str, inputs: dict, constants: dict, outputs: dict, opset: int = 21, **attrs) -> onnx.ModelProto:
    """One `op` node; `inputs` are graph inputs (name -> array), `constants` initializers (a name
    starting with "_": an omitted optional input), `outputs` name -> (dtype, shape)."""
    names = [*inputs, *constants]
    node = helper.make_node(op, [n if not n.startswith("_") else "" for n in names], list(outputs), **attrs)
    graph = helper.make_graph(
        [node],
        op,
        [helper.make_tensor_value_info(n, _ELEM[a.dtype.type], a.shape) for n, a in inputs.items()],
        [helper.make_tensor_value_info(n, _ELEM[t], shape) for n, (t, shape) in outputs.items()],
        [numpy_helper.from_array(a, n) for n, a in constants.items() if not n.startswith("_")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _both(model: onnx.ModelProto, inputs: dict, targets=("reference", "cpu")) -> tuple[list, dict]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, inputs)
    got = {}
    for target in targets:
        result = compiler.compile(model, target=target)(*inputs.values())
        got[target] = list(result) if isinstance(result, tuple) else [result]
    return expected, got


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
@pytest.mark.parametrize("per_axis", [False, True])
def test_quantize_and_dequantize_linear_equal_onnxruntime(dtype, per_axis):
    x = (RNG.standard_normal((2, 3, 4)) * 3).astype(np.float32)
    x[0, 0, :2] = [0.5, 2.5]  # ties: halves round to even
    scale = np.array([0.02, 0.05, 1.0], np.float32) if per_axis else np.array(0.04, np.float32)
    low, high = np.iinfo(dtype).min, np.iinfo(dtype).max
    point = RNG.integers(low, high, scale.shape).astype(dtype)
    q = _model("QuantizeLinear", {"x": x}, {"s": scale, "z": point}, {"y": (dtype, x.shape)}, axis=1)
    expected, got = _both(q, {"x": x})
    for target in got:
        np.testing.assert_array_equal(got[target][0], expected[0])
    d = _model("DequantizeLinear", {"q": expected[0]}, {"s": scale, "z": point}, {"y": (np.float32, x.shape)}, axis=1)
    expected, got = _both(d, {"q": expected[0]})
    for target in got:
        np.testing.assert_array_equal(got[target][0], expected[0])


def test_dynamic_quantize_linear_equals_onnxruntime():
    x = (RNG.standard_normal((5, 7)) * 2 + 0.5).astype(np.float32)
    model = _model(
        "DynamicQuantizeLinear",
        {"x": x},
        {},
        {"y": (np.uint8, x.shape), "s": (np.float32, ()), "z": (np.uint8, ())},
        opset=13,
    )
    expected, got = _both(model, {"x": x})
    for target in got:
        for e, g in zip(expected, got[target]):
            np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("per_row", [False, True])
def test_matmul_integer_equals_onnxruntime(per_row):
    a = RNG.integers(0, 255, (6, 20)).astype(np.uint8)
    b = RNG.integers(-128, 127, (20, 9)).astype(np.int8)
    a_point = RNG.integers(0, 255, (6,) if per_row else ()).astype(np.uint8)
    b_point = RNG.integers(-5, 5, (9,)).astype(np.int8)
    model = _model(
        "MatMulInteger", {"a": a}, {"b": b, "za": a_point, "zb": b_point}, {"y": (np.int32, (6, 9))}, opset=13
    )
    if per_row:  # ONNX allows a zero point per row of a; ONNX Runtime takes only one: numpy is the judge
        expected = [(a.astype(np.int64) - a_point[:, None]) @ (b.astype(np.int64) - b_point)]
        got = {t: [compiler.compile(model, target=t)(a)] for t in ("reference", "cpu")}
    else:
        expected, got = _both(model, {"a": a})
    for target in got:
        np.testing.assert_array_equal(got[target][0], expected[0])


def test_qlinear_matmul_is_within_one_quantum_of_onnxruntime():
    a = RNG.integers(0, 255, (4, 16)).astype(np.uint8)
    b = RNG.integers(0, 255, (16, 5)).astype(np.uint8)
    constants = {
        "sa": np.array(0.02, np.float32), "za": np.array(120, np.uint8),
        "b": b, "sb": np.array(0.01, np.float32), "zb": np.array(130, np.uint8),
        "sy": np.array(0.05, np.float32), "zy": np.array(100, np.uint8),
    }  # fmt: skip
    model = _model("QLinearMatMul", {"a": a}, constants, {"y": (np.uint8, (4, 5))}, opset=10)
    expected, got = _both(model, {"a": a})
    for target in got:
        assert np.abs(got[target][0].astype(int) - expected[0].astype(int)).max() <= 1


def test_conv_integer_and_qlinear_conv_against_onnxruntime():
    x = RNG.integers(0, 255, (1, 3, 6, 6)).astype(np.uint8)
    w = RNG.integers(-128, 127, (4, 3, 3, 3)).astype(np.int8)
    conv = _model(
        "ConvInteger",
        {"x": x},
        {"w": w, "zx": np.array(128, np.uint8)},
        {"y": (np.int32, (1, 4, 6, 6))},
        opset=10,
        pads=[1, 1, 1, 1],
    )
    expected, got = _both(conv, {"x": x})
    for target in got:
        np.testing.assert_array_equal(got[target][0], expected[0])
    constants = {
        "sx": np.array(0.02, np.float32), "zx": np.array(128, np.uint8),
        "w": w, "sw": np.array([0.01, 0.02, 0.005, 0.03], np.float32), "zw": np.zeros(4, np.int8),
        "sy": np.array(0.1, np.float32), "zy": np.array(10, np.uint8), "bias": np.arange(4, dtype=np.int32) * 50,
    }  # fmt: skip
    qconv = _model("QLinearConv", {"x": x}, constants, {"y": (np.uint8, (1, 4, 2, 2))}, opset=10, strides=[2, 2])
    expected, got = _both(qconv, {"x": x})
    for target in got:
        assert np.abs(got[target][0].astype(int) - expected[0].astype(int)).max() <= 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter: quantize_dynamic wants its output
def test_mlp_quantized_by_onnxruntime_runs_like_onnxruntime(tmp_path):
    torch = pytest.importorskip("torch")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).eval()
    x = torch.randn(8, 32)
    path, quantized = tmp_path / "mlp.onnx", tmp_path / "mlp_int8.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"])
    quantize_dynamic(str(path), str(quantized), weight_type=QuantType.QInt8)
    ops = {n.op_type for n in onnx.load(str(quantized)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    expected, got = _both(onnx.load(str(quantized)), {"x": x.numpy()})
    for target in got:
        np.testing.assert_allclose(got[target][0], expected[0], rtol=1e-5, atol=1e-5)
