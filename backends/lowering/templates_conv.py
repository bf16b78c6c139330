"""Convolutions (`conv`, `conv_transpose`) as implicit GEMMs on the register-blocked micro-kernel of
`templates_gemm`, and depthwise convolutions as a direct loop nest vectorized along the output's
last axis; plus the window arithmetic the pools of `templates_nn` share.

**Implicit GEMM, NCHW kept.** Per image n and group g, a convolution is a GEMM

    y[n, g*M + m, p] = sum over k of W[g*M + m, k] * X(n, g, k, p)       p: output pixel (flattened)
                                                                          k = (c, taps): K = C/g * taps

A, the weight [M, K], is the constant tensor as the graph stores it ([Cout, Cin/g, *kernel] is
already row-major [Cout, K]): the micro-kernel broadcasts one element of each of its MR rows per
k step, read at its flat offset, with no index arithmetic. B is the im2col matrix of the input,
never materialized: each block of row tiles gathers its K x NR panel (NR = 64 output pixels) into
the GEMM's local panel buffer (`Contraction.pack`), reading x through per-axis tables of the
panel's window origins (filled once per panel, so the vector lanes need no division) and a padding
guard per tap. The panel then feeds MR x NR tiles exactly as a matmul's packed B does; the result
is written NCHW, contiguous along the pixels, through `lowering.store`, so the group's epilogue
(bias, folded batch norm, relu/hardswish, residual add) is applied at write-back. A 1x1 stride-1
unpadded convolution packs with contiguous vector loads (its B is x itself). `implicit_gemm` gives
these pieces (shape, weight offsets, the gather, the write) apart, for the int8 convolution
(`templates_quant_conv`) to run its own tile on.

Why this and not a direct convolution on NCHW[16]c: both run on the same 6 x 64 accumulator
tile, but a blocked layout needs layout conversions at the edges of every conv region (the
graph, its epilogues and the other targets all speak NCHW), while the gather costs K x 64 loads
per panel, amortized over all Cout/6 row tiles (~1/11 of the FMAs' time for 64 output channels,
measured in benchmarks/conv_cpu.py). Kept NCHW: no layout pass is needed, and none is run.

**Transposed convolutions** are the same GEMM with B(k = (c, taps), o) = x[n, c, (o + p - tap*d)/s]
where that is a whole position on the input, else 0: with stride s, (1 - 1/s^taps_per_axis) of
these products are zeros (a 2x2 stride-2 upsampling does 4x the FLOPs it needs), but they run at
GEMM speed instead of one scalar per tap. The common case of windows that tile the output (kernel
== stride, no padding: the detector's upsamplings) wastes none: `_upsampling` makes the taps rows
of the GEMM and reads x as its B unchanged. Its weight [Cin, Cout/g, *kernel] is read at
((g*Cin/g + k // taps) * Cout/g + m) * taps + k % taps (divisions by constants, once per k).

**Depthwise** (one input channel per output channel: a GEMM with K = taps and M = 1 would waste
the tile): one parallel loop over (n, channel), and for each output position the taps as a
per-lane accumulator, vectorized along the output's last axis; with stride 1 each tap is one
contiguous (masked) vector load of x.

Padding: a tap that falls outside the input is guarded by a `Select` whose unchosen side is never
evaluated (scalar, vector and GPU code alike), so no read leaves its buffer; taps that cannot fall
outside, judged from the shapes, get no guard. Every tap takes part in the arithmetic as in the
reference (nan weight times padding is nan).

Numerics: accumulation in the compute dtype (f32 for bf16/f16) with one fma per tap in the order
k = 0, 1, ... (channels outer, taps inner); the references sum in numpy's order, so results agree
within a tolerance that grows with K.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from backends.lowering.expr import const, i64, unflatten
from backends.lowering.group import GroupLowering, compute_dtype
from backends.lowering.templates_gemm import (
    VECTOR_LANES_MULTIPLE,
    Contraction,
    GemmShape,
    PackB,
    Write,
    contraction_loops,
)
from ir import DType, Node
from ir.loop import Assign, Binary, Buffer, Expr, For, Load, LoopKind, Ref, Select, Stmt, Store
from ir.ops.contraction import SpatialParams, spatial_params

# -- window arithmetic (shared with the pools) ----------------------------------------------------


def window_params(node: Node, spatial: int) -> SpatialParams:
    attrs = node.attrs
    return spatial_params(node.op, spatial, strides=attrs["strides"], pads=attrs["pads"],
                          dilations=attrs.get("dilations", ()))  # fmt: skip


def scaled(e: Expr, factor: int) -> Expr:
    return e if factor == 1 else e * factor


def plus(e: Expr, offset: int) -> Expr:
    return e if offset == 0 else e + offset if offset > 0 else e - (-offset)


def both(a: Expr | None, b: Expr) -> Expr:
    return b if a is None else Binary("and", a, b)


def guarded(value: Expr, inside: Expr | None, padding: Expr) -> Expr:
    return value if inside is None else Select(inside, value, padding)


Positions = tuple[list[Expr], Expr | None]
"""Input positions per spatial axis, and the condition that they lie in the input (None: always)."""


def window(params: SpatialParams, sizes: Sequence[int], out: Sequence[Expr], taps: Sequence[Expr],
           out_sizes: Sequence[int], kernel: Sequence[int], clamp: bool = True) -> Positions:  # fmt: skip
    """The input position of each spatial axis for output position `out` and tap `taps`
    (out * stride - pad_begin + tap * dilation) and the condition that they all lie in the input
    (None when no tap can leave it). With `clamp` the positions are also clamped into the input
    (for readers that evaluate both sides of the guard); the `Select` guard alone already keeps
    every load in bounds, and unclamped positions keep stride-1 reads contiguous."""
    positions, inside = [], None
    for axis, size in enumerate(sizes):
        stride, begin, dilation = params.strides[axis], params.pads_begin[axis], params.dilations[axis]
        position = plus(scaled(out[axis], stride) + scaled(taps[axis], dilation), -begin)
        last = (out_sizes[axis] - 1) * stride - begin + (kernel[axis] - 1) * dilation
        clamped = position
        if begin > 0:
            inside = both(inside, position.ge(i64(0)))
            clamped = clamped.max(i64(0)) if clamp else clamped
        if last > size - 1:  # the end padding, and the extra windows of ceil_mode
            inside = both(inside, position.lt(i64(size)))
            clamped = clamped.min(i64(size - 1)) if clamp else clamped
        positions.append(clamped)
    return positions, inside


Source = Callable[[Sequence[Expr], Sequence[Expr]], Positions]
"""(per-axis table value of an output pixel, tap index) -> (input positions, the guard or None)."""


def _conv_source(node: Node, sizes: Sequence[int], out_sizes: Sequence[int], kernel: Sequence[int]) -> Source:
    """A conv's tap: the table holds out * stride - pad_begin; the tap adds tap * dilation."""
    params = window_params(node, len(kernel))

    def source(origin: Sequence[Expr], taps: Sequence[Expr]) -> Positions:
        positions, inside = [], None
        for axis, size in enumerate(sizes):
            stride, begin, dilation = params.strides[axis], params.pads_begin[axis], params.dilations[axis]
            position = origin[axis] + scaled(taps[axis], dilation)
            if begin > 0:
                inside = both(inside, position.ge(i64(0)))
            if (out_sizes[axis] - 1) * stride - begin + (kernel[axis] - 1) * dilation > size - 1:
                inside = both(inside, position.lt(i64(size)))
            positions.append(position)
        return positions, inside

    return source


