"""Row templates: softmax over the last axis and layer/rms/group norm, and the per-lane row
reduction that they and the trailing-axis reductions of `templates` share.

One parallel loop over rows; each statistic of a row is reduced by `row_reduce` into per-lane
partials (a VECTORIZED loop over L lanes, lane l summing the row's elements l, l + L, l + 2L, ...
in a per-lane variable, so L / 16 vector chains run at once), combined by a tree that first adds
partials L/2 apart (whole vectors: vertical adds, then one horizontal step at the end), then the
row's last `n % L` elements serially. The results are written by a vectorized loop over the row
with the epilogue at the store. Layer norm takes two passes over its row (the mean, then the
centred squares: the reference's order, and a row of a few KiB is in L1 for the second pass; one
pass of sum and sum of squares cancels badly when |mean| >> std, and Welford's per-lane merges
cost a division per element); softmax takes three (max, exp into a row of scratch, then the sum of
the scratch row and the write). The write loops multiply by a reciprocal taken once per row
(1 / std, 1 / sum of exps) rather than divide per element: on Zen 4 a 16-lane division costs ~5
cycles of throughput against ~0.5 for a multiplication, which made the division the largest part
of a 1024-wide row's work. Numerics: the summation order is the lanes' (not numpy's pairwise one),
so sums agree with the reference within n ulps of the sum of magnitudes, not bitwise; x * (1 / s)
differs from x / s by at most one more rounding. What has no row form (softmax over another axis)
keeps a plain loop nest with scalar accumulators in the reference's order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from backends.lowering.expr import Unflattened, const, i64, unflatten
from backends.lowering.group import GroupLowering, compute_dtype
from backends.lowering.templates_gemm import host_vector_bits
from ir import DType, Node
from ir.loop import Assign, Binary, Expr, For, Load, LoopKind, Ref, Stmt, Store, Unary, Var

MIN_VECTOR = 4
"""Row loops shorter than this stay serial: too few lanes to pay for vector code."""

Element = Callable[[Expr], Expr]
"""position within a row -> the element there, in the compute dtype."""


def merge_index(rank: int, kept: Sequence[int], kept_index: Sequence[Expr], reduced: Sequence[int],
                reduced_index: Sequence[Expr]) -> list[Expr]:  # fmt: skip
    """The full index of a tensor of `rank` from the positions along its kept and reduced axes."""
    index: list[Expr] = [i64(0)] * rank
    for axis, position in zip(kept, kept_index):
        index[axis] = position
    for axis, position in zip(reduced, reduced_index):
        index[axis] = position
    return index


def row_lanes(n: int, dtype: DType) -> int:
    """Lanes of partials for a row of `n`: four host vectors (four independent chains, which
    hide the add latency), fewer for short rows; 0 (serial) when a row fills no two vectors."""
    per_vector = max(host_vector_bits() // (8 * max(dtype.itemsize, 1)), 1)
    for vectors in (4, 1):
        lanes = min(per_vector * vectors, 64)
        if n >= 2 * lanes and lanes >= MIN_VECTOR:
            return lanes
    return 0


def _fold(op: str, values: Sequence[Expr]) -> Expr:
    """op over `values` (a power of two of them, or any count) by halves: value k with value
    k + len/2, then again on the results. Partials L/2 apart sit in different vectors, so the first
    steps are whole-vector operations and only the last log2(16) steps shuffle within one."""
    values = list(values)
    while len(values) > 1:
        half = len(values) // 2
        folded = [Binary(op, values[k], values[k + half]) for k in range(half)]
        values = folded + values[2 * half :]  # an odd one out waits for the next step
    return values[0]


def row_reduce(lowering: GroupLowering, n: int, op: str, initial: Expr, element: Element) -> tuple[Var, list[Stmt]]:
    """Statements that leave `op` over element(0 .. n-1) in a fresh variable: lane l of a
    vectorized loop reduces elements l, l + L, ... in a per-lane variable (no value is carried
    from one lane iteration to the next, which the vector code generator requires) and stores it
    to a local buffer of L partials; `_fold` combines them; the last n % L elements follow."""
    dtype = initial.dtype
    result = lowering.var("acc", dtype)
    lanes = row_lanes(n, dtype)
    statements: list[Stmt] = []
    done = 0
    if lanes:
        partials = lowering.scratch((lanes,), dtype)
        lane, step, partial = lowering.var("lane"), lowering.var("c"), lowering.var("part", dtype)
        position = Ref(step) * lanes + Ref(lane)
        accumulate = For(step, n // lanes, (Assign(partial, Binary(op, Ref(partial), element(position))),))
        fill = (Assign(partial, initial), accumulate, Store(partials, Ref(lane), Ref(partial)))
        statements.append(For(lane, lanes, fill, LoopKind.VECTORIZED))
        statements.append(Assign(result, _fold(op, [Load(partials, i64(k)) for k in range(lanes)])))
        done = n // lanes * lanes
    else:
        statements.append(Assign(result, initial))
    if done < n:
        r = lowering.var("r")
        at = Ref(r) + done if done else Ref(r)
        statements.append(For(r, n - done, (Assign(result, Binary(op, Ref(result), element(at))),)))
    return result, statements


def row_offset(row: Var, rows: int, n: int, r: Expr) -> Expr:
    """The flat offset of element r of row `row` of n-element rows."""
    if rows == 1:
        return r
    return Ref(row) * n + r if n > 1 else Ref(row)


def vector_kind(n: int) -> LoopKind:
    return LoopKind.VECTORIZED if n >= MIN_VECTOR else LoopKind.SERIAL


def _reciprocal(lowering: GroupLowering, stem: str, value: Expr) -> tuple[Var, Stmt]:
    """1 / value in a variable of its own, once per row (see the module doc)."""
    return lowering.accumulate(stem, value.dtype, const(1, value.dtype) / value)


# -- softmax -------------------------------------------------------------------------------------


def softmax(lowering: GroupLowering, node: Node) -> list[Stmt]:
    """Over the last axis: per row the peak (by `row_reduce`), exp(x - peak) into a row of scratch
    and its sum, then a vectorized write of exp times 1 / sum; log_softmax sums exp(x - peak) and
    writes x - peak - log(sum)."""
    (x,), (y,) = node.inputs, node.outputs
    shape, axis = x.type.shape, node.attrs["axis"] % x.type.rank
    if axis != len(shape) - 1:
        return _softmax_serial(lowering, node)
    dtype = compute_dtype(x.type.dtype)
    rows, n = math.prod(shape[:-1]), shape[-1]
    row = lowering.var("row")
    kept_index = unflatten(Ref(row), shape[:-1])

    def index(r: Expr) -> Unflattened:
        return Unflattened([*kept_index, r], row_offset(row, rows, n, r), shape)

    def at(r: Expr) -> Expr:
        return lowering.compute(x, index(r))

    peak, find_peak = row_reduce(lowering, n, "max", const(-math.inf, dtype), at)
    r = lowering.var("r")
    if node.op == "softmax":  # exp once per element, kept in a row of scratch (L1) for the write
        exps, e = lowering.scratch((n,), dtype), lowering.var("e")
        add_up = [For(e, n, (Store(exps, Ref(e), Unary("exp", at(Ref(e)) - Ref(peak))),), vector_kind(n))]
        total, sum_exps = row_reduce(lowering, n, "add", const(0, dtype), lambda q: Load(exps, q))
        scale, set_scale = _reciprocal(lowering, "inv", Ref(total))
        add_up += [*sum_exps, set_scale]
        result = Load(exps, Ref(r)) * Ref(scale)
    else:
        total, add_up = row_reduce(lowering, n, "add", const(0, dtype), lambda q: Unary("exp", at(q) - Ref(peak)))
        log_total, set_log = lowering.accumulate("lse", dtype, Unary("log", Ref(total)))
        add_up.append(set_log)
        result = at(Ref(r)) - Ref(peak) - Ref(log_total)
    write = For(r, n, tuple(lowering.store(y, index(Ref(r)), result)), vector_kind(n))
    return [For(row, rows, (*find_peak, *add_up, write))]


def _softmax_serial(lowering: GroupLowering, node: Node) -> list[Stmt]:
    """Over any axis: scalar accumulators per row, in the reference's order."""
    (x,), (y,) = node.inputs, node.outputs
    shape, axis = x.type.shape, node.attrs["axis"] % x.type.rank
    kept = [a for a in range(len(shape)) if a != axis]
    dtype = compute_dtype(x.type.dtype)

    def body(kept_index: list[Expr]) -> list[Stmt]:
        def at(position: Expr) -> Expr:
            return lowering.compute(x, merge_index(len(shape), kept, kept_index, [axis], [position]))

        peak, start_peak = lowering.accumulate("peak", dtype, const(-math.inf, dtype))
        total, start_total = lowering.accumulate("total", dtype, const(0, dtype))
        r1, r2, r3 = lowering.var("r"), lowering.var("r"), lowering.var("r")
        find_peak = For(r1, shape[axis], (Assign(peak, Ref(peak).max(at(Ref(r1)))),))
        add_up = For(r2, shape[axis], (Assign(total, Ref(total) + Unary("exp", at(Ref(r2)) - Ref(peak))),))
        shifted = at(Ref(r3)) - Ref(peak)
        result = Unary("exp", shifted) / Ref(total) if node.op == "softmax" else shifted - Unary("log", Ref(total))
        index = merge_index(len(shape), kept, kept_index, [axis], [Ref(r3)])
        write = For(r3, shape[axis], tuple(lowering.store(y, index, result)))
        return [start_peak, find_peak, start_total, add_up, write]

    return lowering.loops([shape[a] for a in kept], body)


