"""How the GPU GEMM templates (`backends.cuda.templates_gpu_gemm`) copy one K step of an operand
into its shared-memory tile: with `cp_async` (the kernel IR's asynchronous global-to-shared copy,
`ir.loop.nodes.Call`) in vectors of 16, 8 or 4 bytes where that is proven safe, else with plain
loads and stores, one element per thread and pass.

A vector copy needs the operand element to be a plain read of a global buffer in the tile's dtype
(no prologue arithmetic, no conversion but an exact widening), the vector's elements consecutive in
that buffer and in the tile, and its first element at a multiple of the vector in both. That is
proven on the index expressions themselves: `linear` writes an index as a sum of integer
coefficients times atoms (variables and the subexpressions it cannot see into, such as `b // 3`)
plus a constant; the index is a multiple of n when every coefficient, times what the atom is known
to be a multiple of (a tile origin), and the constant are; the next element of the vector is at
index + 1 when shifting the position by one changes only the constant, by one. Buffers start
16-byte aligned (the runtime's allocations; torch tensors are checked where they are passed). At
the edges a vector lies wholly inside or wholly outside the operand (its extent along the vector
is a multiple of it), and one outside is zero-filled (`valid` false) without being read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from backends.lowering.expr import i64
from backends.lowering.group import GroupLowering
from ir import DType
from ir.loop import (
    Binary,
    Buffer,
    Call,
    Cast,
    Const,
    Expr,
    For,
    If,
    Load,
    LoopKind,
    Ref,
    Scope,
    Select,
    Stmt,
    Store,
    Var,
)

Element = Callable[[Expr, Expr], Expr]
"""(row of the operand, k) -> the operand's element there (compute dtype)."""
VECTOR_BYTES = (16, 8, 4)
"""cp.async's sizes: 16 bytes (.cg, L2 only) where proven, else 8 or 4 (.ca)."""


def linear(expr: Expr) -> tuple[dict[Expr, int], int]:
    """`expr` (integer) as ({atom: coefficient}, constant): a sum of integer multiples of atoms."""
    match expr:
        case Const(value, dtype) if dtype.is_integer:
            return {}, int(value)
        case Binary("add" | "sub" as op, a, b):
            (ta, ca), (tb, cb) = linear(a), linear(b)
            sign = 1 if op == "add" else -1
            terms = dict(ta)
            for atom, coefficient in tb.items():
                terms[atom] = terms.get(atom, 0) + sign * coefficient
            return {atom: c for atom, c in terms.items() if c}, ca + sign * cb
        case Binary("mul", a, b):
            (ta, ca), (tb, cb) = linear(a), linear(b)
            if not ta:
                return {atom: ca * c for atom, c in tb.items() if ca * c}, ca * cb
            if not tb:
                return {atom: cb * c for atom, c in ta.items() if cb * c}, ca * cb
        case Cast(x, DType.i64) if x.dtype in (DType.i32, DType.i64):  # widening keeps the value
            return linear(x)
    return {expr: 1}, 0


def multiple_of(index: Expr, count: int, known: Mapping[Expr, int]) -> bool:
    """Whether `index` is always a multiple of `count`, `known` giving atoms' known divisors."""
    terms, constant = linear(index)
    return constant % count == 0 and all(c * known.get(atom, 1) % count == 0 for atom, c in terms.items())


def source_load(expr: Expr, dtype: DType) -> Load | None:
    """The global `Load` that `expr` is, up to an exact widening, when its buffer holds `dtype`."""
    if isinstance(expr, Cast) and expr.dtype == DType.f32 and expr.x.dtype in (DType.f16, DType.bf16, DType.f32):
        expr = expr.x
    if isinstance(expr, Load) and expr.buffer.scope is Scope.GLOBAL and expr.buffer.dtype == dtype:
        return expr
    return None


def unit_axis(lowering: GroupLowering, element: Element) -> str | None:
    """Which position of the operand ("rows" or "depth") steps through consecutive elements of its
    global buffer, if either does: the shared tile then keeps that axis contiguous."""
    row, k = lowering.var("probe_row"), lowering.var("probe_k")
    value = element(Ref(row), Ref(k))
    load = value.x if isinstance(value, Cast) else value
    if not isinstance(load, Load):
        return None
    terms, _ = linear(load.index)
    for axis, var in (("depth", k), ("rows", row)):
        if terms.get(Ref(var)) == 1:
            return axis
    return None


