"""ATen elementwise math, comparisons, logic and reductions, emitted as IR (for `torch_ops`).

Each function takes an `Emitter` and the node's ATen arguments (fx nodes already replaced by IR
values) and returns the IR value. torch promotes dtypes (int + float -> float, a Python scalar
takes its tensor partner's type); the IR does not, so operands are cast to the dtype torch
computed the node in: the node's result dtype for arithmetic, the promoted operand dtype for
comparisons (whose result is bool).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from compiler.frontends.torch_graph import Emitter, ir_dtype_to_torch, torch_dtype_to_ir
from ir import DType, Value

Operand = Value | float | int | bool


def normalize_dim(dim: int, rank: int) -> int:
    return dim + rank if dim < 0 else dim


def normalize_dims(dims: Any, rank: int) -> tuple[int, ...]:
    """ATen's `dim` argument (an int, a list, or None/[] for every axis) as sorted axes."""
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        return tuple(range(rank))
    if isinstance(dims, int):
        dims = [dims]
    return tuple(sorted(normalize_dim(d, rank) for d in dims))


def promoted_dtype(*operands: Operand) -> DType:
    """torch's result type of operands: dimensioned tensors outrank 0-d ones, which outrank scalars."""

    def stand_in(operand: Operand) -> Any:
        if isinstance(operand, Value):
            shape = () if operand.type.rank == 0 else (1,)
            return torch.empty(shape, dtype=ir_dtype_to_torch(operand.type.dtype))
        return operand

    result = stand_in(operands[0])
    for operand in operands[1:]:
        # result_type folds pairwise; keep the winner as a tensor of its category for the next pair
        other = stand_in(operand)
        dtype = torch.result_type(result, other)
        dimensioned = any(isinstance(o, torch.Tensor) and o.dim() > 0 for o in (result, other))
        any_tensor = any(isinstance(o, torch.Tensor) for o in (result, other))
        result = torch.empty((1,) if dimensioned else (), dtype=dtype) if any_tensor else other
    if not isinstance(result, torch.Tensor):
        return DType.f32 if isinstance(result, float) else DType.i64
    return torch_dtype_to_ir(result.dtype) or DType.f32


# --- arithmetic -----------------------------------------------------------------------------------------------


def binary(ir_op: str) -> Callable[..., Value]:
    """add/sub/mul/maximum/...: both operands in the node's result dtype; `alpha` scales `b`."""

    def emit(e: Emitter, a: Operand, b: Operand, *, alpha: float = 1) -> Value:
        dtype = e.out_dtype
        a, b = e.tensor(a, dtype), e.tensor(b, dtype)
        if alpha != 1:
            b = e.op("mul", b, e.scalar(alpha, dtype))
        return e.op(ir_op, a, b)

    emit.__name__ = f"emit_{ir_op}"
    return emit


def reverse_sub(e: Emitter, a: Operand, b: Operand, *, alpha: float = 1) -> Value:
    """rsub: b - alpha * a."""
    dtype = e.out_dtype
    a, b = e.tensor(a, dtype), e.tensor(b, dtype)
    if alpha != 1:
        a = e.op("mul", a, e.scalar(alpha, dtype))
    return e.op("sub", b, a)


def div(e: Emitter, a: Operand, b: Operand, *, rounding_mode: str | None = None) -> Value:
    dtype = e.out_dtype  # float for true division, even of integers
    a, b = e.tensor(a, dtype), e.tensor(b, dtype)
    if rounding_mode is None:
        return e.op("div", a, b)
    if rounding_mode == "trunc":
        if not dtype.is_float:
            return e.op("div", a, b)  # IR integer division truncates, like C
        quotient = e.op("div", a, b)
        return e.op("mul", e.op("sign", quotient), e.op("floor", e.op("abs", quotient)))
    if dtype.is_float:
        return e.op("floor", e.op("div", a, b))
    # floor division of integers: mod takes the divisor's sign, so a - mod(a, b) is an exact
    # multiple of b below a (towards -inf), and the truncating division of it is exact
    return e.op("div", e.op("sub", a, e.op("mod", a, b)), b)


