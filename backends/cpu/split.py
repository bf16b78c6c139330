"""Splitting a kernel of several top-level loop nests into one kernel per nest, so that each nest
that can run in parallel does.

Lowering (`backends.lowering.group`) makes a group's kernel PARALLEL only when its body is one
loop nest; a group whose template result is read transposed, or that holds a value read twice,
lowers to several nests in a row, and the whole kernel ran on worker 0. Here each top-level
statement becomes a piece (`<kernel>_p0`, `_p1`, ...), except that statements sharing a scalar
variable stay together (a scalar result: the accumulator's start, its loop and its store). A
LOCAL buffer that one piece writes and a later one reads becomes a GLOBAL parameter of both: the
program turns it into an intermediate in the arena, planned by liveness with the others.

A piece that is one loop nest becomes PARALLEL when `iterations_independent` proves that its
outermost loop's iterations touch disjoint parts of every buffer they write (lowering writes a
template's result at its outer index; a scatter's updates or a running sum across the outer
loop do not pass) and keep their scalars private.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator

from ir.loop import (
    Assign,
    Binary,
    Buffer,
    Cast,
    Const,
    Expr,
    For,
    Kernel,
    Load,
    LoopKind,
    Ref,
    Scope,
    Select,
    Stmt,
    Store,
    Var,
)

Interval = tuple[int, int]


def _children(node: object) -> Iterator[object]:
    for field in dataclasses.fields(node):  # type: ignore[arg-type]
        value = getattr(node, field.name)
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, Expr | Stmt):
                yield item


def _walk(node: object) -> Iterator[object]:
    """`node` and everything inside it, parents before children, in program order."""
    yield node
    for child in _children(node):
        yield from _walk(child)


def _rebuffer(node, mapping: dict[Buffer, Buffer]):
    """`node` with every buffer in `mapping` replaced."""
    changes = {}
    for field in dataclasses.fields(node):
        value = getattr(node, field.name)
        if isinstance(value, Buffer) and value in mapping:
            changes[field.name] = mapping[value]
        elif isinstance(value, Expr | Stmt):
            changes[field.name] = _rebuffer(value, mapping)
        elif isinstance(value, tuple) and value and isinstance(value[0], Expr | Stmt):
            changes[field.name] = tuple(_rebuffer(item, mapping) for item in value)
    return dataclasses.replace(node, **changes) if changes else node


def _buffers(statement: Stmt) -> set[Buffer]:
    return {n.buffer for n in _walk(statement) if isinstance(n, Load | Store)}


def _free_vars(statement: Stmt) -> tuple[set[Var], set[Var]]:
    """(variables read that the statement does not bind as a loop index, variables assigned)."""
    nodes = list(_walk(statement))
    bound = {n.var for n in nodes if isinstance(n, For)}
    read = {n.var for n in nodes if isinstance(n, Ref)} - bound
    return read, {n.var for n in nodes if isinstance(n, Assign)}


def _segments(body: tuple[Stmt, ...]) -> list[tuple[Stmt, ...]]:
    """The top-level statements in runs that share no scalar variable with one another."""
    cuts = set(range(1, len(body)))  # a cut at k: a new run starts at statement k
    assigned_at: dict[Var, int] = {}
    for k, statement in enumerate(body):
        read, assigned = _free_vars(statement)
        for var in read & assigned_at.keys():
            cuts -= set(range(assigned_at[var] + 1, k + 1))
        assigned_at.update(dict.fromkeys(assigned, k))
    bounds = [0, *sorted(cuts), len(body)]
    return [body[a:b] for a, b in itertools.pairwise(bounds)]


# -- independence of a loop's iterations ---------------------------------------------------------


def _affine(expr: Expr, outer: Var, ranges: dict[Var, Interval]) -> tuple[int, int, int] | None:
    """`expr` as `c * outer + r` with r in [lo, hi] over the inner loops' ranges: (c, lo, hi), or
    None when it is not of that form (a load, a variable of unknown range, outer under a division)."""
    match expr:
        case Const(value=value) if isinstance(value, int) and not isinstance(value, bool):
            return 0, value, value
        case Ref(var=var) if var is outer:
            return 1, 0, 0
        case Ref(var=var) if var in ranges:
            return 0, *ranges[var]
        case Cast(x=x):
            return _affine(x, outer, ranges)
        case Binary(op=op, a=a, b=b):
            left, right = _affine(a, outer, ranges), _affine(b, outer, ranges)
            if left is None or right is None:
                return None
            return _combine(op, left, right)
        case Select(a=a, b=b):
            left, right = _affine(a, outer, ranges), _affine(b, outer, ranges)
            if left is None or right is None or left[0] or right[0]:
                return None
            return 0, min(left[1], right[1]), max(left[2], right[2])
        case _:
            return None


def _combine(op: str, left: tuple[int, int, int], right: tuple[int, int, int]) -> tuple[int, int, int] | None:
    (c1, lo1, hi1), (c2, lo2, hi2) = left, right
    match op:
        case "add":
            return c1 + c2, lo1 + lo2, hi1 + hi2
        case "sub":
            return c1 - c2, lo1 - hi2, hi1 - lo2
        case "mul" if c1 == 0 and c2 == 0:
            corners = (lo1 * lo2, lo1 * hi2, hi1 * lo2, hi1 * hi2)
            return 0, min(corners), max(corners)
        case "mul" if (c2 == 0 and lo2 == hi2) or (c1 == 0 and lo1 == hi1):
            (c, lo, hi), k = (left, lo2) if c2 == 0 and lo2 == hi2 else (right, lo1)
            return c * k, min(lo * k, hi * k), max(lo * k, hi * k)
        case "div" if c1 == 0 and c2 == 0 and lo2 == hi2 and lo2 > 0 and lo1 >= 0:
            return 0, lo1 // lo2, hi1 // lo2
        case "mod" if c1 == 0 and c2 == 0 and lo2 == hi2 and lo2 > 0 and lo1 >= 0:
            return 0, 0, min(hi1, lo2 - 1)
        case "max" | "min" if c1 == 0 and c2 == 0:
            pick = max if op == "max" else min
            return 0, pick(lo1, lo2), pick(hi1, hi2)
        case _:
            return None


def _scalars_private(loop: For) -> bool:
    """Every variable the body assigns is first mentioned by a top-level assignment of the body
    that does not read it: each iteration starts its accumulators afresh."""
    assigned = {n.var for n in _walk(loop) if isinstance(n, Assign)}
    for var in assigned:
        first = next(s for s in loop.body if any(isinstance(n, Ref | Assign) and n.var is var for n in _walk(s)))
        if not (isinstance(first, Assign) and first.var is var and var not in _free_vars(first)[0]):
            return False
    return True


def iterations_independent(loop: For) -> bool:
    """Whether the iterations of `loop` may run on different workers: its scalars are private,
    and for every buffer it writes, all its accesses to that buffer are at `c * i + r` (i the
    loop's index, the same c != 0) with every r of one iteration inside a window narrower than
    |c|, so no two iterations touch the same element."""
    if not _scalars_private(loop):
        return False
    ranges: dict[Var, Interval] = {}
    accesses: dict[Buffer, list[Expr]] = {}

    def visit(node: object) -> None:
        if isinstance(node, For) and node is not loop:
            ranges[node.var] = (0, node.extent - 1)
        if isinstance(node, Load | Store):
            accesses.setdefault(node.buffer, []).append(node.index)
        for child in _children(node):
            visit(child)

    visit(loop)
    written = {n.buffer for n in _walk(loop) if isinstance(n, Store)}
    for buffer in written:
        forms = [_affine(index, loop.var, ranges) for index in accesses[buffer]]
        if any(f is None for f in forms) or len({f[0] for f in forms}) != 1 or forms[0][0] == 0:
            return False
        low, high = min(f[1] for f in forms), max(f[2] for f in forms)
        if high - low >= abs(forms[0][0]):
            return False
    return True


# -- the split ----------------------------------------------------------------------------------


def split_kernel(kernel: Kernel) -> tuple[list[Kernel], list[Buffer]]:
    """The pieces of `kernel`, in order, and the GLOBAL buffers made from locals that cross from
    one piece to another (each piece's params: the kernel's params it uses, in their order, then
    the crossing buffers it uses). A kernel of one top-level statement is its own only piece."""
    segments = _segments(kernel.body)
    if len(segments) == 1:
        return [kernel], []
    touched = [set().union(*map(_buffers, segment)) for segment in segments]
    crossing = [b for b in kernel.locals if sum(b in t for t in touched) > 1]
    promoted = {b: Buffer(b.name, b.dtype, b.shape, Scope.GLOBAL) for b in crossing}
    pieces = []
    for k, (segment, uses) in enumerate(zip(segments, touched, strict=True)):
        body = tuple(_rebuffer(s, promoted) for s in segment)
        if len(body) == 1 and isinstance(body[0], For) and iterations_independent(body[0]):
            body = (dataclasses.replace(body[0], kind=LoopKind.PARALLEL),)
        params = tuple(p for p in kernel.params if p in uses) + tuple(promoted[b] for b in crossing if b in uses)
        written = {n.buffer for s in body for n in _walk(s) if isinstance(n, Store)}
        outputs = tuple(p for p, buffer in enumerate(params) if buffer in written)
        local = tuple(b for b in kernel.locals if b in uses and b not in promoted)
        pieces.append(Kernel(f"{kernel.name}_p{k}", params, body, local, kernel.source, outputs))
    return pieces, [promoted[b] for b in crossing]
