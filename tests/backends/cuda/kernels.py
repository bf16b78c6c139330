"""What the CUDA tests share: the lowered kernels of the model tests (imported once per process,
through the reference pipeline, lowered group by group) and the marker that skips a test when
NVRTC is not installed."""

from __future__ import annotations

import functools

import pytest

from backends.cuda import missing_nvrtc
from backends.lowering.group import lower_group
from ir.loop import Kernel

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
