"""The GPU GEMM templates (`backends.cuda.templates_gpu_gemm`): FMA tiles for f32 and tensor-core
MMA for f16/bf16 run in the lockstep interpreter (races checked; the MMA assembled from each
warp's fragments by the PTX ISA layouts) and match the graph interpreter; every variant compiles
with NVRTC for sm_80 and sm_90 with a clean ptxas report.

Tolerance (`assert_close` of the lowering tests): f32 within 1e-5 relative plus 1e-5 of the
output's largest magnitude (the kernel accumulates with fma in k order, numpy through BLAS);
f16/bf16 within two units in the last place (products exact, f32 accumulation, one rounding)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import ir
from backends.cuda import compile_cuda, emit_kernel, schedule_group
from backends.cuda.templates_gpu_gemm import FmaTiles, MmaTiles, gemm_template
from ir import DType, Graph, GraphBuilder
from ir.loop import Assign, Barrier, Call, For, If, RaceError, run_lockstep
from passes import make_pass
from tests.backends.cuda.kernels import requires_nvrtc
from tests.backends.cuda.test_nvrtc import LOCAL_BYTES_PER_THREAD, REGISTERS_PER_SM, SHARED_BYTES_PER_BLOCK
from tests.backends.lowering.lowered import assert_close

FLOATS = [DType.f32, DType.f16, DType.bf16]
SMALL = {"fma_tiles": FmaTiles(32, 16, 8, 2, 2), "mma_tiles": MmaTiles(32, 16, 16, 2, 2)}
"""Tiles small enough that 40 x 24 x 20 has edge tiles in M, N and K (and several K stages)."""
KERNELS: dict[str, tuple] = {}
"""Every kernel the tests ran, by name, with its template: the NVRTC test compiles them all."""


def _node(graph: Graph):
    (node,) = [n for n in make_pass("fuse").run(graph).nodes if n.op == "fused"]
    return node


def _check(graph: Graph, template: str, **tiles):
    node = _node(graph)
    name = f"{graph.name}_{len(KERNELS)}"
    kernel, chosen = gemm_template(node, name, **tiles)
    assert chosen == template
    rng = np.random.default_rng(len(KERNELS))
    inputs = [rng.uniform(-2, 2, v.type.shape).astype(v.type.dtype.numpy) for v in graph.inputs]
    outputs = [np.full(v.type.shape, 123).astype(v.type.dtype.numpy) for v in graph.outputs]
    run_lockstep(kernel, [*inputs, *outputs])
    for value, actual, expected in zip(graph.outputs, outputs, ir.run(graph, inputs)):
        assert_close(actual, expected, value.type.dtype, f"{name} {template}")
    KERNELS[name] = (kernel, template)
    return kernel, inputs, outputs


def _template(dtype: DType) -> str:
    return "gemm.fma" if dtype == DType.f32 else "gemm.mma"


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize(("m", "n", "k"), [(40, 24, 20), (32, 16, 16), (5, 3, 7)])
def test_matmul_with_edge_tiles(m, n, k, dtype):
    builder = GraphBuilder("matmul")
    x, w = builder.input("x", (m, k), dtype), builder.input("w", (k, n), dtype)
    _check(builder.build(builder.matmul(x, w)), _template(dtype), **SMALL)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_batched_matmul_with_a_broadcast_batch(dtype):
    builder = GraphBuilder("bmm")
    x, w = builder.input("x", (2, 1, 9, 20), dtype), builder.input("w", (3, 20, 12), dtype)
    _check(builder.build(builder.matmul(x, w)), _template(dtype), **SMALL)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize(("trans_a", "trans_b", "alpha", "beta"), [(False, True, 1.0, 1.0), (True, False, 0.5, 2.0)])
def test_gemm_with_bias_gelu_and_residual_epilogue(trans_a, trans_b, alpha, beta, dtype):
    m, n, k = 40, 24, 20
    builder = GraphBuilder("gemm")
    x = builder.input("x", (k, m) if trans_a else (m, k), dtype)
    w = builder.input("w", (n, k) if trans_b else (k, n), dtype)
    bias, residual = builder.input("bias", (n,), dtype), builder.input("residual", (m, n), dtype)
    y = builder.gemm(x, w, bias, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta)
    graph = builder.build(builder.add(builder.gelu(y, approximate="tanh"), residual))
    _check(graph, _template(dtype), **SMALL)


def test_default_tiles_through_schedule_group():
    builder = GraphBuilder("linear")
    x, w = builder.input("x", (70, 33), DType.bf16), builder.input("w", (65, 33), DType.bf16)
    graph = builder.build(builder.gemm(x, w, trans_b=True))
    scheduled = schedule_group(_node(graph), "linear_default")
    assert (scheduled.template, scheduled.block) == ("gemm.mma", (128, 1, 1))
    assert scheduled.grid == (4, 1, 1)  # 2 x 2 tiles of 64 x 64
    rng = np.random.default_rng(0)
    inputs = [rng.uniform(-2, 2, v.type.shape).astype(np.dtype("bfloat16")) for v in graph.inputs]
    out = np.zeros((70, 65), inputs[0].dtype)
    run_lockstep(scheduled.kernel, [*inputs, out])
    assert_close(out, ir.run(graph, inputs)[0], DType.bf16, "default tiles")
    KERNELS["linear_default"] = (scheduled.kernel, scheduled.template)


def _graph(dtype: DType) -> Graph:
    builder = GraphBuilder("mm")
    x, w = builder.input("x", (40, 20), dtype), builder.input("w", (20, 24), dtype)
    return builder.build(builder.matmul(x, w))


def _rewrite(body, change):
    """`body` with `change` applied to every statement (None drops it), recursively."""
    kept = []
    for stmt in body:
        if isinstance(stmt, For):
            stmt = dataclasses.replace(stmt, body=_rewrite(stmt.body, change))
        elif isinstance(stmt, If):
            stmt = dataclasses.replace(
                stmt, then=_rewrite(stmt.then, change), otherwise=_rewrite(stmt.otherwise, change)
            )
        stmt = change(stmt)
        if stmt is not None:
            kept.append(stmt)
    return tuple(kept)


@pytest.mark.parametrize("dtype", [DType.f32, DType.f16], ids=str)
def test_removing_a_barrier_is_a_race(dtype):
    graph = _graph(dtype)
    kernel, inputs, outputs = _check(graph, _template(dtype), **SMALL)
    removed = []

    def drop_first_barrier(stmt):
        if isinstance(stmt, Barrier) and not removed:
            removed.append(stmt)
            return None
        return stmt

    broken = dataclasses.replace(kernel, body=_rewrite(kernel.body, drop_first_barrier))
    assert removed
    with pytest.raises(RaceError, match=r"data race on [ab]_tile\d*\[\d+\] \(shared\)"):
        run_lockstep(broken, [*inputs, *outputs])


def test_a_fragment_element_in_the_wrong_place_gives_a_wrong_product():
    """The lockstep MMA assembles A from the lanes by the PTX layout: swapping a lane's a0 and a1
    (two columns of A) must change the result."""
    graph = _graph(DType.f16)
    kernel, inputs, outputs = _check(graph, "gemm.mma", **SMALL)

    def swap(stmt):
        if isinstance(stmt, Assign) and isinstance(stmt.value, Call) and stmt.value.name.startswith("mma_"):
            args = stmt.value.args
            return dataclasses.replace(stmt, value=dataclasses.replace(stmt.value, args=(args[1], args[0], *args[2:])))
        return stmt

    broken = dataclasses.replace(kernel, body=_rewrite(kernel.body, swap))
    wrong = [np.zeros_like(o) for o in outputs]
    run_lockstep(broken, [*inputs, *wrong])
    assert not np.array_equal(wrong[0], outputs[0])


@pytest.mark.parametrize("dtype", [DType.f64, DType.i32], ids=str)
def test_f64_and_integer_contractions_keep_the_generic_schedule(dtype):
    builder = GraphBuilder("other")
    x, w = builder.input("x", (4, 3), dtype), builder.input("w", (3, 5), dtype)
    assert gemm_template(_node(builder.build(builder.matmul(x, w))), "other") is None


@requires_nvrtc
def test_every_variant_compiles_for_ampere_and_hopper_within_limits():
    """Every kernel above (small and default tiles) and the default large tiles (128 x 128)."""
    for dtype in FLOATS:
        builder = GraphBuilder("large")
        x, w = builder.input("x", (512, 256), dtype), builder.input("w", (512, 256), dtype)
        bias = builder.input("bias", (512,), dtype)
        graph = builder.build(builder.gelu(builder.gemm(x, w, bias, trans_b=True), approximate="tanh"))
        scheduled = schedule_group(_node(graph), f"large_{dtype}")
        assert scheduled.block == ((256, 1, 1))
        KERNELS[scheduled.kernel.name] = (scheduled.kernel, scheduled.template)
    if len(KERNELS) < 4:  # run alone: make the small-tile kernels first
        for dtype in FLOATS:
            test_gemm_with_bias_gelu_and_residual_epilogue(False, True, 1.0, 1.0, dtype)
    for name, (kernel, template) in KERNELS.items():
        source = emit_kernel(kernel)
        assert "asm" not in source, "generated code calls the prelude, never raw PTX"
        assert ("_x4(" in source) == (template == "gemm.mma"), "one mma instruction per product"
        scheduled_threads = next(s.extent for s in kernel.body[0].body if isinstance(s, For))
        shared = sum(b.size * b.dtype.itemsize for b in kernel.locals if b.scope.value == "shared")
        for arch in ("sm_80", "sm_90"):
            report = compile_cuda(source, arch, name).resources[name]
            where = f"{name} ({template}) on {arch}: {report}"
            assert report.spill_stores == report.spill_loads == 0, f"spills in {where}"
            assert report.registers * scheduled_threads <= REGISTERS_PER_SM, f"too many registers in {where}"
            assert report.shared_bytes == shared <= SHARED_BYTES_PER_BLOCK, where
            assert report.stack_bytes <= LOCAL_BYTES_PER_THREAD, where
