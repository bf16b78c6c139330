"""When the lanes of a vectorized loop may run at once: the safety analysis of `backends.llvm.vectorize`.

`backends.llvm.vectorize` emits a `For(kind=VECTORIZED)` loop as explicit SIMD code only where
running W iterations side by side leaves what the scalar loop leaves; `obstacle` decides that and
otherwise says why not (the loop then stays scalar with LLVM's vectorizer hint). A loop is refused
for an `If`, a barrier, a GPU-bound inner loop or a call other than a float `fma` or an i32
`dot4_u8s8` in its body; a
variable read before it is assigned in an iteration or used outside the loop; a store every lane
makes to one element, a store in an inner loop that two lanes' iterations could both make, stores
to one buffer that may overlap within W lanes, and a buffer read at another element than the ones
the iteration writes. `LaneShapes` gives each expression its lane shape (uniform, linear, varying:
see `Shape`), which both the checks and the emission read; `widest_bits` the element width that
sets W. The module only reads kernel IR: it emits nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence

from ir.dtype import DType
from ir.loop.nodes import (
    Assign,
    Barrier,
    Binary,
    Buffer,
    Call,
    Cast,
    Const,
    Expr,
    For,
    If,
    Load,
    Ref,
    Select,
    Stmt,
    Store,
    Unary,
    Var,
)

# -- what the lanes compute ---------------------------------------------------------------------


class Shape(enum.Enum):
    """How an expression varies across the lanes (see `backends.llvm.vectorize`)."""

    UNIFORM = "uniform"
    LINEAR = "linear"
    VARYING = "varying"


# -- the checks: when lanes may run at once -----------------------------------------------------


def walk(body: Sequence[Stmt], depth: int = 0) -> Iterator[tuple[Stmt, int]]:
    """Every statement of `body` in program order, with how many loops it is nested in."""
    for stmt in body:
        yield stmt, depth
        match stmt:
            case For(_, _, inner, _):
                yield from walk(inner, depth + 1)
            case If(_, then, otherwise):
                yield from walk(then, depth + 1)
                yield from walk(otherwise, depth + 1)


def expressions(expr: Expr) -> Iterator[Expr]:
    """`expr` and every expression inside it, parents first."""
    yield expr
    match expr:
        case Load(_, index):
            yield from expressions(index)
        case Unary(_, x) | Cast(x, _):
            yield from expressions(x)
        case Binary(_, a, b):
            yield from expressions(a)
            yield from expressions(b)
        case Select(condition, a, b):
            for part in (condition, a, b):
                yield from expressions(part)
        case Call(_, args, _):
            for arg in args:
                yield from expressions(arg)


def _stmt_exprs(stmt: Stmt) -> tuple[Expr, ...]:
    match stmt:
        case Store(_, index, value):
            return (index, value)
        case Assign(_, value):
            return (value,)
        case If(condition, _, _):
            return (condition,)
    return ()


def _occurrences(body: Sequence[Stmt]) -> Iterator[tuple[Var, bool]]:
    """(variable, is it assigned here) for each use in program order, reads of an assignment's
    value before its write."""
    for stmt, _ in walk(body):
        for expr in _stmt_exprs(stmt):
            yield from ((e.var, False) for e in expressions(expr) if isinstance(e, Ref))
        if isinstance(stmt, Assign):
            yield stmt.var, True


def obstacle(kernel_body: Sequence[Stmt], loop: For, width: int) -> str | None:
    statements = list(walk(loop.body))
    for stmt, _ in statements:
        match stmt:
            case If():
                return "its body has an If"
            case Barrier():
                return "its body has a barrier"
            case For(var, _, _, kind) if kind.is_gpu:
                return f"loop {var.name} is bound to {kind.value}"
        for expr in _stmt_exprs(stmt):
            calls = [e for e in expressions(expr) if isinstance(e, Call) and not _vectorizable_call(e)]
            if calls:
                return f"it calls {calls[0].name}"
    if loop.var.dtype not in (DType.i64, DType.i32):
        return f"its variable is {loop.var.dtype}"
    per_lane = {stmt.var for stmt, _ in statements if isinstance(stmt, Assign)}
    first: dict[Var, bool] = {}
    for var, assigned in _occurrences(loop.body):
        first.setdefault(var, assigned)
    for var in per_lane:
        if not first[var]:
            return f"{var.name} is read before it is assigned in an iteration (a dependence between iterations)"
    outside = {var for var, _ in _occurrences_outside(kernel_body, loop)}
    for var in per_lane & outside:
        return f"{var.name} is also used outside the loop"
    inner = {stmt.var for stmt, _ in statements if isinstance(stmt, For)}
    shapes = LaneShapes(loop.var, per_lane)
    stores: dict[Buffer, list[tuple[Expr, int]]] = {}
    for stmt, depth in statements:
        if isinstance(stmt, Store):
            stores.setdefault(stmt.buffer, []).append((stmt.index, depth))
    for buffer, written in stores.items():
        for index, depth in written:
            shape = shapes.of(index)
            if shape is Shape.UNIFORM:
                return f"every lane stores to the same element of {buffer.name}"
            if depth > 0 and (shape is not Shape.LINEAR or _mentions(index, inner)):
                return f"a store to {buffer.name} in an inner loop may hit an element another lane's iteration writes"
        if len(written) > 1 and not _apart([index for index, _ in written], width):
            return f"the stores to {buffer.name} may overlap within {width} lanes"
    for stmt, _ in statements:
        for expr in _stmt_exprs(stmt):
            for load in (e for e in expressions(expr) if isinstance(e, Load) and e.buffer in stores):
                if all(load.index != index for index, _ in stores[load.buffer]):
                    return f"{load.buffer.name} is read at another element than the ones the iteration writes"
    return None


def _apart(indices: Sequence[Expr], width: int) -> bool:
    """Whether every two of these indices are equal or at least `width` apart, so that storing
    them one after the other for all lanes leaves what the scalar order leaves."""
    forms = [_affine(index) for index in indices]
    for k, first in enumerate(forms):
        for second in forms[k + 1 :]:
            if first is None or second is None:
                return False
            difference = {v: first.get(v, 0) - second.get(v, 0) for v in first.keys() | second.keys()}
            if any(c for v, c in difference.items() if v is not None):
                return False
            if 0 < abs(difference.get(None, 0)) < width:
                return False
    return True


def _affine(expr: Expr) -> dict[Var | None, int] | None:
    """`expr` as {variable: coefficient, None: constant}, or None when it is not affine."""
    match expr:
        case Const(value, dtype) if dtype.is_integer:
            return {None: int(value)}
        case Ref(var):
            return {var: 1}
        case Binary("add" | "sub" as op, a, b):
            left, right = _affine(a), _affine(b)
            if left is None or right is None:
                return None
            sign = 1 if op == "add" else -1
            return {v: left.get(v, 0) + sign * right.get(v, 0) for v in left.keys() | right.keys()}
        case Binary("mul", a, Const(value, dtype)) | Binary("mul", Const(value, dtype), a) if dtype.is_integer:
            form = _affine(a)
            return None if form is None else {v: c * int(value) for v, c in form.items()}
    return None


def _occurrences_outside(body: Sequence[Stmt], loop: For) -> Iterator[tuple[Var, bool]]:
    """The variable uses of `body` that are not inside `loop`."""
    for stmt in body:
        if stmt is loop:
            continue
        match stmt:
            case For(_, _, inner, _):
                yield from _occurrences_outside(inner, loop)
            case If(_, then, otherwise):
                for expr in _stmt_exprs(stmt):
                    yield from ((e.var, False) for e in expressions(expr) if isinstance(e, Ref))
                yield from _occurrences_outside(then, loop)
                yield from _occurrences_outside(otherwise, loop)
            case _:
                yield from _occurrences([stmt])


def _mentions(expr: Expr, variables: set[Var]) -> bool:
    return any(isinstance(e, Ref) and e.var in variables for e in expressions(expr))


def reads_memory(expr: Expr) -> bool:
    return any(isinstance(e, Load) for e in expressions(expr))


def widest_bits(loop: For) -> int:
    """The widest element the lanes hold: loaded and stored elements, per-lane variables and
    float arithmetic (i64 index arithmetic stays scalar where it can and does not count)."""
    bits = [8]
    for stmt, _ in walk(loop.body):
        match stmt:
            case Store(buffer, _, value):
                bits += [_bits(buffer.dtype), *_value_bits(value)]
            case Assign(var, value):
                bits += [_bits(var.dtype), *_value_bits(value)]
    return max(bits)


def _value_bits(expr: Expr) -> list[int]:
    return [_bits(e.buffer.dtype if isinstance(e, Load) else e.dtype)
            for e in expressions(expr) if isinstance(e, Load) or e.dtype.is_float]  # fmt: skip


def _bits(dtype: DType) -> int:
    """Bits of one lane in registers: bf16 computes in f32, bool is one byte in memory."""
    return 32 if dtype == DType.bf16 else dtype.itemsize * 8


class LaneShapes:
    """The lane shape of each expression (memoised by identity: expressions are trees)."""

    def __init__(self, var: Var, per_lane: set[Var]) -> None:
        self.var, self.lane_vars = var, {var} | per_lane
        self.memo: dict[int, tuple[Expr, Shape]] = {}

    def of(self, expr: Expr) -> Shape:
        known = self.memo.get(id(expr))
        if known is not None and known[0] is expr:
            return known[1]
        shape = self._classify(expr)
        self.memo[id(expr)] = (expr, shape)
        return shape

    def _classify(self, expr: Expr) -> Shape:
        match expr:
            case Const():
                return Shape.UNIFORM
            case Ref(var):
                if var is self.var:
                    return Shape.LINEAR if var.dtype == DType.i64 else Shape.VARYING
                return Shape.VARYING if var in self.lane_vars else Shape.UNIFORM
            case Binary(op, a, b) if expr.dtype == DType.i64 and op in ("add", "sub", "mul"):
                shapes = (self.of(a), self.of(b))
                if shapes == (Shape.UNIFORM, Shape.UNIFORM):
                    return Shape.UNIFORM
                if op == "add" and set(shapes) == {Shape.LINEAR, Shape.UNIFORM}:
                    return Shape.LINEAR
                if op == "sub" and shapes == (Shape.LINEAR, Shape.UNIFORM):
                    return Shape.LINEAR
                if op == "mul" and shapes[0] is Shape.LINEAR and b == Const(1, DType.i64):
                    return Shape.LINEAR
                return Shape.VARYING
        parts = [e for e in _children(expr)]
        return Shape.VARYING if any(self.of(p) is not Shape.UNIFORM for p in parts) else Shape.UNIFORM


def _children(expr: Expr) -> tuple[Expr, ...]:
    match expr:
        case Load(_, index):
            return (index,)
        case Unary(_, x) | Cast(x, _):
            return (x,)
        case Binary(_, a, b):
            return (a, b)
        case Select(condition, a, b):
            return (condition, a, b)
        case Call(_, args, _):
            return tuple(args)
    return ()


def _vectorizable_call(call: Call) -> bool:
    """Calls the vector emitter has a lane-wise form of: a float fma, VNNI's i32 dot4_u8s8."""
    return (call.name == "fma" and call.dtype.is_float) or (call.name == "dot4_u8s8" and call.dtype == DType.i32)