def power(e: Emitter, a: Operand, b: Operand) -> Value:
    dtype = e.out_dtype
    if not dtype.is_float:
        raise e.unsupported(f"integer power ({dtype}); the IR's pow takes floats")
    return e.op("pow", e.tensor(a, dtype), e.tensor(b, dtype))


def remainder(fmod: bool) -> Callable[..., Value]:
    def emit(e: Emitter, a: Operand, b: Operand) -> Value:
        dtype = e.out_dtype
        return e.op("mod", e.tensor(a, dtype), e.tensor(b, dtype), fmod=fmod)

    return emit


def unary(ir_op: str) -> Callable[..., Value]:
    """An elementwise op computed in the node's result dtype (torch makes exp(int) a float)."""

    def emit(e: Emitter, x: Value, *_: Any, **__: Any) -> Value:
        return e.op(ir_op, e.cast(x, e.out_dtype))

    emit.__name__ = f"emit_{ir_op}"
    return emit


def gelu(e: Emitter, x: Value, *, approximate: str = "none") -> Value:
    return e.op("gelu", x, approximate=approximate)


def clamp(e: Emitter, x: Value, min: Operand | None = None, max: Operand | None = None) -> Value:
    x = e.cast(x, e.out_dtype)
    if isinstance(min, Value) or isinstance(max, Value):  # clamp.Tensor: elementwise bounds
        if min is not None:
            x = e.op("maximum", x, e.tensor(min, e.out_dtype))
        if max is not None:
            x = e.op("minimum", x, e.tensor(max, e.out_dtype))
        return x
    return e.op("clip", x, min=min, max=max)


def hardtanh(e: Emitter, x: Value, min_val: float = -1.0, max_val: float = 1.0) -> Value:
    return e.op("clip", x, min=min_val, max=max_val)


def leaky_relu(e: Emitter, x: Value, negative_slope: float = 0.01) -> Value:
    positive = e.op("greater", x, e.scalar(0, x.type.dtype))
    return e.op("where", positive, x, e.op("mul", x, e.scalar(negative_slope, x.type.dtype)))


def hardsigmoid(e: Emitter, x: Value) -> Value:
    """relu6(x + 3) / 6, as torch defines it."""
    shifted = e.op("add", x, e.scalar(3.0, x.type.dtype))
    return e.op("div", e.op("clip", shifted, min=0.0, max=6.0), e.scalar(6.0, x.type.dtype))


def hardswish(e: Emitter, x: Value) -> Value:
    return e.op("mul", x, hardsigmoid(e, x))


def isnan(e: Emitter, x: Value) -> Value:
    return e.op("not_equal", x, x)  # nan is the one value unequal to itself


# --- comparisons and logic -----------------------------------------------------------------------------------


def compare(ir_op: str) -> Callable[..., Value]:
    def emit(e: Emitter, a: Operand, b: Operand) -> Value:
        dtype = promoted_dtype(a, b)
        return e.op(ir_op, e.tensor(a, dtype), e.tensor(b, dtype))

    emit.__name__ = f"emit_{ir_op}"
    return emit


def logical(ir_op: str) -> Callable[..., Value]:
    """logical_*: any dtype, nonzero is true."""

    def emit(e: Emitter, *operands: Value) -> Value:
        return e.op(ir_op, *(e.tensor(o, DType.bool) for o in operands))

    return emit


def bitwise(ir_op: str) -> Callable[..., Value]:
    """bitwise_* on bools is logic; the IR has no bitwise integer ops."""

    def emit(e: Emitter, *operands: Operand) -> Value:
        if e.out_dtype != DType.bool:
            raise e.unsupported(f"bitwise ops on {e.out_dtype}; only bool operands are supported")
        return e.op(ir_op, *(e.tensor(o, DType.bool) for o in operands))

    return emit


def where(e: Emitter, condition: Value, a: Operand, b: Operand) -> Value:
    dtype = e.out_dtype
    return e.op("where", e.cast(condition, DType.bool), e.tensor(a, dtype), e.tensor(b, dtype))


