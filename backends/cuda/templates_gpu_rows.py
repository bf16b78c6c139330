"""The GPU row template: fused groups whose one reduction or normalisation runs over trailing
axes, lowered straight to GPU-scheduled kernel IR (`rows_template`; `backends.cuda.schedule`
tries it among the other templates).

A group whose one non-elementwise node reduces over trailing axes:
softmax/log_softmax over the last axis, layer_norm/rms_norm over their trailing axes, and
sum/mean/max/min over trailing axes. Each row gets `W` threads (a power of two): a warp or
part of one for rows up to `WARP_ROW_LIMIT` elements (several rows per block), a whole block
beyond. Each thread strides over the row (element j = k*W + lane), combines into a register,
then the row's threads combine by a butterfly of `shfl_xor`s (every lane ends with the
result, so no broadcast follows), and, for a block per row, through one shared slot per warp
with a barrier. The group's prologue is inlined into the reads, its epilogue (the affine
weight and bias, activations, casts, reshapes) into the writes, through the CPU lowering's
`GroupLowering.compute`/`element`, so both backends share one definition of every op.

Two extensions for int8: outputs of the input's size that read the row's result broadcast along
the row (dynamic int8's q = quantize_linear(x, max|x| / 127)) are written by every lane, each its
own elements, since after the butterfly every lane holds the result; and sibling reductions (min
and max of one value over the same axes, which `passes.fusion_groups` puts in one group: ONNX's
DynamicQuantizeLinear) are reduced side by side in one kernel.

Numerics: per element, the same expressions as the CPU templates (`backends.lowering.templates`),
computed in f32 for f16/bf16; but a row's sum is combined in another order (strided partial
sums, then a tree), so sums differ from the serial interpreter by rounding (a few ulps of the
row's magnitude; max and min are exact).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from backends.cuda.templates_gpu import kernel_of, write_outputs
from backends.lowering.expr import Unflattened, const, flat_index, i64, unflatten
from backends.lowering.group import EpilogueMismatch, GroupLowering, compute_dtype, inlinable
from backends.lowering.indexing import broadcast_index
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
    Ref,
    Scope,
    Stmt,
    Store,
    Unary,
    Var,
)

__all__ = ["RowPlan", "plan_rows", "rows_template"]

WARP_ROW_LIMIT = 1024
"""Rows up to this length get a warp (or less); longer ones a block of `BLOCK_ROW_THREADS`."""
BLOCK_ROW_THREADS = 256
ROWS_BLOCK_THREADS = 128
"""Block size when several short rows share a block."""
_SHUFFLE_DTYPES = frozenset({DType.f32, DType.f64, DType.i32, DType.i64})
"""Compute dtypes a warp shuffle carries (f16 and bf16 compute in f32)."""


def rows_template(
    node: Node, name: str, source: str = "", threads_per_row: int | None = None
) -> tuple[Kernel, str] | None:
    """The row kernel of the `fused` node `node` and the template's name ("rows.<op>", or
    "rows.min_max" for siblings); None when the group is not a row group or an output reads a
    row's result at another element (no thread holds it: the caller falls back)."""
    if any(value.type.numel == 0 for value in node.outputs):
        return None
    lowering = GroupLowering(node.attrs["body"], name, source)
    anchors = [n for n in lowering.body.nodes if n.op != "const" and not inlinable(n)]
    if not anchors:
        return None
    first = _row_form(anchors[0])
    if first is None or (len(anchors) > 1 and not _siblings(anchors)):
        return None
    try:
        kernel = _rows(lowering, anchors[0], first, threads_per_row, anchors)
    except EpilogueMismatch:
        return None
    return kernel, "rows." + "_".join(n.op for n in anchors)


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
        self.siblings: tuple[Node, ...] = (node,)
        """The reductions of this row (`node` and its siblings, for the reduction body)."""
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


def _siblings(anchors: Sequence[Node]) -> bool:
    """Reductions of one value over the same axes (`passes.fusion_groups`' sibling reductions: a
    dynamic quantization's min and max), which one row kernel reduces side by side."""
    first = anchors[0]
    return all(n.op in _ROW_REDUCTIONS and n.inputs[0] is first.inputs[0] and n.attrs == first.attrs for n in anchors)


