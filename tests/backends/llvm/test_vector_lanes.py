"""How many lanes a vectorized loop's vector has (`backends.llvm.vectorize.lanes`): one, two or
four native vectors become one vector, anything else a loop of native vectors; a GEMM panel 48
columns wide, which LLVM compiled ~40x slower as <48 x float>, is three 16-lane vectors."""

from __future__ import annotations

import numpy as np
import pytest

import compiler
import ir
from backends.llvm import emit_module, vectorize
from ir import GraphBuilder
from tests.backends.lowering.lowered import lower_graph


@pytest.mark.parametrize(
    ("extent", "expected"), [(16, 16), (32, 32), (48, 16), (64, 64), (96, 16), (192, 16), (8, 8), (12, 8)]
)
def test_whole_vectors_only_in_powers_of_two(monkeypatch, extent, expected):
    monkeypatch.setattr(vectorize, "vector_bits", lambda: 512)
    assert vectorize.lanes(extent, 32) == expected


def test_a_48_column_gemm_is_16_lane_vectors(monkeypatch):
    monkeypatch.setattr(vectorize, "vector_bits", lambda: 512)
    builder = GraphBuilder("narrow")
    x, w = builder.input("x", (30, 20)), builder.input("w", (20, 48))
    graph = builder.build(builder.matmul(x, w))
    _, kernels = lower_graph(graph)
    text = emit_module(kernels, "narrow")
    assert "<16 x float>" in text and "<48 x float>" not in text
    rng = np.random.default_rng(5)
    inputs = [rng.uniform(-1, 1, v.type.shape).astype(np.float32) for v in graph.inputs]
    (expected,) = ir.run(graph, inputs, oracle=True)
    np.testing.assert_allclose(compiler.compile(graph, target="cpu")(*inputs), expected, rtol=0, atol=1e-5)