def masked_fill(e: Emitter, x: Value, mask: Value, value: Operand) -> Value:
    return e.op("where", e.cast(mask, DType.bool), e.tensor(value, e.out_dtype), e.cast(x, e.out_dtype))


# --- reductions ----------------------------------------------------------------------------------------------


def reduce(ir_op: str) -> Callable[..., Value]:
    """sum/mean/prod/amax/amin, over `dim` (None or [] = all), computed in the result dtype."""

    def emit(e: Emitter, x: Value, dim: Any = None, keepdim: bool = False, *, dtype: Any = None) -> Value:
        axes = normalize_dims(dim, x.type.rank)
        if ir_op in ("max", "min"):  # amax/amin keep the input dtype, which may be bool
            return _bool_safe_extreme(e, ir_op, x, axes, keepdim)
        return e.op(ir_op, e.cast(x, e.out_dtype), axes=axes, keepdims=keepdim)

    emit.__name__ = f"emit_{ir_op}"
    return emit


def _bool_safe_extreme(e: Emitter, ir_op: str, x: Value, axes: tuple[int, ...], keepdim: bool) -> Value:
    if x.type.dtype != DType.bool:
        return e.op(ir_op, x, axes=axes, keepdims=keepdim)
    # the IR's max/min take no bools; over 0/1 they are any/all
    as_int = e.op(ir_op, e.cast(x, DType.u8), axes=axes, keepdims=keepdim)
    return e.cast(as_int, DType.bool)


def any_or_all(ir_op: str) -> Callable[..., Value]:
    """any = max of x != 0, all = min of x != 0."""

    def emit(e: Emitter, x: Value, dim: Any = None, keepdim: bool = False) -> Value:
        return _bool_safe_extreme(e, ir_op, e.cast(x, DType.bool), normalize_dims(dim, x.type.rank), keepdim)

    return emit


def arg_extreme(ir_op: str) -> Callable[..., Value]:
    def emit(e: Emitter, x: Value, dim: int | None = None, keepdim: bool = False) -> Value:
        if dim is None:  # over the flattened tensor
            flat = e.op("reshape", x, shape=(x.type.numel,))
            index = e.op(ir_op, flat, axis=0, keepdims=False)
            return e.op("reshape", index, shape=e.out_shape) if keepdim else index
        return e.op(ir_op, x, axis=normalize_dim(dim, x.type.rank), keepdims=keepdim)

    return emit


def extreme_with_index(ir_op: str, arg_op: str) -> Callable[..., tuple[Value, Value]]:
    """max.dim / min.dim: (values, indices) along one axis."""

    def emit(e: Emitter, x: Value, dim: int, keepdim: bool = False) -> tuple[Value, Value]:
        axis = normalize_dim(dim, x.type.rank)
        values = _bool_safe_extreme(e, ir_op, x, (axis,), keepdim)
        indices = e.op(arg_op, x, axis=axis, keepdims=keepdim) if 1 in e.used_outputs() else None
        return values, indices

    return emit


def variance(e: Emitter, x: Value, dim: Any = None, *, correction: float | None = None, keepdim: bool = False) -> Value:
    """var.correction: sum((x - mean)^2) / (N - correction), two-pass like torch."""
    axes = normalize_dims(dim, x.type.rank)
    count = 1
    for axis in axes:
        count *= x.type.shape[axis]
    correction = 1.0 if correction is None else correction
    centered = e.op("sub", x, e.op("mean", x, axes=axes, keepdims=True))
    squares = e.op("sum", e.op("mul", centered, centered), axes=axes, keepdims=keepdim)
    return e.op("div", squares, e.scalar(max(count - correction, 0), x.type.dtype))


def cumsum(e: Emitter, x: Value, dim: int, *, dtype: Any = None) -> Value:
    return e.op("cumsum", e.cast(x, e.out_dtype), axis=normalize_dim(dim, x.type.rank))


def softmax(ir_op: str) -> Callable[..., Value]:
    def emit(e: Emitter, x: Value, dim: int, half_to_float: Any = False) -> Value:
        return e.op(ir_op, e.cast(x, e.out_dtype), axis=normalize_dim(dim, x.type.rank))

    return emit
