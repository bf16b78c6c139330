"""The short path of a call into a model compiled for the CPU.

A call of a model at the model tests' shapes runs its kernels in 1-10 µs; before this path the
Python around them took ~35 µs (numpy) to ~45 µs (torch): the frontend's pytree flattening
(~10 µs), the checks against the graph (~7 µs, a `TensorType` built per input), conversions
both ways and the executor's own checks. `CpuCall` does the same work with what can be known
before the first call precomputed: whether positional arguments are the graph's inputs as they
are, and each input's shape and dtype as numpy and torch spell them. A call it cannot take
exactly (keyword arguments, a shape or dtype that differs, a strided or non-CPU tensor, a mix of
arrays and tensors) gets None, and `CompiledModel` takes the general path, which converts what
it can and raises the errors a user reads.

Torch tensors go in and come out without copies: the kernels read the inputs' memory and write
outputs allocated fresh for each call (nothing a later call overwrites), which the returned
tensors own.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import ir
from compiler.tensors import tensor_over


def positional_inputs(flatten_inputs: Callable[[tuple, dict], list], count: int) -> bool:
    """Whether `flatten_inputs` passes `count` positional arrays through as the graph's inputs,
    in order, unchanged (what every frontend does for a model of plain tensor arguments; not
    for nested, keyword-only or compiled-in arguments)."""
    probe = tuple(np.empty(0, np.float32) for _ in range(count))
    try:
        flattened = flatten_inputs(probe, {})
    except Exception:  # a frontend that wants other arguments says so its own way: no short path
        return False
    return len(flattened) == count and all(a is b for a, b in zip(flattened, probe))


class CpuCall:
    """Runs a CPU `CompiledModel` for positional numpy arrays or CPU torch tensors that match
    its inputs exactly; returns None for any other call."""

    def __init__(self, executor: Any, graph: ir.Graph) -> None:
        self.executor = executor
        self.arguments = executor.arguments
        self.arity = len(self.arguments.input_types)
        self.input_dtypes = tuple(value.type.dtype for value in graph.inputs)
        self.plain_outputs = all(dtype != ir.DType.bf16.numpy for _, dtype, _ in self.arguments.output_types)
        """No bf16 output: each is a tensor by torch.from_numpy as it is."""
        self._torch_types: tuple[tuple[Any, Any], ...] | None = None
        """Per input: (torch.Size, torch dtype), made when the first tensor comes."""

    def __call__(self, args: Sequence[Any]) -> list[Any] | None:
        if len(args) != self.arity:
            return None
        if not args or type(args[0]) is np.ndarray:
            return self.executor.run_checked(args) if self.arguments.fit(args) else None
        torch = sys.modules.get("torch")
        if torch is None or not self.executor.outputs_are_fresh:
            return None
        return self._run_tensors(torch, args)

    def _run_tensors(self, torch: Any, tensors: Sequence[Any]) -> list[Any] | None:
        tensor, strided = torch.Tensor, torch.strided
        addresses = []
        for t, (shape, dtype) in zip(tensors, self._torch_types or self._make_torch_types(torch)):
            if not (
                type(t) is tensor
                and t.is_cpu
                and t.dtype is dtype
                and t.layout is strided
                and t.shape == shape
                and t.is_contiguous()
                and not t.is_neg()  # a lazily negated view: its memory holds -t
            ):
                return None
            addresses.append(t.data_ptr())
        # numpy's allocation and a view beat torch.empty (~0.6 against ~1.3 µs an output).
        over = torch.from_numpy if self.plain_outputs else tensor_over
        results = [over(array) for array in self.arguments.new_outputs()]
        addresses += [r.data_ptr() for r in results]
        self.executor.run_at(addresses)
        return results

    def _make_torch_types(self, torch: Any) -> tuple[tuple[Any, Any], ...]:
        from compiler.frontends.torch_graph import ir_dtype_to_torch

        types = self.arguments.input_types
        self._torch_types = tuple(
            (torch.Size(shape), ir_dtype_to_torch(dtype)) for (shape, _), dtype in zip(types, self.input_dtypes)
        )
        return self._torch_types


__all__ = ["CpuCall", "positional_inputs"]
