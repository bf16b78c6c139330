"""fuse_qdq (passes.qdq) on ONNX QDQ graphs built with onnx.helper and imported by the frontend: the
Q/DQ float forms become quantization ops bit for bit; a matmul or gemm of two dequantized operands
becomes `matmul_integer` with a scale epilogue whose interpreter result equals the integer
arithmetic computed in numpy exactly, and the float graph within f32 rounding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from compiler.frontends.onnx import import_onnx  # noqa: E402
from ir import DType, GraphBuilder, run  # noqa: E402
from passes.qdq import FuseQDQ  # noqa: E402

_ONNX_TYPE = {np.int8: TensorProto.INT8, np.uint8: TensorProto.UINT8}


def qdq_model(case: dict) -> onnx.ModelProto:
    """x -> QuantizeLinear -> DequantizeLinear -> MatMul/Gemm with DequantizeLinear(int8 weight)."""
    m, k, n = case["m"], case["k"], case["n"]
    act = case["act_dtype"]
    inits = [
        numpy_helper.from_array(np.array(case["x_scale"], np.float32), "xs"),
        numpy_helper.from_array(np.array(case["x_zero"], act), "xz"),
        numpy_helper.from_array(case["w"], "wq"),
        numpy_helper.from_array(case["w_scale"], "ws"),
        numpy_helper.from_array(case["w_zero"], "wz"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=case["w_axis"]),
    ]
    if case["op"] == "MatMul":
        nodes.append(helper.make_node("MatMul", ["xd", "wd"], ["y"]))
    else:
        inputs = ["xd", "wd"]
        if case["bias"] is not None:
            inits.append(numpy_helper.from_array(case["bias"], "bias"))
            inputs.append("bias")
        nodes.append(helper.make_node("Gemm", inputs, ["y"], transB=int(case["trans_b"]), alpha=case["alpha"]))
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


@st.composite
def qdq_cases(draw) -> dict:
    m, k, n = draw(st.integers(1, 5)), draw(st.integers(1, 9)), draw(st.integers(1, 6))
    op = draw(st.sampled_from(["MatMul", "Gemm"]))
    trans_b = op == "Gemm" and draw(st.booleans())
    per_channel = draw(st.booleans())
    act = draw(st.sampled_from([np.int8, np.uint8]))
    info = np.iinfo(act)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    shape = (n, k) if trans_b else (k, n)
    axis = 0 if trans_b else 1  # the output-channel axis of the stored weight
    channels = n if per_channel else 1
    return {
        "m": m, "k": k, "n": n, "op": op, "trans_b": trans_b, "act_dtype": act, "w_axis": axis,
        "x_scale": draw(st.sampled_from([0.5, 0.037, 0.0125])),
        "x_zero": draw(st.integers(int(info.min), int(info.max))),
        "w": rng.integers(-127, 128, shape).astype(np.int8),
        "w_scale": rng.uniform(0.001, 0.05, channels).astype(np.float32).reshape((channels,) if per_channel else ()),
        "w_zero": (rng.integers(-3, 4, channels) * draw(st.sampled_from([0, 1]))).astype(np.int8).reshape(
            (channels,) if per_channel else ()
        ),
        "bias": rng.standard_normal(n).astype(np.float32) if op == "Gemm" and draw(st.booleans()) else None,
        "alpha": draw(st.sampled_from([1.0, 0.5])) if op == "Gemm" else 1.0,
        # multiples of half the scale: many exact ties for round-half-even, and values past the range
        "x": (rng.integers(-300, 300, (m, k)) * 0.5 * draw(st.sampled_from([0.5, 0.037, 0.0125]))).astype(np.float32),
    }  # fmt: skip


def integer_reference(case: dict) -> np.ndarray:
    """What the fused graph computes, in numpy: the exact integer sum, then the f32 epilogue."""
    act, x_scale = case["act_dtype"], np.float32(case["x_scale"])
    info = np.iinfo(act)
    xq = np.clip(np.rint(case["x"] / x_scale) + np.float32(case["x_zero"]), info.min, info.max).astype(act)
    w, w_zero, w_scale = case["w"], case["w_zero"], case["w_scale"]
    if case["trans_b"]:
        w = w.T
    acc = (xq.astype(np.int32) - np.int32(case["x_zero"])) @ (w.astype(np.int32) - w_zero.astype(np.int32))
    y = acc.astype(np.float32) * (x_scale * w_scale)
    if case["alpha"] != 1.0:
        y = y * np.float32(case["alpha"])
    if case["bias"] is not None:
        y = y + case["bias"]
    return y.astype(np.float32)


def ops_of(graph) -> list[str]:
    return [node.op for node in graph.nodes]


@given(qdq_cases())
def test_fused_contraction_equals_the_integer_arithmetic_and_the_float_graph_closely(case):
    graph = import_onnx(qdq_model(case)).graph
    fused = FuseQDQ().run(graph)
    assert ops_of(fused).count("matmul_integer") == 1
    assert not {"matmul", "gemm"} & set(ops_of(fused))
    if not case["w_zero"].any():  # symmetric weights, per channel too: no zero point for the int8 kernel
        (integer,) = [node for node in fused.nodes if node.op == "matmul_integer"]
        assert integer.inputs[3].type.rank == 0
    (float_result,) = run(graph, [case["x"]])
    (got,) = run(fused, [case["x"]])
    np.testing.assert_array_equal(got, integer_reference(case))
    # Against the float graph: the same sum in another order, each term a product of exact values.
    terms = case["k"] * float(np.abs(float_result).max(initial=0) + 1)
    np.testing.assert_allclose(got, float_result, rtol=0, atol=8 * terms * np.finfo(np.float32).eps)


@given(qdq_cases())
def test_quantize_and_dequantize_forms_are_recognised_bit_for_bit(case):
    graph = import_onnx(qdq_model(case)).graph
    forms = FuseQDQ(exact_only=True).run(graph)
    assert {"quantize_linear", "dequantize_linear"} <= set(ops_of(forms))
    assert "round" not in ops_of(forms)  # the float form of QuantizeLinear is gone
    np.testing.assert_array_equal(run(forms, [case["x"]])[0], run(graph, [case["x"]])[0])


def test_a_weight_scale_that_varies_along_k_keeps_the_float_matmul():
    rng = np.random.default_rng(0)
    case = {
        "m": 2, "k": 4, "n": 3, "op": "MatMul", "trans_b": False, "act_dtype": np.uint8, "w_axis": 0,
        "x_scale": 0.05, "x_zero": 128, "w": rng.integers(-127, 128, (4, 3)).astype(np.int8),
        "w_scale": np.array([0.01, 0.02, 0.03, 0.04], np.float32), "w_zero": np.zeros(4, np.int8),
        "bias": None, "alpha": 1.0, "x": rng.standard_normal((2, 4)).astype(np.float32),
    }  # fmt: skip
    graph = import_onnx(qdq_model(case)).graph
    fused = FuseQDQ().run(graph)
    assert "matmul_integer" not in ops_of(fused) and "matmul" in ops_of(fused)
    np.testing.assert_array_equal(run(fused, [case["x"]])[0], run(graph, [case["x"]])[0])


def test_a_graph_without_byte_values_is_returned_unchanged():
    b = GraphBuilder("plain")
    x = b.input("x", (2, 3), DType.f32)
    graph = b.build(b.mul(b.cast(b.cast(x, dtype=DType.i32), dtype=DType.f32), x))
    assert FuseQDQ().run(graph) is graph


def test_quantize_of_a_dequantized_value_with_the_same_parameters_is_the_value_bit_for_bit():
    """x -> Q -> DQ -> Transpose -> Q -> DQ -> Q -> DQ: the inner pairs cancel (QDQ models put them
    around every reshape and transpose)."""
    inits = [
        numpy_helper.from_array(np.array(0.037, np.float32), "s"),
        numpy_helper.from_array(np.array(-7, np.int8), "z"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q0"]),
        helper.make_node("DequantizeLinear", ["q0", "s", "z"], ["d0"]),
        helper.make_node("Transpose", ["d0"], ["t"], perm=[1, 0]),
        helper.make_node("QuantizeLinear", ["t", "s", "z"], ["q1"]),
        helper.make_node("DequantizeLinear", ["q1", "s", "z"], ["d1"]),
        helper.make_node("QuantizeLinear", ["d1", "s", "z"], ["q2"]),
        helper.make_node("DequantizeLinear", ["q2", "s", "z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "round_trips",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, 3])],
        inits,
    )
    imported = import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])).graph
    fused = FuseQDQ(exact_only=True).run(imported)
    assert ops_of(fused).count("quantize_linear") == 1 and ops_of(fused).count("dequantize_linear") == 1
    x = (np.arange(-7, 8, dtype=np.float32).reshape(3, 5) * np.float32(0.037 * 2.5)).astype(np.float32)
    np.testing.assert_array_equal(run(fused, [x])[0], run(imported, [x])[0])


# -- convolutions ----------------------------------------------------------------------------------


def qdq_conv_model(case: dict) -> onnx.ModelProto:
    """x -> QuantizeLinear -> DequantizeLinear -> Conv with DequantizeLinear(int8 weight) [and a bias]."""
    act = case["act_dtype"]
    inits = [
        numpy_helper.from_array(np.array(case["x_scale"], np.float32), "xs"),
        numpy_helper.from_array(np.array(case["x_zero"], act), "xz"),
        numpy_helper.from_array(case["w"], "wq"),
        numpy_helper.from_array(case["w_scale"], "ws"),
        numpy_helper.from_array(case["w_zero"], "wz"),
    ]
    inputs = ["xd", "wd"]
    if case["bias"] is not None:
        inits.append(numpy_helper.from_array(case["bias"], "bias"))
        inputs.append("bias")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
        helper.make_node("Conv", inputs, ["y"], pads=case["pads"], strides=case["strides"],
                         dilations=case["dilations"], group=case["groups"]),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "qdq_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(case["x"].shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, conv_output_shape(case))],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def conv_output_shape(case: dict) -> list[int]:
    (batch, _, *size), (m, _, *kernel) = case["x"].shape, case["w"].shape
    pads, strides, dilations = case["pads"], case["strides"], case["dilations"]
    spatial = [
        (size[a] + pads[a] + pads[a + 2] - dilations[a] * (kernel[a] - 1) - 1) // strides[a] + 1 for a in range(2)
    ]
    return [batch, m, *spatial]


@st.composite
def qdq_conv_cases(draw) -> dict:
    groups, per_group, channels = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    m, c = groups * per_group, groups * channels
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    size = (draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    pads = [draw(st.integers(0, 2)) for _ in range(4)]
    strides, dilations = [draw(st.integers(1, 2)) for _ in range(2)], [draw(st.integers(1, 2)) for _ in range(2)]
    for axis in range(2):  # at least one output pixel
        assume(size[axis] + pads[axis] + pads[axis + 2] >= dilations[axis] * (kernel[axis] - 1) + 1)
    per_channel = draw(st.booleans())
    act = draw(st.sampled_from([np.int8, np.uint8]))
    info = np.iinfo(act)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    scales = m if per_channel else 1
    x_scale = draw(st.sampled_from([0.5, 0.037, 0.0125]))
    return {
        "act_dtype": act, "groups": groups, "pads": pads, "strides": strides, "dilations": dilations,
        "x_scale": x_scale,
        "x_zero": draw(st.integers(int(info.min), int(info.max))),
        "w": rng.integers(-127, 128, (m, channels, *kernel)).astype(np.int8),
        "w_scale": rng.uniform(0.001, 0.05, scales).astype(np.float32).reshape((m,) if per_channel else ()),
        "w_zero": (rng.integers(-3, 4, scales) * draw(st.sampled_from([0, 1]))).astype(np.int8).reshape(
            (m,) if per_channel else ()
        ),
        "bias": rng.standard_normal(m).astype(np.float32) if draw(st.booleans()) else None,
        # multiples of half the scale: ties for round-half-even, and values past the range
        "x": (rng.integers(-300, 300, (draw(st.integers(1, 2)), c, *size)) * 0.5 * x_scale).astype(np.float32),
    }  # fmt: skip


def integer_conv(x: np.ndarray, w: np.ndarray, case: dict) -> np.ndarray:
    """The exact integer convolution of centered x and w (x's padding 0 once centered), wrapped to i32."""
    (top, left, bottom, right), (sh, sw), (dh, dw) = case["pads"], case["strides"], case["dilations"]
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    batch, _, height, width = x.shape
    m, channels, kh, kw = w.shape
    oh, ow = (height - dh * (kh - 1) - 1) // sh + 1, (width - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((batch, m, oh, ow), np.int64)
    per_group = m // case["groups"]
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw]
            for g in range(case["groups"]):
                rows, taps = slice(g * per_group, (g + 1) * per_group), patch[:, g * channels : (g + 1) * channels]
                out[:, rows] += np.einsum("nchw,mc->nmhw", taps, w[rows, :, i, j])
    return out.astype(np.int32)


