"""Convolutions as implicit GEMMs on the GPU (`backends.cuda.templates_gpu_conv`): FMA tiles for
f32 and tensor-core MMA for f16/bf16 run in the lockstep interpreter (races checked) and match the
graph interpreter on small convolutions with edge tiles in Cout, pixels and K, padding, strides,
dilations, groups, 1-D and 2-D, with the group's epilogue; each compiles with NVRTC for sm_80 and
sm_90 with a clean ptxas report. Tolerances: `assert_close` of the lowering tests, as the GEMM's."""

from __future__ import annotations

import numpy as np
import pytest

import ir
from backends.cuda import compile_cuda, emit_kernel, schedule_group
from backends.cuda.templates_gpu_conv import conv_template
from backends.cuda.templates_gpu_gemm import FmaTiles
from backends.cuda.templates_gpu_mma import MmaTiles
from ir import DType, Graph, GraphBuilder
from ir.loop import run_lockstep
from passes import make_pass
from tests.backends.cuda.kernels import requires_nvrtc
from tests.backends.cuda.test_nvrtc import LOCAL_BYTES_PER_THREAD, REGISTERS_PER_SM, SHARED_BYTES_PER_BLOCK
from tests.backends.lowering.lowered import assert_close

FLOATS = [DType.f32, DType.f16, DType.bf16]
SMALL = {"fma_tiles": FmaTiles(16, 32, 8, 2, 2), "mma_tiles": MmaTiles(16, 32, 16, 1, 2)}
"""Tiles small enough that the shapes below have edge tiles in Cout, the pixels and K."""
KERNELS: dict[str, tuple] = {}
"""Every kernel the tests ran, by name, with its template: the NVRTC test compiles them all."""


def _node(graph: Graph):
    (node,) = [n for n in make_pass("fuse").run(graph).nodes if n.op == "fused"]
    return node


def _template(dtype: DType) -> str:
    return "conv.fma" if dtype == DType.f32 else "conv.mma"


def _check(graph: Graph, dtype: DType, **tiles) -> None:
    name = f"{graph.name}_{len(KERNELS)}"
    node = _node(graph)
    made = conv_template(node, name, **tiles)
    assert made is not None, f"{name}: the conv template declined"
    kernel, template = made
    assert template == _template(dtype)
    rng = np.random.default_rng(len(KERNELS))
    inputs = [rng.uniform(-2, 2, v.type.shape).astype(v.type.dtype.numpy) for v in graph.inputs]
    outputs = [np.full(v.type.shape, 123).astype(v.type.dtype.numpy) for v in graph.outputs]
    given = dict(zip(graph.inputs, inputs))  # the group takes them in its own order
    run_lockstep(kernel, [*(given[v] for v in node.inputs), *outputs])
    for value, actual, expected in zip(graph.outputs, outputs, ir.run(graph, inputs)):
        assert_close(actual, expected, value.type.dtype, f"{name} {template}")
    KERNELS[name] = (kernel, template)


CASES = {
    # name: (x shape, w shape, attrs)
    "3x3_pad1": ((2, 5, 6, 7), (20, 5, 3, 3), {"pads": (1, 1, 1, 1)}),
    "3x3_stride2_uneven_pads": ((1, 3, 9, 8), (18, 3, 3, 3), {"strides": (2, 2), "pads": (1, 0, 2, 1)}),
    "dilated_2x3": ((1, 4, 8, 9), (10, 4, 2, 3), {"dilations": (2, 2), "pads": (1, 2, 1, 2)}),
    "1x1_strided": ((2, 8, 5, 5), (17, 8, 1, 1), {"strides": (2, 2)}),
    "grouped": ((1, 6, 5, 6), (12, 3, 3, 3), {"groups": 2, "pads": (1, 1, 1, 1)}),
    "1d": ((2, 3, 21), (9, 3, 5), {"strides": (2,), "pads": (2, 2)}),
}


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_conv_with_edges_matches_the_interpreter(case, dtype):
    x_shape, w_shape, attrs = CASES[case]
    builder = GraphBuilder(f"conv_{case}")
    x, w = builder.input("x", x_shape, dtype), builder.input("w", w_shape, dtype)
    _check(builder.build(builder.conv(x, w, **attrs)), dtype, **SMALL)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_conv_with_bias_batch_norm_relu_and_residual_epilogue(dtype):
    builder = GraphBuilder("conv_block")
    x, w = builder.input("x", (2, 4, 6, 6), dtype), builder.input("w", (12, 4, 3, 3), dtype)
    bias, residual = builder.input("bias", (12,), dtype), builder.input("residual", (2, 12, 6, 6), dtype)
    scale = builder.input("scale", (1, 12, 1, 1), dtype)
    y = builder.conv(x, w, bias, pads=(1, 1, 1, 1))
    graph = builder.build(builder.relu(builder.add(builder.mul(y, scale), residual)))
    _check(graph, dtype, **SMALL)


