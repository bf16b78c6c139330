"""The GPU schedule keeps a kernel's meaning: the kernel-IR interpreter runs GPU loops as plain
loops, so a scheduled kernel must give the original's results, bit for bit, on every kernel of
the model tests; and the schedule has the shape the CUDA launch expects."""

from __future__ import annotations

import numpy as np
import pytest

from backends.cuda import gpu_schedule, launch_dims
from ir.dtype import DType
from ir.loop import Buffer, Const, For, If, Kernel, Load, LoopKind, Ref, Store, Var, run_kernel
from tests.backends.cuda.kernels import model_kernels

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
