"""The vector form of the GPU pointwise template (`backends.cuda.templates_gpu_vector`): which
groups it takes, and that they compute what the graph interpreter computes in the lockstep
interpreter and in the emulator (plain and bounds mode), fault when a vector is misaligned, and
compile with NVRTC to 16-byte vector loads and stores without spills.

Sizes are chosen off the vector width (35 = 8 x 4 + 3 elements of f32, 37 of f16) so that the
scalar tail runs; the row broadcasts have rows of a multiple of the width (a row vector read as
a vector) and columns of one (a value read as uniform across the vector).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ir
from backends.cuda import GpuKernel, compile_cuda, emit_kernel, schedule_group
from backends.cuda.program import ptx
from ir import DType, Graph, GraphBuilder, InterpreterError
from ir.loop import Call, For, If, Kernel, Stmt, Store, run_lockstep
from passes import make_pass
from runtime.cuda_emulator import EmulatedKernelError, KernelBoundsError, emulator_unavailable
from tests.backends.cuda.emulated import emulation_program, mutated, run_emulated
from tests.backends.cuda.kernels import requires_nvrtc
from tests.backends.lowering.lowered import assert_close

needs_emulator = pytest.mark.skipif(emulator_unavailable() is not None, reason=f"{emulator_unavailable()}")


def _graph(name: str, shape: tuple[int, ...], dtype: DType, other: tuple[int, ...] | None = None,
           other_dtype: DType | None = None, out_dtype: DType | None = None) -> Graph:  # fmt: skip
    """tanh(x) * x [+ y broadcast from `other`] [cast to `out_dtype`]."""
    builder = GraphBuilder(name)
    x = builder.input("x", shape, dtype)
    result = builder.mul(builder.tanh(x), x)
    if other is not None:
        y = builder.input("y", other, other_dtype or dtype)
        if (other_dtype or dtype) != dtype:
            y = builder.cast(y, dtype=dtype)
        result = builder.add(result, y)
    if out_dtype is not None:
        result = builder.cast(result, dtype=out_dtype)
    return builder.build(result)


def _compare(name: str) -> Graph:
    builder = GraphBuilder(name)
    x = builder.input("x", (6, 12), DType.f32)
    return builder.build(builder.greater(x, builder.input("y", (12,), DType.f32)))


# (graph, the vector width the template must take)
VECTORIZED = [
    (_graph("flat_f32_tail", (5, 7), DType.f32), 4),
    (_graph("flat_f16_tail", (37,), DType.f16), 8),
    (_graph("row_vector_f32", (6, 16), DType.f32, (16,)), 4),
    (_graph("row_vector_bf16", (3, 2, 24), DType.bf16, (24,)), 8),
    (_graph("column_uniform_bf16", (3, 8), DType.bf16, (3, 1)), 8),
    (_graph("scalar_f16_tail", (5, 9), DType.f16, (1,)), 8),
    (_graph("f16_to_f32", (9, 8), DType.f16, out_dtype=DType.f32), 4),  # f16 moved 8 bytes at a time
    (_graph("bf16_plus_f32_row", (4, 8), DType.f32, (8,), DType.bf16), 4),
    (_graph("f32_to_bf16", (2, 40), DType.f32, (2, 1), out_dtype=DType.bf16), 4),
    (_compare("compare_to_bool"), 4),  # bool out: 4 bytes a vector
]

# Groups that must keep one element per thread: a transposed read, a row vector whose rows are not
# a multiple of the width, a slice at an odd offset, an i8 read 2 bytes at a time (f64 out: V = 2).
SCALAR = [
    ("transpose", lambda b, x: b.transpose(b.tanh(x), perm=(1, 0)), (8, 12), DType.f32),
    ("row_of_7", lambda b, x: b.add(x, b.input("y", (7,), DType.f32)), (4, 7), DType.f32),
    ("odd_slice", lambda b, x: b.neg(b.slice(x, starts=(1,), ends=(33,), axes=(0,))), (40,), DType.f32),
    ("bytes_to_f64", lambda b, x: b.add(b.cast(x, dtype=DType.f64), b.input("y", (16,), DType.f64)), (16,),
     DType.i8),
]  # fmt: skip


def _fused_node(graph: Graph):
    fused = make_pass("fuse").run(graph)
    (node,) = [n for n in fused.nodes if n.op == "fused"]
    return node


def _walk(body: tuple[Stmt, ...]):
    for stmt in body:
        yield stmt
        if isinstance(stmt, For):
            yield from _walk(stmt.body)
        elif isinstance(stmt, If):
            yield from _walk(stmt.then)
            yield from _walk(stmt.otherwise)


def vector_width(kernel: Kernel) -> int:
    """The elements of the kernel's vector stores (0: none)."""
    widths = {len(s.value.args) for s in _walk(kernel.body) if isinstance(s, Store) and isinstance(s.value, Call)
              and s.value.name == "vector_store"}  # fmt: skip
    assert len(widths) <= 1
    return widths.pop() if widths else 0


