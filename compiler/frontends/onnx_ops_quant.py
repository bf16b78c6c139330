"""ONNX's quantized ops into the IR: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear,
MatMulInteger, QLinearMatMul, ConvInteger and QLinearConv, so that models quantized by other
tools (ONNX Runtime's `quantize_dynamic` / `quantize_static`) compile.

QuantizeLinear and DequantizeLinear are mapped by `onnx_ops_elementwise` (onto float ops, which
the ONNX node cases check); the IR's quantization ops take scales and zero points that *broadcast* to the tensor
(`ir.ops.quantization`), so ONNX's per-axis 1-D scales are reshaped here to `[C, 1, ..., 1]`.
The integer contractions are ops of the table: MatMulInteger is `matmul_integer`, ConvInteger
`conv_integer` (i32 sums, exact; the CPU's int8 convolution where the zero points are zero, its i32
implicit GEMM otherwise); QLinearConv adds its i32 bias to that sum exactly.
QLinearMatMul and QLinearConv are their integer forms followed by a float rescale and
`quantize_linear`: the same function as ONNX Runtime's fixed-point requantization up to the
rounding of the combined scale, so results can differ by one quantum where a value sits on a tie.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from compiler.frontends.onnx_context import NodeContext, UnsupportedNode
from compiler.frontends.onnx_ops_nn import _window
from ir import DType, Value
from ir.ops.quantization import QUANTIZED_DTYPES

Mapping = Callable[[NodeContext], object]


def _along(ctx: NodeContext, parameter: Value, x: Value, axis: int) -> Value:
    """A scale or zero point as the IR wants it: one that broadcasts to `x`. ONNX gives a scalar
    (per tensor) or a 1-D tensor of x's size on `axis` (per axis), which becomes [C, 1, ..., 1]."""
    if parameter.type.rank == 0:
        return parameter
    if parameter.type.rank != 1:
        raise UnsupportedNode(f"a {parameter.type.rank}-D scale or zero point (blocked quantization)")
    axis %= max(x.type.rank, 1)
    if parameter.type.shape[0] == 1 and x.type.shape[axis : axis + 1] != (1,):
        return ctx.op("reshape", parameter, shape=())  # a 1-element "per-axis" scale is per tensor
    trailing = x.type.rank - axis - 1
    if trailing == 0:
        return parameter
    return ctx.op("reshape", parameter, shape=(parameter.type.shape[0],) + (1,) * trailing)


def _zero_point(ctx: NodeContext, index: int, dtype: DType) -> Value:
    """Input `index` when given, else a zero of `dtype`."""
    given = ctx.optional(index)
    return given if given is not None else ctx.constant(np.zeros((), dtype.numpy), "zero_point")


def _check_blocks(ctx: NodeContext) -> None:
    if ctx.attr("block_size", 0):
        raise UnsupportedNode("blocked quantization (block_size)")


def _quantized_dtype(value: Value) -> DType:
    if value.type.dtype not in QUANTIZED_DTYPES | {DType.i32}:
        raise UnsupportedNode(f"{value.type.dtype} quantized values (Kiln has int8, uint8 and int32)")
    return value.type.dtype


# -- dynamic quantization -------------------------------------------------------------------------
# (QuantizeLinear and DequantizeLinear themselves are mapped in `onnx_ops_elementwise`, onto float ops.)


def _dynamic_quantize_linear(ctx: NodeContext) -> list[Value]:
    """uint8, per tensor: the range [min(x, 0), max(x, 0)] mapped onto 0..255 (ONNX's formula)."""
    x = ctx.input(0)
    every = tuple(range(x.type.rank))
    zero = ctx.scalar(0.0, x)
    low = ctx.op("minimum", ctx.op("min", x, axes=every, keepdims=False), zero)
    high = ctx.op("maximum", ctx.op("max", x, axes=every, keepdims=False), zero)
    scale = ctx.op("div", ctx.op("sub", high, low), ctx.scalar(255.0, x))
    shifted = ctx.op("round", ctx.op("div", ctx.op("neg", low), scale))
    point = ctx.cast(ctx.op("clip", shifted, min=0.0, max=255.0), DType.u8)
    return [ctx.op("quantize_linear", x, scale, point), scale, point]


# -- integer contractions -------------------------------------------------------------------------


def _per_row(ctx: NodeContext, point: Value | None, a: Value) -> Value | None:
    """MatMulInteger's a_zero_point: a scalar, or one per row of a (1-D [M]) -> [M, 1]."""
    if point is None or point.type.rank == 0 or point.type.numel == 1:
        return None if point is None else ctx.op("reshape", point, shape=())
    return ctx.op("reshape", point, shape=(point.type.shape[0], 1))