# -- norms ---------------------------------------------------------------------------------------

IndexMap = Callable[[Sequence[Expr], Sequence[Expr]], list[Expr]]
"""(index of a normalised set, index within it) -> an index into an operand."""


def _standardize(lowering: GroupLowering, node: Node, sets: Sequence[int], members: Sequence[int],
                 x_at: IndexMap, affine_at: IndexMap) -> list[Stmt]:  # fmt: skip
    """The statements of layer_norm, rms_norm and group_norm: for each set of elements normalised
    together (`sets` is their grid, `members` the grid within one; a set's members are contiguous,
    set s at s * |members|), the statistics by `row_reduce` in the reference's order (mean = sum /
    count; the variance of the centred values, a second pass over the set while it is in cache;
    then 1 / sqrt(variance + epsilon)), and the affine inputs (weight multiplies, bias adds)
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
        return Unflattened(x_at(set_index, unflatten(r, members)), row_offset(s, size, count, r), x.type.shape)

    def at(r: Expr) -> Expr:
        return lowering.compute(x, index(r))

    def inverse_deviation(statistic: Expr) -> tuple[Var, Stmt]:
        return _reciprocal(lowering, "inv_std", Unary("sqrt", statistic / const(count, dtype) + epsilon))

    if node.op == "rms_norm":
        squares, statements = row_reduce(lowering, count, "add", const(0, dtype), lambda r: at(r) * at(r))
        scale, set_scale = inverse_deviation(Ref(squares))
        center: Expr | None = None
    else:
        total, statements = row_reduce(lowering, count, "add", const(0, dtype), at)
        mean, set_mean = lowering.accumulate("mean", dtype, Ref(total) / const(count, dtype))

        def square(r: Expr) -> Expr:
            centered = at(r) - Ref(mean)
            return centered * centered

        squares, second_pass = row_reduce(lowering, count, "add", const(0, dtype), square)
        statements = [*statements, set_mean, *second_pass]
        scale, set_scale = inverse_deviation(Ref(squares))
        center = Ref(mean)
    r = lowering.var("r")
    value = (at(Ref(r)) if center is None else at(Ref(r)) - center) * Ref(scale)
    for position, parameter in enumerate(affine):  # weight, then bias; weight and bias may be one value
        element = lowering.compute(parameter, affine_at(set_index, unflatten(Ref(r), members)))
        value = value * element if position == 0 else value + element
    write = For(r, count, tuple(lowering.store(y, index(Ref(r)), value)), vector_kind(count))
    return [For(s, size, (*statements, set_scale, write))]


def trailing_norm(lowering: GroupLowering, node: Node) -> list[Stmt]:
    """layer_norm and rms_norm: each set is the axes from `axis` to the last."""
    shape = node.inputs[0].type.shape
    first = node.attrs["axis"] % len(shape)
    return _standardize(lowering, node, shape[:first], shape[first:], lambda s, r: [*s, *r], lambda s, r: list(r))


def group_norm(lowering: GroupLowering, node: Node) -> list[Stmt]:
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


ROW_TEMPLATES: dict[str, Callable[[GroupLowering, Node], list[Stmt]]] = {
    "softmax": softmax,
    "log_softmax": softmax,
    "layer_norm": trailing_norm,
    "rms_norm": trailing_norm,
    "group_norm": group_norm,
}
