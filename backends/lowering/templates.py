"""Loop nests for the ops a group must compute into a buffer: reductions, softmax, norms and
contractions.

Row templates (reductions over trailing axes, softmax over the last axis, layer/rms/group norm):
one parallel loop over rows; each statistic of a row is reduced by `_row_reduce` into per-lane
partials (a VECTORIZED loop over L lanes, lane l summing the row's elements l, l + L, l + 2L, ...
in a per-lane variable, so L / 16 vector chains run at once), combined by a balanced tree, then
the row's last `n % L` elements serially. The results are written by a vectorized loop over the
row with the epilogue at the store. Reductions over other axes that keep the last axis are
vectorized across it instead (each lane owns a column and sums down it). Layer norm takes two
passes over its row (the mean, then the centred squares: the reference's order, and a row of a
few KiB is in L1 for the second pass; one pass of sum and sum of squares cancels badly when
|mean| >> std, and Welford's per-lane merges cost a division per element); softmax takes three
(max, sum of exp, write), recomputing exp rather than storing it. Numerics: the summation order
is the lanes' (not numpy's pairwise one), so sums agree with the reference within n ulps of the
sum of magnitudes, not bitwise. What has no row form (argmax, softmax over another axis,
reductions over interleaved axes) keeps the plain loop nests with scalar accumulators in the
reference's order.
`TEMPLATES` is the one table of them: it takes in the GEMM micro-kernel of `templates_gemm`
(matmul, gemm), the windowed ops of `templates_nn` (conv, conv_transpose, pools) and the scans
of `templates_scan` (cumsum, scatter).

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
from backends.lowering.templates_gemm import TEMPLATES_GEMM, host_vector_bits
from backends.lowering.templates_nn import TEMPLATES_NN
from backends.lowering.templates_scan import TEMPLATES_SCAN
from ir import DType, Node
from ir.loop import Assign, Binary, Expr, For, Load, LoopKind, Ref, Select, Stmt, Store, Unary, Var


def _split(shape: Sequence[int], axes: Sequence[int]) -> tuple[list[int], list[int]]:
    kept = [a for a in range(len(shape)) if a not in axes]
    return kept, list(axes)


def _merge(rank: int, kept: Sequence[int], kept_index: Sequence[Expr], reduced: Sequence[int],
           reduced_index: Sequence[Expr]) -> list[Expr]:  # fmt: skip
    index: list[Expr] = [i64(0)] * rank
    for axis, position in zip(kept, kept_index):
        index[axis] = position
    for axis, position in zip(reduced, reduced_index):
        index[axis] = position
    return index


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


# -- rows: per-lane partials ---------------------------------------------------------------------

_MIN_VECTOR = 4
"""Row loops shorter than this stay serial: too few lanes to pay for vector code."""

Element = Callable[[Expr], Expr]
"""position within a row -> the element there, in the compute dtype."""


def _row_lanes(n: int, dtype: DType) -> int:
    """Lanes of partials for a row of `n`: four host vectors (four independent chains, which
    hide the add latency), fewer for short rows; 0 (serial) when a row fills no two vectors."""
    per_vector = max(host_vector_bits() // (8 * max(dtype.itemsize, 1)), 1)
    for vectors in (4, 1):
        lanes = min(per_vector * vectors, 64)
        if n >= 2 * lanes and lanes >= _MIN_VECTOR:
            return lanes
    return 0


def _tree(op: str, values: Sequence[Expr]) -> Expr:
    """op over `values` as a balanced tree (log2 depth: the partials combine in a few steps)."""
    if len(values) == 1:
        return values[0]
    half = len(values) // 2
    return Binary(op, _tree(op, values[:half]), _tree(op, values[half:]))


def _row_reduce(lowering: GroupLowering, n: int, op: str, initial: Expr, element: Element) -> tuple[Var, list[Stmt]]:
    """Statements that leave `op` over element(0 .. n-1) in a fresh variable: lane l of a
    vectorized loop reduces elements l, l + L, ... in a per-lane variable (no value is carried
    from one lane iteration to the next, which the vector code generator requires) and stores it
    to a local buffer of L partials; a balanced tree combines them; the last n % L elements follow."""
    dtype = initial.dtype
    result = lowering.var("acc", dtype)
    lanes = _row_lanes(n, dtype)
    statements: list[Stmt] = []
    done = 0
    if lanes:
        partials = lowering.scratch((lanes,), dtype)
        lane, step, partial = lowering.var("lane"), lowering.var("c"), lowering.var("part", dtype)
        position = Ref(step) * lanes + Ref(lane)
        accumulate = For(step, n // lanes, (Assign(partial, Binary(op, Ref(partial), element(position))),))
        fill = (Assign(partial, initial), accumulate, Store(partials, Ref(lane), Ref(partial)))
        statements.append(For(lane, lanes, fill, LoopKind.VECTORIZED))
        statements.append(Assign(result, _tree(op, [Load(partials, i64(k)) for k in range(lanes)])))
        done = n // lanes * lanes
    else:
        statements.append(Assign(result, initial))
    if done < n:
        r = lowering.var("r")
        at = Ref(r) + done if done else Ref(r)
        statements.append(For(r, n - done, (Assign(result, Binary(op, Ref(result), element(at))),)))
    return result, statements


def _row_offset(row: Var, rows: int, n: int, r: Expr) -> Expr:
    """The flat offset of element r of row `row` of n-element rows."""
    if rows == 1:
        return r
    return Ref(row) * n + r if n > 1 else Ref(row)


def _vector_kind(n: int) -> LoopKind:
    return LoopKind.VECTORIZED if n >= _MIN_VECTOR else LoopKind.SERIAL


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
    """Trailing axes: one parallel loop over the rows, each reduced by `_row_reduce`."""
    (x,), (y,) = node.inputs, node.outputs
    shape = x.type.shape
    kept, reduced = _split(shape, axes)
    dtype = compute_dtype(y.type.dtype)
    rows, n = math.prod(shape[a] for a in kept), math.prod(shape[a] for a in reduced)
    row = lowering.var("row")
    kept_index = unflatten(Ref(row), [shape[a] for a in kept])

    def at(r: Expr) -> Expr:
        within = unflatten(r, [shape[a] for a in reduced])
        return lowering.compute(x, Unflattened([*kept_index, *within], _row_offset(row, rows, n, r), shape))

    acc, statements = _row_reduce(lowering, n, _COMBINE[op], _initial(op, dtype), at)
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
        element = lowering.compute(x, _merge(len(shape), kept, [*outer_index, position], reduced, r))
        return [Assign(acc, Binary(_COMBINE[op], Ref(acc), element))]

    result: Expr = Ref(acc)
    if op == "mean":
        result = result / const(math.prod(shape[a] for a in reduced), dtype)
    out = _output_index([*outer_index, position], len(shape), kept, keepdims)
    body = (Assign(acc, _initial(op, dtype)), *_reduce_loop(lowering, shape, reduced, combine),
            *lowering.store(y, out, result))  # fmt: skip
    return [For(t, math.prod(outer) * chunks, (For(column, chunk, body, _vector_kind(chunk)),))]


def _reduce_serial(lowering: GroupLowering, node: Node, op: str, axes: Sequence[int], keepdims: bool) -> list[Stmt]:
    """Any axes: a scalar accumulator per output element, in the reference's order."""
    (x,), (y,) = node.inputs, node.outputs
    shape = x.type.shape
    kept, reduced = _split(shape, axes)
    dtype = compute_dtype(y.type.dtype)

    def body(kept_index: list[Expr]) -> list[Stmt]:
        acc, start = lowering.accumulate("acc", dtype, _initial(op, dtype))

        def combine(r: list[Expr]) -> list[Stmt]:
            element = lowering.compute(x, _merge(len(shape), kept, kept_index, reduced, r))
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
        first = lowering.compute(x, _merge(len(shape), kept, kept_index, [axis], [i64(0)]))
        best, start_best = lowering.accumulate("best", dtype, first)
        where, start_where = lowering.accumulate("at", DType.i64, i64(0))
        r = lowering.var("r")
        value = lowering.compute(x, _merge(len(shape), kept, kept_index, [axis], [Ref(r)]))
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