def _per_column(ctx: NodeContext, point: Value | None) -> Value | None:
    """b_zero_point: a scalar, or one per column of b ([N] already broadcasts to [K, N])."""
    if point is None or point.type.rank == 0 or point.type.numel == 1:
        return None if point is None else ctx.op("reshape", point, shape=())
    return point


def _matmul_integer(ctx: NodeContext) -> Value:
    a, b = ctx.input(0), ctx.input(1)
    a_point, b_point = _per_row(ctx, ctx.optional(2), a), _per_column(ctx, ctx.optional(3))
    if a_point is None and b_point is None:
        return ctx.op("matmul_integer", a, b)
    a_point = a_point if a_point is not None else ctx.constant(np.zeros((), a.type.dtype.numpy), "a_zero_point")
    b_point = b_point if b_point is not None else ctx.constant(np.zeros((), b.type.dtype.numpy), "b_zero_point")
    return ctx.op("matmul_integer", a, b, a_point, b_point)


def _qlinear_matmul(ctx: NodeContext) -> Value:
    a, a_scale, a_point = ctx.input(0), ctx.input(1), ctx.input(2)
    b, b_scale, b_point = ctx.input(3), ctx.input(4), ctx.input(5)
    y_scale, y_point = ctx.input(6), ctx.input(7)
    accumulated = ctx.op("matmul_integer", a, b, _per_row(ctx, a_point, a), _per_column(ctx, b_point))
    scale = ctx.op("mul", _float(ctx, _per_row(ctx, a_scale, a)), _float(ctx, _per_column(ctx, b_scale)))
    real = ctx.op("mul", ctx.cast(accumulated, DType.f32), scale)
    return _requantize(ctx, real, y_scale, y_point)


def _float(ctx: NodeContext, scale: Value) -> Value:
    return ctx.cast(scale, DType.f32)


def _requantize(ctx: NodeContext, real: Value, y_scale: Value, y_point: Value) -> Value:
    """The f32 result of an integer contraction, quantized per tensor to y's scale and zero point."""
    scale = _float(ctx, ctx.op("reshape", y_scale, shape=()))
    return ctx.op("quantize_linear", real, scale, ctx.op("reshape", y_point, shape=()))


def _conv_accumulate(ctx: NodeContext, x: Value, x_point: Value | None, w: Value, w_point: Value | None) -> Value:
    """`conv_integer`: sum((x - zx) * (w - zw)) over each window in i32, padding taps reading zx (0
    once centered, as ONNX's reference does); zx per tensor, zw per tensor or per output channel."""
    kernel = tuple(ctx.attr("kernel_shape") or w.type.shape[2:])
    strides, pads, dilations = _window(ctx, x, kernel)
    points = []
    if x_point is not None or w_point is not None:
        points.append(ctx.op("reshape", x_point, shape=()) if x_point is not None else _zero(ctx, x))
    if w_point is not None:
        points.append(_along(ctx, w_point, w, 0))
    return ctx.op(
        "conv_integer",
        x,
        w,
        *points,
        strides=strides,
        pads=pads,
        dilations=dilations,
        groups=ctx.attr("group"),
    )


def _zero(ctx: NodeContext, like: Value) -> Value:
    return ctx.constant(np.zeros((), like.type.dtype.numpy), "zero_point")


def _conv_integer(ctx: NodeContext) -> Value:
    return _conv_accumulate(ctx, ctx.input(0), ctx.optional(2), ctx.input(1), ctx.optional(3))


def _qlinear_conv(ctx: NodeContext) -> Value:
    x, x_scale, x_point = ctx.input(0), ctx.input(1), ctx.input(2)
    w, w_scale, w_point = ctx.input(3), ctx.input(4), ctx.input(5)
    y_scale, y_point, bias = ctx.input(6), ctx.input(7), ctx.optional(8)
    accumulated = _conv_accumulate(ctx, x, x_point, w, w_point)
    if bias is not None:  # i32 per output channel, in units of x_scale * w_scale: added exactly, in i32
        accumulated = ctx.op("add", accumulated, _along(ctx, bias, accumulated, 1))
    scale = ctx.op(
        "mul", _float(ctx, ctx.op("reshape", x_scale, shape=())), _along(ctx, _float(ctx, w_scale), accumulated, 1)
    )
    real = ctx.op("mul", ctx.cast(accumulated, DType.f32), scale)
    return _requantize(ctx, real, y_scale, y_point)


QUANT_OPS: dict[str, Mapping] = {
    "DynamicQuantizeLinear": _dynamic_quantize_linear,
    "MatMulInteger": _matmul_integer,
    "QLinearMatMul": _qlinear_matmul,
    "ConvInteger": _conv_integer,
    "QLinearConv": _qlinear_conv,
}
"""ONNX op type -> mapping, joined into `onnx_ops.ONNX_OPS`."""
