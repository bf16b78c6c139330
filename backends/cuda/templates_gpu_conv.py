"""Convolutions on the GPU as implicit GEMMs on the GEMM template's block tiles
(`backends.cuda.templates_gpu_gemm`): FMA tiles for f32, tensor-core MMA for f16/bf16, TF32
tensor cores for f32 when the user allows it (`templates_gpu_tf32`).
`backends.cuda.schedule.schedule_group` tries this after the GEMM template.

Per image n and group g a `conv` (1 or 2 spatial axes, any stride, padding, dilation and groups;
NCHW, as the graph stores it) is the GEMM of the CPU's implicit GEMM (`backends.lowering.templates_conv`):

    y[n, g*M + m, p] = sum over k of W[g*M + m, k] * X(n, g, k, p)      p: output pixel, flattened
                                                                         k = (c, tap): K = C/g * taps

A is the weight, read as stored ([Cout, Cin/g, *kernel] is row-major [Cout, K]); B is the im2col
matrix of the input, never materialized: the template's staging of B's BK x BN tile computes each
element's window position on the fly as it copies it into shared memory (k -> channel and tap,
p -> output position, divisions by constants), with padding read as 0 behind a guard whose
unchosen side is never evaluated. Blocks are (image, group, tile of Cout, tile of pixels), so a
warp's threads stage and write consecutive pixels: coalesced along NCHW rows. The product goes
through the group's epilogue (bias, folded batch norm, activation, residual) as the GEMM's does.

Depthwise convolutions (one input channel per group: K = taps, M = 1 per group, which would waste
the tile) and 3-D ones keep the generic schedule. int8 convolutions (`conv_integer`) take the same
im2col addressing (`conv_contraction`, reading bytes) on the int8 MMA: `templates_gpu_quant_conv`.

Numerics: the GEMM template's (f32: fma in k order, channels outer and taps inner, as on the CPU;
f16/bf16: exact products accumulated in f32, one rounding at the store).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from backends.cuda.gemm_block import BlockTile
from backends.cuda.templates_gpu_gemm import FmaKernel, FmaTiles, choose_fma_tiles
from backends.cuda.templates_gpu_mma import MMA, MmaKernel, MmaTiles, choose_mma_tiles
from backends.cuda.templates_gpu_tf32 import Tf32Kernel, choose_tf32_tiles
from backends.lowering.expr import const, i64, unflatten
from backends.lowering.group import EpilogueMismatch, GroupLowering, compute_dtype, inlinable
from backends.lowering.templates_conv import guarded, scaled, window, window_params
from backends.lowering.templates_gemm import Contraction, GemmShape
from ir import DType, Node, Value
from ir.loop import Expr, Kernel, Stmt

__all__ = ["conv_template"]

Read = Callable[[Value, Sequence[Expr]], Expr]
"""(value, index) -> the element an operand of the contraction reads."""

SPATIAL_AXES = (1, 2)
"""The convolutions this template takes: 1-D and 2-D."""


def conv_template(
    node: Node, name: str, source: str = "", fma_tiles: FmaTiles | None = None, mma_tiles: MmaTiles | None = None,
    allow_tf32: bool = False,
) -> tuple[Kernel, str] | None:  # fmt: skip
    """The GPU kernel of the `fused` node `node` when its group is one `conv` (not depthwise, 1-D
    or 2-D, f32/f16/bf16) with elementwise work around it, and the template's name ("conv.fma",
    "conv.mma", "conv.tf32": f32 under `allow_tf32`); None otherwise. Tiles as `gemm_template`'s."""
    if any(value.type.numel == 0 for value in node.outputs):
        return None
    lowering = GroupLowering(node.attrs["body"], name, source)
    anchors = [n for n in lowering.body.nodes if n.op != "const" and not inlinable(n)]
    if len(anchors) != 1 or anchors[0].op != "conv":
        return None
    (conv,) = anchors
    x, w = conv.inputs[:2]
    (y,) = conv.outputs
    dtype = x.type.dtype
    if x.type.rank - 2 not in SPATIAL_AXES or {w.type.dtype, y.type.dtype} != {dtype}:
        return None
    if dtype not in (DType.f32, *MMA) or (conv.attrs["groups"] > 1 and w.type.shape[1] == 1):
        return None  # f64/integer, and depthwise: the generic schedule
    problem = conv_contraction(lowering, conv)
    m, n = problem.shape.m, problem.shape.n
    try:
        builder: BlockTile
        if dtype == DType.f32 and allow_tf32:
            builder, template = Tf32Kernel(lowering, conv, problem, mma_tiles or choose_tf32_tiles(m, n)), "conv.tf32"
        elif dtype == DType.f32:
            builder, template = FmaKernel(lowering, conv, problem, fma_tiles or choose_fma_tiles(m, n)), "conv.fma"
        else:
            builder, template = MmaKernel(lowering, conv, problem, mma_tiles or choose_mma_tiles(m, n)), "conv.mma"
        return builder.kernel(), template
    except EpilogueMismatch:  # an output reads the product at another element: no thread holds it
        return None


def conv_contraction(
    lowering: GroupLowering, node: Node, read: Read | None = None, padding: Expr | None = None
) -> Contraction:
    """The conv `node` as a batched GEMM over (image, group): A the weight, B the input's
    im2col matrix addressed on the fly, the result written NCHW (see the module doc). Operands
    are read by `read` (default: `lowering.compute`, in the compute dtype; the int8 template reads
    the stored bytes with `lowering.element`), padding taps as `padding` (default: 0 in the
    compute dtype). A `conv_integer` node has no bias (its optional inputs are zero points)."""
    x, w = node.inputs[:2]
    bias = node.inputs[2:3] if node.op == "conv" else []
    (y,) = node.outputs
    groups = node.attrs["groups"]
    batch, channels, *out_sizes = y.type.shape
    sizes, kernel = x.type.shape[2:], w.type.shape[2:]
    per_group_out, per_group_in = channels // groups, w.type.shape[1]
    taps, pixels = math.prod(kernel), math.prod(out_sizes)
    depth = per_group_in * taps
    dtype = compute_dtype(y.type.dtype)
    params = window_params(node, len(kernel))
    read = read or lowering.compute
    padding = const(0, dtype) if padding is None else padding

    def channel_out(g: Expr, i: Expr) -> Expr:
        return i if groups == 1 else scaled(g, per_group_out) + i

    def a(index: Sequence[Expr], i: Expr, k: Expr) -> Expr:
        _, g = index
        return read(w, unflatten(scaled(channel_out(g, i), depth) + k, w.type.shape))

    def b(index: Sequence[Expr], k: Expr, j: Expr) -> Expr:
        n, g = index
        c = k // taps if taps > 1 else k
        channel = c if groups == 1 else scaled(g, per_group_in) + c
        tap = list(unflatten(k % taps, kernel)) if taps > 1 else [i64(0)] * len(kernel)
        out = list(unflatten(j, out_sizes))
        positions, inside = window(params, sizes, out, tap, out_sizes, kernel, clamp=False)
        return guarded(read(x, [n, channel, *positions]), inside, padding)

    def write(index: Sequence[Expr], i: Expr, j: Expr, acc: Expr) -> list[Stmt]:
        n, g = index
        m = channel_out(g, i)
        offset = scaled(scaled(n, channels) + m, pixels) + j
        result = acc + lowering.compute(bias[0], [m]) if bias else acc
        return lowering.store(y, unflatten(offset, y.type.shape), result)

    shape = GemmShape(batch * groups, per_group_out, pixels, depth, dtype)
    return Contraction(shape, (batch, groups), a, b, write)
