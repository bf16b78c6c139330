"""The scalar formula of every op that computes each output element from the elements of its
inputs at the same (broadcast) position: elementwise, broadcast and nullary ops.

`SCALAR[op](operands, attrs, dtype)` returns the kernel-IR expression of one output element,
given its operands' expressions (already in the compute dtype: f32 for f16/bf16 storage) and
the compute dtype. Formulas follow the op table's numpy references (ir/ops/elementwise.py), in
the same order of operations where that decides rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from backends.lowering.expr import const
from ir import DType
from ir.loop import Binary, Cast, Expr, Select, Unary

Formula = Callable[[Sequence[Expr], Any, DType], Expr]


def _unary(op: str) -> Formula:
    return lambda x, attrs, dtype: Unary(op, x[0])


def _binary(op: str) -> Formula:
    return lambda x, attrs, dtype: Binary(op, x[0], x[1])


def _numpy_extremum(op: str) -> Formula:
    # The kernel IR's max(a, b) keeps a on a tie, numpy's maximum(a, b) takes b (both let nan
    # win): swapped, they agree on which zero max(-0.0, 0.0) is, which 1 / x can tell apart.
    return lambda x, attrs, dtype: Binary(op, x[1], x[0])


def _sigmoid(x: Expr, dtype: DType) -> Expr:
    # 1 / (1 + e**-x): for very negative x, e**-x is inf and the result is 0, as it should be.
    one = const(1, dtype)
    return one / (one + Unary("exp", -x))


def _gelu(x: Sequence[Expr], attrs: Any, dtype: DType) -> Expr:
    v = x[0]
    half, one = const(0.5, dtype), const(1, dtype)
    if attrs["approximate"] == "tanh":
        inner = const(math.sqrt(2 / math.pi), dtype) * (v + const(0.044715, dtype) * (v * v * v))
        return half * v * (one + Unary("tanh", inner))
    return half * v * (one + Unary("erf", v / const(math.sqrt(2), dtype)))


def _sign(x: Sequence[Expr], attrs: Any, dtype: DType) -> Expr:
    v = x[0]
    zero = const(0, dtype)
    # zero (of either sign) and nan stay themselves, as numpy's sign leaves them
    return Select(v.gt(zero), const(1, dtype), Select(v.lt(zero), const(-1, dtype), v))


def _mod(x: Sequence[Expr], attrs: Any, dtype: DType) -> Expr:
    a, b = x
    remainder = Binary("mod", a, b)  # C's: the sign of a
    if attrs["fmod"] or not dtype.is_signed:
        return remainder
    zero = const(0, dtype)
    # Python's: the sign of b. Where they differ the remainder is nonzero with the other sign.
    differs = Binary("and", remainder.ne(zero), Binary("ne", remainder.lt(zero), b.lt(zero)))
    return Select(differs, remainder + b, remainder)


def _clip(x: Sequence[Expr], attrs: Any, dtype: DType) -> Expr:
    v = x[0]
    low, high = attrs["min"], attrs["max"]
    if not dtype.is_float:  # integer bounds round inwards (the reference's rule)
        low = None if low is None or not math.isfinite(low) else math.ceil(low)
        high = None if high is None or not math.isfinite(high) else math.floor(high)
    if low is not None:
        v = v.max(const(low, dtype))
    if high is not None:
        v = v.min(const(high, dtype))
    return v


def _batch_norm(x: Sequence[Expr], attrs: Any, dtype: DType) -> Expr:
    value, scale, bias, mean, var = x
    normalized = (value - mean) / Unary("sqrt", var + const(attrs["epsilon"], dtype))
    return normalized * scale + bias


def _quantize_linear(x: Sequence[Expr], attrs: Any, dtype: DType) -> Expr:
    # saturate(round_half_even(x / scale) + zero_point), in the scale's float type as the reference;
    # the clamp lets nan through and the saturating float-to-int cast makes it 0, as the reference does.
    value, scale, zero_point = x
    low, high = (-128, 127) if dtype == DType.i8 else (0, 255)
    rounded = Unary("round", value / scale) + zero_point.cast(value.dtype)
    return rounded.max(const(low, value.dtype)).min(const(high, value.dtype)).cast(dtype)


def _dequantize_linear(x: Sequence[Expr], attrs: Any, dtype: DType) -> Expr:
    # (x - zero_point) * scale: the difference exact in i32 (an i8 one would wrap), one multiply.
    value, scale, zero_point = x
    return (value.cast(DType.i32) - zero_point.cast(DType.i32)).cast(dtype) * scale


def _arange_element(index: Expr, attrs: Any, dtype: DType) -> Expr:
    # start + i * delta in f64, rounded once to the dtype, as the reference does
    position = Cast(index, DType.f64) * const(attrs["delta"], DType.f64) + const(attrs["start"], DType.f64)
    return position.cast(dtype)


SCALAR: dict[str, Formula] = {
    **{
        op: _unary(op)
        for op in (
            "abs",
            "exp",
            "log",
            "sqrt",
            "tanh",
            "erf",
            "sin",
            "cos",
            "floor",
            "ceil",
            "round",
            "not",
            "tan",
            "asin",
            "acos",
            "atan",
            "sinh",
            "cosh",
            "asinh",
            "acosh",
            "atanh",
        )
    },
    "neg": lambda x, attrs, dtype: -x[0],
    "rsqrt": lambda x, attrs, dtype: const(1, dtype) / Unary("sqrt", x[0]),
    "reciprocal": lambda x, attrs, dtype: const(1, dtype) / x[0],
    "sigmoid": lambda x, attrs, dtype: _sigmoid(x[0], dtype),
    "relu": lambda x, attrs, dtype: const(0, dtype).max(x[0]),  # np.maximum(x, 0): see _numpy_extremum
    "silu": lambda x, attrs, dtype: x[0] * _sigmoid(x[0], dtype),
    "gelu": _gelu,
    "sign": _sign,
    **{
        op: _binary(kernel_op)
        for op, kernel_op in {
            "add": "add",
            "sub": "sub",
            "mul": "mul",
            "div": "div",
            "pow": "pow",
            "equal": "eq",
            "not_equal": "ne",
            "less": "lt",
            "less_equal": "le",
            "greater": "gt",
            "greater_equal": "ge",
            "and": "and",
            "or": "or",
            "xor": "xor",
        }.items()
    },
    "maximum": _numpy_extremum("max"),
    "minimum": _numpy_extremum("min"),
    "mod": _mod,
    "where": lambda x, attrs, dtype: Select(x[0], x[1], x[2]),
    "clip": _clip,
    "cast": lambda x, attrs, dtype: x[0].cast(dtype),
    "batch_norm": _batch_norm,
    "quantize_linear": _quantize_linear,
    "dequantize_linear": _dequantize_linear,
    "full": lambda x, attrs, dtype: const(attrs["value"], dtype),
}
"""op -> formula of one output element. `arange` needs the element's position: `ARANGE`."""

ARANGE = _arange_element
