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
