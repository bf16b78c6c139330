"""Index arithmetic of a kernel simplified where loop ranges prove it: `(c * x + r) / d` becomes
`c / d * x` and `(c * x + r) % d` becomes `r` when d divides c and 0 <= r < d.

Lowering reads a value through reshapes and transposes by flattening its index and unflattening
it again (`backends.lowering.indexing`), so a copy that moves [3, 128, 768] heads out of a
[128, 2304] GEMM result reads `t[(i0 * 98304 + i1 * 768 + i3) / 768 % 128 * 2304 + ...]`: a
division per element, and, in a vectorized loop over i3, a gather. Every term of such an index is
a loop index times a constant, so its range is known, and the division cancels:
`t[i1 * 2304 + i0 * 768 + i3]`, contiguous in i3. `split_kernel` applies this to every piece.

Exact: applied only where every term is non-negative (C's truncating division is then floor
division) and the remainder's range fits below the divisor, so the value is the same for every
index the loops produce.
"""

from __future__ import annotations

import dataclasses

from backends.cpu.independence import walk
from ir import DType
from ir.loop import Binary, Const, Expr, For, Kernel, Ref, Stmt, Var

Term = tuple[int, Expr | None]
"""coefficient * atom (None: the constant 1)."""


def _terms(expr: Expr) -> list[Term]:
    match expr:
        case Const(value=value) if isinstance(value, int) and not isinstance(value, bool):
            return [(value, None)]
        case Binary(op="add", a=a, b=b):
            return _terms(a) + _terms(b)
        case Binary(op="mul", a=a, b=Const(value=k)) if isinstance(k, int):
            return [(c * k, atom) for c, atom in _terms(a)]
        case Binary(op="mul", a=Const(value=k), b=b) if isinstance(k, int):
            return [(c * k, atom) for c, atom in _terms(b)]
        case _:
            return [(1, expr)]


def _largest(atom: Expr, ranges: dict[Var, int]) -> int | None:
    """The largest value of a non-negative `atom`, or None when it may be negative or unbounded."""
    match atom:
        case Ref(var=var) if var in ranges:
            return ranges[var] - 1
        case Binary(op="div", a=a, b=Const(value=d)) if isinstance(d, int) and d > 0:
            top = _sum_largest(_terms(a), ranges)
            return None if top is None else top // d
        case Binary(op="mod", a=a, b=Const(value=d)) if isinstance(d, int) and d > 0:
            top = _sum_largest(_terms(a), ranges)
            return None if top is None else min(top, d - 1)
        case _:
            return None


def _sum_largest(terms: list[Term], ranges: dict[Var, int]) -> int | None:
    total = 0
    for c, atom in terms:
        top = 1 if atom is None else _largest(atom, ranges)
        if c < 0 or top is None:
            return None
        total += c * top
    return total


def _build(terms: list[Term]) -> Expr:
    const = sum(c for c, atom in terms if atom is None)
    parts = [
        atom if c == 1 else Binary("mul", atom, Const(c, DType.i64)) for c, atom in terms if atom is not None and c
    ]
    expr: Expr | None = None
    for part in parts:
        expr = part if expr is None else Binary("add", expr, part)
    if expr is None:
        return Const(const, DType.i64)
    return Binary("add", expr, Const(const, DType.i64)) if const else expr


def simplify_index(expr: Expr, ranges: dict[Var, int]) -> Expr:
    """`expr` with every `/ d` and `% d` of a non-negative sum that the ranges (loop variable ->
    extent) prove cancel replaced (see the module doc); anything else as it is."""
    changes = {}
    for field in dataclasses.fields(expr):
        value = getattr(expr, field.name)
        if isinstance(value, Expr):
            simpler = simplify_index(value, ranges)
            if simpler is not value:
                changes[field.name] = simpler
    if changes:
        expr = dataclasses.replace(expr, **changes)
    match expr:
        case Binary(op="div" | "mod" as op, a=a, b=Const(value=d)) if (
            isinstance(d, int) and d > 0 and a.dtype == DType.i64
        ):
            terms = _terms(a)
            if _sum_largest(terms, ranges) is None:
                return expr
            const = sum(c for c, atom in terms if atom is None)
            high, low = divmod(const, d)
            whole = [(c, atom) for c, atom in terms if atom is not None and c % d == 0]
            rest = [(c, atom) for c, atom in terms if atom is not None and c % d]
            reach = _sum_largest([*rest, (low, None)], ranges)
            if reach is None or reach >= d:
                return expr
            if op == "div":
                return _build([(c // d, atom) for c, atom in whole] + [(high, None)])
            return _build([*rest, (low, None)])
    return expr


def _rewrite(node, ranges: dict[Var, int]):
    changes = {}
    for field in dataclasses.fields(node):
        value = getattr(node, field.name)
        if isinstance(value, Expr):
            simpler = simplify_index(value, ranges)
            if simpler is not value:
                changes[field.name] = simpler
        elif isinstance(value, Stmt):
            changes[field.name] = _rewrite(value, ranges)
        elif isinstance(value, tuple) and value and isinstance(value[0], Stmt):
            changes[field.name] = tuple(_rewrite(item, ranges) for item in value)
    return dataclasses.replace(node, **changes) if changes else node


def simplify_kernel(kernel: Kernel) -> Kernel:
    """`kernel` with its index arithmetic simplified under its loops' ranges."""
    ranges: dict[Var, int] = {}
    for loop in (n for s in kernel.body for n in walk(s) if isinstance(n, For)):
        ranges[loop.var] = max(ranges.get(loop.var, 0), loop.extent)  # a variable two loops bind
    body = tuple(_rewrite(s, ranges) for s in kernel.body)
    return kernel if body == kernel.body else dataclasses.replace(kernel, body=body)
