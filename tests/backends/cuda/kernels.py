"""What the CUDA tests share: the lowered kernels of the model tests (imported once per process,
through the reference pipeline, lowered group by group), the marker that skips a test when
NVRTC is not installed, and `rewrite_statements` for tests that break a kernel on purpose."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import pytest

from backends.cuda import missing_nvrtc
from backends.lowering.group import lower_group
from ir.loop import For, If, Kernel, Stmt

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
