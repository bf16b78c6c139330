"""The quantize pass on convolutions (`passes.quantize_conv`): its graph, run in the interpreter,
equals a numpy float simulation of the same quantization (fake quant) exactly, in each mode, on drawn
conv nets (strides, padding, dilation, groups, bias); depthwise and one-pixel convs stay in float with
their reasons; static mode's folded zero point and padding are exact."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import ir
from ir import DType, GraphBuilder
from ir.ops.contraction import _conv as conv_reference
from passes.quantize import quantize

# -- the fake-quant simulation (numpy, written apart from the pass) --------------------------------


def fake_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = w.reshape(w.shape[0], -1)
    scale = np.abs(rows).max(axis=1) / np.float32(127)
    scale = np.where(scale > 0, scale, np.float32(1)).astype(np.float32)
    return np.clip(np.rint(rows / scale[:, None]), -127, 127).reshape(w.shape), scale


def _channels(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, 1, 1)


def fake_conv(mode: str, x: np.ndarray, w: np.ndarray, bias: np.ndarray, attrs: dict, observed) -> np.ndarray:
    q_w, s_w = fake_weight(w)
    if mode == "weight":
        dequantized = (q_w.astype(np.float32) * s_w.reshape(-1, 1, 1, 1)).astype(np.float32)
        return conv_reference(x, dequantized, bias, **attrs)
    if mode == "dynamic":
        s_x = (np.abs(x).max(axis=(1, 2, 3), keepdims=True) / np.float32(127)).astype(np.float32)
        with np.errstate(all="ignore"):
            q_x = np.nan_to_num(np.clip(np.rint(x / s_x), -128, 127))
        accumulated = conv_reference(q_x.astype(np.int64), q_w.astype(np.int64), **attrs)
        return ((accumulated.astype(np.float32) * s_x) * _channels(s_w)) + _channels(bias)
    low, high = min(observed[0], 0.0), max(observed[1], 0.0)
    s_x = np.float32((high - low) / 255)
    z_x = np.clip(np.rint(-low / s_x), 0, 255)
    q_x = np.clip(np.rint(x / s_x) + z_x, 0, 255)
    accumulated = conv_reference(q_x.astype(np.int64) - int(z_x), q_w.astype(np.int64), **attrs)  # pads read z
    return accumulated.astype(np.float32) * _channels((s_x * s_w).astype(np.float32)) + _channels(bias)


@st.composite
def conv_nets(draw):
    """Two convs with relu between them: channels, kernels, strides, pads, dilations, groups drawn."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    channels = [draw(st.integers(1, 6)) for _ in range(3)]
    size = draw(st.integers(4, 7))
    b = GraphBuilder("convs")
    h = b.input("x", (draw(st.integers(1, 2)), channels[0], size, size + 1), DType.f32)
    layers = []
    for index in range(2):
        c_in = channels[index]
        groups = draw(st.sampled_from([g for g in (1, 2) if c_in % g == 0 and channels[index + 1] % g == 0]))
        if c_in // groups == 1 and groups > 1:
            groups = 1  # depthwise convs are kept in float: not what this test is about
        kernel = draw(st.integers(1, 3))
        attrs = {
            "strides": (draw(st.integers(1, 2)),) * 2,
            "pads": (draw(st.integers(0, kernel // 2)),) * 4,
            "dilations": (draw(st.integers(1, 2)),) * 2,
            "groups": groups,
        }
        w = (rng.standard_normal((channels[index + 1], c_in // groups, kernel, kernel)) / 2).astype(np.float32)
        bias = (rng.standard_normal(channels[index + 1]) * 0.1).astype(np.float32)
        try:
            h = b.op("conv", h, b.constant(w, f"w{index}"), b.constant(bias, f"b{index}"), **attrs)
        except ir.ShapeError:
            assume(False)  # the kernel does not fit the input
        if index == 0:
            h = b.relu(h)
        layers.append((w, bias, attrs))
    return b.build(h), layers, rng


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mode=st.sampled_from(["weight", "dynamic", "static"]), net=conv_nets())
def test_quantized_convs_equal_the_fake_quant_simulation_exactly(mode, net):
    graph, layers, rng = net
    shape = graph.inputs[0].type.shape
    calibration = [[(rng.standard_normal(shape) * 2).astype(np.float32)] for _ in range(2)]
    x = (rng.standard_normal(shape) * 2).astype(np.float32)
    quantized, report = quantize(graph, mode, keep_first_last=False, calibration=calibration)
    convs = [n for n in graph.nodes if n.op == "conv"]
    wide = sum(np.prod(n.output.type.shape[2:]) > 1 for n in convs)  # one-pixel convs stay in float
    assert len(report.quantized) == wide, report
    if mode != "weight":
        assert [n.op for n in quantized.nodes].count("conv_integer") == wide
    layers = [(*layer, np.prod(n.output.type.shape[2:]) > 1) for layer, n in zip(layers, convs)]
    observed = []
    if mode == "static":  # min-max over the float graph's conv inputs, as the observer sees them
        env = ir.run_all(graph, calibration[0]), ir.run_all(graph, calibration[1])
        observed = [
            (min(float(e[n.inputs[0]].min()) for e in env), max(float(e[n.inputs[0]].max()) for e in env))
            for n in convs
        ]
    h = x
    for index, (w, bias, attrs, quantized_conv) in enumerate(layers):
        if quantized_conv:
            h = fake_conv(mode, h, w, bias, attrs, observed[index] if observed else None).astype(np.float32)
        else:
            h = conv_reference(h, w, bias, **attrs)
        if index == 0:
            h = np.maximum(h, np.float32(0))
    (got,) = ir.run(quantized, [x])
    np.testing.assert_array_equal(got, h)


def test_depthwise_and_one_pixel_convs_stay_in_float_with_reasons():
    rng = np.random.default_rng(0)
    b = GraphBuilder("mixed")
    x = b.input("x", (1, 8, 6, 6), DType.f32)
    h = b.op("conv", x, b.constant(rng.standard_normal((8, 1, 3, 3)).astype(np.float32), "dw"), groups=8, pads=(1,) * 4)
    h = b.op("conv", h, b.constant(rng.standard_normal((16, 8, 1, 1)).astype(np.float32), "pw"))
    pooled = b.mean(h, axes=(2, 3), keepdims=True)
    h = b.mul(h, b.op("conv", pooled, b.constant(rng.standard_normal((16, 16, 1, 1)).astype(np.float32), "se")))
    quantized, report = quantize(b.build(h), "dynamic", keep_first_last=False)
    reasons = sorted(k.reason.split(":")[0].split(" (")[0] for k in report.kept)
    assert reasons == ["depthwise conv", "one output pixel"], report
    assert len(report.quantized) == 1 and "per image" in report.quantized[0].how
    assert [n.op for n in quantized.nodes].count("conv") == 2


def test_static_folds_the_zero_point_and_the_padding_into_constants():
    """conv_integer(pad(q_x, z), q_w) - z * rowsum(q_w) is what the static graph holds: a u8 x s8
    conv without zero points (vpdpbusd's own form)."""
    rng = np.random.default_rng(1)
    b = GraphBuilder("padded")
    x = b.input("x", (1, 3, 5, 5), DType.f32)
    graph = b.build(
        b.op("conv", x, b.constant(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"), pads=(1,) * 4)
    )
    calibration = [[(rng.standard_normal((1, 3, 5, 5)) + 1).astype(np.float32)]]
    quantized, report = quantize(graph, "static", keep_first_last=False, calibration=calibration)
    ops = [n.op for n in quantized.nodes]
    assert "pad" in ops and "sub" in ops and "zero point" in report.quantized[0].how
    (integer,) = [n for n in quantized.nodes if n.op == "conv_integer"]
    assert len(integer.inputs) == 2 and integer.inputs[0].type.dtype == DType.u8 and not any(integer.attrs["pads"])
