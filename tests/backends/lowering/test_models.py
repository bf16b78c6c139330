"""The reference models, imported from torch, taken through the reference pipeline (which ends
with `fuse`), lowered group by group and run by the kernel-IR interpreter, match torch.

Tolerance: f32, rtol 1e-4 and atol 1e-5, as the model tests of the frontends: the kernels sum
in loop order where torch and numpy use their own orders, so results differ in the last bits.
The kernel interpreter steps through every scalar in Python, so these take seconds each.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compiler.frontends import import_model
from passes import PassManager
from passes.pipelines import default_pipeline
from tests.backends.lowering.lowered import run_lowered
from tests.models.models import MODELS

SLOW = {"resnet_cnn"}
"""About 50 s under the kernel interpreter (three conv stages on 16x16 images); the rest take
a few seconds each."""


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in MODELS])
def test_lowered_model_matches_torch(name):
    module, inputs = MODELS[name]()
    graph = PassManager(default_pipeline("reference", 2)).run(import_model(module, inputs).graph)
    assert {node.op for node in graph.nodes} <= {"fused", "const"}
    (actual,) = run_lowered(graph, [t.numpy() for t in inputs], fuse=False)
    with torch.no_grad():
        expected = module(*inputs).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)