def _inputs(graph: Graph, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-3, 3, v.type.shape).astype(v.type.dtype.numpy) for v in graph.inputs]


def _run_lockstep(graph: Graph, scheduled: GpuKernel) -> None:
    inputs = _inputs(graph)
    outputs = [np.full(v.type.shape, 123).astype(v.type.dtype.numpy) for v in graph.outputs]
    run_lockstep(scheduled.kernel, [*inputs, *outputs], check_races=True)
    for value, actual, expected in zip(graph.outputs, outputs, ir.run(graph, inputs), strict=True):
        assert_close(actual, expected, value.type.dtype, graph.name)


# -- lockstep ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("graph", "width"), VECTORIZED, ids=[g.name for g, _ in VECTORIZED])
@pytest.mark.parametrize("max_blocks", [4096, 1])
def test_vectorized_groups_match_the_interpreter_in_lockstep(graph, width, max_blocks):
    """max_blocks 1: one block takes a grid stride over the vectors, the tail among them."""
    scheduled = schedule_group(_fused_node(graph), graph.name, threads_per_block=32, max_blocks=max_blocks)
    assert scheduled.template == "pointwise" and vector_width(scheduled.kernel) == width
    _run_lockstep(graph, scheduled)


@pytest.mark.parametrize(("name", "build", "shape", "dtype"), SCALAR, ids=[case[0] for case in SCALAR])
def test_groups_not_provably_aligned_and_contiguous_keep_one_element_per_thread(name, build, shape, dtype):
    builder = GraphBuilder(name)
    graph = builder.build(build(builder, builder.input("x", shape, dtype)))
    scheduled = schedule_group(_fused_node(graph), name)
    assert scheduled.template == "pointwise" and vector_width(scheduled.kernel) == 0
    _run_lockstep(graph, scheduled)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    rows=st.integers(1, 5),
    columns=st.sampled_from([1, 3, 8, 16, 24]),
    dtype=st.sampled_from([DType.f32, DType.f16, DType.bf16]),
    broadcast=st.sampled_from([None, "row", "column", "scalar"]),
)
def test_drawn_shapes_and_broadcasts_match_the_interpreter(rows, columns, dtype, broadcast):
    """Whether vectorized or not, the template computes what the interpreter does."""
    other = {None: None, "row": (columns,), "column": (rows, 1), "scalar": (1,)}[broadcast]
    graph = _graph("drawn", (rows, columns), dtype, other)
    _run_lockstep(graph, schedule_group(_fused_node(graph), "drawn", threads_per_block=32))


