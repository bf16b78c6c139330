"""A run's arrays, cheaply: the checks of inputs against a program's buffers, the fresh outputs,
and their data addresses, as the CPU executor's per-call path needs them.

On the model tests' shapes a whole run of the kernels takes 1-10 µs, so the Python around it
counts: `ndarray.ctypes.data` makes a helper object (~0.8 µs an array), `Program.checked_inputs`
rebuilds every spec's shape and dtype, and a cache-line-aligned output costs a slice, a view
and a reshape. Here every expected (shape, dtype) is computed once, an array that fits is
accepted by identity-cheap comparisons, and anything else goes to `Program.checked_inputs`,
which converts it or raises the error a user sees.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import numpy as np

from runtime.memory import aligned_empty
from runtime.program import Program

ALIGNED_OUTPUT_BYTES = 4096
"""Outputs of at least this many bytes start on a cache line (aligned_empty): vector stores of a
memory-bound kernel then never straddle two lines. Smaller ones come from `np.empty` (16-byte
aligned), whose ~0.15 µs beats aligned_empty's ~1.5 µs where the kernel itself takes ~1 µs."""


def data_address(array: np.ndarray) -> int:
    """The address of `array`'s first element. A writable non-empty array is read through the
    buffer protocol (~0.25 µs); others through `ndarray.ctypes` (~0.8 µs)."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(array))
    except (TypeError, ValueError, BufferError):  # read-only, empty, or not a plain buffer
        return array.ctypes.data


class RunArguments:
    """The expected inputs and fresh outputs of one program, precomputed."""

    def __init__(self, program: Program, fresh_outputs: Sequence[int]) -> None:
        self.program = program
        self.fresh_outputs = tuple(fresh_outputs)
        self.input_types = tuple((tuple(spec.shape), spec.numpy_dtype) for spec in program.input_specs)
        """Per input: (shape, numpy dtype), what an array must have to be used as it is."""
        self.output_types = tuple(
            (tuple(program.buffers[i].shape), program.buffers[i].numpy_dtype, program.buffers[i].nbytes)
            for i in fresh_outputs
        )
        """Per fresh output buffer (in the executor's slot order): (shape, numpy dtype, bytes)."""

    def fit(self, given: Sequence[Any]) -> bool:
        """Whether `given` are numpy arrays of the declared shapes and dtypes, C-contiguous: usable
        as they are. (A plain loop: this runs on every call, where a generator costs a few tenths of
        a µs.)"""
        types = self.input_types
        if len(given) != len(types):
            return False
        for array, (shape, dtype) in zip(given, types):
            if not (
                type(array) is np.ndarray and array.shape == shape and array.dtype == dtype and array.flags.c_contiguous
            ):
                return False
        return True

    def inputs(self, given: Sequence[Any]) -> list[np.ndarray]:
        """`given` as C-contiguous arrays of the declared types: those that already are pass
        as they are; otherwise `Program.checked_inputs` converts them or raises the error."""
        return list(given) if self.fit(given) else self.program.checked_inputs(given)

    def new_outputs(self) -> list[np.ndarray]:
        """Fresh, uninitialised arrays for the program's output buffers (the caller's to keep)."""
        return [
            aligned_empty(shape, dtype) if nbytes >= ALIGNED_OUTPUT_BYTES else np.empty(shape, dtype)
            for shape, dtype, nbytes in self.output_types
        ]

    def collect_outputs(
        self, arrays: list[np.ndarray], fresh: list[np.ndarray], constants: dict[int, np.ndarray], arena: np.ndarray
    ) -> list[np.ndarray]:
        """Each of the program's outputs as its own array, after a run with inputs `arrays` and
        fresh output buffers `fresh`: a fresh output the first time, a copy after that; an input,
        constant or intermediate (in `arena`) that is an output is copied (the caller owns results)."""
        program, results = self.program, []
        fresh_of = dict(zip(self.fresh_outputs, fresh, strict=True))
        for i in program.outputs:
            spec = program.buffers[i]
            if spec.kind == "output":
                results.append(fresh_of.pop(i) if i in fresh_of else results[program.outputs.index(i)].copy())
            elif spec.kind == "input":
                results.append(arrays[program.inputs.index(i)].copy())
            elif spec.kind == "constant":
                results.append(constants[i].copy())
            else:
                data = arena[spec.offset : spec.offset + spec.nbytes]
                results.append(data.view(spec.numpy_dtype).reshape(spec.shape).copy())
        return results
