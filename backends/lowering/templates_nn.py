"""The windowed ops of CNNs: `TEMPLATES_NN` maps `conv` and `conv_transpose` to their schedules in
`templates_conv` (implicit GEMM on the micro-kernel; depthwise direct), and holds the pools,
`max_pool` and `avg_pool` (`global_avg_pool` is a plain mean, in `templates`): one scalar
accumulator per output element, a serial loop over the taps of its window.

The references (ir/ops/pooling.py) pad the input and take strided windows of it. Here a tap that
falls on padding reads a clamped, in-bounds address and a `Select` replaces what it read by the
padding value, so no load ever leaves its buffer and every tap still takes part in the
arithmetic, as in the reference. Taps that can never fall outside, judged from the shapes, get
no guard.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from backends.lowering.expr import const, i64
from backends.lowering.group import GroupLowering, compute_dtype
from backends.lowering.templates_conv import conv, conv_transpose, guarded, plus, scaled, window, window_params
from ir import DType, Node
from ir.loop import Assign, Expr, Ref, Stmt
from ir.ops.contraction import SpatialParams

# -- pooling -------------------------------------------------------------------------------------


def _lowest(dtype: DType) -> Expr:
    """What max_pool's padding holds: it never wins."""
    return const(-math.inf, dtype) if dtype.is_float else const(np.iinfo(dtype.numpy).min, dtype)


def _pool(lowering: GroupLowering, node: Node) -> list[Stmt]:
    """max_pool and avg_pool: a running max (nan wins, as np.max) or sum over each window's taps;
    avg_pool divides by the taps it counts (see `_counted`)."""
    (x,), (y,) = node.inputs, node.outputs
    kernel = node.attrs["kernel"]
    params = window_params(node, len(kernel))
    dtype = compute_dtype(y.type.dtype)
    is_max = node.op == "max_pool"
    padding = _lowest(dtype) if is_max else const(0, dtype)

    def body(index: list[Expr]) -> list[Stmt]:
        n, c, *out = index
        acc, start = lowering.accumulate("acc", dtype, padding)

        def tap(taps: list[Expr]) -> list[Stmt]:
            positions, inside = window(params, x.type.shape[2:], out, taps, y.type.shape[2:], kernel)
            element = guarded(lowering.compute(x, [n, c, *positions]), inside, padding)
            return [Assign(acc, Ref(acc).max(element) if is_max else Ref(acc) + element)]

        result: Expr = Ref(acc)
        if not is_max:
            result = result / _counted(node, params, x.type.shape[2:], out).cast(dtype)
        return [start, *lowering.loops(kernel, tap), *lowering.store(y, index, result)]

    return lowering.loops(y.type.shape, body)


def _counted(node: Node, params: SpatialParams, sizes: Sequence[int], out: Sequence[Expr]) -> Expr:
    """avg_pool's divisor at output position `out`: the window's taps on the input, or with
    count_include_pad on the input and its declared padding; never the extra end of ceil_mode.
    Per axis that is the overlap of [start, start + kernel) with the counted range."""
    count: Expr | None = None
    for axis, (size, kernel) in enumerate(zip(sizes, node.attrs["kernel"])):
        begin, end = params.pads_begin[axis], params.pads_end[axis]
        low, high = (-begin, size + end) if node.attrs["count_include_pad"] else (0, size)
        start = plus(scaled(out[axis], params.strides[axis]), -begin)
        overlap = plus(start, kernel).min(i64(high)) - start.max(i64(low))
        count = overlap if count is None else count * overlap
    return count if count is not None else i64(1)


TEMPLATES_NN: dict[str, Callable[[GroupLowering, Node], list[Stmt]]] = {
    "conv": conv,
    "conv_transpose": conv_transpose,
    "max_pool": _pool,
    "avg_pool": _pool,
}
