"""int8 convolutions on tensor cores (`backends.cuda.templates_gpu_quant_conv`): `conv_integer` as
an implicit GEMM on the int8 MMA (rows: output pixels, columns: output channels).

In the lockstep interpreter (races checked, the warp's MMA assembled from the PTX ISA layout) the
i32 outputs equal the graph interpreter's bit for bit and the dequantized ones closely, at shapes
with edge tiles in pixels, Cout and K = Cin * kh * kw, with padding, strides, dilations, groups,
1-D and 2-D, u8 x s8 (static) and s8 x s8 (dynamic); the printed CUDA C is bit-exact in the
emulator; the kernels compile with NVRTC for sm_80 and sm_90 without spills; resnet_cnn compiled
with precision "int8-static" (calibrated) and "int8-dynamic" runs its int8 convs on this template
and matches the interpreter in the emulator.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import compiler
import ir
from backends.cuda import compile_cuda, emit_kernel, schedule_group
from backends.cuda.templates_gpu_mma import MmaTiles
from backends.cuda.templates_gpu_quant_conv import int8_conv_template
from ir import DType, Graph, GraphBuilder
from ir.loop import For, run_lockstep
from passes import make_pass
from runtime.cuda_emulator import emulator_unavailable
from tests.backends.cuda.kernels import requires_nvrtc
from tests.backends.cuda.test_nvrtc import LOCAL_BYTES_PER_THREAD, REGISTERS_PER_SM, SHARED_BYTES_PER_BLOCK

SMALL = MmaTiles(32, 16, 32, 2, 2, stages=1)
"""Tiles small enough that the shapes below have edge tiles in the pixels, Cout and K."""
KERNELS: dict[str, object] = {}
"""Every kernel the lockstep tests ran, by name: the NVRTC test compiles them all."""
requires_emulator = pytest.mark.skipif(emulator_unavailable() is not None, reason=f"{emulator_unavailable()}")

CASES = {
    # name: (x shape, w shape, attrs); pixels, Cout, K: none a multiple of SMALL's 32, 16, 32
    "3x3_pad1": ((2, 5, 6, 7), (20, 5, 3, 3), {"pads": (1, 1, 1, 1)}),
    "3x3_stride2_uneven_pads": ((1, 3, 9, 8), (18, 3, 3, 3), {"strides": (2, 2), "pads": (1, 0, 2, 1)}),
    "dilated_2x3": ((1, 4, 8, 9), (10, 4, 2, 3), {"dilations": (2, 2), "pads": (1, 2, 1, 2)}),
    "1x1_strided": ((2, 8, 5, 5), (17, 8, 1, 1), {"strides": (2, 2)}),
    "grouped": ((1, 6, 5, 6), (12, 3, 3, 3), {"groups": 2, "pads": (1, 1, 1, 1)}),
    "1d": ((2, 3, 21), (9, 3, 5), {"strides": (2,), "pads": (2, 2)}),
}


def _conv(case: str, x_dtype: DType, epilogue: bool, zero_point: int | None = None) -> Graph:
    """conv_integer(x, w) of `case`; with `epilogue`, the dequantization of `passes.quantize_conv`:
    f32, times a per-image activation scale and a per-channel weight scale, plus a bias, relu.
    `zero_point`: x's zero point as a constant input (None: absent)."""
    x_shape, w_shape, attrs = CASES[case]
    builder = GraphBuilder(f"q_{case}_{x_dtype}")
    x = builder.input("x", x_shape, x_dtype)
    w = builder.input("w", w_shape, DType.i8)
    points = [] if zero_point is None else [builder.constant(np.array(zero_point, x_dtype.numpy), "zx")]
    y = builder.op("conv_integer", x, w, *points, **attrs)
    if epilogue:
        per_channel = (w_shape[0], *(1,) * (len(x_shape) - 2))
        x_scale = builder.input("sx", (x_shape[0], *(1,) * (len(x_shape) - 1)), DType.f32)
        w_scale, bias = builder.input("sw", per_channel, DType.f32), builder.input("bias", per_channel, DType.f32)
        y = builder.relu(
            builder.add(builder.mul(builder.mul(builder.cast(y, dtype=DType.f32), x_scale), w_scale), bias)
        )
    return builder.build(y)


