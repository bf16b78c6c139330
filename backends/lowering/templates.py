"""Loop nests for the ops a group must compute into a buffer: reductions, softmax, norms and
contractions. Correct first: plain loop nests with scalar accumulators, in the order of
operations of the op's numpy reference; the CPU speed issue replaces them with tiled ones.
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

from backends.lowering.expr import const, i64, unflatten
from backends.lowering.group import GroupLowering, compute_dtype
from backends.lowering.templates_gemm import TEMPLATES_GEMM
from backends.lowering.templates_nn import TEMPLATES_NN
from backends.lowering.templates_scan import TEMPLATES_SCAN
from ir import DType, Node
from ir.loop import Assign, Binary, Expr, For, Ref, Select, Stmt, Unary


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
    together (`sets` is their grid, `members` the grid within one), the statistics in the
    reference's order (mean = sum / count; the variance of the centred values; then divide by
    sqrt(variance + epsilon)), and the affine inputs (weight multiplies, bias adds) at
    `affine_at`. The results go to the output at `x_at`, the position they were read from."""
    x, *affine = node.inputs
    (y,) = node.outputs
    dtype = compute_dtype(x.type.dtype)
    count = const(math.prod(members), dtype)
    epsilon = const(node.attrs["epsilon"], dtype)

    def body(set_index: list[Expr]) -> list[Stmt]:
        def at(r: Sequence[Expr]) -> Expr:
            return lowering.compute(x, x_at(set_index, r))

        def over_members(step) -> list[Stmt]:
            return _reduce_loop(lowering, members, range(len(members)), step)

        statements: list[Stmt] = []
        if node.op == "rms_norm":
            squares, start = lowering.accumulate("sq", dtype, const(0, dtype))
            statements += [start, *over_members(lambda r: [Assign(squares, Ref(squares) + at(r) * at(r))])]
            scale, set_scale = lowering.accumulate("rms", dtype, Unary("sqrt", Ref(squares) / count + epsilon))
            center: Expr | None = None
        else:
            total, start = lowering.accumulate("sum", dtype, const(0, dtype))
            statements += [start, *over_members(lambda r: [Assign(total, Ref(total) + at(r))])]
            mean, set_mean = lowering.accumulate("mean", dtype, Ref(total) / count)
            squares, start_squares = lowering.accumulate("sq", dtype, const(0, dtype))

            def add_square(r: Sequence[Expr]) -> list[Stmt]:
                centered = at(r) - Ref(mean)
                return [Assign(squares, Ref(squares) + centered * centered)]

            statements += [set_mean, start_squares, *over_members(add_square)]
            scale, set_scale = lowering.accumulate("std", dtype, Unary("sqrt", Ref(squares) / count + epsilon))
            center = Ref(mean)

        def write(r: Sequence[Expr]) -> list[Stmt]:
            value = (at(r) if center is None else at(r) - center) / Ref(scale)
            for position, parameter in enumerate(affine):  # weight, then bias; weight and bias may be one value
                element = lowering.compute(parameter, affine_at(set_index, r))
                value = value * element if position == 0 else value + element
            return lowering.store(y, x_at(set_index, r), value)

        return [*statements, set_scale, *over_members(write)]

    return lowering.loops(sets, body)


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