def _transpose_source(node: Node, sizes: Sequence[int], out_sizes: Sequence[int], kernel: Sequence[int]) -> Source:
    """A transposed conv's tap: the table holds o + pad_begin; the input position is
    (o + pad_begin - tap * dilation) / stride where that divides and lies on the input."""
    params = window_params(node, len(kernel))

    def source(origin: Sequence[Expr], taps: Sequence[Expr]) -> Positions:
        positions, inside = [], None
        for axis, size in enumerate(sizes):
            stride, begin, dilation = params.strides[axis], params.pads_begin[axis], params.dilations[axis]
            spread = origin[axis] - scaled(taps[axis], dilation)  # i * stride, if it is on x
            position = spread // stride if stride > 1 else spread
            if begin - (kernel[axis] - 1) * dilation < 0:
                inside = both(inside, spread.ge(i64(0)))
            if stride > 1:
                inside = both(inside, (spread % stride).eq(i64(0)))
            if out_sizes[axis] - 1 + begin > (size - 1) * stride:
                inside = both(inside, position.lt(i64(size)))
            positions.append(position)
        return positions, inside

    return source


# -- implicit GEMM -------------------------------------------------------------------------------


ElementAt = Callable[[Sequence[Expr]], Expr]
"""An element of x at an index, in the panel's dtype."""