def _node(graph: Graph):
    (node,) = [n for n in make_pass("fuse").run(graph).nodes if n.op == "fused"]
    return node


def _inputs(graph: Graph, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = []
    for value in graph.inputs:
        dtype = value.type.dtype
        if dtype.is_float:
            arrays.append(rng.uniform(0.001, 0.01, value.type.shape).astype(np.float32))
        else:
            info = np.iinfo(dtype.numpy)
            arrays.append(rng.integers(info.min, int(info.max) + 1, value.type.shape).astype(dtype.numpy))
    return arrays


def _check(graph: Graph, tiles: MmaTiles | None = SMALL) -> None:
    """The template's kernel in lockstep against the graph interpreter: i32 bit-exact, f32 close."""
    name = f"{graph.name}_{len(KERNELS)}"
    node = _node(graph)
    made = int8_conv_template(node, name, tiles=tiles)
    assert made is not None, f"{name}: the int8 conv template declined"
    kernel, template = made
    assert template == "conv.mma_s8"
    inputs = _inputs(graph, len(KERNELS))
    outputs = [np.full(v.type.shape, 123).astype(v.type.dtype.numpy) for v in graph.outputs]
    given = dict(zip(graph.inputs, inputs, strict=True))  # the group takes them in its own order
    run_lockstep(kernel, [*(given[v] for v in node.inputs), *outputs])
    for value, actual, expected in zip(graph.outputs, outputs, ir.run(graph, inputs), strict=True):
        if value.type.dtype == DType.i32:
            np.testing.assert_array_equal(actual, expected, err_msg=name)
        else:  # the same i32 sums, then a few f32 roundings in the epilogue's order
            np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6, err_msg=name)
    KERNELS[name] = kernel


# -- lockstep ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("x_dtype", [DType.u8, DType.i8], ids=["static-u8s8", "dynamic-s8s8"])
@pytest.mark.parametrize("case", list(CASES))
def test_integer_conv_is_bit_exact_with_edge_tiles(case, x_dtype):
    _check(_conv(case, x_dtype, epilogue=False))


@pytest.mark.parametrize("x_dtype", [DType.u8, DType.i8], ids=["static-u8s8", "dynamic-s8s8"])
@pytest.mark.parametrize("case", ["3x3_pad1", "grouped", "1d"])
def test_dequantizing_epilogue_is_close(case, x_dtype):
    """Per-image and per-channel scales, bias and relu applied at each accumulator (NCHW)."""
    _check(_conv(case, x_dtype, epilogue=True))


@settings(max_examples=10, deadline=None)
@given(
    cin=st.integers(1, 9), cout=st.integers(1, 24), size=st.integers(3, 9), kernel=st.integers(1, 3),
    stride=st.integers(1, 2), pad=st.integers(0, 2), dilation=st.integers(1, 2),
    x_dtype=st.sampled_from([DType.u8, DType.i8]), seed=st.integers(0, 2**16),
)  # fmt: skip
def test_any_2d_conv_is_bit_exact(cin, cout, size, kernel, stride, pad, dilation, x_dtype, seed):
    if (size + 2 * pad - dilation * (kernel - 1) - 1) // stride < 0:
        return  # no output pixel
    builder = GraphBuilder("drawn")
    x, w = (
        builder.input("x", (2, cin, size, size + 1), x_dtype),
        builder.input("w", (cout, cin, kernel, kernel), DType.i8),
    )
    attrs = {"strides": (stride, stride), "pads": (pad,) * 4, "dilations": (dilation, dilation)}
    graph = builder.build(builder.op("conv_integer", x, w, **attrs))
    kernel_ir, _ = int8_conv_template(_node(graph), "drawn", tiles=SMALL)
    inputs = _inputs(graph, seed)
    out = np.zeros(graph.outputs[0].type.shape, np.int32)
    run_lockstep(kernel_ir, [*inputs, out])
    np.testing.assert_array_equal(out, ir.run(graph, inputs)[0])


