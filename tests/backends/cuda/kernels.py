"""What the CUDA tests share: the lowered kernels of the model tests (imported once per process,
through the reference pipeline, lowered group by group), the marker that skips a test when
NVRTC is not installed, `rewrite_statements` and `without_first_barrier` for tests that break a
kernel on purpose, and `run_program_in_lockstep` for a whole program's launch table."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from backends.cuda import missing_nvrtc
from backends.lowering.group import lower_group
from ir.loop import Barrier, For, If, Kernel, Stmt
from ir.loop.lockstep import run_lockstep
from runtime import Program

NVRTC_MISSING = missing_nvrtc()
requires_nvrtc = pytest.mark.skipif(NVRTC_MISSING is not None, reason=f"needs NVRTC: {NVRTC_MISSING}")
"""NVRTC compiles without a GPU, but it is an optional dependency (the `cuda` extra)."""


@functools.cache
def model_kernels(name: str, precision: str = "fp32") -> tuple[Kernel, ...]:
    """The kernels of model `name` of tests/models/models.py, in launch order."""
    from compiler.frontends import import_model
    from passes import PassManager
    from passes.pipelines import default_pipeline
    from tests.models.models import MODELS

    module, inputs = MODELS[name]()
    graph = PassManager(default_pipeline("reference", 2, precision=precision)).run(import_model(module, inputs).graph)
    fused = [node for node in graph.nodes if node.op == "fused"]
    return tuple(lower_group(node, f"{name}_{i}_{node.attrs['body'].name}") for i, node in enumerate(fused))


def rewrite_statements(body: Sequence[Stmt], change: Callable[[Stmt], Stmt | None]) -> tuple[Stmt, ...]:
    """`body` with `change` applied to every statement, innermost first (None drops it)."""
    kept = []
    for stmt in body:
        if isinstance(stmt, For):
            stmt = dataclasses.replace(stmt, body=rewrite_statements(stmt.body, change))
        elif isinstance(stmt, If):
            then, otherwise = rewrite_statements(stmt.then, change), rewrite_statements(stmt.otherwise, change)
            stmt = dataclasses.replace(stmt, then=then, otherwise=otherwise)
        changed = change(stmt)
        if changed is not None:
            kept.append(changed)
    return tuple(kept)


def without_first_barrier(kernel: Kernel) -> Kernel:
    """`kernel` with its first `Barrier` (in statement order, innermost first) removed; it must have one."""
    removed = []

    def drop(stmt: Stmt) -> Stmt | None:
        if isinstance(stmt, Barrier) and not removed:
            removed.append(stmt)
            return None
        return stmt

    broken = dataclasses.replace(kernel, body=rewrite_statements(kernel.body, drop))
    assert removed, f"{kernel.name} has no barrier to remove"
    return broken


def run_program_in_lockstep(program: Program, kernels: Sequence[Kernel], inputs: Sequence[np.ndarray]) -> list:
    """The outputs of `program` (flat) after its launch table ran in the lockstep interpreter over
    numpy buffers laid out as the program says: intermediates at their planned offsets in one arena."""
    arena = np.zeros(program.arena_bytes, np.uint8)
    arrays = {}
    for i, spec in enumerate(program.buffers):
        if spec.kind == "intermediate":
            arrays[i] = arena[spec.offset : spec.offset + spec.nbytes].view(spec.numpy_dtype)
        elif spec.kind == "constant":
            arrays[i] = program.constants[i].reshape(-1)
        else:
            arrays[i] = np.zeros(int(np.prod(spec.shape)), spec.numpy_dtype)
    for index, x in zip(program.inputs, inputs, strict=True):
        arrays[index][:] = np.asarray(x).reshape(-1)
    by_name = {kernel.name: kernel for kernel in kernels}
    for launch in program.launches:
        run_lockstep(by_name[launch.kernel], [arrays[i] for i in launch.args])
    return [arrays[i] for i in program.outputs]