@dataclass(frozen=True)
class ImplicitGemm:
    """A conv or conv_transpose as the pieces of a GEMM per (image, group) (the module doc): what the
    f32 template hands `contraction_loops`, and what the int8 convolution (`templates_quant_conv`)
    builds its own panels and tiles from."""

    shape: GemmShape
    batch_shape: tuple[int, int]
    """(images, groups)."""
    weight_offset: Callable[[Sequence[Expr], Expr, Expr], Expr]
    """(batch index, row i, depth k) -> the flat offset in w of A(i, k)."""
    write: Write
    pack: PackB
    """Gathers B's panel: panel[k * cols + jj] = x's element at tap k of pixel j0 + jj (`x_at`), or
    the padding value where the tap falls outside x."""


def implicit_gemm(lowering: GroupLowering, node: Node, x_at: ElementAt, padding: Expr, dtype: DType) -> ImplicitGemm:
    """The implicit GEMM of `node` (conv, conv_transpose or conv_integer, whose bias input is absent),
    reading x through `x_at` and accumulating in `dtype`."""
    x, w = node.inputs[:2]
    bias = node.inputs[2:3] if node.op in ("conv", "conv_transpose") else []
    (y,) = node.outputs
    transposed = node.op == "conv_transpose"
    groups = node.attrs["groups"]
    batch, channels, *out_sizes = y.type.shape
    sizes, kernel = x.type.shape[2:], w.type.shape[2:]
    per_group_out = channels // groups
    per_group_in = w.type.shape[0] // groups if transposed else w.type.shape[1]
    taps, pixels = math.prod(kernel), math.prod(out_sizes)
    depth = per_group_in * taps
    params = window_params(node, len(kernel))
    source = (_transpose_source if transposed else _conv_source)(node, sizes, out_sizes, kernel)

    def channel_out(g: Expr, i: Expr) -> Expr:
        return i if groups == 1 else scaled(g, per_group_out) + i

    def weight_offset(index: Sequence[Expr], i: Expr, k: Expr) -> Expr:
        _, g = index
        if transposed:  # w[c, i, tap] with k = (c within the group, tap)
            c = k // taps if taps > 1 else k
            c = scaled(g, per_group_in) + c if groups > 1 else c
            offset = scaled(c, per_group_out) + i
            return offset * taps + k % taps if taps > 1 else offset
        return scaled(channel_out(g, i), depth) + k

    def write(index: Sequence[Expr], i: Expr, j: Expr, acc: Expr) -> list[Stmt]:
        n, g = index
        m = channel_out(g, i)
        offset = scaled(scaled(n, channels) + m, pixels) + j
        result = acc + lowering.compute(bias[0], [m]) if bias else acc
        return lowering.store(y, unflatten(offset, y.type.shape), result)

    pointwise = (
        not transposed
        and all(k == 1 for k in kernel)
        and set(params.strides) == {1}
        and not any(params.pads_begin + params.pads_end)
    )

    # Stride 1 with the output as wide as the input on every axis but the first: a tap's input
    # position is the output pixel's flat position plus a constant shift, so its loads are contiguous.
    shifted = not transposed and set(params.strides) == {1} and tuple(sizes[1:]) == tuple(out_sizes[1:])

    def pack(index: Sequence[Expr], j0: Expr, cols: int, panel: Buffer) -> list[Stmt]:
        n, g = index
        c, lane = lowering.var("c"), lowering.var("jj")
        channel = Ref(c) if groups == 1 else scaled(g, per_group_in) + Ref(c)
        kind = LoopKind.VECTORIZED if cols % VECTOR_LANES_MULTIPLE == 0 else LoopKind.SERIAL
        if pointwise:  # B is x: row c of the image, contiguous along the pixels
            flat = scaled(scaled(n, x.type.shape[1]) + channel, pixels) + j0 + Ref(lane)
            element = x_at(unflatten(flat, x.type.shape))
            copy = For(lane, cols, (Store(panel, Ref(c) * cols + Ref(lane), element),), kind)
            return [For(c, per_group_in, (copy,))]
        tables, fill = _origin_tables(lowering, node, out_sizes, params, j0, cols, transposed)

        def tap(tap_index: list[Expr]) -> list[Stmt]:
            origin = [Load(table, Ref(lane)) for table in tables]
            positions, inside = source(origin, tap_index)
            at: Sequence[Expr] = [n, channel, *positions]
            if shifted:  # the same flat position, read as a contiguous (masked) vector
                shift = sum((scaled(t, d) - b) * math.prod(sizes[a + 1 :]) for a, (t, d, b) in enumerate(
                    zip(tap_index, params.dilations, params.pads_begin)))  # fmt: skip
                at = unflatten(scaled(scaled(n, x.type.shape[1]) + channel, math.prod(sizes)) + j0 + Ref(lane) + shift,
                               x.type.shape)  # fmt: skip
            element = guarded(x_at(at), inside, padding)
            k = Ref(c) * taps + _flat(tap_index, kernel) if taps > 1 else Ref(c)
            return [For(lane, cols, (Store(panel, k * cols + Ref(lane), element),), kind)]

        return [*fill, For(c, per_group_in, tuple(lowering.loops(kernel, tap)))]

    shape = GemmShape(batch * groups, per_group_out, pixels, depth, dtype)
    return ImplicitGemm(shape, (batch, groups), weight_offset, write, pack)


