"""The GPU templates (`backends.cuda.templates_gpu`, through `schedule_group`) run in the lockstep
interpreter (a block's threads together: shuffles, shared memory, barriers, race checking) and
match the graph interpreter; every kernel they make compiles with NVRTC for sm_80 and sm_90 with
a clean ptxas report.

Tolerance (`assert_close` of the lowering tests): f32 within 1e-5 relative plus 1e-5 of the
output's largest magnitude; f16/bf16 within two units in the last place. A row's sum is combined
in another order than the interpreter's (per-thread strided sums, then a tree of shuffles), so
results may differ by rounding; max and min are exact."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

import ir
from backends.cuda import GpuKernel, compile_cuda, emit_kernel, schedule_group
from backends.lowering.group import lower_group
from ir import DType, Graph, GraphBuilder
from ir.loop import Barrier, For, If, LoopKind, RaceError, run_kernel, run_lockstep
from passes import make_pass
from tests.backends.cuda.kernels import requires_nvrtc
from tests.backends.cuda.test_nvrtc import LOCAL_BYTES_PER_THREAD, REGISTERS_PER_SM, SHARED_BYTES_PER_BLOCK
from tests.backends.lowering.lowered import assert_close
from tests.passes.test_fusion_int8 import dynamic_quantize_linear

FLOATS = [DType.f32, DType.f16, DType.bf16]
LENGTHS = [1, 31, 33, 1000]
COMPILED: dict[str, GpuKernel] = {}
"""Every templated kernel the tests ran, by name: the NVRTC test compiles them all."""


def _inputs(graph: Graph, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-3, 3, v.type.shape).astype(v.type.dtype.numpy) for v in graph.inputs]


def _check(graph: Graph, template: str, **options) -> GpuKernel:
    """Fuse `graph` into one group, schedule it, run it in lockstep (races checked) and compare
    with the graph interpreter."""
    fused = make_pass("fuse").run(graph)
    (node,) = [n for n in fused.nodes if n.op == "fused"]
    name = f"{graph.name}_{len(COMPILED)}"
    scheduled = schedule_group(node, name, **options)
    assert scheduled.template == template, ir.print_graph(node.attrs["body"])
    inputs = _inputs(graph)
    outputs = [np.full(v.type.shape, 123).astype(v.type.dtype.numpy) for v in graph.outputs]
    run_lockstep(scheduled.kernel, [*inputs, *outputs])
    for value, actual, expected in zip(graph.outputs, outputs, ir.run(graph, inputs)):
        assert_close(actual, expected, value.type.dtype, f"{name} {options}")
    COMPILED[name] = scheduled
    return scheduled


def _graph(name: str, shape: tuple[int, ...], dtype: DType, build) -> Graph:
    builder = GraphBuilder(name)
    x = builder.input("x", shape, dtype)
    return builder.build(build(builder, x))


# -- rows ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("length", LENGTHS)
def test_softmax_rows_of_every_length(length, dtype):
    graph = _graph("softmax", (5, length), dtype, lambda b, x: b.softmax(x, axis=-1))
    scheduled = _check(graph, "rows.softmax")
    width = min(1 << max(length - 1, 0).bit_length(), 32)
    assert scheduled.block[0] % 32 == 0 and scheduled.block[0] * scheduled.grid[0] >= 5 * width


@pytest.mark.parametrize("threads_per_row", [64, 256])
@pytest.mark.parametrize("length", [33, 1000])
def test_log_softmax_with_a_block_per_row_reduces_through_shared_memory(length, threads_per_row):
    graph = _graph("log_softmax", (3, length), DType.f32, lambda b, x: b.log_softmax(x, axis=-1))
    scheduled = _check(graph, "rows.log_softmax", threads_per_row=threads_per_row)
    assert (scheduled.grid, scheduled.block) == ((3, 1, 1), (threads_per_row, 1, 1))
    assert scheduled.shared_bytes == 2 * 4 * threads_per_row // 32  # a slot per warp, per reduction


def _layer_norm(shape: tuple[int, ...], axis: int, dtype: DType, op: str = "layer_norm", bias: bool = True) -> Graph:
    builder = GraphBuilder(op)
    x = builder.input("x", shape, dtype)
    trailing = shape[axis % len(shape) :]
    affine = [builder.input("weight", trailing, dtype)] + ([builder.input("bias", trailing, dtype)] if bias else [])
    normed = builder.op(op, x, *affine, axis=axis, epsilon=1e-5)
    return builder.build(builder.gelu(normed, approximate="tanh"))  # a pointwise epilogue in the group


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize(
    ("shape", "axis", "threads_per_row"), [((7, 31), -1, None), ((2, 3, 33), -1, None), ((3, 5, 7), -2, None),
                                           ((3, 1000), -1, 128)],
)  # fmt: skip
def test_layer_norm_with_its_affine_and_pointwise_epilogue(shape, axis, threads_per_row, dtype):
    _check(_layer_norm(shape, axis, dtype), "rows.layer_norm", threads_per_row=threads_per_row)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize(("shape", "threads_per_row"), [((9, 1), None), ((5, 33), None), ((2, 1000), 256)])
def test_rms_norm(shape, threads_per_row, dtype):
    graph = _layer_norm(shape, -1, dtype, op="rms_norm", bias=False)
    _check(graph, "rows.rms_norm", threads_per_row=threads_per_row)


@pytest.mark.parametrize("dtype", [DType.f32, DType.bf16], ids=str)
@pytest.mark.parametrize("op", ["sum", "mean", "max", "min"])
@pytest.mark.parametrize(("shape", "axes", "keepdims", "threads_per_row"), [
    ((7, 1), (-1,), False, None), ((3, 33), (1,), True, None), ((2, 3, 4, 5), (2, 3), False, None),
    ((5, 1000), (-1,), False, None), ((3, 100), (-1,), True, 64), ((37,), (), False, None),
])  # fmt: skip
def test_row_reductions(op, shape, axes, keepdims, threads_per_row, dtype):
    graph = _graph(op, shape, dtype, lambda b, x: b.op(op, x, axes=axes, keepdims=keepdims))
    _check(graph, f"rows.{op}", threads_per_row=threads_per_row)


@pytest.mark.parametrize(("dtype", "axes"), [(DType.f32, (0,)), (DType.i8, (1,))], ids=["leading-axis", "i8"])
def test_a_reduction_over_a_leading_axis_or_of_bytes_falls_back(dtype, axes):
    """Shuffles carry 32- and 64-bit values only, and a row must be contiguous."""
    graph = _graph("sum", (4, 6), dtype, lambda b, x: b.op("sum", x, axes=axes, keepdims=False))
    (node,) = [n for n in make_pass("fuse").run(graph).nodes if n.op == "fused"]
    assert schedule_group(node, "fallback").template == "spread"


def _row_quantize(shape: tuple[int, ...]) -> Graph:
    """Dynamic int8's per-row quantization as `passes.quantize` makes it: s = max|x| / 127 over the
    last axis, q = quantize_linear(x, s, 0); both outputs (the GEMM's epilogue reads s)."""
    builder = GraphBuilder(f"row_quantize_{len(shape)}")
    x = builder.input("x", shape, DType.f32)
    peak = builder.max(builder.abs(x), axes=(len(shape) - 1,), keepdims=True)
    scale = builder.div(peak, builder.constant(np.float32(127), "int8_max"))
    q = builder.quantize_linear(x, scale, builder.constant(np.int8(0), "zero_i8"))
    return builder.build(scale, q)


@pytest.mark.parametrize(("shape", "threads_per_row"), [
    ((4, 64), None), ((2, 3, 33), None), ((5, 1), None), ((3, 1000), None), ((2, 100), 64),
])  # fmt: skip
def test_dynamic_int8_row_quantization_takes_the_row_template(shape, threads_per_row):
    """The reduction's result read broadcast along its row by a full-size output: every lane holds
    it after the shuffles, so each writes its own elements (one block or warp per row, not one
    thread for the whole group). max, the division and the rounding are exact: bit for bit."""
    graph = _row_quantize(shape)
    scheduled = _check(graph, "rows.max", threads_per_row=threads_per_row)
    assert scheduled.grid[0] * scheduled.block[0] > 1
    inputs = _inputs(graph, seed=3)
    outputs = [np.zeros(v.type.shape, v.type.dtype.numpy) for v in graph.outputs]
    run_lockstep(scheduled.kernel, [*inputs, *outputs])
    for actual, expected in zip(outputs, ir.run(graph, inputs), strict=True):
        np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize(("shape", "axes", "threads_per_row"), [
    ((4, 32), (), None), ((3, 40, 50), (), None), ((3, 1000), (1,), 64), ((5, 7), (1,), None),
])  # fmt: skip
def test_dynamic_quantize_linear_is_one_row_kernel_with_min_and_max_side_by_side(shape, axes, threads_per_row):
    """Fusion's sibling reductions (min and max of one value) as one row kernel: both reduced per
    row, the scale and zero point written once per row, q by every lane; bit-exact."""
    graph = dynamic_quantize_linear(shape, axes)
    scheduled = _check(graph, "rows.min_max", threads_per_row=threads_per_row)
    inputs = _inputs(graph, seed=5)
    outputs = [np.zeros(v.type.shape, v.type.dtype.numpy) for v in graph.outputs]
    run_lockstep(scheduled.kernel, [*inputs, *outputs])
    for actual, expected in zip(outputs, ir.run(graph, inputs), strict=True):
        np.testing.assert_array_equal(actual, expected)


def test_a_full_size_output_reading_another_row_falls_back():
    """An output that reads the row's result at another row (here through a transpose) is not what
    the thread holds: the group keeps the generic schedule."""
    builder = GraphBuilder("other_row")
    x = builder.input("x", (4, 4), DType.f32)
    peak = builder.max(x, axes=(1,), keepdims=True)
    graph = builder.build(builder.add(x, builder.transpose(builder.expand(peak, shape=(4, 4)), perm=(1, 0))))
    (node,) = [n for n in make_pass("fuse").run(graph).nodes if n.op == "fused"]
    scheduled = schedule_group(node, "other_row")
    assert not scheduled.template.startswith("rows."), scheduled.template
    outputs = [np.zeros((4, 4), np.float32)]
    inputs = _inputs(graph)
    run_lockstep(scheduled.kernel, [*inputs, *outputs])
    np.testing.assert_array_equal(outputs[0], ir.run(graph, inputs)[0])


def test_removing_the_barrier_of_a_block_reduction_is_a_race():
    graph = _graph("softmax", (2, 70), DType.f32, lambda b, x: b.softmax(x, axis=-1))
    scheduled = _check(graph, "rows.softmax", threads_per_row=64)
    kernel = scheduled.kernel
    broken = dataclasses.replace(kernel, body=_without_first_barrier(kernel.body))
    x, out = _inputs(graph)[0], np.zeros((2, 70), np.float32)
    with pytest.raises(RaceError, match=r"data race on peak_warps\d*\[\d\] \(shared\)"):
        run_lockstep(broken, [x, out])


def _without_first_barrier(body):
    found = []

    def strip(statements):
        kept = []
        for stmt in statements:
            if isinstance(stmt, Barrier) and not found:
                found.append(stmt)
                continue
            if isinstance(stmt, For):
                stmt = dataclasses.replace(stmt, body=strip(stmt.body))
            kept.append(stmt)
        return tuple(kept)

    stripped = strip(body)
    assert found, "the kernel has no barrier"
    return stripped


# -- pointwise -----------------------------------------------------------------------------------


@pytest.mark.parametrize("max_blocks", [4096, 2])
def test_pointwise_one_element_per_thread_with_a_grid_stride(max_blocks):
    builder = GraphBuilder("pointwise")
    x = builder.input("x", (3, 70, 5), DType.f32)
    y = builder.cast(builder.transpose(builder.tanh(x), perm=(2, 0, 1)), dtype=DType.bf16)
    scheduled = _check(builder.build(y), "pointwise", max_blocks=max_blocks)
    strided = any(isinstance(s, For) and s.kind is LoopKind.SERIAL for s in _walk(scheduled.kernel.body))
    assert scheduled.grid[0] <= max_blocks and strided == (max_blocks == 2)


def _walk(body):
    for stmt in body:
        yield stmt
        if isinstance(stmt, For):
            yield from _walk(stmt.body)
        elif isinstance(stmt, If):
            yield from _walk(stmt.then)
            yield from _walk(stmt.otherwise)


# -- the model tests' groups ---------------------------------------------------------------------

MODELS = ["mlp", "resnet_cnn", "transformer_encoder_layer", "gpt_decoder_block", "gpt_decoder_block_masked"]


@functools.cache
def model_groups(name: str, precision: str) -> tuple:
    """The `fused` nodes of model `name` (tests/models/models.py), through the reference pipeline."""
    from compiler.frontends import import_model
    from passes import PassManager
    from passes.pipelines import default_pipeline
    from tests.models.models import MODELS as BUILDERS

    module, inputs = BUILDERS[name]()
    graph = PassManager(default_pipeline("reference", 2, precision=precision)).run(import_model(module, inputs).graph)
    return tuple(node for node in graph.nodes if node.op == "fused")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", MODELS)
def test_templated_model_groups_compute_what_their_cpu_kernels_compute(name, precision):
    """Each group a template takes runs in lockstep and matches its CPU lowering in the serial
    interpreter; the norms take a row template, and fewer kernels run on one thread."""
    templates = []
    for i, node in enumerate(model_groups(name, precision)):
        scheduled = schedule_group(node, f"{name}_{precision}_{i}")
        templates.append(scheduled.template)
        if scheduled.template == "spread" and name == "mlp":  # no thread talks to another: lockstep is serial
            expected, actual = ([np.ones(b.shape, b.dtype.numpy) for b in scheduled.kernel.params] for _ in "ea")
            run_kernel(scheduled.kernel, expected)
            run_lockstep(scheduled.kernel, actual)
            assert all(e.tobytes() == a.tobytes() for e, a in zip(expected, actual))
        if scheduled.template in ("spread", "single-thread"):
            continue
        COMPILED[scheduled.kernel.name] = scheduled
        reference = lower_group(node, scheduled.kernel.name)
        rng = np.random.default_rng(i)
        inputs = [rng.standard_normal(b.shape).astype(b.dtype.numpy) for b in reference.params[: len(node.inputs)]]
        expected = [np.zeros(v.type.shape, v.type.dtype.numpy) for v in node.outputs]
        actual = [np.zeros(v.type.shape, v.type.dtype.numpy) for v in node.outputs]
        run_kernel(reference, [*inputs, *expected])
        run_lockstep(scheduled.kernel, [*inputs, *actual])
        for value, a, e in zip(node.outputs, actual, expected):
            assert_close(a, e, value.type.dtype, f"{scheduled.kernel.name} ({scheduled.template})")
    rows = sum(any(_has(node, op) for op in ("layer_norm", "mean")) for node in model_groups(name, precision))
    assert sum(t.startswith("rows.") for t in templates) == rows
    heavy = ("gemm", "matmul", "scaled_dot_product_attention")  # the GEMM and attention templates are to come
    for node, template in zip(model_groups(name, precision), templates):
        assert template != "single-thread" or any(_has(node, op) for op in heavy), ir.print_graph(node.attrs["body"])


def _has(node, op: str) -> bool:
    return any(n.op == op for n in node.attrs["body"].nodes)


# -- NVRTC ---------------------------------------------------------------------------------------


@requires_nvrtc
def test_every_templated_kernel_compiles_for_ampere_and_hopper_within_limits():
    """Runs after the tests above (file order) and compiles what they scheduled; on its own it
    schedules the models' groups first."""
    if not any(k.startswith("mlp_") for k in COMPILED):
        for name in MODELS:
            test_templated_model_groups_compute_what_their_cpu_kernels_compute(name, "fp32")
    assert any(s.template.startswith("rows.") for s in COMPILED.values())
    distinct = {}  # one kernel per template, launch shape and dtypes: the rest differ in constants only
    for name, s in COMPILED.items():
        dtypes = frozenset(b.dtype for b in s.kernel.params)
        distinct.setdefault((s.template, s.block, s.shared_bytes, dtypes), name)
    for name in distinct.values():
        scheduled = COMPILED[name]
        source = emit_kernel(scheduled.kernel)
        assert "__shfl" not in source and "asm" not in source, "generated code calls the prelude, never raw intrinsics"
        threads = scheduled.block[0] * scheduled.block[1] * scheduled.block[2]
        for arch in ("sm_80", "sm_90"):
            report = compile_cuda(source, arch, name).resources[name]
            where = f"{name} ({scheduled.template}) on {arch}: {report}"
            assert report.spill_stores == report.spill_loads == 0, f"spills in {where}"
            assert report.registers * threads <= REGISTERS_PER_SM, f"too many registers in {where}"
            assert report.shared_bytes == scheduled.shared_bytes <= SHARED_BYTES_PER_BLOCK, where
            assert report.stack_bytes <= LOCAL_BYTES_PER_THREAD, where