def test_a_zero_point_of_zero_is_taken_and_the_default_tiles():
    _check(_conv("3x3_pad1", DType.u8, epilogue=False, zero_point=0))
    scheduled = schedule_group(_node(_conv("3x3_pad1", DType.u8, epilogue=True)), "q_conv_default")
    # 42 pixels x 20 channels per image: one 64 x 32 tile per image
    assert (scheduled.template, scheduled.block, scheduled.grid) == ("conv.mma_s8", (128, 1, 1), (2, 1, 1))
    KERNELS["q_conv_default"] = scheduled.kernel


def test_other_integer_convolutions_are_declined():
    """A nonzero x zero point (padding taps would read it), u8 weights and depthwise convs keep the
    generic schedule."""
    assert int8_conv_template(_node(_conv("3x3_pad1", DType.u8, epilogue=False, zero_point=3)), "zx") is None
    builder = GraphBuilder("u8_weights")
    x, w = builder.input("x", (1, 4, 5, 5), DType.u8), builder.input("w", (8, 4, 3, 3), DType.u8)
    assert int8_conv_template(_node(builder.build(builder.op("conv_integer", x, w))), "u8w") is None
    builder = GraphBuilder("depthwise")
    x, w = builder.input("x", (1, 4, 5, 5), DType.i8), builder.input("w", (4, 1, 3, 3), DType.i8)
    assert int8_conv_template(_node(builder.build(builder.op("conv_integer", x, w, groups=4))), "dw") is None


# -- the printed CUDA C: the emulator and NVRTC ----------------------------------------------------


def _emulate(model, inputs):
    from runtime.cuda import CudaExecutor
    from runtime.cuda_emulator import EmulatorDriver

    return CudaExecutor(model.program, driver=EmulatorDriver(model.program)).run(inputs)


@requires_nvrtc
@requires_emulator
@pytest.mark.parametrize("x_dtype", [DType.u8, DType.i8], ids=["u8s8", "s8s8"])
def test_the_printed_kernel_is_bit_exact_in_the_emulator(x_dtype):
    """Padding, stride 2 and uneven pads in the default tiles: edges in pixels, Cout and K."""
    graph = _conv("3x3_stride2_uneven_pads", x_dtype, epilogue=False)
    model = compiler.compile(graph, target="cuda", arch="sm_80")
    assert list(model.program.code["templates"].values()) == ["conv.mma_s8"]
    assert f"kiln_mma_s8_{'u8' if x_dtype == DType.u8 else 's8'}s8_x4(" in model.program.code["cuda_source"]
    inputs = _inputs(graph, 5)
    (got,) = _emulate(model, inputs)
    np.testing.assert_array_equal(got, ir.run(graph, inputs)[0])


@requires_nvrtc
@requires_emulator
@pytest.mark.parametrize("precision", ["int8-static", "int8-dynamic"])
def test_quantized_resnet_runs_its_convs_on_the_template_in_the_emulator(precision):
    """Every quantized conv of the model test's ResNet (stride 1 and 2, 1x1 shortcut, residual
    epilogues, the next layer's quantize as a second output) on the int8 MMA; the model's outputs
    match the interpreter's (f32 kernels around the int8 ones: a few ulps)."""
    from tests.models.models import MODELS

    module, example = MODELS["resnet_cnn"]()
    extra = {"calibration": [example]} if precision == "int8-static" else {}
    model = compiler.compile(module, example, target="cuda", precision=precision, arch="sm_80", **extra)
    convs = sum(
        any(inner.op == "conv_integer" for inner in node.attrs["body"].nodes)
        for node in model.graph.nodes
        if node.op == "fused"
    )
    templates = list(model.program.code["templates"].values())
    assert convs >= 4 and templates.count("conv.mma_s8") == convs, templates
    inputs = [x.numpy() for x in example]
    for actual, wanted in zip(_emulate(model, inputs), ir.run(model.graph, inputs), strict=True):
        np.testing.assert_allclose(actual, np.asarray(wanted), rtol=1e-5, atol=1e-5)


