"""The convolution schedules (`backends.lowering.templates_conv`): conv 1d/2d/3d and conv_transpose
with strides, padding, dilation and groups (depthwise included), odd sizes, bias and epilogues,
f32 and bf16, through the kernel interpreter (tiny shapes, tiny tiles so that they have edges) and
through the CPU target, against the graph interpreter with a bound that grows with the reduction
length."""

from __future__ import annotations

import math

import numpy as np
import pytest

import compiler
import ir
from backends.lowering.templates_gemm import GemmTiles, override_tiles
from ir import DType, GraphBuilder
from ir.loop import For, LoopKind
from tests.backends.lowering.lowered import lower_graph, run_lowered

_RNG = np.random.default_rng(7)
_EPS = 2.0**-24  # f32 accumulation (bf16 accumulates in f32 too)
_STORAGE_ULP = {DType.f32: 0.0, DType.bf16: 2.0**-7}

CASES = {
    # id: (op, x shape, w shape, attrs)
    "1d-stride-pad": ("conv", (2, 3, 11), (4, 3, 3), {"strides": (2,), "pads": (1, 0)}),
    "2d-same": ("conv", (2, 4, 6, 5), (7, 4, 3, 3), {"pads": (1, 1, 1, 1)}),
    "2d-dilation-uneven-pads": ("conv", (1, 3, 7, 6), (5, 3, 3, 2), {"pads": (2, 1, 1, 0), "dilations": (2, 1)}),
    "2d-stride2": ("conv", (1, 3, 9, 8), (8, 3, 3, 3), {"strides": (2, 2), "pads": (1, 1, 1, 1)}),
    "2d-pointwise": ("conv", (1, 6, 5, 7), (9, 6, 1, 1), {}),
    "2d-groups": ("conv", (1, 6, 5, 5), (4, 3, 3, 3), {"groups": 2, "pads": (1, 1, 1, 1)}),
    "depthwise": ("conv", (2, 4, 7, 9), (4, 1, 3, 3), {"groups": 4, "pads": (1, 1, 1, 1)}),
    "depthwise-multiplier": (
        "conv",
        (1, 3, 9, 8),
        (6, 1, 3, 3),
        {"groups": 3, "strides": (2, 2), "pads": (0, 1, 1, 0), "dilations": (1, 2)},
    ),
    "3d": ("conv", (1, 2, 4, 5, 3), (3, 2, 2, 3, 1), {"pads": (1, 1, 0, 0, 1, 0), "strides": (1, 2, 1)}),
    "transpose-2x2-stride2": ("conv_transpose", (1, 4, 3, 5), (4, 3, 2, 2), {"strides": (2, 2)}),
    "transpose-groups-pads": (
        "conv_transpose",
        (1, 4, 4, 3),
        (4, 2, 3, 3),
        {"strides": (2, 2), "pads": (1, 1, 1, 1), "output_padding": (1, 0), "groups": 2},
    ),
    "transpose-upsampling-3d-groups": (
        "conv_transpose",
        (1, 4, 2, 3, 5),
        (4, 3, 2, 1, 3),
        {"strides": (2, 1, 3), "groups": 2},
    ),
    "transpose-1d-dilation": (
        "conv_transpose",
        (2, 3, 5),
        (3, 2, 3),
        {"strides": (3,), "dilations": (2,), "pads": (1, 2)},
    ),
}


def _graph(op: str, x_shape, w_shape, attrs, dtype: DType = DType.f32, bias: bool = True) -> tuple[ir.Graph, list]:
    builder = GraphBuilder(op)
    x = builder.input("x", x_shape, dtype)
    weight = _RNG.uniform(-1, 1, w_shape).astype(dtype.numpy)
    channels = w_shape[0] if op == "conv" else w_shape[1] * attrs.get("groups", 1)
    operands = [builder.constant(weight, "w")]
    if bias:
        operands.append(builder.constant(_RNG.uniform(-1, 1, channels).astype(dtype.numpy), "b"))
    y = builder.op(op, x, *operands, **attrs)
    return builder.build(y), [_RNG.uniform(-1, 1, x_shape).astype(dtype.numpy)]


def _depth(op: str, w_shape, attrs) -> int:
    """Products summed per output element."""
    channels = w_shape[1] if op == "conv" else w_shape[0] // attrs.get("groups", 1)
    return channels * math.prod(w_shape[2:])


def _assert_conv_close(got: np.ndarray, graph: ir.Graph, inputs, depth: int, extra: np.ndarray | float = 0) -> None:
    """|got - exact| <= 2 (K + 2) u (the sum of |terms|) + an ulp of the storage type (+ `extra`)."""
    dtype = graph.outputs[0].type.dtype
    (expected,) = ir.run(graph, inputs, oracle=True)
    assert got.shape == expected.shape and got.dtype == dtype.numpy
    magnitudes = _abs_graph_run(graph, inputs)
    bound = 2 * (depth + 2) * _EPS * magnitudes + _STORAGE_ULP[dtype] * np.abs(expected) + extra
    error = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    worst = np.unravel_index(np.argmax(error - bound), error.shape)
    assert (error <= bound + 1e-30).all(), f"at {worst}: {got[worst]} vs {expected[worst]} (bound {bound[worst]:.3g})"


