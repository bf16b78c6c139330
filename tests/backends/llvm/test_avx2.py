"""The AVX2 fallback, checked on whatever x86 host runs the tests: with the generated code's features
limited to AVX2 (`runtime.cpu.limit_isa`, or KILN_CPU_ISA=avx2), the cost model picks AVX2 tiles,
the GEMM kernel's assembly holds ymm FMAs and no zmm register, and the results are right (an
AVX-512 host runs AVX2 code too)."""

from __future__ import annotations

import re

import numpy as np
import pytest

import compiler
import ir
from backends.llvm import compile_module, emit_module
from backends.lowering.templates_gemm import GemmShape, choose_tiles, host_vector_bits
from ir import DType, GraphBuilder
from runtime.cpu import host_target, limit_isa
from tests.backends.lowering.lowered import lower_graph

pytestmark = pytest.mark.skipif(
    "+avx2" not in host_target()["features"].split(",") or "+fma" not in host_target()["features"].split(","),
    reason="the host runs no AVX2 + FMA code",
)


def _linear(m: int, k: int, n: int) -> tuple[ir.Graph, list[np.ndarray]]:
    """x @ W.T + b with a relu: the GEMM, its packed constant weight and an epilogue."""
    rng = np.random.default_rng(3)
    builder = GraphBuilder("linear")
    x = builder.input("x", (m, k))
    weight = builder.constant(rng.uniform(-1, 1, (n, k)).astype(np.float32), "weight")
    bias = builder.constant(rng.uniform(-1, 1, (n,)).astype(np.float32), "bias")
    y = builder.relu(builder.add(builder.gemm(x, weight, trans_b=True), bias))
    return builder.build(y), [rng.uniform(-1, 1, (m, k)).astype(np.float32)]


def test_the_limit_narrows_the_features_and_the_tiles():
    shape = GemmShape(1, 256, 256, 256, DType.f32)
    with limit_isa("avx2"):
        features = host_target()["features"].split(",")
        assert not [f for f in features if f.startswith(("+avx512", "+avx10", "+amx"))]
        assert "+avx2" in features and "+fma" in features
        assert host_vector_bits() == 256
        tiles = choose_tiles(shape)
        assert (tiles.mr, tiles.nr) == (6, 16)  # 6 x 2 ymm accumulators: 12 of AVX2's 16 registers
    assert choose_tiles(shape) == choose_tiles(shape, host_vector_bits())


def test_the_environment_variable_limits_code_generation(monkeypatch):
    monkeypatch.setenv("KILN_CPU_ISA", "avx2")
    assert host_vector_bits() == 256
    monkeypatch.setenv("KILN_CPU_ISA", "avx9000")
    with pytest.raises(ValueError, match="KILN_CPU_ISA"):
        host_target()


def test_the_avx2_gemm_kernel_uses_ymm_fmas_and_no_zmm():
    graph, _ = _linear(96, 64, 128)
    with limit_isa("avx2"):
        _, kernels = lower_graph(graph)
        assembly = compile_module(emit_module(kernels, "gemm")).assembly
    fmas = re.findall(r"vfmadd\d+ps\s+[^\n]*%ymm", assembly)
    assert len(fmas) >= 12, f"{len(fmas)} ymm FMAs in:\n{assembly[:3000]}"
    assert "zmm" not in assembly


@pytest.mark.parametrize(("m", "k", "n"), [(96, 64, 128), (37, 45, 29), (7, 300, 21)])
def test_avx2_code_computes_the_same_product(m, k, n):
    graph, inputs = _linear(m, k, n)
    with limit_isa("avx2"):
        compiled = compiler.compile(graph, target="cpu", threads=2)
        assert compiled.program.code["features"] == host_target()["features"]
        got = compiled(*inputs)
    (expected,) = ir.run(graph, inputs, oracle=True)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2 * (k + 2) * 2.0**-24 * (k + 1))