# -- softmax and norms ---------------------------------------------------------------------------


def _softmax(lowering: GroupLowering, node: Node) -> list[Stmt]:
    """Over the last axis: per row the peak (by `_row_reduce`), exp(x - peak) into a row of scratch
    and its sum, then a vectorized write of exp / sum; log_softmax sums exp(x - peak) and writes
    x - peak - log(sum)."""
    (x,), (y,) = node.inputs, node.outputs
    shape, axis = x.type.shape, node.attrs["axis"] % x.type.rank
    if axis != len(shape) - 1:
        return _softmax_serial(lowering, node)
    dtype = compute_dtype(x.type.dtype)
    rows, n = math.prod(shape[:-1]), shape[-1]
    row = lowering.var("row")
    kept_index = unflatten(Ref(row), shape[:-1])

    def index(r: Expr) -> Unflattened:
        return Unflattened([*kept_index, r], _row_offset(row, rows, n, r), shape)

    def at(r: Expr) -> Expr:
        return lowering.compute(x, index(r))

    peak, find_peak = _row_reduce(lowering, n, "max", const(-math.inf, dtype), at)
    r = lowering.var("r")
    if node.op == "softmax":  # exp once per element, kept in a row of scratch (L1) for the write
        exps, e = lowering.scratch((n,), dtype), lowering.var("e")
        add_up = [For(e, n, (Store(exps, Ref(e), Unary("exp", at(Ref(e)) - Ref(peak))),), _vector_kind(n))]
        total, sum_exps = _row_reduce(lowering, n, "add", const(0, dtype), lambda q: Load(exps, q))
        add_up += sum_exps
        result = Load(exps, Ref(r)) / Ref(total)
    else:
        total, add_up = _row_reduce(lowering, n, "add", const(0, dtype), lambda q: Unary("exp", at(q) - Ref(peak)))
        result = at(Ref(r)) - Ref(peak) - Unary("log", Ref(total))
    write = For(r, n, tuple(lowering.store(y, index(Ref(r)), result)), _vector_kind(n))
    return [For(row, rows, (*find_peak, *add_up, write))]


