"""GPU templates: fused groups lowered straight to GPU-scheduled kernel IR, for the group kinds
whose GPU form is not a CPU loop nest spread over threads. `backends.cuda.schedule.schedule_group`
tries them first and falls back to `gpu_schedule(lower_group(...))`.

- **Rows** (`_rows`): a group whose one non-elementwise node reduces over trailing axes:
  softmax/log_softmax over the last axis, layer_norm/rms_norm over their trailing axes, and
  sum/mean/max/min over trailing axes. Each row gets `W` threads (a power of two): a warp or
  part of one for rows up to `WARP_ROW_LIMIT` elements (several rows per block), a whole block
  beyond. Each thread strides over the row (element j = k*W + lane), combines into a register,
  then the row's threads combine by a butterfly of `shfl_xor`s (every lane ends with the
  result, so no broadcast follows), and, for a block per row, through one shared slot per warp
  with a barrier. The group's prologue is inlined into the reads, its epilogue (the affine
  weight and bias, activations, casts, reshapes) into the writes, through the CPU lowering's
  `GroupLowering.compute`/`element`, so both backends share one definition of every op.
- **Pointwise** (`_pointwise`): a group of elementwise and movement ops only: one output
  element per thread over a flat index, with a grid-stride loop where the elements outnumber
  `max_blocks` blocks.

Numerics: per element, the same expressions as the CPU templates (`backends.lowering.templates`),
computed in f32 for f16/bf16; but a row's sum or max is combined in another order (strided
partial sums, then a tree), so sums differ from the serial interpreter by rounding (a few ulps
of the row's magnitude; max and min are exact). Tests compare with a tolerance for that reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from backends.lowering.expr import Unflattened, const, flat_index, i64, unflatten

# The epilogue probe of the CPU lowering: `EpilogueMismatch` says an output reads the row's result at
# another position; `inlinable` is the lowering's rule for what is computed where it is read.
from backends.lowering.group import EpilogueMismatch, GroupLowering, compute_dtype, inlinable
from ir import DType, Node, Value
from ir.loop import (
    WARP_SIZE,
    Assign,
    Barrier,
    Binary,
    Buffer,
    Call,
    Const,
    Expr,
    For,
    If,
    Kernel,
    Load,
    LoopKind,
    Ref,
    Scope,
    Stmt,
    Store,
    Unary,
    Var,
)

WARP_ROW_LIMIT = 1024
"""Rows up to this length get a warp (or less); longer ones a block of `BLOCK_ROW_THREADS`."""
BLOCK_ROW_THREADS = 256
ROWS_BLOCK_THREADS = 128
"""Block size when several short rows share a block."""
MAX_BLOCKS = 4096
"""Pointwise kernels launch at most this many blocks and loop over the rest (a grid stride)."""
_SHUFFLE_DTYPES = frozenset({DType.f32, DType.f64, DType.i32, DType.i64})
"""Compute dtypes a warp shuffle carries (f16 and bf16 compute in f32)."""


def gpu_template(
    node: Node,
    name: str,
    source: str = "",
    threads_per_block: int = 256,
    threads_per_row: int | None = None,
    max_blocks: int = MAX_BLOCKS,
) -> tuple[Kernel, str] | None:
    """The GPU kernel of the `fused` node `node` by a template, and the template's name; None
    when no template fits the group (the caller falls back to the generic schedule)."""
    if any(value.type.numel == 0 for value in node.outputs):
        return None
    lowering = GroupLowering(node.attrs["body"], name, source)
    anchors = [n for n in lowering.body.nodes if n.op != "const" and not inlinable(n)]
    try:
        if not anchors:
            return _pointwise(lowering, threads_per_block, max_blocks), "pointwise"
        if len(anchors) == 1:
            first = _row_form(anchors[0])
            if first is not None:
                return _rows(lowering, anchors[0], first, threads_per_row), f"rows.{anchors[0].op}"
    except EpilogueMismatch:  # an output reads a row's result at another element: no thread holds it
        return None
    return None


# -- pointwise -----------------------------------------------------------------------------------


def _pointwise(lowering: GroupLowering, threads_per_block: int, max_blocks: int) -> Kernel:
    """One output element per thread: element o of every output (of fewer elements: where o is
    below their count)."""
    outputs = lowering.body.outputs
    count = max(v.type.numel for v in outputs)
    threads = min(threads_per_block, -(-count // WARP_SIZE) * WARP_SIZE)
    blocks = min(-(-count // threads), max_blocks)
    strides = -(-count // (blocks * threads))
    block, thread, offset = lowering.var("block"), lowering.var("thread"), lowering.var("o")
    stores: list[Stmt] = []
    for value, buffer in zip(outputs, lowering.outputs):
        index = unflatten(Ref(offset), value.type.shape)
        store: Stmt = Store(buffer, flat_index(index, value.type.shape), lowering.element(value, index))
        if value.type.numel < count:
            store = If(Ref(offset).lt(i64(value.type.numel)), (store,))
        stores.append(store)
    first = Ref(block) * threads + Ref(thread)
    if strides == 1:
        guarded = stores if blocks * threads == count else [If(Ref(offset).lt(i64(count)), tuple(stores))]
        body: list[Stmt] = [Assign(offset, first), *guarded]
    else:  # a grid stride: all blocks take a pass over the next blocks * threads elements
        k = lowering.var("k")
        position = Ref(k) * (blocks * threads) + first
        body = [For(k, strides, (Assign(offset, position), If(Ref(offset).lt(i64(count)), tuple(stores))))]
    return _kernel(lowering, (block, blocks), (thread, threads), body)


def _kernel(lowering: GroupLowering, block: tuple[Var, int], thread: tuple[Var, int], body: Sequence[Stmt]) -> Kernel:
    """The kernel whose every thread of every block runs `body`."""
    inner = For(thread[0], thread[1], tuple(body), LoopKind.THREAD_X)
    params = (*lowering.params, *lowering.outputs)
    outputs = tuple(range(len(lowering.params), len(params)))
    loop = For(block[0], block[1], (inner,), LoopKind.BLOCK_X)
    return Kernel(lowering.name, params, (loop,), tuple(lowering.locals), lowering.source, outputs)


# -- rows ----------------------------------------------------------------------------------------

_ROW_REDUCTIONS = {"sum": "add", "mean": "add", "max": "max", "min": "min"}


def _row_form(node: Node) -> int | None:
    """The first of the trailing axes of its first input that `node` reduces or normalises
    over, when it computes in a dtype the shuffles carry; None otherwise."""
    x = node.inputs[0]
    rank = x.type.rank
    if compute_dtype(x.type.dtype) not in _SHUFFLE_DTYPES or rank == 0 or x.type.numel == 0:
        return None
    match node.op:
        case "softmax" | "log_softmax" if node.attrs["axis"] % rank == rank - 1:
            first = rank - 1
        case "layer_norm" | "rms_norm":
            first = node.attrs["axis"] % rank
        case "sum" | "mean" | "max" | "min":
            axes = sorted(a % rank for a in node.attrs["axes"]) if node.attrs["axes"] else list(range(rank))
            if axes != list(range(rank - len(axes), rank)) or not axes:
                return None
            first = axes[0]
        case _:
            return None
    return first


@dataclass(frozen=True)
class RowPlan:
    """How rows map to threads: `width` threads per row, `rows_per_block` rows per block."""

    rows: int
    length: int
    width: int
    rows_per_block: int

    @property
    def threads(self) -> int:
        return self.width * self.rows_per_block

    @property
    def blocks(self) -> int:
        return -(-self.rows // self.rows_per_block)


def plan_rows(rows: int, length: int, threads_per_row: int | None = None) -> RowPlan:
    """A warp or less per row up to `WARP_ROW_LIMIT` elements (rounded up to a power of two,
    so that xor shuffles stay inside the row), a block per row beyond; `threads_per_row` forces it."""
    width = threads_per_row or (
        min(1 << max(length - 1, 0).bit_length(), WARP_SIZE) if length <= WARP_ROW_LIMIT else BLOCK_ROW_THREADS
    )
    if width & (width - 1) or width > 1024 or (width > WARP_SIZE and width % WARP_SIZE):
        raise ValueError(f"threads per row must be a power of two up to 1024, got {width}")
    if width > WARP_SIZE:
        return RowPlan(rows, length, width, 1)
    per_warp = WARP_SIZE // width  # blocks hold whole warps: the shuffles take all 32 lanes
    per_block = min(ROWS_BLOCK_THREADS // width, -(-rows // per_warp) * per_warp)
    return RowPlan(rows, length, width, per_block)


class _Row:
    """What the row statements share: the plan, the row and lane variables, the input's shape."""

    def __init__(self, lowering: GroupLowering, node: Node, first: int, threads_per_row: int | None) -> None:
        self.lowering, self.node = lowering, node
        self.x = node.inputs[0]
        shape = self.x.type.shape
        self.lead, self.trailing = shape[:first], shape[first:]
        self.plan = plan_rows(math.prod(self.lead), math.prod(self.trailing), threads_per_row)
        self.dtype = compute_dtype(self.x.type.dtype)
        self.block, self.thread = lowering.var("block"), lowering.var("thread")
        self.row, self.lane = lowering.var("row"), lowering.var("lane")

    def start(self) -> list[Stmt]:
        plan = self.plan
        row: Expr = Ref(self.block)
        if plan.rows_per_block > 1:
            row = row * plan.rows_per_block + Ref(self.thread) // plan.width
        lane: Expr = Ref(self.thread) if plan.rows_per_block == 1 else Ref(self.thread) % plan.width
        return [Assign(self.row, row), Assign(self.lane, lane)]

    def index(self, j: Expr) -> Unflattened:
        """The input's index of element j of this thread's row."""
        offset = Ref(self.row) * self.plan.length + j if self.lead else j
        parts = [*unflatten(Ref(self.row), self.lead), *unflatten(j, self.trailing)]
        return Unflattened(parts, offset, self.x.type.shape)

    def valid_row(self) -> Expr | None:
        """Whether this thread's row exists (None: always, the rows fill the blocks)."""
        if self.plan.blocks * self.plan.rows_per_block == self.plan.rows:
            return None
        return Ref(self.row).lt(i64(self.plan.rows))

    def over_row(self, step: Callable[[Expr], list[Stmt]]) -> list[Stmt]:
        """`step(j)` for each element j of the row this thread takes: j = k * width + lane."""
        plan = self.plan
        chunks = -(-plan.length // plan.width)
        k = self.lowering.var("k")
        j = Ref(self.lane) if chunks == 1 else Ref(k) * plan.width + Ref(self.lane)
        guards = [g for g in (self.valid_row(), j.lt(i64(plan.length)) if plan.length % plan.width else None) if g]
        body = step(j)
        if guards:
            body = [If(guards[0] if len(guards) == 1 else Binary("and", *guards), tuple(body))]
        return body if chunks == 1 else [For(k, chunks, tuple(body))]

    def reduce(self, stem: str, op: str, initial: Expr, element: Callable[[Expr], Expr]) -> tuple[list[Stmt], Var]:
        """A variable holding, in every thread of the row, `op` over the row of `element(j)`."""
        acc = self.lowering.var(stem, self.dtype)
        statements: list[Stmt] = [Assign(acc, initial)]
        statements += self.over_row(lambda j: [Assign(acc, Binary(op, Ref(acc), element(j)))])
        mask = min(self.plan.width, WARP_SIZE) // 2
        while mask:  # a butterfly: after log2(width) steps every lane holds the whole combination
            other = Call("shfl_xor", (Ref(acc), Const(mask, DType.i32)), self.dtype)
            statements.append(Assign(acc, Binary(op, Ref(acc), other)))
            mask //= 2
        warps = self.plan.width // WARP_SIZE
        if warps > 1:  # one slot per warp in shared memory; a slot buffer per reduction, so no second barrier
            slots = Buffer(self.lowering.names.fresh(f"{stem}_warps"), self.dtype, (warps,), Scope.SHARED)
            self.lowering.locals.append(slots)
            first_lane = (Ref(self.thread) % WARP_SIZE).eq(i64(0))
            statements += [If(first_lane, (Store(slots, Ref(self.thread) // WARP_SIZE, Ref(acc)),)), Barrier()]
            statements.append(Assign(acc, Load(slots, i64(0))))
            statements += [Assign(acc, Binary(op, Ref(acc), Load(slots, i64(w)))) for w in range(1, warps)]
        return statements, acc

    def write(self, value: Value, offset: Expr, result: Expr) -> list[Stmt]:
        return write_outputs(self.lowering, value, offset, result)


def write_outputs(lowering: GroupLowering, value: Value, offset: Expr, result: Expr) -> list[Stmt]:
    """Store every group output at flat `offset`, the node's `value` there being `result`: the
    epilogue reads it where it was computed, as `GroupLowering.store` does on the CPU. Every GPU
    template that holds one element of its node's result per thread writes through this."""
    held = lowering.var("y", value.type.dtype)
    statements: list[Stmt] = [Assign(held, result.cast(value.type.dtype))]
    # The offset as `flat_index` writes it, which the epilogue's reads compare with (0 for a
    # one-element value, whichever row variable carried it).
    lowering.overrides[value] = (flat_index(unflatten(offset, value.type.shape), value.type.shape), Ref(held))
    try:
        for output, buffer in zip(lowering.body.outputs, lowering.outputs):
            if output.type.numel != value.type.numel:
                raise EpilogueMismatch
            at = unflatten(offset, output.type.shape)
            statements.append(Store(buffer, flat_index(at, output.type.shape), lowering.element(output, at)))
    finally:
        del lowering.overrides[value]
    return statements


def _rows(lowering: GroupLowering, node: Node, first: int, threads_per_row: int | None) -> Kernel:
    row = _Row(lowering, node, first, threads_per_row)
    body = [*row.start(), *_ROW_BODIES[node.op](row)]
    return _kernel(lowering, (row.block, row.plan.blocks), (row.thread, row.plan.threads), body)


def _x(row: _Row) -> Callable[[Expr], Expr]:
    return lambda j: row.lowering.compute(row.x, row.index(j))


def _reduction_body(row: _Row) -> list[Stmt]:
    op, dtype = row.node.op, row.dtype
    initial = {"sum": 0, "mean": 0, "max": -math.inf, "min": math.inf}[op]
    if not dtype.is_float and op in ("max", "min"):
        info = np.iinfo(dtype.numpy)
        initial = info.min if op == "max" else info.max
    statements, acc = row.reduce("acc", _ROW_REDUCTIONS[op], const(initial, dtype), _x(row))
    result: Expr = Ref(acc) if op != "mean" else Ref(acc) / const(row.plan.length, dtype)
    condition = Ref(row.lane).eq(i64(0))  # every lane holds the result; one writes it
    if row.valid_row() is not None:
        condition = Binary("and", condition, row.valid_row())
    (y,) = row.node.outputs
    return [*statements, If(condition, tuple(row.write(y, Ref(row.row), result)))]


def _softmax_body(row: _Row) -> list[Stmt]:
    dtype, x = row.dtype, _x(row)
    find_peak, peak = row.reduce("peak", "max", const(-math.inf, dtype), x)
    add_up, total = row.reduce("total", "add", const(0, dtype), lambda j: Unary("exp", x(j) - Ref(peak)))
    (y,) = row.node.outputs

    def write(j: Expr) -> list[Stmt]:
        shifted = x(j) - Ref(peak)
        if row.node.op == "softmax":
            return row.write(y, row.index(j).offset, Unary("exp", shifted) / Ref(total))
        return row.write(y, row.index(j).offset, shifted - Unary("log", Ref(total)))

    return [*find_peak, *add_up, *row.over_row(write)]


def _norm_body(row: _Row) -> list[Stmt]:
    """layer_norm and rms_norm in the CPU template's order of operations (see `_standardize`)."""
    node, dtype, x = row.node, row.dtype, _x(row)
    count, epsilon = const(row.plan.length, dtype), const(node.attrs["epsilon"], dtype)
    statements: list[Stmt] = []
    center: Var | None = None
    if node.op == "layer_norm":
        add_up, total = row.reduce("sum", "add", const(0, dtype), x)
        center = row.lowering.var("mean", dtype)
        statements += [*add_up, Assign(center, Ref(total) / count)]

        def square(j: Expr) -> Expr:
            centered = x(j) - Ref(center)
            return centered * centered

    else:

        def square(j: Expr) -> Expr:
            return x(j) * x(j)

    add_squares, squares = row.reduce("sq", "add", const(0, dtype), square)
    scale = row.lowering.var("std" if center else "rms", dtype)
    statements += [*add_squares, Assign(scale, Unary("sqrt", Ref(squares) / count + epsilon))]
    (y,) = node.outputs

    def write(j: Expr) -> list[Stmt]:
        value = (x(j) if center is None else x(j) - Ref(center)) / Ref(scale)
        for position, parameter in enumerate(node.inputs[1:]):  # weight, then bias
            element = row.lowering.compute(parameter, unflatten(j, row.trailing))
            value = value * element if position == 0 else value + element
        return row.write(y, row.index(j).offset, value)

    return [*statements, *row.over_row(write)]


_ROW_BODIES: dict[str, Callable[[_Row], list[Stmt]]] = {
    **dict.fromkeys(_ROW_REDUCTIONS, _reduction_body),
    "softmax": _softmax_body,
    "log_softmax": _softmax_body,
    "layer_norm": _norm_body,
    "rms_norm": _norm_body,
}