@dataclass(frozen=True)
class Layout:
    """A stage of an operand in shared memory: `rows` x `depth` (K) elements, the contiguous axis
    (`depth_major`: element (r, d) at r * pitch + d; else at d * pitch + r) padded to `pitch`."""

    rows: int
    depth: int
    depth_major: bool
    pitch: int

    @property
    def size(self) -> int:
        return (self.rows if self.depth_major else self.depth) * self.pitch

    def at(self, r: Expr, d: Expr) -> Expr:
        return r * self.pitch + d if self.depth_major else d * self.pitch + r


@dataclass
class OperandStage:
    """The copy of one K step of an operand (`element`) into slot `slot` of `tile` (`stages` slots
    of `layout`); `vector` elements per cp_async, or 0 for plain loads and stores."""

    lowering: GroupLowering
    tile: Buffer
    layout: Layout
    element: Element
    origin: Var
    """The block's first row of the operand (a multiple of `layout.rows`)."""
    extent: int
    """The operand's rows (M or N)."""
    k: int
    thread: Var
    threads: int
    along_depth: bool
    """Consecutive threads take consecutive elements along K (else along the rows)."""
    vector: int = 0

    def copies(self, k0: Expr, slot: Expr) -> list[Stmt]:
        """Statements that copy the K step starting at `k0` (a multiple of the depth) into `slot`."""
        layout, width = self.layout, max(self.vector, 1)
        rows, depth = layout.rows, layout.depth
        per_line = (depth if self.along_depth else rows) // width
        total, threads = rows * depth // width, self.threads
        pass_ = self.lowering.var("pass")
        e = Ref(pass_) * threads + Ref(self.thread) if total > threads else Ref(self.thread)
        if self.along_depth:
            r, d = e // per_line, (e % per_line) * width if width > 1 else e % per_line
        else:
            r, d = (e % per_line) * width if width > 1 else e % per_line, e // per_line
        guards = []
        if self.extent % rows:
            guards.append((Ref(self.origin) + r).lt(i64(self.extent)))
        if self.k % depth:
            guards.append((k0 + d).lt(i64(self.k)))
        inside = None if not guards else guards[0] if len(guards) == 1 else Binary("and", *guards)
        target = slot * layout.size + layout.at(r, d)
        value = self.element(Ref(self.origin) + r, k0 + d)
        if self.vector:
            load = source_load(value, self.tile.dtype)
            assert load is not None  # `plan_stage` proved it
            copy = Call("cp_async", (load, Const(self.vector, DType.i32), inside or Const(True, DType.bool)),
                        self.tile.dtype)  # fmt: skip
            store: Stmt = Store(self.tile, target, copy)
        else:
            value = value.cast(self.tile.dtype)
            if inside is not None:
                value = Select(inside, value, Const(0.0, self.tile.dtype))
            store = Store(self.tile, target, value)
        if total % threads:
            store = If(e.lt(i64(total)), (store,))
        return [For(pass_, -(-total // threads), (store,), LoopKind.UNROLLED)] if total > threads else [store]

    def vector_proven(self, count: int) -> bool:
        """Whether copies of `count` elements along the thread axis are safe (see the module doc)."""
        layout = self.layout
        rows, depth, along = layout.rows, layout.depth, (layout.depth if self.along_depth else layout.rows)
        if along % count or (self.k if self.along_depth else self.extent) % count or rows * depth % count:
            return False
        if layout.depth_major != self.along_depth or layout.pitch % count or layout.size % count:
            return False
        kt, thread = self.lowering.var("kt"), self.lowering.var("vector")
        k0, origin = Ref(kt) * depth, Ref(self.origin)
        known = {origin: rows}
        base = Ref(thread) * count  # a vector's first element along the thread axis; the other axis: any
        other = self.lowering.var("other")
        r, d = (Ref(other), base) if self.along_depth else (base, Ref(other))
        first = source_load(self.element(origin + r, k0 + d), self.tile.dtype)
        if first is None or not multiple_of(first.index, count, known):
            return False
        terms, constant = linear(first.index)
        for step in range(1, count):
            shifted = (r, d + step) if self.along_depth else (r + step, d)
            load = source_load(self.element(origin + shifted[0], k0 + shifted[1]), self.tile.dtype)
            if load is None or load.buffer is not first.buffer or linear(load.index) != (terms, constant + step):
                return False
        return True


def plan_stage(stage: OperandStage) -> OperandStage:
    """`stage` with the widest proven cp_async vector, or plain copies (vector 0)."""
    itemsize = stage.tile.dtype.itemsize
    for size in VECTOR_BYTES:
        if size % itemsize == 0 and stage.vector_proven(size // itemsize):
            stage.vector = size // itemsize
            break
    return stage