@requires_nvrtc
def test_every_int8_conv_kernel_compiles_for_ampere_and_hopper_without_spills():
    """Every kernel above (small and default tiles) and the large default tiles (128 x 64)."""
    builder = GraphBuilder("q_conv_large")
    x, w = builder.input("x", (1, 64, 32, 32), DType.u8), builder.input("w", (128, 64, 3, 3), DType.i8)
    scale = builder.input("scale", (128, 1, 1), DType.f32)
    y = builder.relu(builder.mul(builder.cast(builder.op("conv_integer", x, w, pads=(1, 1, 1, 1)), dtype=DType.f32),
                                 scale))  # fmt: skip
    scheduled = schedule_group(_node(builder.build(y)), "q_conv_large")
    assert scheduled.template == "conv.mma_s8" and scheduled.grid == (16, 1, 1)
    KERNELS["q_conv_large"] = scheduled.kernel
    if len(KERNELS) < 4:  # run alone: make the small-tile kernels first
        test_integer_conv_is_bit_exact_with_edge_tiles("3x3_stride2_uneven_pads", DType.u8)
        test_dequantizing_epilogue_is_close("grouped", DType.i8)
        test_dequantizing_epilogue_is_close("1d", DType.u8)
    for name, kernel in KERNELS.items():
        source = emit_kernel(kernel)
        assert "_x4(" in source, "the prelude's MMA"
        threads = next(s.extent for s in kernel.body[0].body if isinstance(s, For))
        shared = sum(b.size * b.dtype.itemsize for b in kernel.locals if b.scope.value == "shared")
        for arch in ("sm_80", "sm_90"):
            report = compile_cuda(source, arch, name).resources[name]
            where = f"{name} on {arch}: {report}"
            assert report.spill_stores == report.spill_loads == 0, f"spills in {where}"
            assert report.registers * threads <= REGISTERS_PER_SM, f"too many registers in {where}"
            assert report.shared_bytes == shared <= SHARED_BYTES_PER_BLOCK, where
            assert report.stack_bytes <= LOCAL_BYTES_PER_THREAD, where


@requires_nvrtc
@requires_emulator
def test_an_onnx_qdq_conv_runs_on_the_template_in_the_emulator():
    """QuantizeLinear / DequantizeLinear around a Conv (ONNX Runtime's QDQ form; u8 activations with
    a zero point and padding, which `passes.qdq` folds into a pad and a constant) on the int8 MMA."""
    from compiler.frontends.onnx import import_onnx
    from tests.passes.test_qdq import qdq_conv_model

    rng = np.random.default_rng(3)
    case = {
        "act_dtype": np.uint8, "groups": 1, "pads": [1, 0, 2, 1], "strides": [2, 1], "dilations": [1, 1],
        "x_scale": 0.037, "x_zero": 131, "w": rng.integers(-127, 128, (12, 5, 3, 3)).astype(np.int8),
        "w_scale": rng.uniform(0.001, 0.05, 12).astype(np.float32), "w_zero": np.zeros(12, np.int8),
        "bias": rng.standard_normal(12).astype(np.float32),
        "x": (rng.integers(-300, 300, (2, 5, 9, 7)) * 0.5 * 0.037).astype(np.float32),
    }  # fmt: skip
    graph = import_onnx(qdq_conv_model(case)).graph
    model = compiler.compile(graph, target="cuda", arch="sm_80")
    assert "conv.mma_s8" in model.program.code["templates"].values(), model.program.code["templates"]
    (got,) = _emulate(model, [case["x"]])
    np.testing.assert_allclose(got, ir.run(model.graph, [case["x"]])[0], rtol=1e-6, atol=1e-6)