def test_a_misaligned_or_overhanging_vector_fails_in_lockstep():
    """The interpreter checks what the device requires of a vector access."""
    graph = VECTORIZED[0][0]
    kernel = schedule_group(_fused_node(graph), "shifted").kernel
    store = next(s for s in _walk(kernel.body) if isinstance(s, Store) and isinstance(s.value, Call))
    shifted = Kernel(kernel.name, kernel.params, _replace(kernel.body, store, Store(store.buffer, store.index + 1,
                     store.value)), kernel.locals, kernel.source, kernel.outputs)  # fmt: skip
    arrays = [*_inputs(graph), np.zeros((5, 7), np.float32)]
    with pytest.raises(InterpreterError, match=r"4 elements at 1 of out\w*\[35\] are not a whole aligned vector"):
        run_lockstep(shifted, arrays)


def _replace(body: tuple[Stmt, ...], old: Stmt, new: Stmt) -> tuple[Stmt, ...]:
    out = []
    for stmt in body:
        if stmt is old:
            stmt = new
        elif isinstance(stmt, For):
            stmt = For(stmt.var, stmt.extent, _replace(stmt.body, old, new), stmt.kind)
        elif isinstance(stmt, If):
            stmt = If(stmt.condition, _replace(stmt.then, old, new), _replace(stmt.otherwise, old, new))
        out.append(stmt)
    return tuple(out)


# -- the emulator --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emulated():
    graphs = [graph for graph, _ in VECTORIZED]
    fused = [make_pass("fuse").run(graph) for graph in graphs]
    program = emulation_program(fused, name="vectors")
    assert program.code["cuda_source"].count("kiln_store_vector(") == len(graphs)
    return program, fused, [_inputs(graph) for graph in graphs]


@needs_emulator
@pytest.mark.parametrize("mode", ["plain", "bounds"])
def test_vectorized_kernels_match_the_interpreter_in_the_emulator(emulated, mode):
    program, fused, inputs = emulated
    for graph, arrays, got in zip(fused, inputs, run_emulated(program, fused, inputs, mode), strict=True):
        for value, actual, expected in zip(graph.outputs, got, ir.run(graph, arrays), strict=True):
            assert_close(actual, expected, value.type.dtype, f"{graph.name} ({mode})")


@needs_emulator
@pytest.mark.parametrize("access", ["load", "store"])
def test_a_vector_shifted_by_one_element_fails_the_launch_as_misaligned(emulated, access):
    program, fused, inputs = emulated
    pattern = r"(kiln_load_vector\(&in_x0\[)(o0)\]" if access == "load" else r"(kiln_store_vector\(&out00\[)(o0)\]"
    broken = mutated(program, lambda source: re.sub(pattern, r"\1\2 + 1]", source, count=1))
    with pytest.raises(EmulatedKernelError, match=r"g0_\w+.*a vector access of 16 bytes at a misaligned address"):
        run_emulated(broken, fused, inputs)


# -- NVRTC -----------------------------------------------------------------------------------------


@requires_nvrtc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_vectorized_kernels_compile_to_16_byte_accesses_without_spills(arch):
    for graph, _ in VECTORIZED[:6]:  # f32, f16 and bf16; tails, rows, columns and scalars
        scheduled = schedule_group(_fused_node(graph), graph.name)
        source = emit_kernel(scheduled.kernel)
        text = ptx(source, arch)
        assert re.search(r"ld\.global(\.nc)?\.v4\.", text) and re.search(r"st\.global\.v4\.", text), graph.name
        report = compile_cuda(source, arch, graph.name).resources[graph.name]
        assert report.spill_stores == report.spill_loads == report.stack_bytes == 0, f"{graph.name}: {report}"


@needs_emulator
def test_a_vector_reaching_past_the_end_is_reported_in_bounds_mode(emulated):
    """35 f32: the tail's thread (offset 32) made to take a whole vector reads 32..35 of 35."""
    program, fused, inputs = emulated
    broken = mutated(program, lambda source: source.replace("if (o0 < 32) {", "if (o0 < 36) {", 1))
    with pytest.raises(KernelBoundsError, match=r"out-of-bounds read in kernel g0_\w+: parameter 0 "):
        run_emulated(broken, fused, inputs, "bounds")