def _abs_graph_run(graph: ir.Graph, inputs) -> np.ndarray:
    """The graph on |inputs| and |constants|, in float64: the sum of the magnitudes of the terms."""
    absolute = ir.Graph(graph.name, graph.inputs, graph.outputs, graph.nodes,
                        {k: np.abs(v) for k, v in graph.constants.items()})  # fmt: skip
    return np.abs(ir.run(absolute, [np.abs(a) for a in inputs], oracle=True)[0]).astype(np.float64)


@pytest.mark.parametrize("case", CASES)
def test_kernel_interpreter_matches_the_graph_interpreter(case):
    op, x_shape, w_shape, attrs = CASES[case]
    graph, inputs = _graph(op, x_shape, w_shape, attrs)
    with override_tiles(lambda shape: GemmTiles(mr=2, nr=16)):  # row and column edges on tiny shapes
        (got,) = run_lowered(graph, inputs)
    _assert_conv_close(got, graph, inputs, _depth(op, w_shape, attrs))


@pytest.mark.parametrize("dtype", [DType.f32, DType.bf16], ids=str)
@pytest.mark.parametrize("case", CASES)
def test_cpu_target_matches_the_graph_interpreter(case, dtype):
    op, x_shape, w_shape, attrs = CASES[case]
    graph, inputs = _graph(op, x_shape, w_shape, attrs, dtype, bias=case != "2d-same")
    (got,) = compiler.compile(graph, target="cpu").executor.run(inputs)
    _assert_conv_close(got, graph, inputs, _depth(op, w_shape, attrs))


@pytest.mark.parametrize(
    ("op", "x_shape", "w_shape", "attrs"),
    [
        ("conv", (1, 16, 20, 19), (24, 16, 3, 3), {"pads": (1, 1, 1, 1)}),  # full 6 x 64 tiles, contiguous taps
        ("conv", (1, 16, 21, 20), (20, 16, 3, 3), {"strides": (2, 2), "pads": (1, 1, 1, 1)}),
        ("conv", (1, 32, 18, 40), (32, 1, 3, 3), {"groups": 32, "pads": (1, 1, 1, 1)}),  # vector lanes + rest
        ("conv_transpose", (1, 16, 9, 10), (16, 8, 2, 2), {"strides": (2, 2)}),
    ],
    ids=["3x3", "3x3-stride2", "depthwise", "transpose"],
)
def test_cpu_target_on_vector_sized_shapes(op, x_shape, w_shape, attrs):
    graph, inputs = _graph(op, x_shape, w_shape, attrs)
    (got,) = compiler.compile(graph, target="cpu").executor.run(inputs)
    _assert_conv_close(got, graph, inputs, _depth(op, w_shape, attrs))


def test_epilogue_is_applied_at_write_back_in_one_kernel():
    """relu(conv + bias) + residual: one kernel, the conv's result never stored on its own."""
    builder = GraphBuilder("block")
    x = builder.input("x", (1, 8, 9, 11), DType.f32)
    residual = builder.input("r", (1, 12, 9, 11), DType.f32)
    weight = builder.constant(_RNG.uniform(-1, 1, (12, 8, 3, 3)).astype(np.float32), "w")
    bias = builder.constant(_RNG.uniform(-1, 1, 12).astype(np.float32), "b")
    y = builder.add(builder.relu(builder.conv(x, weight, bias, pads=(1, 1, 1, 1))), residual)
    graph = builder.build(y)
    inputs = [
        _RNG.uniform(-1, 1, (1, 8, 9, 11)).astype(np.float32),
        _RNG.uniform(-1, 1, (1, 12, 9, 11)).astype(np.float32),
    ]
    _, kernels = lower_graph(graph)
    assert len(kernels) == 1
    assert all(math.prod(buffer.shape) != 12 * 9 * 11 for buffer in kernels[0].locals)
    (got,) = compiler.compile(graph, target="cpu").executor.run(inputs)
    _assert_conv_close(got, graph, inputs, 8 * 9)


def test_depthwise_schedule_is_one_parallel_loop_vectorized_along_the_width():
    graph, _ = _graph("conv", (1, 8, 10, 32), (8, 1, 3, 3), {"groups": 8, "pads": (1, 1, 1, 1)})
    _, (kernel,) = lower_graph(graph)
    (loop,) = kernel.body
    assert isinstance(loop, For) and loop.kind is LoopKind.PARALLEL and loop.extent == 8
    kinds = []
    stack = list(loop.body)
    while stack:
        stmt = stack.pop()
        if isinstance(stmt, For):
            kinds.append((stmt.kind, stmt.extent))
            stack.extend(stmt.body)
    assert (LoopKind.VECTORIZED, 32) in kinds


def test_torch_block_with_folded_batch_norm_and_hardswish():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)
            self.bn = torch.nn.BatchNorm2d(8)
            self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.act = torch.nn.Hardswish()

        def forward(self, x):
            return self.act(self.dw(self.act(self.bn(self.conv(x))))) + x

    model = Block().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 8, 12, 17)
    fast = compiler.compile(model, (x,), target="cpu")
    with torch.no_grad():
        expected = model(x)
    np.testing.assert_allclose(fast(x).numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)
