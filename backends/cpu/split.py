"""Splitting a kernel of several top-level loop nests into one kernel per nest, so that each nest
that can run in parallel does.

Lowering (`backends.lowering.group`) makes a group's kernel PARALLEL only when its body is one
loop nest; a group whose template result is read transposed, or that holds a value read twice,
lowers to several nests in a row, and the whole kernel ran on worker 0. Here each top-level
statement becomes a piece (`<kernel>_p0`, `_p1`, ...), except that statements sharing a scalar
variable stay together (a scalar result: the accumulator's start, its loop and its store). A
LOCAL buffer that one piece writes and a later one reads becomes a GLOBAL parameter of both: the
program turns it into an intermediate in the arena, planned by liveness with the others.

A piece that is one loop nest becomes PARALLEL when `iterations_independent` (in
`backends.cpu.independence`) proves that its outermost loop's iterations touch disjoint parts of
every buffer they write (lowering writes a template's result at its outer index, or at digits of
it; a scatter's updates or a running sum across the outer loop do not pass), or write a local of
their own before reading it (a GEMM's panel and tile), and keep their scalars private. A
parallel loop of few iterations (a unit batch axis: one worker would idle) is collapsed with the
serial loop inside it (`_spread`), and every piece's index arithmetic is simplified under its
loops' ranges (`backends.cpu.simplify`: reads through reshapes and transposes lose their divisions).
"""

from __future__ import annotations

import dataclasses
import itertools

from backends.cpu.independence import free_vars, iterations_independent, walk
from backends.cpu.simplify import simplify_kernel
from ir import DType
from ir.loop import Binary, Buffer, Const, Expr, For, Kernel, Load, LoopKind, Ref, Scope, Stmt, Store, Var

__all__ = ["iterations_independent", "split_kernel"]


def _rebuffer(node, mapping: dict[Buffer, Buffer], values: dict[Var, Expr] | None = None):
    """`node` with every buffer in `mapping` replaced, and every read of a variable in `values`."""
    if values and isinstance(node, Ref) and node.var in values:
        return values[node.var]
    changes = {}
    for field in dataclasses.fields(node):
        value = getattr(node, field.name)
        if isinstance(value, Buffer) and value in mapping:
            changes[field.name] = mapping[value]
        elif isinstance(value, Expr | Stmt):
            changes[field.name] = _rebuffer(value, mapping, values)
        elif isinstance(value, tuple) and value and isinstance(value[0], Expr | Stmt):
            changes[field.name] = tuple(_rebuffer(item, mapping, values) for item in value)
    return dataclasses.replace(node, **changes) if changes else node


SPREAD_ITERATIONS = 16
"""A parallel loop of fewer iterations than this takes in the serial loop it holds (when that is
its whole body): with 2 workers, 1 iteration leaves one idle and 3 split 2:1."""


def _spread(loop: For, private: frozenset[Buffer]) -> For:
    """`loop` (PARALLEL) collapsed with the serial loops directly inside it, one at a time, while
    it has fewer than `SPREAD_ITERATIONS` iterations and the collapsed loop's are independent:
    `for i in 0..a { for j in 0..b { S } }` becomes `for t in 0..a*b { S[i := t / b, j := t % b] }`."""
    while loop.extent < SPREAD_ITERATIONS and len(loop.body) == 1 and isinstance(loop.body[0], For):
        inner = loop.body[0]
        if inner.kind is not LoopKind.SERIAL:
            break
        t = Var(f"{loop.var.name}_{inner.var.name}")
        if loop.extent == 1:
            values: dict[Var, Expr] = {loop.var: Const(0, DType.i64), inner.var: Ref(t)}
        else:
            extent = Const(inner.extent, DType.i64)
            values = {loop.var: Binary("div", Ref(t), extent), inner.var: Binary("mod", Ref(t), extent)}
        body = tuple(_rebuffer(s, {}, values) for s in inner.body)
        collapsed = For(t, loop.extent * inner.extent, body, LoopKind.PARALLEL)
        if not iterations_independent(collapsed, private):
            break
        loop = collapsed
    return loop


def _buffers(statement: Stmt) -> set[Buffer]:
    return {n.buffer for n in walk(statement) if isinstance(n, Load | Store)}


def _segments(body: tuple[Stmt, ...]) -> list[tuple[Stmt, ...]]:
    """The top-level statements in runs that share no scalar variable with one another."""
    cuts = set(range(1, len(body)))  # a cut at k: a new run starts at statement k
    assigned_at: dict[Var, int] = {}
    for k, statement in enumerate(body):
        read, assigned = free_vars(statement)
        for var in read & assigned_at.keys():
            cuts -= set(range(assigned_at[var] + 1, k + 1))
        assigned_at.update(dict.fromkeys(assigned, k))
    bounds = [0, *sorted(cuts), len(body)]
    return [body[a:b] for a, b in itertools.pairwise(bounds)]


# -- the split ----------------------------------------------------------------------------------


def split_kernel(kernel: Kernel) -> tuple[list[Kernel], list[Buffer]]:
    """`_split_kernel`, each piece's index arithmetic then simplified (`backends.cpu.simplify`)."""
    pieces, crossing = _split_kernel(kernel)
    return [simplify_kernel(piece) for piece in pieces], crossing


def _split_kernel(kernel: Kernel) -> tuple[list[Kernel], list[Buffer]]:
    """The pieces of `kernel`, in order, and the GLOBAL buffers made from locals that cross from
    one piece to another (each piece's params: the kernel's params it uses, in their order, then
    the crossing buffers it uses). A kernel of one top-level statement is its own only piece."""
    segments = _segments(kernel.body)
    if len(segments) == 1:
        (loop,) = kernel.body if len(kernel.body) == 1 else (None,)
        if isinstance(loop, For) and loop.kind is LoopKind.PARALLEL:
            spread = _spread(loop, frozenset(kernel.locals))
            if spread is not loop:
                return [dataclasses.replace(kernel, body=(spread,))], []
        return [kernel], []
    touched = [set().union(*map(_buffers, segment)) for segment in segments]
    crossing = [b for b in kernel.locals if sum(b in t for t in touched) > 1]
    promoted = {b: Buffer(b.name, b.dtype, b.shape, Scope.GLOBAL) for b in crossing}
    pieces = []
    for k, (segment, uses) in enumerate(zip(segments, touched, strict=True)):
        body = tuple(_rebuffer(s, promoted) for s in segment)
        local = tuple(b for b in kernel.locals if b in uses and b not in promoted)
        if len(body) == 1 and isinstance(body[0], For) and iterations_independent(body[0], frozenset(local)):
            body = (_spread(dataclasses.replace(body[0], kind=LoopKind.PARALLEL), frozenset(local)),)
        params = tuple(p for p in kernel.params if p in uses) + tuple(promoted[b] for b in crossing if b in uses)
        written = {n.buffer for s in body for n in walk(s) if isinstance(n, Store)}
        outputs = tuple(p for p, buffer in enumerate(params) if buffer in written)
        pieces.append(Kernel(f"{kernel.name}_p{k}", params, body, local, kernel.source, outputs))
    return pieces, [promoted[b] for b in crossing]
