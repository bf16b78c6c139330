"""The int8 convolution (`backends.lowering.templates_quant_conv`): `conv_integer` of many shapes
(strides, padding, dilation, groups, K % 4 tails, pixel and channel edges), i8 and u8 activations,
through the kernel interpreter (tiny tiles: small shapes have edges) and the CPU target, equal to the
graph interpreter bit for bit; the dequantizing epilogue in the same kernel; the forms the VNNI tile
does not take (u8 weights, zero points) on the i32 implicit GEMM; vpdpbusd in the assembly on a VNNI
host; and quantized conv models compiled for the CPU equal their quantized graph."""

from __future__ import annotations

import re

import numpy as np
import pytest

import compiler
from backends.llvm import codegen, compile_module
from backends.lowering.templates_gemm import GemmTiles, override_tiles
from ir import DType, GraphBuilder, run
from ir.loop.printer import print_kernel
from tests.backends.lowering.lowered import lower_graph, run_lowered

_RNG = np.random.default_rng(11)


def _bytes(dtype: DType, shape) -> np.ndarray:
    info = np.iinfo(dtype.numpy)
    return _RNG.integers(info.min, int(info.max) + 1, shape).astype(dtype.numpy)


def _graph(x_dtype: DType, shape, out_channels: int, kernel: int, *, stride=1, pad=0, dilation=1, groups=1,
           w_dtype=DType.i8, zero_points=None, epilogue=False):  # fmt: skip
    """conv_integer(x, w) with optional zero points ("x": a scalar of x's, "w": per output channel)."""
    b = GraphBuilder("int8_conv")
    x = b.input("x", shape, x_dtype)
    w = b.constant(_bytes(w_dtype, (out_channels, shape[1] // groups, kernel, kernel)), "w")
    inputs = [x, w]
    if zero_points:
        inputs.append(b.constant(_bytes(x_dtype, ()), "zx"))
        point = (out_channels, 1, 1, 1) if zero_points == "w" else ()
        inputs.append(b.constant(_bytes(w_dtype, point), "zw"))
    attrs = {"strides": (stride,) * 2, "pads": (pad,) * 4, "dilations": (dilation,) * 2, "groups": groups}
    y = b.op("conv_integer", *inputs, **attrs)
    if epilogue:  # dequantize per channel, bias, relu: one kernel with the conv
        scale = b.constant(_RNG.uniform(0.001, 0.01, (out_channels, 1, 1)).astype(np.float32), "scale")
        bias = b.constant(_RNG.standard_normal((out_channels, 1, 1)).astype(np.float32), "bias")
        y = b.relu(b.add(b.mul(b.cast(y, dtype=DType.f32), scale), bias))
    return b.build(y)


def _calls(graph) -> set[str]:
    _, kernels = lower_graph(graph)
    return set(re.findall(r"(\w+)<i32>\(", "".join(print_kernel(k) for k in kernels)))


_INTERPRETED = [  # (x dtype, x shape, out channels, kernel, stride, pad, dilation, groups)
    (DType.i8, (1, 5, 5, 6), 7, 3, 1, 1, 1, 1),
    (DType.u8, (1, 5, 5, 6), 7, 3, 1, 1, 1, 1),
    (DType.i8, (2, 8, 3, 5), 13, 1, 1, 0, 1, 1),
    (DType.u8, (1, 6, 7, 7), 4, 3, 2, 1, 1, 2),
    (DType.i8, (1, 3, 7, 6), 5, 3, 1, 2, 2, 1),
    (DType.i8, (1, 4, 4, 4), 4, 3, 1, 1, 1, 4),  # depthwise: K = 9 taps, one row per group
]


@pytest.mark.parametrize(("x_dtype", "shape", "m", "kernel", "stride", "pad", "dilation", "groups"), _INTERPRETED)
def test_int8_conv_through_the_kernel_interpreter_is_exact(x_dtype, shape, m, kernel, stride, pad, dilation, groups):
    graph = _graph(x_dtype, shape, m, kernel, stride=stride, pad=pad, dilation=dilation, groups=groups)
    x = _bytes(x_dtype, shape)
    with override_tiles(lambda _: GemmTiles(mr=2, nr=16, block_tiles=2)):
        (got,) = run_lowered(graph, [x])
        assert "dot4_u8s8" in _calls(graph)
    np.testing.assert_array_equal(got, run(graph, [x])[0])


_COMPILED = [  # edges: output channels % 6, pixels % 16 and % 64, K % 4; 1x1 (pointwise) and 3x3 padded
    (DType.i8, (1, 16, 9, 10), 24, 1, 1, 0, 1),
    (DType.u8, (1, 16, 9, 10), 24, 1, 1, 0, 1),
    (DType.i8, (2, 7, 11, 13), 13, 3, 1, 1, 1),
    (DType.u8, (1, 10, 12, 12), 20, 3, 2, 1, 2),
    (DType.u8, (1, 60, 1, 40), 120, 1, 1, 0, 1),  # the OCR head's shape: 40 pixels, K = 60
]


@pytest.mark.parametrize(("x_dtype", "shape", "m", "kernel", "stride", "pad", "groups"), _COMPILED)
def test_int8_conv_on_the_cpu_equals_the_interpreter(x_dtype, shape, m, kernel, stride, pad, groups):
    graph = _graph(x_dtype, shape, m, kernel, stride=stride, pad=pad, groups=groups)
    compiled = compiler.compile(graph, target="cpu", threads=2)
    for _ in range(2):  # a second run: nothing depends on what the first left in memory
        x = _bytes(x_dtype, shape)
        np.testing.assert_array_equal(np.asarray(compiled(x)), run(graph, [x])[0])


def test_the_dequantizing_epilogue_runs_in_the_conv_kernel():
    graph = _graph(DType.u8, (1, 8, 6, 7), 12, 3, pad=1, epilogue=True)
    compiled = compiler.compile(graph, target="cpu", threads=1)
    assert [n.attrs["kind"] for n in compiled.graph.nodes if n.op == "fused"] == ["contraction"]
    x = _bytes(DType.u8, (1, 8, 6, 7))
    np.testing.assert_array_equal(np.asarray(compiled(x)), run(graph, [x])[0])


@pytest.mark.parametrize(("w_dtype", "zero_points"), [(DType.u8, None), (DType.i8, "x"), (DType.i8, "w")])
def test_forms_without_the_vnni_tile_take_the_i32_implicit_gemm(w_dtype, zero_points):
    graph = _graph(DType.u8, (1, 5, 6, 6), 7, 3, pad=1, w_dtype=w_dtype, zero_points=zero_points)
    assert "dot4_u8s8" not in _calls(graph)
    x = _bytes(DType.u8, (1, 5, 6, 6))
    with override_tiles(lambda _: GemmTiles(mr=2, nr=16, block_tiles=2)):
        (interpreted,) = run_lowered(graph, [x])
    expected = run(graph, [x])[0]
    np.testing.assert_array_equal(interpreted, expected)
    np.testing.assert_array_equal(np.asarray(compiler.compile(graph, target="cpu")(x)), expected)


@pytest.mark.skipif(not codegen.host_has_vnni(), reason="the host has no AVX-512 VNNI")
@pytest.mark.parametrize("x_dtype", [DType.i8, DType.u8])
def test_the_conv_assembly_multiplies_with_vpdpbusd_on_zmm_registers(x_dtype):
    compiled = compiler.compile(_graph(x_dtype, (1, 32, 8, 16), 24, 1), target="cpu", threads=1)
    assembly = compile_module(compiled.program.code["llvm_ir"]).assembly
    assert re.search(r"vpdpbusd\s+[^\n]*zmm", assembly), "no 512-bit vpdpbusd in the int8 conv"


@pytest.mark.parametrize("precision", ["int8-dynamic", "int8-static"])
def test_a_quantized_conv_net_on_the_cpu_equals_its_quantized_graph(precision):
    b = GraphBuilder("net")
    x = b.input("x", (1, 8, 10, 12), DType.f32)
    h = x
    for index, (c_in, c_out, kernel) in enumerate([(8, 16, 3), (16, 16, 1), (16, 24, 3), (24, 8, 1)]):
        w = (_RNG.standard_normal((c_out, c_in, kernel, kernel)) / np.sqrt(c_in * kernel**2)).astype(np.float32)
        h = b.op("conv", h, b.constant(w, f"w{index}"), b.constant(np.full(c_out, 0.1, np.float32), f"b{index}"),
                 pads=(kernel // 2,) * 4)  # fmt: skip
        h = b.relu(h)
    graph = b.build(h)
    inputs = _RNG.standard_normal((1, 8, 10, 12)).astype(np.float32)
    compiled = compiler.compile(graph, (inputs,), target="cpu", precision=precision, calibration=(
        [(inputs,)] if precision == "int8-static" else None))  # fmt: skip
    assert len(compiled.stats["quantization"].quantized) == 2  # the first and last stay in float
    # The quantized graph's integer convs are exact in the kernels; their float epilogues (the
    # rescale, the next quantize) may round one quantum apart, so compare as floats.
    np.testing.assert_allclose(np.asarray(compiled(inputs)), run(compiled.graph, [inputs])[0], rtol=1e-4, atol=1e-4)
