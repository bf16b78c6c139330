"""Each kernel of a CUDA program checked in the emulator against the graph interpreter (`irdump --emulate`).

The program runs through the real `CudaExecutor` on an `EmulatorDriver` (runtime/cuda_emulator.py)
in the chosen mode, on random inputs. Before each launch the interpreter's values of the kernel's
inputs are written into its buffers, so a kernel's error is its own, not its predecessors', and a
kernel that fails (a race, an out-of-bounds access, a deadlock) does not stop the others: its
outputs are replaced by the interpreter's and the run goes on. Kernels not chosen are not
emulated; the interpreter's outputs stand in for them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import ir
from ir import Graph, Node, Value
from runtime import Program
from runtime.cuda import CudaExecutor
from runtime.cuda_emulator import EmulatedKernelError, EmulatorDriver

TOLERANCE = {"float16": 2e-2, "bfloat16": 2e-2, "float32": 1e-4, "float64": 1e-9}
"""Per output dtype, relative and absolute (`np.allclose`'s rule); other dtypes must match exactly.
f32's 1e-4 is host libm against numpy (a few ulps) with room for a reordered sum."""


@dataclass(frozen=True)
class KernelCheck:
    """How one kernel fared."""

    kernel: str
    status: str
    """"OK", "MISMATCH" (outside `TOLERANCE`) or the emulator's verdict: "RACE", "BOUNDS", "DEADLOCK", "ERROR"."""
    max_error: float | None
    """Largest |emulated - interpreter| over the kernel's outputs; None when it did not finish."""
    seconds: float
    message: str = ""
    """The emulator's report (with the source lines) when it failed."""


def random_inputs(graph: Graph, seed: int = 0) -> list[np.ndarray]:
    """Inputs for `graph`: floats from a standard normal, integers in [0, 4), booleans at random."""
    rng = np.random.default_rng(seed)
    arrays = []
    for value in graph.inputs:
        dtype, shape = value.type.dtype.numpy, value.type.shape
        if dtype == np.bool_:
            arrays.append(rng.integers(0, 2, shape).astype(np.bool_))
        elif np.issubdtype(dtype, np.integer):
            arrays.append(rng.integers(0, 4, shape).astype(dtype))
        else:
            arrays.append(rng.standard_normal(shape).astype(dtype))
    return arrays


def check_kernels(
    graph: Graph, program: Program, mode: str = "plain", kernels: Sequence[str] | None = None, seed: int = 0
) -> list[KernelCheck]:
    """Every kernel of `program` (the CUDA program of the fused `graph`), or those named in
    `kernels`, run in the emulator in `mode` and compared with the interpreter; in launch order."""
    fused = [node for node in graph.nodes if node.op == "fused"]
    if len(fused) != len(program.launches):
        raise ValueError(f"@{graph.name} has {len(fused)} fused nodes for {len(program.launches)} launches")
    known = [launch.kernel for launch in program.launches]
    unknown = sorted(set(kernels or ()) - set(known))
    if unknown:
        raise ValueError(f"no kernel {', '.join(unknown)}; the program has {', '.join(known)}")
    inputs = random_inputs(graph, seed)
    reference = ir.run_all(graph, inputs)
    driver = _CheckingDriver(program, mode, dict(zip(known, fused)), reference, set(kernels or known))
    CudaExecutor(program, driver=driver).run(inputs)
    return driver.checks


class _CheckingDriver(EmulatorDriver):
    """The emulator, with each launch's inputs set to the interpreter's values and its outputs compared."""

    def __init__(self, program: Program, mode: str, nodes: dict[str, Node], reference: dict[Value, np.ndarray],
                 chosen: set[str]) -> None:  # fmt: skip
        super().__init__(program, mode)
        self.nodes, self.reference, self.chosen = nodes, reference, chosen
        self.checks: list[KernelCheck] = []

    def launch(self, function: Any, grid: tuple, block: tuple, shared_bytes: int, pointers: Sequence[int],
               stream: Any = None) -> None:  # fmt: skip
        name = function.signature.name
        node = self.nodes[name]
        values = (*node.inputs, *node.outputs)
        for value, pointer in zip(values[: len(node.inputs)], pointers, strict=False):
            self._put(value, pointer)
        if name not in self.chosen:
            for value, pointer in zip(node.outputs, pointers[len(node.inputs) :], strict=True):
                self._put(value, pointer)
            return
        start = time.perf_counter()
        try:
            super().launch(function, grid, block, shared_bytes, pointers, stream)
        except EmulatedKernelError as error:
            status = type(error).__name__.removeprefix("Kernel").removesuffix("Error").upper()
            status = status if status in ("RACE", "BOUNDS", "DEADLOCK") else "ERROR"
            self.checks.append(KernelCheck(name, status, None, time.perf_counter() - start, str(error)))
            for value, pointer in zip(node.outputs, pointers[len(node.inputs) :], strict=True):
                self._put(value, pointer)  # the next kernels get the right inputs
            return
        seconds = time.perf_counter() - start
        error, close = 0.0, True
        for value, pointer in zip(node.outputs, pointers[len(node.inputs) :], strict=True):
            wanted = np.asarray(self.reference[value])
            got = np.empty(value.type.shape, value.type.dtype.numpy)
            self.download(got, pointer)
            got64, wanted64 = got.astype(np.float64), wanted.astype(np.float64)
            with np.errstate(invalid="ignore"):
                difference = np.abs(got64 - wanted64)
            difference[(got64 == wanted64) | (np.isnan(got64) & np.isnan(wanted64))] = 0  # equal infinities, NaNs
            difference[np.isnan(difference)] = np.inf  # a NaN on one side only
            error = max(error, float(difference.max(initial=0.0)))
            tolerance = TOLERANCE.get(got.dtype.name, 0.0)
            close &= bool(np.allclose(got64, wanted64, rtol=tolerance, atol=tolerance, equal_nan=True))
        self.checks.append(KernelCheck(name, "OK" if close else "MISMATCH", error, seconds))

    def _put(self, value: Value, pointer: int) -> None:
        array = np.ascontiguousarray(np.asarray(self.reference[value]), value.type.dtype.numpy)
        if array.nbytes:
            self.upload(pointer, array)
