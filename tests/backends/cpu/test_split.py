"""Kernels of several top-level loop nests split into one kernel per nest (`backends.cpu.split`):
the pieces match the interpreter, locals that cross become arena intermediates, independent
nests run in parallel, and a loop whose iterations share elements or scalars does not."""

from __future__ import annotations

import numpy as np

import compiler
import ir
from backends.cpu.split import iterations_independent, split_kernel
from ir import DType, GraphBuilder
from ir.loop import Assign, Buffer, Const, For, Kernel, Load, LoopKind, Ref, Scope, Store, Var


def _softmax_read_transposed():
    b = GraphBuilder("two_nests")
    x = b.input("x", (6, 10), DType.f32)
    s = b.softmax(x, axis=1)
    return b.build(b.add(b.transpose(s, perm=(1, 0)), b.constant(np.float32(1.0).reshape(()), "one")))


def test_a_group_of_two_nests_splits_and_matches_the_interpreter():
    graph = _softmax_read_transposed()
    fast = compiler.compile(graph, target="cpu", threads=2)
    x = np.random.default_rng(0).standard_normal((6, 10), dtype=np.float32)
    (expected,) = ir.run(graph, [x])
    for _ in range(20):
        out = fast(x)
        np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
    names = list(fast.kernels)
    assert any(name.endswith("_p0") for name in names) and any(name.endswith("_p1") for name in names)
    crossing = [b for b in fast.program.buffers if b.kind == "intermediate" and "_t" in b.name]
    assert crossing, fast.program.describe()


def _loop(body, extent=4):
    i = Var("i")
    return i, For(i, extent, tuple(body(Ref(i))))


def test_independence_of_iterations():
    out = Buffer("out", DType.f32, (4, 8))
    j = Var("j")
    # out[i*8 + j] = 1: each iteration its own row
    _, rows = _loop(lambda i: [For(j, 8, (Store(out, i * 8 + Ref(j), Const(1.0, DType.f32)),))])
    assert iterations_independent(rows)
    # out[i*4 + j] for j < 8: rows overlap
    _, overlapping = _loop(lambda i: [For(j, 8, (Store(out, i * 4 + Ref(j), Const(1.0, DType.f32)),))])
    assert not iterations_independent(overlapping)
    # out[idx[i]] = 1: a scatter, positions unknown
    idx = Buffer("idx", DType.i64, (4,))
    _, scatter = _loop(lambda i: [Store(out, Load(idx, i), Const(1.0, DType.f32))])
    assert not iterations_independent(scatter)
    # acc carried across iterations: out[i] = acc += 1
    acc = Var("acc", DType.f32)
    _, running = _loop(lambda i: [Assign(acc, Ref(acc) + Const(1.0, DType.f32)), Store(out, i, Ref(acc))])
    assert not iterations_independent(running)


def test_scalars_shared_by_statements_keep_them_in_one_piece():
    a, out = Buffer("a", DType.f32, (4,)), Buffer("out", DType.f32, (1,))
    total = Var("total", DType.f32)
    r = Var("r")
    body = (
        Assign(total, Const(0.0, DType.f32)),
        For(r, 4, (Assign(total, Ref(total) + Load(a, Ref(r))),)),
        Store(out, Const(0, DType.i64), Ref(total)),
    )
    kernel = Kernel("k", (a, out), body, (), "", (1,))
    pieces, crossing = split_kernel(kernel)
    assert pieces == [kernel] and crossing == []


def test_a_local_that_crosses_becomes_global():
    a, out = Buffer("a", DType.f32, (4,)), Buffer("out", DType.f32, (4,))
    t = Buffer("t", DType.f32, (4,), Scope.LOCAL)
    _, fill = _loop(lambda i: [Store(t, i, Load(a, i) * Const(2.0, DType.f32))])
    _, reverse = _loop(lambda i: [Store(out, i, Load(t, Const(3, DType.i64) - i))])
    pieces, crossing = split_kernel(Kernel("k", (a, out), (fill, reverse), (t,), "", (1,)))
    assert [p.name for p in pieces] == ["k_p0", "k_p1"]
    assert [(b.name, b.scope) for b in crossing] == [("t", Scope.GLOBAL)]
    assert [p.body[0].kind for p in pieces] == [LoopKind.PARALLEL, LoopKind.PARALLEL]
    assert [b.name for b in pieces[0].params] == ["a", "t"] and pieces[0].outputs == (1,)
    assert [b.name for b in pieces[1].params] == ["out", "t"] and pieces[1].outputs == (0,)


