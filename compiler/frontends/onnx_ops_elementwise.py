"""ONNX elementwise ops into the IR: unary math, binary arithmetic, comparisons and logic, casts,
the activation functions (decomposed onto the IR's arithmetic where the table lacks them) and
linear quantization.

Each entry of `ELEMENTWISE_OPS` maps an ONNX op type to a small function that reads a
`NodeContext` and returns the IR value(s) of the node's outputs. ONNX elementwise ops take
one dtype for all their inputs, like the IR, so casts are needed only where ONNX mixes types
(Pow's exponent, CastLike, quantization).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from compiler.frontends.onnx_context import NodeContext, UnsupportedNode, dtype_of_onnx
from ir import DType, Value

Mapping = Callable[[NodeContext], object]


def _unary(op: str) -> Mapping:
    def convert(ctx: NodeContext) -> Value:
        return ctx.op(op, ctx.input(0))

    convert.__name__ = f"unary_{op}"
    return convert


def _binary(op: str) -> Mapping:
    def convert(ctx: NodeContext) -> Value:
        return ctx.op(op, ctx.input(0), ctx.input(1))

    convert.__name__ = f"binary_{op}"
    return convert


def _variadic(op: str) -> Mapping:
    """Max, Min, Sum: a left fold of the binary op over all inputs (they broadcast together)."""

    def convert(ctx: NodeContext) -> Value:
        result = ctx.input(0)
        for index in range(1, len(ctx.inputs)):
            result = ctx.op(op, result, ctx.input(index))
        return result

    convert.__name__ = f"variadic_{op}"
    return convert


def _mean(ctx: NodeContext) -> Value:
    total = _variadic("add")(ctx)
    return ctx.op("div", total, ctx.scalar(len(ctx.inputs), total))


def _identity(ctx: NodeContext) -> Value:
    return ctx.input(0)


def _pow(ctx: NodeContext) -> Value:
    base, exponent = ctx.input(0), ctx.input(1)
    if base.type.dtype.is_float:
        return ctx.op("pow", base, ctx.cast(exponent, base.type.dtype))
    # Integer powers: f64 holds every int32 result exactly and int64 ones up to 2**53.
    result = ctx.op("pow", ctx.cast(base, DType.f64), ctx.cast(exponent, DType.f64))
    return ctx.cast(result, base.type.dtype)


def _mod(ctx: NodeContext) -> Value:
    a, b = ctx.input(0), ctx.input(1)
    # fmod=0 on floats (allowed since opset 28) takes the divisor's sign, like integers.
    return ctx.op("mod", a, b, fmod=bool(ctx.attr("fmod")))


def _where(ctx: NodeContext) -> Value:
    return ctx.op("where", ctx.input(0), ctx.input(1), ctx.input(2))


def _is_nan(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    return ctx.op("not_equal", x, x)  # nan is the only value unequal to itself


def _is_inf(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    positive, negative = bool(ctx.attr("detect_positive")), bool(ctx.attr("detect_negative"))
    checks = []
    if positive:
        checks.append(ctx.op("equal", x, ctx.scalar(np.inf, x)))
    if negative:
        checks.append(ctx.op("equal", x, ctx.scalar(-np.inf, x)))
    if not checks:
        return ctx.op("less", x, x)  # x < x is false everywhere, nan included
    return checks[0] if len(checks) == 1 else ctx.op("or", *checks)


# -- casts ---------------------------------------------------------------------------------------


def _cast(ctx: NodeContext) -> Value:
    dtype = dtype_of_onnx(ctx.attr("to"), "the target type")
    return ctx.cast(ctx.input(0), dtype)


def _cast_like(ctx: NodeContext) -> Value:
    return ctx.cast(ctx.input(0), ctx.input(1).type.dtype)


def _clip(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    bounds = []
    for index in (1, 2):
        if ctx.optional(index) is None:
            bounds.append(None)
        elif ctx.constants[index] is not None:
            bounds.append(float(np.asarray(ctx.constants[index]).reshape(())))
        else:
            # A bound known only at run time: max/min with the scalar tensor.
            bounds.append(ctx.optional(index))
    low, high = bounds
    if not isinstance(low, Value) and not isinstance(high, Value):
        return ctx.op("clip", x, min=low, max=high)
    if low is not None:
        x = ctx.op("maximum", x, low if isinstance(low, Value) else ctx.scalar(low, x))
    if high is not None:
        x = ctx.op("minimum", x, high if isinstance(high, Value) else ctx.scalar(high, x))
    return x


# -- activations ---------------------------------------------------------------------------------


def _in_f32(convert: Mapping) -> Mapping:
    """Runs a decomposed activation on f16/bf16 inputs in f32 and rounds once at the end, as a
    fused kernel (and ONNX's reference) would, rather than rounding after every step."""

    def wrapped(ctx: NodeContext) -> Value:
        x = ctx.input(0)
        if x.type.dtype not in (DType.f16, DType.bf16):
            return convert(ctx)
        wide = NodeContext(
            ctx.node, ctx.source, ctx.version, ctx.schema, ctx.builder, [ctx.cast(x, DType.f32)], ctx.constants
        )
        return ctx.cast(convert(wide), x.type.dtype)

    wrapped.__name__ = convert.__name__
    return wrapped


def _select_negative(ctx: NodeContext, x: Value, negative: Value, positive: Value) -> Value:
    """negative where x < 0, else positive."""
    return ctx.op("where", ctx.op("less", x, ctx.scalar(0, x)), negative, positive)


def _leaky_relu(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    return _select_negative(ctx, x, ctx.op("mul", x, ctx.scalar(ctx.attr("alpha"), x)), x)


def _prelu(ctx: NodeContext) -> Value:
    x, slope = ctx.input(0), ctx.input(1)
    return _select_negative(ctx, x, ctx.op("mul", x, slope), x)


def _expm1_scaled(ctx: NodeContext, x: Value, alpha: float) -> Value:
    """alpha * (exp(x) - 1)"""
    return ctx.op("mul", ctx.scalar(alpha, x), ctx.op("sub", ctx.op("exp", x), ctx.scalar(1, x)))


def _elu(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    return _select_negative(ctx, x, _expm1_scaled(ctx, x, ctx.attr("alpha")), x)


def _selu(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    alpha, gamma = ctx.attr("alpha"), ctx.attr("gamma")
    # gamma * (alpha * (exp(x) - 1)) for x <= 0, gamma * x above: the same value at 0.
    inner = _select_negative(ctx, x, _expm1_scaled(ctx, x, alpha), x)
    return ctx.op("mul", inner, ctx.scalar(gamma, x))


def _celu(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    alpha = ctx.attr("alpha")
    scaled = ctx.op("div", x, ctx.scalar(alpha, x))
    negative = ctx.op("minimum", ctx.scalar(0, x), _expm1_scaled(ctx, scaled, alpha))
    return ctx.op("add", ctx.op("relu", x), negative)


def _hard_sigmoid_of(ctx: NodeContext, x: Value, alpha: float, beta: float) -> Value:
    linear = ctx.op("add", ctx.op("mul", x, ctx.scalar(alpha, x)), ctx.scalar(beta, x))
    return ctx.op("clip", linear, min=0.0, max=1.0)


def _hard_sigmoid(ctx: NodeContext) -> Value:
    return _hard_sigmoid_of(ctx, ctx.input(0), ctx.attr("alpha"), ctx.attr("beta"))


def _hard_swish(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    return ctx.op("mul", x, _hard_sigmoid_of(ctx, x, 1 / 6, 0.5))


def _softsign(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    return ctx.op("div", x, ctx.op("add", ctx.op("abs", x), ctx.scalar(1, x)))


def _softplus_of(ctx: NodeContext, x: Value) -> Value:
    # log(1 + e**x) = max(x, 0) + log(1 + e**-|x|): e**x never overflows.
    tail = ctx.op("log", ctx.op("add", ctx.op("exp", ctx.op("neg", ctx.op("abs", x))), ctx.scalar(1, x)))
    return ctx.op("add", ctx.op("relu", x), tail)


def _softplus(ctx: NodeContext) -> Value:
    return _softplus_of(ctx, ctx.input(0))


def _mish(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    return ctx.op("mul", x, ctx.op("tanh", _softplus_of(ctx, x)))


def _thresholded_relu(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    above = ctx.op("greater", x, ctx.scalar(ctx.attr("alpha"), x))
    return ctx.op("where", above, x, ctx.scalar(0, x))


def _shrink(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    bias, lambd = ctx.attr("bias"), ctx.attr("lambd")
    below = ctx.op("less", x, ctx.scalar(-lambd, x))
    above = ctx.op("greater", x, ctx.scalar(lambd, x))
    zero = ctx.scalar(0, x)
    shifted_up = ctx.op("add", x, ctx.scalar(bias, x))
    shifted_down = ctx.op("sub", x, ctx.scalar(bias, x))
    return ctx.op("where", below, shifted_up, ctx.op("where", above, shifted_down, zero))


def _gelu(ctx: NodeContext) -> Value:
    return ctx.op("gelu", ctx.input(0), approximate=ctx.attr("approximate"))


def _swish(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    alpha = ctx.attr("alpha")
    scaled = x if alpha == 1.0 else ctx.op("mul", x, ctx.scalar(alpha, x))
    return ctx.op("mul", x, ctx.op("sigmoid", scaled))


# -- quantization --------------------------------------------------------------------------------

_QUANTIZED_RANGES = {DType.u8: (0, 255), DType.i8: (-128, 127), DType.i32: (-(2**31), 2**31 - 1)}


def _per_axis(ctx: NodeContext, parameter: Value, x: Value) -> Value:
    """A scale or zero point of rank 1 applies along `axis` of x: reshape it to broadcast there."""
    if ctx.attr("block_size", 0):
        raise UnsupportedNode("blocked quantization (block_size)")
    if parameter.type.rank == 0 or x.type.rank == 0:
        return parameter
    if parameter.type.rank != 1:
        raise UnsupportedNode("scales of rank > 1")
    axis = ctx.attr("axis") % x.type.rank
    shape = [1] * x.type.rank
    shape[axis] = parameter.type.shape[0]
    return ctx.op("reshape", parameter, shape=shape)


def _quantize_linear(ctx: NodeContext) -> Value:
    x, scale, zero_point = ctx.input(0), ctx.input(1), ctx.optional(2)
    if zero_point is not None:
        dtype = zero_point.type.dtype
    else:
        output_dtype = ctx.attr("output_dtype", 0)
        dtype = dtype_of_onnx(output_dtype, "the output type") if output_dtype else DType.u8
    if dtype not in _QUANTIZED_RANGES:
        raise UnsupportedNode(f"quantizing to {dtype}")
    low, high = _QUANTIZED_RANGES[dtype]
    compute = DType.f32 if x.type.dtype != DType.f64 else DType.f64
    scaled = ctx.op("div", ctx.cast(x, compute), ctx.cast(_per_axis(ctx, scale, x), compute))
    rounded = ctx.op("round", scaled)  # half to even, as ONNX says
    if zero_point is not None:
        rounded = ctx.op("add", rounded, ctx.cast(_per_axis(ctx, zero_point, x), compute))
    return ctx.cast(ctx.op("clip", rounded, min=low, max=high), dtype)


def _dequantize_linear(ctx: NodeContext) -> Value:
    x, scale, zero_point = ctx.input(0), ctx.input(1), ctx.optional(2)
    if x.type.dtype not in _QUANTIZED_RANGES:
        raise UnsupportedNode(f"dequantizing {x.type.dtype}")
    dtype = scale.type.dtype
    output_dtype = ctx.attr("output_dtype", 0)
    if output_dtype:
        dtype = dtype_of_onnx(output_dtype, "the output type")
    # The difference x - zero_point needs more range than the quantized type: compute in f32.
    compute = DType.f64 if dtype == DType.f64 else DType.f32
    value = ctx.cast(x, compute)
    if zero_point is not None:
        value = ctx.op("sub", value, ctx.cast(_per_axis(ctx, zero_point, x), compute))
    value = ctx.op("mul", value, ctx.cast(_per_axis(ctx, scale, x), compute))
    return ctx.cast(value, dtype)


_UNARY = {
    "Abs": "abs",
    "Neg": "neg",
    "Exp": "exp",
    "Log": "log",
    "Sqrt": "sqrt",
    "Reciprocal": "reciprocal",
    "Tanh": "tanh",
    "Sigmoid": "sigmoid",
    "Relu": "relu",
    "Erf": "erf",
    "Sin": "sin",
    "Cos": "cos",
    "Tan": "tan",
    "Asin": "asin",
    "Acos": "acos",
    "Atan": "atan",
    "Sinh": "sinh",
    "Cosh": "cosh",
    "Asinh": "asinh",
    "Acosh": "acosh",
    "Atanh": "atanh",
    "Floor": "floor",
    "Ceil": "ceil",
    "Round": "round",
    "Sign": "sign",
    "Not": "not",
}

_BINARY = {
    "Add": "add",
    "Sub": "sub",
    "Mul": "mul",
    "Div": "div",
    "And": "and",
    "Or": "or",
    "Xor": "xor",
    "Equal": "equal",
    "Less": "less",
    "LessOrEqual": "less_equal",
    "Greater": "greater",
    "GreaterOrEqual": "greater_equal",
}

ELEMENTWISE_OPS: dict[str, Mapping] = {
    **{onnx_op: _unary(op) for onnx_op, op in _UNARY.items()},
    **{onnx_op: _binary(op) for onnx_op, op in _BINARY.items()},
    "Max": _variadic("maximum"),
    "Min": _variadic("minimum"),
    "Sum": _variadic("add"),
    "Mean": _mean,
    "Pow": _pow,
    "Mod": _mod,
    "Where": _where,
    "IsNaN": _is_nan,
    "IsInf": _is_inf,
    "Identity": _identity,
    "Cast": _cast,
    "CastLike": _cast_like,
    "Clip": _clip,
    "LeakyRelu": _in_f32(_leaky_relu),
    "PRelu": _prelu,
    "Elu": _in_f32(_elu),
    "Selu": _in_f32(_selu),
    "Celu": _in_f32(_celu),
    "HardSigmoid": _in_f32(_hard_sigmoid),
    "HardSwish": _in_f32(_hard_swish),
    "Softsign": _in_f32(_softsign),
    "Softplus": _in_f32(_softplus),
    "Mish": _in_f32(_mish),
    "ThresholdedRelu": _in_f32(_thresholded_relu),
    "Shrink": _in_f32(_shrink),
    "Gelu": _gelu,
    "Swish": _in_f32(_swish),
    "QuantizeLinear": _quantize_linear,
    "DequantizeLinear": _dequantize_linear,
}