def _softmax_serial(lowering: GroupLowering, node: Node) -> list[Stmt]:
    """Over any axis: scalar accumulators per row, in the reference's order."""
    (x,), (y,) = node.inputs, node.outputs
    shape, axis = x.type.shape, node.attrs["axis"] % x.type.rank
    kept = [a for a in range(len(shape)) if a != axis]
    dtype = compute_dtype(x.type.dtype)

    def body(kept_index: list[Expr]) -> list[Stmt]:
        def at(position: Expr) -> Expr:
            return lowering.compute(x, _merge(len(shape), kept, kept_index, [axis], [position]))

        peak, start_peak = lowering.accumulate("peak", dtype, const(-math.inf, dtype))
        total, start_total = lowering.accumulate("total", dtype, const(0, dtype))
        r1, r2, r3 = lowering.var("r"), lowering.var("r"), lowering.var("r")
        find_peak = For(r1, shape[axis], (Assign(peak, Ref(peak).max(at(Ref(r1)))),))
        add_up = For(r2, shape[axis], (Assign(total, Ref(total) + Unary("exp", at(Ref(r2)) - Ref(peak))),))
        shifted = at(Ref(r3)) - Ref(peak)
        result = Unary("exp", shifted) / Ref(total) if node.op == "softmax" else shifted - Unary("log", Ref(total))
        index = _merge(len(shape), kept, kept_index, [axis], [Ref(r3)])
        write = For(r3, shape[axis], tuple(lowering.store(y, index, result)))
        return [start_peak, find_peak, start_total, add_up, write]

    return lowering.loops([shape[a] for a in kept], body)


IndexMap = Callable[[Sequence[Expr], Sequence[Expr]], list[Expr]]
"""(index of a normalised set, index within it) -> an index into an operand."""


