"""Loop nests for the windowed ops of CNNs: `conv`, `conv_transpose`, `max_pool` and `avg_pool`
(`global_avg_pool` is a plain mean, in `templates`). Correct first: one scalar accumulator per
output element, a serial loop over the taps of its window; the CPU speed issue tiles them.

The references (ir/ops/contraction.py, ir/ops/pooling.py) pad the input and take strided
windows of it. Here a tap that falls on padding reads a clamped, in-bounds address and a
`Select` replaces what it read by the padding value, so no load ever leaves its buffer and every
tap still takes part in the arithmetic, as in the reference (a nan weight times a padding zero
is nan there too). Taps that can never fall outside, judged from the shapes, get no guard.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from backends.lowering.expr import const, i64
from backends.lowering.group import GroupLowering, compute_dtype
from ir import DType, Node
from ir.loop import Assign, Binary, Expr, Ref, Select, Stmt
from ir.ops.contraction import SpatialParams, spatial_params


def _params(node: Node, spatial: int) -> SpatialParams:
    attrs = node.attrs
    return spatial_params(node.op, spatial, strides=attrs["strides"], pads=attrs["pads"],
                          dilations=attrs.get("dilations", ()))  # fmt: skip


def _scaled(e: Expr, factor: int) -> Expr:
    return e if factor == 1 else e * factor


def _plus(e: Expr, offset: int) -> Expr:
    return e if offset == 0 else e + offset if offset > 0 else e - (-offset)


def _both(a: Expr | None, b: Expr) -> Expr:
    return b if a is None else Binary("and", a, b)


def _window(params: SpatialParams, sizes: Sequence[int], out: Sequence[Expr], taps: Sequence[Expr],
            out_sizes: Sequence[int], kernel: Sequence[int]) -> tuple[list[Expr], Expr | None]:  # fmt: skip
    """The input position of each spatial axis for output position `out` and tap `taps`
    (out * stride - pad_begin + tap * dilation), clamped into the input, and the condition that
    they all lie in it (None when no tap can leave it)."""
    positions, inside = [], None
    for axis, size in enumerate(sizes):
        stride, begin, dilation = params.strides[axis], params.pads_begin[axis], params.dilations[axis]
        position = _plus(_scaled(out[axis], stride) + _scaled(taps[axis], dilation), -begin)
        last = (out_sizes[axis] - 1) * stride - begin + (kernel[axis] - 1) * dilation
        clamped = position
        if begin > 0:
            inside, clamped = _both(inside, position.ge(i64(0))), clamped.max(i64(0))
        if last > size - 1:  # the end padding, and the extra windows of ceil_mode
            inside, clamped = _both(inside, position.lt(i64(size))), clamped.min(i64(size - 1))
        positions.append(clamped)
    return positions, inside


def _guarded(value: Expr, inside: Expr | None, padding: Expr) -> Expr:
    return value if inside is None else Select(inside, value, padding)


# -- convolutions --------------------------------------------------------------------------------


def _conv(lowering: GroupLowering, node: Node) -> list[Stmt]:
    """y[n, m, o] = sum over the group's channels c and taps k of x[n, c, o*s - p + k*d] * w[m, c, k],
    plus bias[m]."""
    x, w, *bias = node.inputs
    (y,) = node.outputs
    channels_in, kernel = w.type.shape[1], w.type.shape[2:]  # channels per group
    channels_out = y.type.shape[1] // node.attrs["groups"]
    params = _params(node, len(kernel))
    dtype = compute_dtype(y.type.dtype)

    def body(index: list[Expr]) -> list[Stmt]:
        n, m, *out = index
        acc, start = lowering.accumulate("acc", dtype, const(0, dtype))
        group = m if channels_out == 1 else m // channels_out
        first_channel = _scaled(group, channels_in) if node.attrs["groups"] > 1 else None

        def tap(inner: list[Expr]) -> list[Stmt]:
            c, *taps = inner
            positions, inside = _window(params, x.type.shape[2:], out, taps, y.type.shape[2:], kernel)
            channel = c if first_channel is None else first_channel + c
            element = _guarded(lowering.compute(x, [n, channel, *positions]), inside, const(0, dtype))
            return [Assign(acc, Ref(acc) + element * lowering.compute(w, [m, c, *taps]))]

        result: Expr = Ref(acc) + lowering.compute(bias[0], [m]) if bias else Ref(acc)
        return [start, *lowering.loops([channels_in, *kernel], tap), *lowering.store(y, index, result)]

    return lowering.loops(y.type.shape, body)


def _conv_transpose(lowering: GroupLowering, node: Node) -> list[Stmt]:
    """y[n, m, o] = sum over the group's channels c and taps k of x[n, c, i] * w[c, m % M/g, k]
    where o = i*s - p + k*d, plus bias[m]. Taps with no such i read padding (zero): the
    reference's convolution over a zero-spread input sees the same products."""
    x, w, *bias = node.inputs
    (y,) = node.outputs
    groups = node.attrs["groups"]
    channels_in, channels_out, kernel = w.type.shape[0] // groups, w.type.shape[1], w.type.shape[2:]
    params = _params(node, len(kernel))
    sizes = x.type.shape[2:]
    dtype = compute_dtype(y.type.dtype)

    def source(out: Sequence[Expr], taps: Sequence[Expr]) -> tuple[list[Expr], Expr | None]:
        positions, inside = [], None
        for axis, size in enumerate(sizes):
            stride, begin, dilation = params.strides[axis], params.pads_begin[axis], params.dilations[axis]
            spread = _plus(out[axis], begin) - _scaled(taps[axis], dilation)  # i * stride, if it is on x
            lowest = begin - (kernel[axis] - 1) * dilation
            highest = y.type.shape[2 + axis] - 1 + begin
            position = spread // stride if stride > 1 else spread
            clamped = position
            if lowest < 0:
                inside, clamped = _both(inside, spread.ge(i64(0))), clamped.max(i64(0))
            if stride > 1:
                inside = _both(inside, (spread % stride).eq(i64(0)))
            if highest > (size - 1) * stride:
                inside, clamped = _both(inside, position.lt(i64(size))), clamped.min(i64(size - 1))
            positions.append(clamped)
        return positions, inside

    def body(index: list[Expr]) -> list[Stmt]:
        n, m, *out = index
        acc, start = lowering.accumulate("acc", dtype, const(0, dtype))
        if groups == 1:
            group, within = None, m
        else:
            group, within = (m, i64(0)) if channels_out == 1 else (m // channels_out, m % channels_out)

        def tap(inner: list[Expr]) -> list[Stmt]:
            c, *taps = inner
            channel = c if group is None else _scaled(group, channels_in) + c
            positions, inside = source(out, taps)
            element = _guarded(lowering.compute(x, [n, channel, *positions]), inside, const(0, dtype))
            return [Assign(acc, Ref(acc) + element * lowering.compute(w, [channel, within, *taps]))]

        result: Expr = Ref(acc) + lowering.compute(bias[0], [m]) if bias else Ref(acc)
        return [start, *lowering.loops([channels_in, *kernel], tap), *lowering.store(y, index, result)]

    return lowering.loops(y.type.shape, body)


# -- pooling -------------------------------------------------------------------------------------


def _lowest(dtype: DType) -> Expr:
    """What max_pool's padding holds: it never wins."""
    return const(-math.inf, dtype) if dtype.is_float else const(np.iinfo(dtype.numpy).min, dtype)


def _pool(lowering: GroupLowering, node: Node) -> list[Stmt]:
    """max_pool and avg_pool: a running max (nan wins, as np.max) or sum over each window's taps;
    avg_pool divides by the taps it counts (see `_counted`)."""
    (x,), (y,) = node.inputs, node.outputs
    kernel = node.attrs["kernel"]
    params = _params(node, len(kernel))
    dtype = compute_dtype(y.type.dtype)
    is_max = node.op == "max_pool"
    padding = _lowest(dtype) if is_max else const(0, dtype)

    def body(index: list[Expr]) -> list[Stmt]:
        n, c, *out = index
        acc, start = lowering.accumulate("acc", dtype, padding)

        def tap(taps: list[Expr]) -> list[Stmt]:
            positions, inside = _window(params, x.type.shape[2:], out, taps, y.type.shape[2:], kernel)
            element = _guarded(lowering.compute(x, [n, c, *positions]), inside, padding)
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
        start = _plus(_scaled(out[axis], params.strides[axis]), -begin)
        overlap = _plus(start, kernel).min(i64(high)) - start.max(i64(low))
        count = overlap if count is None else count * overlap
    return count if count is not None else i64(1)


TEMPLATES_NN: dict[str, Callable[[GroupLowering, Node], list[Stmt]]] = {
    "conv": _conv,
    "conv_transpose": _conv_transpose,
    "max_pool": _pool,
    "avg_pool": _pool,
}
