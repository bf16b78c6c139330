"""Loop nests for the ops a group must compute into a buffer, and `TEMPLATES`, the one table of
them: reductions here; softmax and the norms in `rows`; contractions, windowed ops and scans in
the modules named below.

Reductions over trailing axes are row reductions: one parallel loop over rows, each reduced by
`rows.row_reduce` into per-lane partials (see that module for the scheme and its numerics).
Reductions over other axes that keep the last axis are vectorized across it instead (each lane
owns a column and sums down it). What has no row form (argmax, reductions over interleaved axes)
keeps the plain loop nests with scalar accumulators in the reference's order. `TEMPLATES` takes
in the row templates of `rows` (softmax, norms), the GEMM micro-kernel of `templates_gemm`
(matmul, gemm), the windowed ops of `templates_nn` (conv, conv_transpose, pools) and the scans of
`templates_scan` (cumsum, scatter).

`TEMPLATES[op](lowering, node)` returns statements that compute the node's outputs, reading
operands with `lowering.compute(value, index)` and writing with `lowering.store(value, index,
expr)` (which may apply an epilogue). Accumulation is in the compute dtype (f32 for f16/bf16).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from backends.lowering.expr import Unflattened, const, i64, unflatten
from backends.lowering.group import GroupLowering, compute_dtype
from backends.lowering.rows import ROW_TEMPLATES, merge_index, row_offset, row_reduce, vector_kind
from backends.lowering.templates_attention import TEMPLATES_ATTENTION
from backends.lowering.templates_gemm import TEMPLATES_GEMM
from backends.lowering.templates_nn import TEMPLATES_NN
from backends.lowering.templates_quant import TEMPLATES_QUANT
from backends.lowering.templates_scan import TEMPLATES_SCAN
from ir import DType, Node
from ir.loop import Assign, Binary, Expr, For, Ref, Select, Stmt, Unary


def _split(shape: Sequence[int], axes: Sequence[int]) -> tuple[list[int], list[int]]:
    kept = [a for a in range(len(shape)) if a not in axes]
    return kept, list(axes)


def _output_index(kept_index: Sequence[Expr], rank: int, kept: Sequence[int], keepdims: bool) -> list[Expr]:
    if not keepdims:
        return list(kept_index)
    index: list[Expr] = [i64(0)] * rank
    for axis, position in zip(kept, kept_index):
        index[axis] = position
    return index


def _reduce_loop(lowering: GroupLowering, shape: Sequence[int], reduced: Sequence[int], body) -> list[Stmt]:
    """Loops over the reduced axes (flattened into one loop); `body(reduced_index)`."""
    count = math.prod(shape[a] for a in reduced)
    var = lowering.var("r")
    index = unflatten(Ref(var), [shape[a] for a in reduced]) if reduced else []
    return [For(var, count, tuple(body(index)))]


def _trailing(axes: Sequence[int], rank: int) -> bool:
    """Whether `axes` (sorted) are the last ones: each row of reduced elements is contiguous."""
    return list(axes) == list(range(rank - len(axes), rank))


# -- reductions ----------------------------------------------------------------------------------

_COMBINE = {"sum": "add", "mean": "add", "prod": "mul", "max": "max", "min": "min"}


def _initial(op: str, dtype: DType) -> Expr:
    if op in ("sum", "mean"):
        return const(0, dtype)
    if op == "prod":
        return const(1, dtype)
    if dtype.is_float:
        return const(-math.inf if op == "max" else math.inf, dtype)
    info = np.iinfo(dtype.numpy)
    return const(info.min if op == "max" else info.max, dtype)


def _reduction(lowering: GroupLowering, node: Node) -> list[Stmt]:
    shape = node.inputs[0].type.shape
    axes = tuple(sorted(a % len(shape) for a in node.attrs["axes"])) if node.attrs["axes"] else tuple(range(len(shape)))
    return _reduce(lowering, node, node.op, axes, node.attrs["keepdims"])


def _global_avg_pool(lowering: GroupLowering, node: Node) -> list[Stmt]:
    """The mean over the spatial axes of [N, C, *spatial], kept as size-1 dims."""
    return _reduce(lowering, node, "mean", tuple(range(2, node.inputs[0].type.rank)), True)


def _reduce(lowering: GroupLowering, node: Node, op: str, axes: Sequence[int], keepdims: bool) -> list[Stmt]:
    rank = node.inputs[0].type.rank
    if _trailing(axes, rank):
        return _reduce_rows(lowering, node, op, axes, keepdims)
    if axes and rank - 1 not in axes:
        return _reduce_columns(lowering, node, op, axes, keepdims)
    return _reduce_serial(lowering, node, op, axes, keepdims)


def _reduce_rows(lowering: GroupLowering, node: Node, op: str, axes: Sequence[int], keepdims: bool) -> list[Stmt]:
    """Trailing axes: one parallel loop over the rows, each reduced by `row_reduce`."""
    (x,), (y,) = node.inputs, node.outputs
    shape = x.type.shape
    kept, reduced = _split(shape, axes)
    dtype = compute_dtype(y.type.dtype)
    rows, n = math.prod(shape[a] for a in kept), math.prod(shape[a] for a in reduced)
    row = lowering.var("row")
    kept_index = unflatten(Ref(row), [shape[a] for a in kept])

    def at(r: Expr) -> Expr:
        within = unflatten(r, [shape[a] for a in reduced])
        return lowering.compute(x, Unflattened([*kept_index, *within], row_offset(row, rows, n, r), shape))

    acc, statements = row_reduce(lowering, n, _COMBINE[op], _initial(op, dtype), at)
    result: Expr = Ref(acc)
    if op == "mean":
        result = result / const(n, dtype)
    out = Unflattened(_output_index(kept_index, len(shape), kept, keepdims), Ref(row), y.type.shape)
    return [For(row, rows, (*statements, *lowering.store(y, out, result)))]


def _reduce_columns(lowering: GroupLowering, node: Node, op: str, axes: Sequence[int], keepdims: bool) -> list[Stmt]:
    """The last axis is kept: each lane of a vectorized loop over it owns one column and reduces
    down the reduced axes in their order. The parallel loop runs over the other kept positions and
    chunks of 64 or 16 columns (so that a single [R, C] -> [C] reduction still spreads over threads)."""
    (x,), (y,) = node.inputs, node.outputs
    shape = x.type.shape
    kept, reduced = _split(shape, axes)
    dtype = compute_dtype(y.type.dtype)
    width = shape[-1]
    outer = [shape[a] for a in kept[:-1]]
    chunk = next((c for c in (64, 16) if width % c == 0 and width > c), width)
    chunks = width // chunk
    t, column = lowering.var("t"), lowering.var("col")
    outer_index = unflatten(Ref(t) // chunks if chunks > 1 else Ref(t), outer)
    start = (Ref(t) % chunks) * chunk if chunks > 1 else i64(0)
    position = start + Ref(column) if chunks > 1 else Ref(column)
    acc = lowering.var("acc", dtype)

    def combine(r: list[Expr]) -> list[Stmt]:
        element = lowering.compute(x, merge_index(len(shape), kept, [*outer_index, position], reduced, r))
        return [Assign(acc, Binary(_COMBINE[op], Ref(acc), element))]

    result: Expr = Ref(acc)
    if op == "mean":
        result = result / const(math.prod(shape[a] for a in reduced), dtype)
    out = _output_index([*outer_index, position], len(shape), kept, keepdims)
    body = (Assign(acc, _initial(op, dtype)), *_reduce_loop(lowering, shape, reduced, combine),
            *lowering.store(y, out, result))  # fmt: skip
    return [For(t, math.prod(outer) * chunks, (For(column, chunk, body, vector_kind(chunk)),))]


def _reduce_serial(lowering: GroupLowering, node: Node, op: str, axes: Sequence[int], keepdims: bool) -> list[Stmt]:
    """Any axes: a scalar accumulator per output element, in the reference's order."""
    (x,), (y,) = node.inputs, node.outputs
    shape = x.type.shape
    kept, reduced = _split(shape, axes)
    dtype = compute_dtype(y.type.dtype)

    def body(kept_index: list[Expr]) -> list[Stmt]:
        acc, start = lowering.accumulate("acc", dtype, _initial(op, dtype))

        def combine(r: list[Expr]) -> list[Stmt]:
            element = lowering.compute(x, merge_index(len(shape), kept, kept_index, reduced, r))
            return [Assign(acc, Binary(_COMBINE[op], Ref(acc), element))]

        step = _reduce_loop(lowering, shape, reduced, combine)
        result: Expr = Ref(acc)
        if op == "mean":
            result = result / const(math.prod(shape[a] for a in reduced), dtype)
        out = _output_index(kept_index, len(shape), kept, keepdims)
        return [start, *step, *lowering.store(y, out, result)]

    return lowering.loops([shape[a] for a in kept], body)