def test_a_gemm_read_transposed_runs_its_gemm_piece_in_parallel():
    """A linear layer whose result is split into heads (attention's q/k/v projection): the GEMM's
    nest writes an arena intermediate at its block's panel and row digits, with a panel and a tile
    of its own, and runs on both workers; the result matches the interpreter."""
    rng = np.random.default_rng(0)
    b = GraphBuilder("heads")
    x = b.input("x", (64, 96), DType.f32)
    weight = b.constant(rng.standard_normal((192, 96)).astype(np.float32) / 10, "w")
    y = b.reshape(b.gemm(x, weight, trans_b=True), shape=(64, 3, 64))
    graph = b.build(b.transpose(y, perm=(1, 0, 2)))
    fast = compiler.compile(graph, target="cpu", threads=2)
    gemm_piece = next(text for name, text in fast.kernels.items() if name.endswith("_p0"))
    assert "fma" in gemm_piece and "parallel for" in gemm_piece
    assert any(launch.parallel for launch in fast.program.launches if launch.kernel.endswith("_p0"))
    x_value = rng.standard_normal((64, 96), dtype=np.float32)
    (expected,) = ir.run(graph, [x_value])
    for _ in range(10):
        np.testing.assert_allclose(fast(x_value), expected, rtol=1e-5, atol=1e-5)


def test_a_parallel_loop_of_few_iterations_takes_in_the_loops_inside_it():
    """A slice of a [3, ...] tensor lowers to a parallel loop of 1 iteration over the unit axis
    (one worker idle): split collapses it with the loops inside until it has enough iterations,
    and the result still matches the interpreter on 2 threads."""
    b = GraphBuilder("head_slice")
    x = b.input("x", (3, 8, 64), DType.f32)
    first = b.slice(x, starts=(0,), ends=(1,), axes=(0,))
    graph = b.build(b.transpose(b.reshape(first, shape=(8, 4, 16)), perm=(1, 0, 2)))
    fast = compiler.compile(graph, target="cpu", threads=2)
    (text,) = fast.kernels.values()
    assert "parallel for i0_i1" in text, text
    value = np.random.default_rng(0).standard_normal((3, 8, 64), dtype=np.float32)
    (expected,) = ir.run(graph, [value])
    for _ in range(10):
        np.testing.assert_array_equal(fast(value), expected)
    # a parallel loop whose inner loop would overlap once collapsed stays as it is
    i, j = Var("i"), Var("j")
    out = Buffer("out", DType.f32, (8,))
    loop = For(i, 2, (For(j, 4, (Store(out, Ref(i) + Ref(j), Const(1.0, DType.f32)),)),), LoopKind.PARALLEL)
    (kernel,), _ = split_kernel(Kernel("k", (out,), (loop,), (), "", (0,)))
    assert kernel.body == (loop,)


def test_a_piece_over_a_unit_axis_runs_in_parallel():
    """attention's output projection plus the residual: the GEMM's result is moved across a unit
    axis into the add's nest, `for i0 in 0..1 { for i1 in 0..64 { ... } }`, which has one
    iteration (nothing to share) and is spread over its 64 rows."""
    rng = np.random.default_rng(1)
    b = GraphBuilder("residual")
    x = b.input("x", (64, 32), DType.f32)
    src = b.input("src", (1, 64, 32), DType.f32)
    weight = b.constant(rng.standard_normal((32, 32)).astype(np.float32) / 8, "w")
    y = b.transpose(b.reshape(b.gemm(x, weight, trans_b=True), shape=(64, 1, 32)), perm=(1, 0, 2))
    graph = b.build(b.add(src, y))
    fast = compiler.compile(graph, target="cpu", threads=2)
    pieces = {name: text for name, text in fast.kernels.items() if name.endswith(("_p0", "_p1"))}
    assert len(pieces) == 2 and all("parallel for" in text for text in pieces.values()), pieces
    inputs = [rng.standard_normal((64, 32), dtype=np.float32), rng.standard_normal((1, 64, 32), dtype=np.float32)]
    (expected,) = ir.run(graph, inputs)
    np.testing.assert_allclose(fast(*inputs), expected, rtol=1e-5, atol=1e-5)