def _rows(lowering: GroupLowering, node: Node, first: int, threads_per_row: int | None,
          siblings: Sequence[Node] = ()) -> Kernel:  # fmt: skip
    row = _Row(lowering, node, first, threads_per_row)
    row.siblings = tuple(siblings) or (node,)
    body = [*row.start(), *_ROW_BODIES[node.op](row)]
    return kernel_of(lowering, (row.block, row.plan.blocks), (row.thread, row.plan.threads), body)


def _x(row: _Row) -> Callable[[Expr], Expr]:
    return lambda j: row.lowering.compute(row.x, row.index(j))


def _reduction_body(row: _Row) -> list[Stmt]:
    dtype, results = row.dtype, {}
    statements: list[Stmt] = []
    for node in row.siblings:  # side by side: each its own strided pass and butterfly
        op = node.op
        initial = {"sum": 0, "mean": 0, "max": -math.inf, "min": math.inf}[op]
        if not dtype.is_float and op in ("max", "min"):
            info = np.iinfo(dtype.numpy)
            initial = info.min if op == "max" else info.max
        reduced, acc = row.reduce("acc", _ROW_REDUCTIONS[op], const(initial, dtype), _x(row))
        statements += reduced
        results[node.outputs[0]] = Ref(acc) if op != "mean" else Ref(acc) / const(row.plan.length, dtype)
    condition = Ref(row.lane).eq(i64(0))  # every lane holds the result; one writes it
    if row.valid_row() is not None:
        condition = Binary("and", condition, row.valid_row())
    (y,) = row.node.outputs
    outputs = row.lowering.body.outputs
    per_element = [p for p, v in enumerate(outputs) if v.type.numel != y.type.numel]
    if not per_element and len(results) == 1:
        return [*statements, If(condition, tuple(row.write(y, Ref(row.row), results[y])))]
    # Outputs of the row's size that read the results broadcast along the row (dynamic int8's
    # quantize_linear(x, max|x| / 127)): every lane holds the results, so each writes its elements;
    # outputs of the results' size (the scale, the zero point) are written by the row's first lane.
    held: dict[Value, Expr] = {}
    for value, result in results.items():
        var = row.lowering.var("r", value.type.dtype)
        statements.append(Assign(var, result.cast(value.type.dtype)))
        held[value] = Ref(var)
    per_row = [p for p in range(len(outputs)) if p not in per_element]
    if per_row:
        y_offset = flat_index(unflatten(Ref(row.row), y.type.shape), y.type.shape)
        overrides = {value: (y_offset, expr) for value, expr in held.items()}
        written = _write_held(row.lowering, overrides, per_row, lambda s: unflatten(Ref(row.row), s))
        statements.append(If(condition, tuple(written)))

    def write(j: Expr) -> list[Stmt]:
        at = row.index(j)

        def index(shape: tuple[int, ...]) -> Sequence[Expr]:
            if shape != row.x.type.shape:
                raise EpilogueMismatch  # only outputs indexed as the input, whose reads of y are per row
            return at

        # An elementwise reader of the row's element j reads y at that index broadcast to y's shape.
        y_offset = flat_index(broadcast_index(at, y.type.shape), y.type.shape)
        return _write_held(row.lowering, {v: (y_offset, e) for v, e in held.items()}, per_element, index)

    return [*statements, *row.over_row(write)]


def _write_held(lowering: GroupLowering, held: dict[Value, tuple[Expr, Expr]], positions: Sequence[int],
                index: Callable[[tuple[int, ...]], Sequence[Expr]]) -> list[Stmt]:  # fmt: skip
    """Store the outputs at `positions`, each at `index(its shape)`, each value of `held` being
    its expression at its flat offset; `EpilogueMismatch` when an output reads one elsewhere (the
    caller falls back to the generic schedule)."""
    lowering.overrides.update(held)
    statements: list[Stmt] = []
    try:
        for position in positions:
            output, buffer = lowering.body.outputs[position], lowering.outputs[position]
            at = index(output.type.shape)
            statements.append(Store(buffer, flat_index(at, output.type.shape), lowering.element(output, at)))
    finally:
        for value in held:
            del lowering.overrides[value]
    return statements


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
