"""The GPU GEMM templates (`backends.cuda.templates_gpu_gemm`): FMA tiles for f32 and tensor-core
MMA for f16/bf16 run in the lockstep interpreter (races checked; the MMA assembled from each
warp's fragments by the PTX ISA layouts) and match the graph interpreter; every variant compiles
with NVRTC for sm_80 and sm_90 with a clean ptxas report. The double-buffered stages: which copies
are cp.async (and how wide) is what the index analysis proves; a dropped wait or barrier, or a
fragment element taken from the wrong place of an ldmatrix, is caught in the lockstep interpreter
and in the CUDA emulator (the printed C against the prelude's host twins), and ldmatrix itself
matches the PTX ISA's table, stated here independently.

Tolerance (`assert_close` of the lowering tests): f32 within 1e-5 relative plus 1e-5 of the
output's largest magnitude (the kernel accumulates with fma in k order, numpy through BLAS);
f16/bf16 within two units in the last place (products exact, f32 accumulation, one rounding)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import ir
from backends.cuda import GpuKernel, compile_cuda, emit_kernel, schedule_group
from backends.cuda.templates_gpu_gemm import FmaTiles, MmaTiles, gemm_template
from ir import DType, Graph, GraphBuilder
from ir.errors import InterpreterError
from ir.loop import (
    Assign,
    Barrier,
    Buffer,
    Call,
    Const,
    For,
    If,
    Kernel,
    Load,
    LoopKind,
    RaceError,
    Ref,
    Scope,
    Store,
    Var,
    run_lockstep,
)
from ir.loop.lockstep import launch_dims
from passes import make_pass
from runtime.cuda_emulator import emulator_unavailable
from tests.backends.cuda.kernels import requires_nvrtc, rewrite_statements, without_first_barrier
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


@pytest.mark.parametrize("dtype", [DType.f32, DType.f16], ids=str)
def test_removing_a_barrier_is_a_race(dtype):
    graph = _graph(dtype)
    kernel, inputs, outputs = _check(graph, _template(dtype), **SMALL)
    broken = without_first_barrier(kernel)
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

    broken = dataclasses.replace(kernel, body=rewrite_statements(kernel.body, swap))
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
        assert ("x2_x4(" in source) == (template == "gemm.mma"), "one mma instruction per product"
        scheduled_threads = next(s.extent for s in kernel.body[0].body if isinstance(s, For))
        shared = sum(b.size * b.dtype.itemsize for b in kernel.locals if b.scope.value == "shared")
        for arch in ("sm_80", "sm_90"):
            report = compile_cuda(source, arch, name).resources[name]
            where = f"{name} ({template}) on {arch}: {report}"
            assert report.spill_stores == report.spill_loads == 0, f"spills in {where}"
            assert report.registers * scheduled_threads <= REGISTERS_PER_SM, f"too many registers in {where}"
            assert report.shared_bytes == shared <= SHARED_BYTES_PER_BLOCK, where
            assert report.stack_bytes <= LOCAL_BYTES_PER_THREAD, where


# -- the double-buffered stages: cp.async and ldmatrix -----------------------------------------------


def _calls(body) -> list[Call]:
    """Every `Call` that is a statement's value (stores and assignments), in order."""
    found = []
    for stmt in body:
        if isinstance(stmt, For):
            found += _calls(stmt.body)
        elif isinstance(stmt, If):
            found += _calls(stmt.then) + _calls(stmt.otherwise)
        elif isinstance(stmt, Store | Assign) and isinstance(stmt.value, Call):
            found.append(stmt.value)
    return found


def _bmm(dtype):
    builder = GraphBuilder("bmm")
    x, w = builder.input("x", (2, 1, 9, 20), dtype), builder.input("w", (3, 20, 12), dtype)
    return builder.build(builder.matmul(x, w))


def _transposed(dtype):
    builder = GraphBuilder("gemm_tt")
    x, w = builder.input("x", (20, 40), dtype), builder.input("w", (24, 20), dtype)
    return builder.build(builder.gemm(x, w, trans_a=True, trans_b=True))