def test_default_tiles_through_schedule_group():
    builder = GraphBuilder("conv_default")
    x, w = builder.input("x", (1, 8, 10, 10), DType.f32), builder.input("w", (16, 8, 3, 3), DType.f32)
    graph = builder.build(builder.conv(x, w, pads=(1, 1, 1, 1)))
    scheduled = schedule_group(_node(graph), "conv_default")
    assert (scheduled.template, scheduled.block, scheduled.grid) == ("conv.fma", (256, 1, 1), (2, 1, 1))
    rng = np.random.default_rng(0)
    inputs = [rng.uniform(-2, 2, v.type.shape).astype(np.float32) for v in graph.inputs]
    out = np.zeros((1, 16, 10, 10), np.float32)
    run_lockstep(scheduled.kernel, [*inputs, out])
    assert_close(out, ir.run(graph, inputs)[0], DType.f32, "default tiles")
    KERNELS["conv_default"] = (scheduled.kernel, scheduled.template)


def test_depthwise_and_3d_convolutions_are_left_to_the_generic_schedule():
    builder = GraphBuilder("depthwise")
    x, w = builder.input("x", (1, 4, 6, 6), DType.f32), builder.input("w", (4, 1, 3, 3), DType.f32)
    assert conv_template(_node(builder.build(builder.conv(x, w, groups=4))), "depthwise") is None
    builder = GraphBuilder("conv3d")
    x, w = builder.input("x", (1, 2, 4, 4, 4), DType.f32), builder.input("w", (4, 2, 3, 3, 3), DType.f32)
    assert conv_template(_node(builder.build(builder.conv(x, w))), "conv3d") is None


@requires_nvrtc
def test_every_conv_kernel_compiles_for_ampere_and_hopper_without_spills():
    """Every kernel above, and the default large tiles (128 x 128) of each dtype."""
    kernels = dict(KERNELS)
    if len(kernels) < 4:  # run alone: make some small-tile kernels first
        for dtype in FLOATS:
            test_conv_with_bias_batch_norm_relu_and_residual_epilogue(dtype)
        kernels = dict(KERNELS)
    for dtype in FLOATS:
        builder = GraphBuilder("large")
        x, w = builder.input("x", (2, 256, 16, 16), dtype), builder.input("w", (256, 256, 3, 3), dtype)
        graph = builder.build(builder.relu(builder.conv(x, w, builder.input("b", (256,), dtype), pads=(1, 1, 1, 1))))
        scheduled = schedule_group(_node(graph), f"conv_large_{dtype}")
        assert scheduled.template == _template(dtype) and scheduled.block == (256, 1, 1)
        kernels[scheduled.kernel.name] = (scheduled.kernel, scheduled.template)
    source = "\n".join(emit_kernel(kernel) for kernel, _ in kernels.values())
    for arch in ("sm_80", "sm_90"):
        resources = compile_cuda(source, arch, "conv_kernels").resources
        for name, (kernel, template) in kernels.items():
            report = resources[name]
            threads = kernel.body[0].body[0].extent
            shared = sum(b.size * b.dtype.itemsize for b in kernel.locals if b.scope.value == "shared")
            where = f"{name} ({template}) on {arch}: {report}"
            assert report.spill_stores == report.spill_loads == 0, f"spills in {where}"
            assert report.registers * threads <= REGISTERS_PER_SM, f"too many registers in {where}"
            assert report.shared_bytes == shared <= SHARED_BYTES_PER_BLOCK, where
            assert report.stack_bytes <= LOCAL_BYTES_PER_THREAD, where