def _arg_reduction(lowering: GroupLowering, node: Node) -> list[Stmt]:
    (x,), (y,) = node.inputs, node.outputs
    shape, axis = x.type.shape, node.attrs["axis"] % x.type.rank
    kept = [a for a in range(len(shape)) if a != axis]
    dtype = compute_dtype(x.type.dtype)
    last = node.attrs["select_last_index"]
    beats = "gt" if node.op == "argmax" else "lt"

    def body(kept_index: list[Expr]) -> list[Stmt]:
        first = lowering.compute(x, merge_index(len(shape), kept, kept_index, [axis], [i64(0)]))
        best, start_best = lowering.accumulate("best", dtype, first)
        where, start_where = lowering.accumulate("at", DType.i64, i64(0))
        r = lowering.var("r")
        value = lowering.compute(x, merge_index(len(shape), kept, kept_index, [axis], [Ref(r)]))
        is_nan = value.ne(value) if dtype.is_float else const(False, DType.bool)
        best_is_nan = Ref(best).ne(Ref(best)) if dtype.is_float else const(False, DType.bool)
        if last:  # ties and later nans win
            better = Binary("or", Binary("or", Binary(beats, value, Ref(best)), value.eq(Ref(best))), is_nan)
            better = Binary("and", better, Binary("or", is_nan, Unary("not", best_is_nan)))
        else:  # the first extreme wins; a nan beats any number
            better = Binary("or", Binary(beats, value, Ref(best)), Binary("and", is_nan, Unary("not", best_is_nan)))
        wins = lowering.var("wins", DType.bool)  # decided once: updating `best` changes the comparison
        update = [
            Assign(wins, better),
            Assign(best, Select(Ref(wins), value, Ref(best))),
            Assign(where, Select(Ref(wins), Ref(r), Ref(where))),
        ]
        out = _output_index(kept_index, len(shape), kept, node.attrs["keepdims"])
        return [start_best, start_where, For(r, shape[axis], tuple(update)), *lowering.store(y, out, Ref(where))]

    return lowering.loops([shape[a] for a in kept], body)


TEMPLATES: dict[str, Callable[[GroupLowering, Node], list[Stmt]]] = {
    **{op: _reduction for op in ("sum", "mean", "prod", "max", "min")},
    "argmax": _arg_reduction,
    "argmin": _arg_reduction,
    **ROW_TEMPLATES,
    "global_avg_pool": _global_avg_pool,
    **TEMPLATES_GEMM,
    **TEMPLATES_ATTENTION,
    **TEMPLATES_QUANT,  # after TEMPLATES_GEMM: its matmul takes the int8 form, passing on the rest
    **TEMPLATES_NN,
    **TEMPLATES_SCAN,
}