def _matmul(m, n, k, dtype):
    builder = GraphBuilder("matmul")
    x, w = builder.input("x", (m, k), dtype), builder.input("w", (k, n), dtype)
    return builder.build(builder.matmul(x, w))


COPIES = [  # graph, (elements per cp_async of A, of B; 0: plain loads), ldmatrix of (A, B)
    # K = 20 rows of A: 8-byte vectors (4 | 20, 8 does not); N = 24 rows of B: 16 bytes, B kept [k][n]
    (_matmul(40, 24, 20, DType.f16), (4, 8), ("ldmatrix_x4", "ldmatrix_x4_trans")),
    # K = 10, N = 6: pairs of 16-bit elements, 4 bytes
    (_matmul(9, 6, 10, DType.bf16), (2, 2), ("ldmatrix_x4", "ldmatrix_x4_trans")),
    # nothing aligned: plain loads and stores into the stages
    (_matmul(5, 3, 7, DType.bf16), (0, 0), ("ldmatrix_x4", "ldmatrix_x4_trans")),
    # trans_a keeps M contiguous (A staged [k][m], read with .trans), trans_b K
    (_transposed(DType.f16), (8, 4), ("ldmatrix_x4_trans", "ldmatrix_x4")),
    # a broadcast batch: batch strides 180 and 240 elements, multiples of 4 only
    (_bmm(DType.bf16), (4, 4), ("ldmatrix_x4", "ldmatrix_x4_trans")),
    # f32: A is transposed into its stage (plain), B's rows of N are 16-byte vectors
    (_matmul(40, 24, 20, DType.f32), (0, 4), ()),
]


@pytest.mark.parametrize(("graph", "vectors", "ldmatrix"), COPIES, ids=lambda c: getattr(c, "name", None))
def test_copies_are_the_widest_the_index_analysis_proves(graph, vectors, ldmatrix):
    kernel, _, _ = _check(graph, _template(graph.inputs[0].type.dtype), **SMALL)
    calls = _calls(kernel.body)
    tiles = {buffer.name[0]: buffer for buffer in kernel.locals if buffer.scope is Scope.SHARED}
    widths = []
    for operand in graph.inputs:  # x (A), w (B)
        copies = [c for c in calls if c.name == "cp_async" and c.args[0].buffer.name.startswith(f"in_{operand.name}")]
        widths.append(copies[0].args[1].value if copies else 0)
    assert tuple(widths) == vectors
    assert {c.args[0].buffer.scope for c in calls if c.name == "cp_async"} <= {Scope.GLOBAL}
    loads = [c.name for c in calls if c.name.startswith("ldmatrix")]
    if ldmatrix:
        first_b = next(c for c in calls if c.name.startswith("ldmatrix") and c.args[0].buffer is tiles["b"])
        assert (loads[0], first_b.name) == ldmatrix
    else:
        assert not loads
    waits = [c for c in calls if c.name == "cp_async_wait"]
    assert bool(waits) == any(vectors) and all(c.args[0] == Const(0, DType.i32) for c in waits)  # two stages


@pytest.mark.parametrize("dtype", [DType.f32, DType.bf16], ids=str)
@pytest.mark.parametrize("k", [16, 70])  # fewer K steps than stages - 1, and several with an edge
def test_three_stages_in_flight(k, dtype):
    """Three slots: two K steps in flight while one is computed (`cp_async_wait(1)`)."""
    tiles = {"fma_tiles": FmaTiles(32, 16, 8, 2, 2, stages=3), "mma_tiles": MmaTiles(32, 16, 16, 2, 2, stages=3)}
    kernel, _, _ = _check(_matmul(40, 24, k, dtype), _template(dtype), **tiles)
    waits = [c for c in _calls(kernel.body) if c.name == "cp_async_wait"]
    assert waits and all(c.args[0] == Const(1, DType.i32) for c in waits)