def integer_conv_reference(case: dict) -> np.ndarray:
    """What the fused conv graph computes, in numpy: the exact integer sum, then the f32 epilogue."""
    act, x_scale = case["act_dtype"], np.float32(case["x_scale"])
    info = np.iinfo(act)
    xq = np.clip(np.rint(case["x"] / x_scale) + np.float32(case["x_zero"]), info.min, info.max).astype(act)
    w_zero = case["w_zero"].astype(np.int64).reshape(-1, 1, 1, 1)
    acc = integer_conv(xq.astype(np.int64) - case["x_zero"], case["w"].astype(np.int64) - w_zero, case)
    y = acc.astype(np.float32) * (x_scale * case["w_scale"].reshape(-1, 1, 1))
    if case["bias"] is not None:
        y = y + case["bias"].reshape(-1, 1, 1)
    return y.astype(np.float32)


@given(qdq_conv_cases())
@settings(max_examples=60, deadline=None)
def test_fused_conv_equals_the_integer_arithmetic_and_the_float_graph_closely(case):
    graph = import_onnx(qdq_conv_model(case)).graph
    fused = FuseQDQ().run(graph)
    assert ops_of(fused).count("conv_integer") == 1 and "conv" not in ops_of(fused)
    (integer,) = [node for node in fused.nodes if node.op == "conv_integer"]
    if not case["w_zero"].any():  # the int8 tile's form: x's zero point and padding folded away
        assert len(integer.inputs) == 2 and (not case["x_zero"] or not any(integer.attrs["pads"]))
    (float_result,) = run(graph, [case["x"]])
    (got,) = run(fused, [case["x"]])
    np.testing.assert_array_equal(got, integer_conv_reference(case))
    terms = case["w"][0].size * float(np.abs(float_result).max(initial=0) + 1)
    np.testing.assert_allclose(got, float_result, rtol=0, atol=8 * terms * np.finfo(np.float32).eps)


