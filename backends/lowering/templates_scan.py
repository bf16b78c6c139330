"""Loop nests for the ops whose elements depend on the ones computed before them: `cumsum` (a
running sum along one axis) and `scatter` (a copy of x that updates overwrite or combine into,
in order). Both run serial loops along the dependent direction; the loops around them are
independent, and `cumsum`'s outermost one may run in parallel.

Follows the references in ir/ops/reduction.py (`_cumsum`) and ir/ops/movement.py (`_scatter`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from backends.lowering.expr import const, flat_index, i64
from backends.lowering.group import GroupLowering, compute_dtype
from ir import DType, Node
from ir.loop import Assign, Binary, Expr, For, Load, Ref, Select, Stmt, Store

# -- cumsum --------------------------------------------------------------------------------------


def _cumsum(lowering: GroupLowering, node: Node) -> list[Stmt]:
    """A running sum along `axis` in the compute dtype (integers wrap, as the reference's
    dtype=x.dtype does); reverse runs from the end; exclusive stores the sum before adding."""
    (x,), (y,) = node.inputs, node.outputs
    shape = x.type.shape
    axis = node.attrs["axis"] % len(shape)
    length = shape[axis]
    kept = [shape[a] for a in range(len(shape)) if a != axis]
    dtype = compute_dtype(y.type.dtype)

    # -0.0 is the identity of float addition that keeps signs: numpy's running sum starts at the
    # first element itself (a -0.0 stays -0.0), while the exclusive scan's first value is +0.0.
    zero = const(-0.0 if dtype.is_float else 0, dtype)

    def body(kept_index: list[Expr]) -> list[Stmt]:
        total, start = lowering.accumulate("sum", dtype, zero)
        step = lowering.var("s")
        position = i64(length - 1) - Ref(step) if node.attrs["reverse"] else Ref(step)
        index = [*kept_index[:axis], position, *kept_index[axis:]]
        add = Assign(total, Ref(total) + lowering.compute(x, index))
        running = Select(Ref(step).eq(i64(0)), const(0, dtype), Ref(total)) if dtype.is_float else Ref(total)
        store = lowering.store(y, index, running if node.attrs["exclusive"] else Ref(total))
        scan = [*store, add] if node.attrs["exclusive"] else [add, *store]
        return [start, For(step, length, tuple(scan))]

    return lowering.loops(kept, body)


# -- scatter -------------------------------------------------------------------------------------

_COMBINE = {"add": "add", "mul": "mul", "max": "max", "min": "min"}
_COMBINE_BOOL = {"add": "or", "mul": "and", "max": "or", "min": "and"}
"""numpy's add and multiply on bools are `or` and `and`; a kernel's would wrap."""


def _scatter(lowering: GroupLowering, node: Node) -> list[Stmt]:
    """Copy x, then each update in row-major order: the target is the update's own position with
    its `axis` coordinate replaced by the index (negatives count from the end; out of range is
    clamped, as gather does, so no store leaves the buffer). With colliding indices the last
    update wins (reduction none) or every update combines, in order, as ufunc.at does.

    The work happens in a buffer that the updates read back: the output's own, or a scratch
    buffer in the compute dtype where the output is low precision (the reference rounds once,
    at the end) or carries an epilogue; then the scratch is copied out."""
    x, indices, updates = node.inputs
    (y,) = node.outputs
    shape = y.type.shape
    axis = node.attrs["axis"] % len(shape)
    dtype = compute_dtype(y.type.dtype)
    in_place = dtype == y.type.dtype and y not in lowering.epilogues
    work = lowering.output_buffer(y) if in_place else lowering.scratch(shape, dtype)

    def at(index: Sequence[Expr]) -> Expr:
        return flat_index(index, shape)

    copy = lowering.loops(shape, lambda index: [Store(work, at(index), lowering.compute(x, index))])

    def update(index: list[Expr]) -> list[Stmt]:
        target = list(index)
        target[axis] = _wrapped(lowering.element(indices, index), shape[axis])
        value = lowering.compute(updates, index)
        if node.attrs["reduction"] != "none":
            table = _COMBINE_BOOL if dtype == DType.bool else _COMBINE
            value = Binary(table[node.attrs["reduction"]], Load(work, at(target)), value)
        return [Store(work, at(target), value)]

    statements = [*copy, *lowering.loops(updates.type.shape, update)]
    if not in_place:
        statements += lowering.loops(shape, lambda index: lowering.store(y, index, Load(work, at(index))))
    return statements


def _wrapped(position: Expr, size: int) -> Expr:
    position = position.cast(DType.i64)
    position = Select(position.lt(i64(0)), position + size, position)
    return position.max(i64(0)).min(i64(size - 1))


TEMPLATES_SCAN: dict[str, Callable[[GroupLowering, Node], list[Stmt]]] = {
    "cumsum": _cumsum,
    "scatter": _scatter,
}