def _without(kernel, drop):
    removed = []

    def change(stmt):
        if drop(stmt):
            removed.append(stmt)
            return None
        return stmt

    changed = dataclasses.replace(kernel, body=rewrite_statements(kernel.body, change))
    assert removed
    return changed


def _is_wait(stmt) -> bool:
    return isinstance(stmt, Assign) and isinstance(stmt.value, Call) and stmt.value.name == "cp_async_wait"


def _swap_a_elements(kernel):
    """The A fragments' ldmatrix registers 0 and 1 (2 and 3) exchanged: rows g and g + 8."""

    def change(stmt):
        loads = isinstance(stmt, Assign) and isinstance(stmt.value, Call) and stmt.value.name.startswith("ldmatrix")
        if loads and stmt.var.name.startswith("a"):
            row, index = stmt.value.args
            flipped = Const(int(index.value) ^ 1, DType.i32)
            return dataclasses.replace(stmt, value=dataclasses.replace(stmt.value, args=(row, flipped)))
        return stmt

    return dataclasses.replace(kernel, body=rewrite_statements(kernel.body, change))


def _wrong(kernel, inputs, expected) -> bool:
    outputs = [np.zeros_like(e) for e in expected]
    run_lockstep(kernel, [*inputs, *outputs])
    return not np.allclose(outputs[0].astype(np.float64), expected[0].astype(np.float64), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("dtype", [DType.f32, DType.f16], ids=str)
def test_reading_a_stage_without_waiting_for_its_copies_gives_a_wrong_product(dtype):
    graph = _matmul(40, 24, 32, dtype)  # K = 32: two K steps, every operand copied asynchronously
    kernel, inputs, outputs = _check(graph, _template(dtype), **SMALL)
    assert _wrong(_without(kernel, _is_wait), inputs, outputs)


def test_an_ldmatrix_register_from_the_wrong_matrix_gives_a_wrong_product():
    kernel, inputs, outputs = _check(_matmul(40, 24, 32, DType.f16), "gemm.mma", **SMALL)
    assert _wrong(_swap_a_elements(kernel), inputs, outputs)


def test_the_landing_of_a_copy_races_with_a_reader_when_the_barrier_after_the_wait_is_gone():
    kernel, inputs, outputs = _check(_matmul(40, 24, 32, DType.bf16), "gemm.mma", **SMALL)
    with pytest.raises(RaceError, match=r"[ab]_tile\d*\[\d+\] \(shared\)"):
        run_lockstep(_without(kernel, lambda s: isinstance(s, Barrier)), [*inputs, *outputs])


def _ldmatrix_kernel(name: str, dtype: DType, offset: int = 0) -> Kernel:
    """One warp: four 8 x 8 matrices copied into shared memory, lane l supplying row l % 8 of
    matrix l // 8 to `name`, each lane storing its four registers."""
    source, out = Buffer("source", dtype, (256,)), Buffer("out", DType.i32, (128,))
    tile = Buffer("tile", dtype, (256 + 8,), Scope.SHARED)
    thread, step, r = Var("thread"), Var("step"), [Var(f"r{i}", DType.i32) for i in range(4)]
    at = Ref(step) * 32 + Ref(thread)
    row = Load(tile, Ref(thread) * 8 + offset)  # matrix l // 8, row l % 8: element 8 l
    body = (
        For(step, 8, (Store(tile, at, Load(source, at)),)),
        Barrier(),
        *(Assign(v, Call(name, (row, Const(i, DType.i32)), DType.i32)) for i, v in enumerate(r)),
        *(Store(out, Ref(thread) * 4 + i, Ref(v)) for i, v in enumerate(r)),
    )
    loop = For(thread, 32, body, LoopKind.THREAD_X)
    return Kernel(name, (source, out), (loop,), (tile,), outputs=(1,))


@pytest.mark.parametrize("trans", [False, True], ids=["x4", "x4_trans"])
def test_ldmatrix_gives_each_lane_the_ptx_isa_fragment(trans):
    """PTX ISA, ldmatrix: lane l holds in register j, of matrix j, row l / 4 and columns 2 (l % 4),
    2 (l % 4) + 1, the first in the low half (transposed: rows 2 (l % 4), + 1 of column l / 4)."""
    name = "ldmatrix_x4_trans" if trans else "ldmatrix_x4"
    matrices = np.arange(256, dtype=np.float32).astype(np.float16)
    out = np.zeros(128, np.int32)
    run_lockstep(_ldmatrix_kernel(name, DType.f16), [matrices, out])
    bits = matrices.view(np.uint16).reshape(4, 8, 8).astype(np.uint32)
    expected = [
        (bits[j, 2 * (lane % 4), lane // 4] | bits[j, 2 * (lane % 4) + 1, lane // 4] << 16)
        if trans
        else (bits[j, lane // 4, 2 * (lane % 4)] | bits[j, lane // 4, 2 * (lane % 4) + 1] << 16)
        for lane in range(32)
        for j in range(4)
    ]
    np.testing.assert_array_equal(out.view(np.uint32), np.array(expected, np.uint32))


def test_an_ldmatrix_row_off_its_16_byte_alignment_fails_as_the_device_faults():
    arrays = [np.zeros(256, np.float16), np.zeros(128, np.int32)]
    with pytest.raises(InterpreterError, match=r"8 elements at 4 of tile\[264\] are not a whole aligned vector"):
        run_lockstep(_ldmatrix_kernel("ldmatrix_x4", DType.f16, offset=4), arrays)


@pytest.mark.skipif(emulator_unavailable() is not None, reason=f"{emulator_unavailable()}")
def test_the_printed_stages_in_the_cuda_emulator_f16_and_bf16_and_their_mutations():
    """One emulator build: f16 and bf16 GEMMs (ldmatrix x4 and .trans, 16-, 8- and 4-byte cp.async,
    plain stages) match the interpreter; the same kernels without their waits, or with an ldmatrix
    register from the wrong matrix, do not (the host twins land copies at the wait and gather
    fragments by the PTX layout)."""
    from tests.backends.cuda.emulated import emulation_program, run_emulated

    cases = [_matmul(40, 24, 20, DType.f16), _transposed(DType.bf16), _bmm(DType.f16), _matmul(5, 3, 7, DType.bf16),
             _matmul(9, 6, 10, DType.f16),
             _matmul(40, 24, 32, DType.f16), _matmul(40, 24, 32, DType.bf16)]  # fmt: skip
    mutations = {5: lambda k: _without(k, _is_wait), 6: _swap_a_elements}

    def schedule(node, name):
        kernel, template = gemm_template(node, name, **SMALL)
        kernel = mutations.get(int(name[1 : name.index("_")]), lambda k: k)(kernel)
        grid, block = launch_dims(kernel)
        return GpuKernel(kernel, grid, block, template)

    fused = [make_pass("fuse").run(graph) for graph in cases]
    program = emulation_program(fused, schedule, "stages")
    source = program.code["cuda_source"]
    assert all(f"kiln_cp_async<{size}>(" in source for size in (16, 8, 4))
    assert "kiln_ldmatrix_x4(" in source and "kiln_ldmatrix_x4_trans(" in source
    assert "kiln_ldmatrix_x4_at(" in source  # the swapped registers are no longer one group
    rng = np.random.default_rng(5)
    inputs = [[rng.uniform(-2, 2, v.type.shape).astype(v.type.dtype.numpy) for v in g.inputs] for g in cases]
    results = run_emulated(program, fused, inputs)
    for j, (graph, arrays, got) in enumerate(zip(cases, inputs, results, strict=True)):
        (expected,) = ir.run(graph, arrays)
        if j in mutations:
            assert not np.allclose(got[0].astype(np.float64), expected.astype(np.float64), rtol=0.05, atol=0.05)
        else:
            assert_close(got[0], expected, graph.outputs[0].type.dtype, f"{graph.name} in the emulator")
