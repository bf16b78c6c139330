"""The parallel loop's work split as LLVM sees it: a small parallel loop over unrolled inner loops
(ONNX's test_or_bcast3v1d: bool[3,4,5] | bool[5]) must not be vectorized as if its trip count
were unbounded, which cost seconds of LLVM time and a 14,000-line module for 60 elements, and
the split must stay exact for any worker count, more workers than iterations included."""

import numpy as np
import pytest

from ir.dtype import DType
from ir.loop import Binary, Buffer, For, Kernel, Load, LoopKind, Ref, Store, Var
from tests.backends.llvm.harness import assert_bit_identical, compile_kernels, run_both


def broadcast_or(rows: int) -> Kernel:
    """out[i, j, k] = x[i, j, k] or y[k] over bool[rows, 4, 5], rows split over workers."""
    x, y, out = (
        Buffer("x", DType.bool, (rows, 4, 5)),
        Buffer("y", DType.bool, (5,)),
        Buffer("out", DType.bool, (rows, 4, 5)),
    )
    i, j, k = Var("i"), Var("j"), Var("k")
    flat = Ref(i) * 20 + (Ref(j) * 5 + Ref(k))
    body = (Store(out, flat, Binary("or", Load(x, flat), Load(y, Ref(k)))),)
    loop = For(i, rows, (For(j, 4, (For(k, 5, body),)),), LoopKind.PARALLEL)
    return Kernel("broadcast_or", (x, y, out), (loop,), outputs=(2,))


def test_a_small_parallel_loop_compiles_to_small_code():
    module = compile_kernels([broadcast_or(3)])
    # Before the split's bounds were clamped to the extent: 64-wide vectors and ~14,000 lines.
    assert "<64 x" not in module.optimized_ir
    assert module.optimized_ir.count("\n") < 2000


@pytest.mark.parametrize("workers", [1, 2, 3, 5])
def test_the_split_covers_every_row_once_for_any_worker_count(workers):
    kernel = broadcast_or(3)
    rng = np.random.default_rng(workers)
    x, y = rng.random((3, 4, 5)) < 0.5, rng.random(5) < 0.5
    arrays = [x, y, np.zeros((3, 4, 5), np.bool_)]
    interpreted, compiled = run_both(compile_kernels([kernel]), kernel, arrays, workers)
    assert_bit_identical(compiled[2], interpreted[2], f"{workers} workers")
    assert_bit_identical(compiled[2], x | y, "numpy")
