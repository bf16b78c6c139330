"""The GPU schedule keeps a kernel's meaning: the kernel-IR interpreter runs GPU loops as plain
loops, so a scheduled kernel must give the original's results, bit for bit, on every kernel of
the model tests; and the schedule has the shape the CUDA launch expects."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import ir
from backends.cuda import gpu_schedule, launch_dims, schedule_group
from ir.dtype import DType
from ir.loop import Buffer, Const, For, If, Kernel, Load, LoopKind, Ref, Store, Var, run_kernel, run_lockstep
from tests.backends.cuda.kernels import model_kernels
from tests.backends.lowering.lowered import assert_close

# resnet_cnn is left out: its kernels spread over threads are convolutions that take the kernel
# interpreter about 90 s (twice over); the models below cover the same schedule (GEMMs with
# epilogues, elementwise chains, transposes). Kernels that run on one thread are the originals
# with parallel loops made serial, which the interpreter runs identically: only the kernels
# spread over threads are run.
MODELS = ["mlp", "transformer_encoder_layer", "gpt_decoder_block", "gpt_decoder_block_masked"]


def random_arrays(kernel: Kernel, seed: int = 0) -> list[np.ndarray]:
    """An array per parameter: normal floats, 0/1 integers (valid as indices), random bools."""
    generator = np.random.default_rng(seed)
    arrays = []
    for buffer in kernel.params:
        if buffer.dtype.is_float:
            values = generator.standard_normal(buffer.size)
        elif buffer.dtype == DType.bool:
            values = generator.random(buffer.size) < 0.5
        else:
            values = generator.integers(0, 2, buffer.size)
        arrays.append(values.astype(buffer.dtype.numpy).reshape(buffer.shape))
    return arrays


def assert_same_results(original: Kernel, scheduled: Kernel) -> None:
    expected, actual = random_arrays(original), random_arrays(original)
    run_kernel(original, expected)
    run_kernel(scheduled, actual)
    for buffer, e, a in zip(original.params, expected, actual):
        assert e.tobytes() == a.tobytes(), f"{original.name}: {buffer.name} differs after scheduling"


def _kinds(body) -> set[LoopKind]:
    found = set()
    for stmt in body:
        if isinstance(stmt, For):
            found |= {stmt.kind} | _kinds(stmt.body)
        elif isinstance(stmt, If):
            found |= _kinds(stmt.then) | _kinds(stmt.otherwise)
    return found


@pytest.mark.parametrize("name", MODELS)
def test_scheduled_model_kernels_compute_what_the_originals_compute(name):
    spread = 0
    for kernel in model_kernels(name):
        scheduled, (grid, block) = gpu_schedule(kernel, threads_per_block=64)
        assert LoopKind.PARALLEL not in _kinds(scheduled.body), "parallel loops run on one GPU thread: serial"
        assert grid[1:] == block[1:] == (1, 1)
        if block == (1, 1, 1):  # one thread runs the body as it was (parallel loops made serial)
            assert len(scheduled.body) == len(kernel.body)
            continue
        spread += 1
        assert_same_results(kernel, scheduled)
    assert spread, f"no kernel of {name} was spread over threads"


def _parallel_copy(extent: int) -> Kernel:
    source, target = Buffer("x", DType.f32, (extent,)), Buffer("y", DType.f32, (extent,))
    i = Var("i")
    body = (For(i, extent, (Store(target, Ref(i), Load(source, Ref(i)) * Const(2.0, DType.f32)),), LoopKind.PARALLEL),)
    return Kernel("copy", (source, target), body, outputs=(1,))


@pytest.mark.parametrize(
    ("extent", "threads", "grid", "block", "guarded"),
    [
        (100, 32, 4, 32, True),  # 4 blocks of 32: the last one has 4 threads with work
        (64, 32, 2, 32, False),  # divides evenly: no guard
        (5, 256, 1, 32, True),  # a short loop: one block of one warp, not 256 threads
        (1000, 256, 4, 256, True),
    ],
)
def test_a_parallel_loop_becomes_blocks_of_threads(extent, threads, grid, block, guarded):
    kernel = _parallel_copy(extent)
    scheduled, dims = gpu_schedule(kernel, threads_per_block=threads)
    assert dims == ((grid, 1, 1), (block, 1, 1)) == launch_dims(scheduled)
    (outer,) = scheduled.body
    assert (outer.kind, outer.extent) == (LoopKind.BLOCK_X, grid)
    (inner,) = outer.body
    assert (inner.kind, inner.extent) == (LoopKind.THREAD_X, block)
    assert isinstance(inner.body[-1], If) == guarded
    assert_same_results(kernel, scheduled)


def test_a_kernel_without_one_parallel_loop_runs_on_one_thread():
    source, target = Buffer("x", DType.f32, (8,)), Buffer("y", DType.f32, (8,))
    i, j = Var("i"), Var("j")
    nested = For(j, 8, (Store(target, Ref(j), Load(source, Ref(j))),), LoopKind.PARALLEL)
    kernel = Kernel(
        "serial", (source, target), (For(i, 1, (nested,)), Store(target, Const(0, DType.i64), Const(1.0, DType.f32)))
    )
    scheduled, dims = gpu_schedule(kernel)
    assert dims == ((1, 1, 1), (1, 1, 1))
    assert _kinds(scheduled.body) == {LoopKind.SERIAL}
    assert_same_results(kernel, scheduled)


@pytest.mark.parametrize("threads", [0, 48, 2048])
def test_threads_per_block_must_be_whole_warps_within_the_limit(threads):
    with pytest.raises(ValueError, match="multiple of 32"):
        gpu_schedule(_parallel_copy(4), threads_per_block=threads)


# -- every model-test group gets a real GPU schedule --------------------------------------------


@functools.cache
def _cuda_groups(name: str, precision: str) -> tuple:
    """The fused nodes of model `name` through the CUDA pipeline at `precision`."""
    from compiler.frontends import import_model
    from passes import PassManager
    from passes.pipelines import default_pipeline
    from tests.models.models import MODELS as ALL_MODELS

    module, inputs = ALL_MODELS[name]()
    graph = PassManager(default_pipeline("cuda", 2, precision=precision)).run(import_model(module, inputs).graph)
    return tuple(node for node in graph.nodes if node.op == "fused")


_MOVED = {"reshape", "transpose", "split", "squeeze", "unsqueeze", "flatten", "slice"}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", ["mlp", "resnet_cnn", *MODELS[1:]])
def test_no_model_test_group_runs_on_one_thread(name, precision):
    """Every group of the model tests gets a template or is spread over threads. A GEMM whose
    outputs are its product moved (split into Q/K/V, transposed back before a residual) writes
    them where each element lands, and every convolution is an implicit GEMM: both match the
    graph interpreter in the lockstep interpreter."""
    moved = convolutions = 0
    for i, node in enumerate(_cuda_groups(name, precision)):
        scheduled = schedule_group(node, f"{name}_{i}")
        assert scheduled.template != "single-thread", f"{name} {precision} group {i}: {node.attrs['body'].name}"
        body = node.attrs["body"]
        ops = {n.op for n in body.nodes}
        if not scheduled.template.startswith("conv.") and not (scheduled.template.startswith("gemm.") and _MOVED & ops):
            continue
        moved += bool({"transpose", "split"} & ops)  # the product moved: scattered
        convolutions += scheduled.template.startswith("conv.")
        rng = np.random.default_rng(i)
        inputs = [rng.uniform(-1, 1, v.type.shape).astype(v.type.dtype.numpy) for v in body.inputs]
        outputs = [np.full(v.type.shape, 123).astype(v.type.dtype.numpy) for v in body.outputs]
        run_lockstep(scheduled.kernel, [*inputs, *outputs])
        for value, actual, expected in zip(body.outputs, outputs, ir.run(body, inputs)):
            assert_close(actual, expected, value.type.dtype, f"{name} {precision} group {i}")
    assert moved == {"transformer_encoder_layer": 2, "gpt_decoder_block": 1, "gpt_decoder_block_masked": 1}.get(name, 0)
    assert convolutions == (6 if name == "resnet_cnn" else 0)  # every conv (none is depthwise) as an implicit GEMM


@pytest.mark.parametrize("dtype", [DType.f32, DType.bf16], ids=str)
def test_a_gemm_writes_its_product_split_sliced_and_transposed(dtype):
    """Edge tiles (small tiles on 20 x 30) and the guards of split and slice pieces."""
    from backends.cuda.templates_gpu_gemm import FmaTiles, gemm_template
    from backends.cuda.templates_gpu_mma import MmaTiles
    from ir import GraphBuilder

    builder = GraphBuilder("moved")
    x, w = builder.input("x", (4, 5, 12), dtype), builder.input("w", (12, 30), dtype)
    residual = builder.input("r", (5, 4, 10), dtype)
    y = builder.reshape(builder.matmul(x, w), shape=(4, 5, 3, 10))
    q, k, v = builder.split(y, axis=2, sizes=(1, 1, 1))
    first = builder.add(builder.transpose(builder.squeeze(q, axes=(2,)), perm=(1, 0, 2)), residual)
    second = builder.relu(builder.slice(builder.squeeze(k, axes=(2,)), starts=(0,), ends=(7,), axes=(2,)))
    rest = builder.slice(builder.squeeze(v, axes=(2,)), starts=(7,), ends=(10,), axes=(2,))
    graph = builder.build(first, second, rest)  # one group, as fusion would not make it
    outer = GraphBuilder("outer")
    node = outer.op("fused", *(outer.input(v.name, v.type.shape, dtype) for v in graph.inputs), body=graph)
    node = outer.build(*node).nodes[-1]
    made = gemm_template(node, "moved", fma_tiles=FmaTiles(32, 16, 8, 2, 2), mma_tiles=MmaTiles(32, 16, 16, 2, 2))
    assert made is not None and made[1] == ("gemm.fma" if dtype == DType.f32 else "gemm.mma")
    rng = np.random.default_rng(0)
    inputs = [rng.uniform(-1, 1, v.type.shape).astype(v.type.dtype.numpy) for v in graph.inputs]
    outputs = [np.full(v.type.shape, 123).astype(v.type.dtype.numpy) for v in graph.outputs]
    run_lockstep(made[0], [*inputs, *outputs])
    for value, actual, expected in zip(graph.outputs, outputs, ir.run(graph, inputs)):
        assert_close(actual, expected, value.type.dtype, "moved")


def test_a_product_read_at_two_positions_is_not_scattered():
    """y + transpose(y): each output element reads the product twice, at different positions;
    no thread holds both, so the GEMM template declines."""
    from backends.cuda.templates_gpu_gemm import gemm_template
    from ir import GraphBuilder
    from passes import make_pass

    builder = GraphBuilder("twice")
    x, w = builder.input("x", (8, 8), DType.f32), builder.input("w", (8, 8), DType.f32)
    y = builder.matmul(x, w)
    graph = builder.build(builder.add(y, builder.transpose(y, perm=(1, 0))))
    (node,) = [n for n in make_pass("fuse").run(graph).nodes if n.op == "fused"]
    assert gemm_template(node, "twice") is None
