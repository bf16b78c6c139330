"""Running kernels compiled by the LLVM backend from Python through the runtime's ABI, beside the
kernel-IR interpreter that defines what they must compute."""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence

import numpy as np

from backends.llvm import CompiledModule, compile_module, emit_module
from ir.loop import Kernel, run_kernel

KERNEL_SIGNATURE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)


def compile_kernels(kernels: Sequence[Kernel], name: str = "test") -> CompiledModule:
    return compile_module(emit_module(kernels, name))


def call(module: CompiledModule, kernel: Kernel, arrays: Sequence[np.ndarray], workers: int = 1) -> None:
    """Call `kernel` once per worker, from `workers` threads at once, as the runtime does."""
    for buffer, array in zip(kernel.params, arrays, strict=True):
        assert array.dtype == buffer.dtype.numpy and array.size == buffer.size and array.flags.c_contiguous
    function = KERNEL_SIGNATURE(module.address(kernel.name))
    args = (ctypes.c_void_p * len(arrays))(*(array.ctypes.data for array in arrays))
    if workers == 1:
        function(args, 0, 1)
        return
    threads = [threading.Thread(target=function, args=(args, w, workers)) for w in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def run_both(
    module: CompiledModule, kernel: Kernel, arrays: Sequence[np.ndarray], workers: int = 1
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(interpreted, compiled) results of `kernel` on copies of `arrays`."""
    interpreted = [a.copy() for a in arrays]
    compiled = [a.copy() for a in arrays]
    run_kernel(kernel, interpreted)
    call(module, kernel, compiled, workers)
    return interpreted, compiled


def bits(array: np.ndarray) -> np.ndarray:
    return array.view(f"u{array.dtype.itemsize}")


def assert_bit_identical(actual: np.ndarray, expected: np.ndarray, what: str = "") -> None:
    assert actual.dtype == expected.dtype, what
    mismatch = np.flatnonzero(bits(actual).reshape(-1) != bits(expected).reshape(-1))
    assert mismatch.size == 0, (
        f"{what}: {mismatch.size} of {actual.size} differ, first at {mismatch[:5]}: "
        f"got {actual.reshape(-1)[mismatch[:5]]}, expected {expected.reshape(-1)[mismatch[:5]]}"
    )


def ulp_distance(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Distance in units in the last place between same-dtype floats (0 where both are NaN; a
    large number where only one is)."""
    wide = {2: np.int16, 4: np.int32, 8: np.int64}[actual.dtype.itemsize]

    def ordered(x: np.ndarray) -> np.ndarray:  # sign-magnitude bits to a monotone integer line
        signed = x.view(wide).astype(np.int64)
        return np.where(signed < 0, np.iinfo(wide).min - signed, signed)

    distance = np.abs(ordered(actual.reshape(-1)) - ordered(expected.reshape(-1)))
    a_nan = np.isnan(actual.reshape(-1).astype(np.float64))
    e_nan = np.isnan(expected.reshape(-1).astype(np.float64))
    return np.where(a_nan & e_nan, 0, np.where(a_nan | e_nan, 1 << 40, distance))