def _implicit_gemm(lowering: GroupLowering, node: Node) -> list[Stmt]:
    """conv and conv_transpose as one GEMM per (image, group): see the module doc."""
    x, w = node.inputs[:2]
    dtype = compute_dtype(node.outputs[0].type.dtype)
    parts = implicit_gemm(lowering, node, lambda at: lowering.compute(x, at), const(0, dtype), dtype)

    def a(index: Sequence[Expr], i: Expr, k: Expr) -> Expr:
        return lowering.compute(w, unflatten(parts.weight_offset(index, i, k), w.type.shape))

    problem = Contraction(parts.shape, parts.batch_shape, a, lambda *_: const(0, dtype), parts.write, parts.pack)
    return contraction_loops(lowering, problem)


def _origin_tables(lowering: GroupLowering, node: Node, out_sizes: Sequence[int], params: SpatialParams, j0: Expr,
                   cols: int, transposed: bool) -> tuple[list[Buffer], list[Stmt]]:  # fmt: skip
    """Per spatial axis a local table of the window origin of each of the panel's `cols` pixels
    (j0 + jj unflattened: out * stride - pad for a conv, out + pad for a transposed one), and the
    scalar loop that fills them: the divisions happen once per pixel and panel, not per lane and tap."""
    tables = [lowering.scratch((cols,), DType.i64) for _ in out_sizes]
    lane = lowering.var("jj")
    fill = []
    for axis, (table, size) in enumerate(zip(tables, out_sizes)):
        inner = math.prod(out_sizes[axis + 1 :])
        position = j0 + Ref(lane)
        position = position // inner if inner > 1 else position
        position = position % size if axis > 0 else position
        begin = params.pads_begin[axis]
        origin = plus(position, begin) if transposed else plus(scaled(position, params.strides[axis]), -begin)
        fill.append(Store(table, Ref(lane), origin))
    return tables, [For(lane, cols, tuple(fill))]


def _flat(index: Sequence[Expr], shape: Sequence[int]) -> Expr:
    offset: Expr | None = None
    for position, size in zip(index, shape):
        offset = position if offset is None else offset * size + position
    return offset if offset is not None else i64(0)


# -- depthwise -----------------------------------------------------------------------------------