def _standardize(lowering: GroupLowering, node: Node, sets: Sequence[int], members: Sequence[int],
                 x_at: IndexMap, affine_at: IndexMap) -> list[Stmt]:  # fmt: skip
    """The statements of layer_norm, rms_norm and group_norm: for each set of elements normalised
    together (`sets` is their grid, `members` the grid within one; a set's members are contiguous,
    set s at s * |members|), the statistics by `_row_reduce` in the reference's order (mean = sum /
    count; the variance of the centred values, a second pass over the set while it is in cache;
    then divide by sqrt(variance + epsilon)), and the affine inputs (weight multiplies, bias adds)
    at `affine_at`. The results go to the output at `x_at`, the position they were read from, by a
    vectorized loop."""
    x, *affine = node.inputs
    (y,) = node.outputs
    dtype = compute_dtype(x.type.dtype)
    size, count = math.prod(sets), math.prod(members)
    epsilon = const(node.attrs["epsilon"], dtype)
    s = lowering.var("set")
    set_index = unflatten(Ref(s), sets)

    def index(r: Expr) -> Unflattened:
        return Unflattened(x_at(set_index, unflatten(r, members)), _row_offset(s, size, count, r), x.type.shape)

    def at(r: Expr) -> Expr:
        return lowering.compute(x, index(r))

    def deviation(statistic: Expr) -> tuple[Var, Stmt]:
        return lowering.accumulate("std", dtype, Unary("sqrt", statistic / const(count, dtype) + epsilon))

    if node.op == "rms_norm":
        squares, statements = _row_reduce(lowering, count, "add", const(0, dtype), lambda r: at(r) * at(r))
        scale, set_scale = deviation(Ref(squares))
        center: Expr | None = None
    else:
        total, statements = _row_reduce(lowering, count, "add", const(0, dtype), at)
        mean, set_mean = lowering.accumulate("mean", dtype, Ref(total) / const(count, dtype))

        def square(r: Expr) -> Expr:
            centered = at(r) - Ref(mean)
            return centered * centered

        squares, second_pass = _row_reduce(lowering, count, "add", const(0, dtype), square)
        statements = [*statements, set_mean, *second_pass]
        scale, set_scale = deviation(Ref(squares))
        center = Ref(mean)
    r = lowering.var("r")
    value = (at(Ref(r)) if center is None else at(Ref(r)) - center) / Ref(scale)
    for position, parameter in enumerate(affine):  # weight, then bias; weight and bias may be one value
        element = lowering.compute(parameter, affine_at(set_index, unflatten(Ref(r), members)))
        value = value * element if position == 0 else value + element
    write = For(r, count, tuple(lowering.store(y, index(Ref(r)), value)), _vector_kind(count))
    return [For(s, size, (*statements, set_scale, write))]


def _trailing_norm(lowering: GroupLowering, node: Node) -> list[Stmt]:
    """layer_norm and rms_norm: each set is the axes from `axis` to the last."""
    shape = node.inputs[0].type.shape
    first = node.attrs["axis"] % len(shape)
    return _standardize(lowering, node, shape[:first], shape[first:], lambda s, r: [*s, *r], lambda s, r: list(r))


def _group_norm(lowering: GroupLowering, node: Node) -> list[Stmt]:
    """Each set is one sample's C / num_groups consecutive channels with all their positions."""
    batch, channels, *spatial = node.inputs[0].type.shape
    groups = node.attrs["num_groups"]
    per_group = channels // groups

    def channel(s: Sequence[Expr], r: Sequence[Expr]) -> Expr:
        if groups == 1:
            return r[0]
        return s[1] if per_group == 1 else s[1] * per_group + r[0]

    return _standardize(lowering, node, [batch, groups], [per_group, *spatial],
                        lambda s, r: [s[0], channel(s, r), *r[1:]], lambda s, r: [channel(s, r)])  # fmt: skip


TEMPLATES: dict[str, Callable[[GroupLowering, Node], list[Stmt]]] = {
    **{op: _reduction for op in ("sum", "mean", "prod", "max", "min")},
    "argmax": _arg_reduction,
    "argmin": _arg_reduction,
    "softmax": _softmax,
    "log_softmax": _softmax,
    "layer_norm": _trailing_norm,
    "rms_norm": _trailing_norm,
    "group_norm": _group_norm,
    "global_avg_pool": _global_avg_pool,
    **TEMPLATES_GEMM,
    **TEMPLATES_NN,
    **TEMPLATES_SCAN,
}