def test_a_conv_with_a_per_tensor_x_scale_varying_along_channels_keeps_the_float_conv():
    """An x scale per channel varies along the summed axis: no integer conv (a per-channel weight scale
    along the input channels, axis 1, likewise)."""
    rng = np.random.default_rng(1)
    case = {
        "act_dtype": np.uint8, "groups": 1, "pads": [0, 0, 0, 0], "strides": [1, 1], "dilations": [1, 1],
        "x_scale": 0.05, "x_zero": 3, "w": rng.integers(-127, 128, (2, 3, 1, 1)).astype(np.int8),
        "w_scale": np.array([0.01, 0.02, 0.03], np.float32), "w_zero": np.zeros(3, np.int8),
        "bias": None, "x": rng.standard_normal((1, 3, 4, 4)).astype(np.float32),
    }  # fmt: skip
    model = qdq_conv_model(case)
    model.graph.node[2].attribute[0].i = 1  # the weight's DequantizeLinear along axis 1 (input channels)
    graph = import_onnx(model).graph
    fused = FuseQDQ().run(graph)
    assert "conv_integer" not in ops_of(fused) and "conv" in ops_of(fused)
    np.testing.assert_array_equal(run(fused, [case["x"]])[0], run(graph, [case["x"]])[0])


@given(qdq_conv_cases())
@settings(max_examples=40, deadline=None)
def test_conv_integer_with_constant_zero_points_loses_them_bit_for_bit(case):
    """ConvInteger(x, w, zx, zw) with constants w, zx (and zw all zero): padding a pad of x with zx and
    zx * rowsum(w) subtracted, the int8 tile's form; the same integers as the graph imported."""
    act = case["act_dtype"]
    info = np.iinfo(act)
    xq = np.clip(np.rint(case["x"] / np.float32(case["x_scale"])), info.min, info.max).astype(act)
    w_zero = np.zeros_like(case["w_zero"])  # per tensor or per output channel
    inits = [
        numpy_helper.from_array(case["w"], "w"),
        numpy_helper.from_array(np.array(case["x_zero"], act), "xz"),
        numpy_helper.from_array(w_zero, "wz"),
    ]
    conv = helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"], pads=case["pads"], strides=case["strides"],
                            dilations=case["dilations"], group=case["groups"])  # fmt: skip
    graph = helper.make_graph(
        [conv],
        "conv_integer",
        [helper.make_tensor_value_info("x", _ONNX_TYPE[act], list(xq.shape))],
        [helper.make_tensor_value_info("y", TensorProto.INT32, conv_output_shape(case))],
        inits,
    )
    imported = import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])).graph
    folded = FuseQDQ(exact_only=True).run(imported)
    (integer,) = [node for node in folded.nodes if node.op == "conv_integer"]
    assert len(integer.inputs) == 2 and (not case["x_zero"] or not any(integer.attrs["pads"]))
    expected = integer_conv(xq.astype(np.int64) - case["x_zero"], case["w"].astype(np.int64), case)
    np.testing.assert_array_equal(run(folded, [xq])[0], expected)
    np.testing.assert_array_equal(run(imported, [xq])[0], expected)