def _depthwise(lowering: GroupLowering, node: Node) -> list[Stmt]:
    """y[n, m, o] = sum over taps k of x[n, m // (M/g), o*s - p + k*d] * w[m, 0, k], plus bias[m]:
    one parallel loop over (n, m), the taps a per-lane accumulator of a loop vectorized along the
    output's last axis."""
    x, w, *bias = node.inputs
    (y,) = node.outputs
    batch, channels, *out_sizes = y.type.shape
    kernel = w.type.shape[2:]
    multiplier = channels // node.attrs["groups"]
    params = window_params(node, len(kernel))
    dtype = compute_dtype(y.type.dtype)

    def body(index: list[Expr]) -> list[Stmt]:
        nm, *out = index
        n, m = (nm // channels, nm % channels) if batch > 1 else (i64(0), nm)
        channel = m if multiplier == 1 else m // multiplier
        acc, start = lowering.accumulate("acc", dtype, const(0, dtype))

        def tap(taps: list[Expr]) -> list[Stmt]:
            positions, inside = window(params, x.type.shape[2:], out, taps, out_sizes, kernel, clamp=False)
            element = guarded(lowering.compute(x, [n, channel, *positions]), inside, const(0, dtype))
            return [Assign(acc, Ref(acc) + element * lowering.compute(w, [m, i64(0), *taps]))]

        result: Expr = Ref(acc) + lowering.compute(bias[0], [m]) if bias else Ref(acc)
        return [start, *lowering.loops(kernel, tap), *lowering.store(y, [n, m, *out], result)]

    return lowering.loops([batch * channels, *out_sizes], body, vectorize=True)


def conv(lowering: GroupLowering, node: Node) -> list[Stmt]:
    """`conv`: depthwise (one input channel per group, several groups) directly, else as an
    implicit GEMM."""
    if node.attrs["groups"] > 1 and node.inputs[1].type.shape[1] == 1:
        return _depthwise(lowering, node)
    return _implicit_gemm(lowering, node)


def _upsampling(lowering: GroupLowering, node: Node) -> list[Stmt]:
    """A transposed conv whose windows tile the output (kernel == stride, no padding or dilation:
    the 2x2 stride-2 upsampling of U-Nets and DBNet) as one GEMM per (image, group, input row but
    the last axis): rows (m, tap) = Cout/g x taps, columns the input row's positions, K = Cin/g.
    Every product lands in exactly one output element, y[n, m, i * s + tap], so none is wasted,
    B is x itself (contiguous rows), and the division into (m, tap) is by the row, a scalar."""
    x, w, *bias = node.inputs
    (y,) = node.outputs
    groups = node.attrs["groups"]
    batch, channels_in, *sizes = x.type.shape
    channels, kernel = y.type.shape[1], w.type.shape[2:]
    per_group_in, per_group_out, taps = channels_in // groups, channels // groups, math.prod(kernel)
    dtype = compute_dtype(y.type.dtype)
    leading = (batch, groups, *sizes[:-1])

    def a(index: Sequence[Expr], i: Expr, k: Expr) -> Expr:  # w[g*Cin/g + k, i // taps, i % taps]: i is (m, tap)
        c = scaled(index[1], per_group_in) + k if groups > 1 else k
        return lowering.compute(w, unflatten(scaled(c, per_group_out * taps) + i, w.type.shape))

    def write(index: Sequence[Expr], i: Expr, j: Expr, acc: Expr) -> list[Stmt]:
        n, g, *rows = index
        m = i // taps if taps > 1 else i
        m = scaled(g, per_group_out) + m if groups > 1 else m
        tap = unflatten(i % taps, kernel) if taps > 1 else [i64(0)] * len(kernel)
        positions = [scaled(p, s) + t for p, s, t in zip([*rows, j], kernel, tap)]
        result = acc + lowering.compute(bias[0], [m]) if bias else acc
        return lowering.store(y, [n, m, *positions], result)

    def pack(index: Sequence[Expr], j0: Expr, cols: int, panel: Buffer) -> list[Stmt]:
        n, g, *rows = index
        c, lane = lowering.var("c"), lowering.var("jj")
        channel = scaled(g, per_group_in) + Ref(c) if groups > 1 else Ref(c)
        element = lowering.compute(x, [n, channel, *rows, j0 + Ref(lane)])
        kind = LoopKind.VECTORIZED if cols % VECTOR_LANES_MULTIPLE == 0 else LoopKind.SERIAL
        return [For(c, per_group_in, (For(lane, cols, (Store(panel, Ref(c) * cols + Ref(lane), element),), kind),))]

    shape = GemmShape(math.prod(leading), per_group_out * taps, sizes[-1], per_group_in, dtype)
    problem = Contraction(shape, leading, a, lambda *_: const(0, dtype), write, pack)
    return contraction_loops(lowering, problem)


def conv_transpose(lowering: GroupLowering, node: Node) -> list[Stmt]:
    """`conv_transpose`: windows that tile the output as a GEMM without zeros (`_upsampling`),
    others as an implicit GEMM over the input positions each output pixel's taps reach."""
    x, w = node.inputs[:2]
    params = window_params(node, x.type.rank - 2)
    kernel, sizes, out_sizes = w.type.shape[2:], x.type.shape[2:], node.outputs[0].type.shape[2:]
    if (
        tuple(params.strides) == tuple(kernel)
        and set(params.dilations) == {1}
        and not any(params.pads_begin + params.pads_end)
        and all(o == i * s for o, i, s in zip(out_sizes, sizes, kernel))
    ):
        return _upsampling(lowering, node)
    return _implicit_gemm(lowering, node)
