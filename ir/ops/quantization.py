"""Quantization: `quantize_linear`, `dequantize_linear` and the integer contraction `matmul_integer`,
the ops that int8 models are written in (ONNX's QuantizeLinear / DequantizeLinear / MatMulInteger,
and what `passes.quantize` makes of a float model).

Scales and zero points *broadcast* against the tensor (numpy rules) rather than naming an axis:
per-tensor is a scalar, per-channel on axis 1 of an NCHW tensor is `[C, 1, 1]`, per-row dynamic
quantization of an `[M, K]` activation is `[M, 1]`. One rule covers them all, the ops stay
broadcast ops that fusion inlines and the CPU lowering computes from a scalar formula
(`backends.lowering.scalar`); the ONNX frontend reshapes a per-axis scale to this form.

Numerics (ONNX's): quantize is saturate(round_half_even(x / scale) + zero_point), computed in the
scale's float type, nan giving 0 (as a saturating float-to-int conversion does); dequantize is
(x - zero_point) * scale with the difference taken exactly in i32. `matmul_integer` subtracts the
zero points in i32 and sums the products in i32, which is exact for K < 2^16 (|a-za|,|b-zb| <= 255).
"""

from __future__ import annotations

import numpy as np

from ir.dtype import FLOAT_DTYPES, DType
from ir.ops.contraction import _infer_matmul, _matmul_flops
from ir.ops.shapes import broadcasts_to, require, require_dtype
from ir.ops.table import OpDef, OpKind, register
from ir.types import TensorType

QUANTIZED_DTYPES = frozenset({DType.i8, DType.u8})
"""The element types a quantized tensor is stored in."""


def quantized_range(dtype: DType) -> tuple[int, int]:
    """The smallest and largest value of a quantized dtype (-128..127, 0..255)."""
    info = np.iinfo(dtype.numpy)
    return int(info.min), int(info.max)


def _require_broadcasts(op: str, what: str, operand: TensorType, target: TensorType) -> None:
    require(
        broadcasts_to(operand.shape, target.shape),
        f"{op}: {what} {operand} must broadcast to x {target} (per-axis: give it the axis's size and 1s after it)",
    )


# --- quantize_linear ----------------------------------------------------------------------------


def _infer_quantize(x: TensorType, scale: TensorType, zero_point: TensorType) -> TensorType:
    require(scale.dtype == x.dtype, f"quantize_linear: scale {scale} must have x's dtype {x.dtype} (insert a cast)")
    require_dtype("quantize_linear", zero_point, QUANTIZED_DTYPES, "zero_point")
    _require_broadcasts("quantize_linear", "scale", scale, x)
    _require_broadcasts("quantize_linear", "zero_point", zero_point, x)
    return TensorType(x.shape, zero_point.dtype)


def quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """saturate(round_half_even(x / scale) + zero_point) in zero_point's dtype; nan -> 0."""
    low, high = quantized_range(DType.from_numpy(zero_point.dtype))
    with np.errstate(all="ignore"):
        q = np.rint(x / scale) + zero_point.astype(x.dtype)
        q = np.clip(q, low, high)
    return np.where(np.isnan(q), 0, q).astype(zero_point.dtype)


register(
    OpDef(
        "quantize_linear",
        OpKind.BROADCAST,
        ("x", "scale", "zero_point"),
        _infer_quantize,
        quantize,
        dtypes=FLOAT_DTYPES,
        flops_per_element=4,
        doc="saturate(round_half_even(x / scale) + zero_point) in zero_point's dtype (i8 or u8); scale and "
        "zero_point broadcast to x (per tensor, per channel, per row)",
    )
)


# --- dequantize_linear --------------------------------------------------------------------------


def _infer_dequantize(x: TensorType, scale: TensorType, zero_point: TensorType) -> TensorType:
    require(zero_point.dtype == x.dtype, f"dequantize_linear: zero_point {zero_point} must have x's dtype {x.dtype}")
    require_dtype("dequantize_linear", scale, FLOAT_DTYPES, "scale")
    _require_broadcasts("dequantize_linear", "scale", scale, x)
    _require_broadcasts("dequantize_linear", "zero_point", zero_point, x)
    return TensorType(x.shape, scale.dtype)


def dequantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """(x - zero_point) * scale, the difference exact in i32, then one float multiply."""
    centered = x.astype(np.int32) - zero_point.astype(np.int32)
    return centered.astype(scale.dtype) * scale


register(
    OpDef(
        "dequantize_linear",
        OpKind.BROADCAST,
        ("x", "scale", "zero_point"),
        _infer_dequantize,
        dequantize,
        dtypes=QUANTIZED_DTYPES | {DType.i32},
        flops_per_element=2,
        doc="(x - zero_point) * scale in scale's float type; x and zero_point are i8, u8 or i32; scale and "
        "zero_point broadcast to x",
    )
)


# --- matmul_integer -----------------------------------------------------------------------------


def _infer_matmul_integer(
    a: TensorType, b: TensorType, a_zero_point: TensorType | None = None, b_zero_point: TensorType | None = None
) -> TensorType:
    require_dtype("matmul_integer", b, QUANTIZED_DTYPES, "b")
    for what, point, operand in (("a_zero_point", a_zero_point, a), ("b_zero_point", b_zero_point, b)):
        if point is not None:
            require(point.dtype == operand.dtype, f"matmul_integer: {what} {point} must have the dtype of {operand}")
            _require_broadcasts("matmul_integer", what, point, operand)
    return _infer_matmul(a.with_dtype(DType.i32), b.with_dtype(DType.i32))


def _decompose_matmul_integer(builder, a, b, a_zero_point=None, b_zero_point=None):
    """(a - za) @ (b - zb) in i32: what the interpreter runs, and what the CPU lowering inlines
    into its integer GEMM (the casts and subtractions are read as the GEMM loads its operands)."""

    def centered(x, point):
        wide = builder.cast(x, dtype=DType.i32)
        return wide if point is None else builder.sub(wide, builder.cast(point, dtype=DType.i32))

    return builder.matmul(centered(a, a_zero_point), centered(b, b_zero_point))


register(
    OpDef(
        "matmul_integer",
        OpKind.CONTRACTION,
        ("a", "b", "a_zero_point?", "b_zero_point?"),
        _infer_matmul_integer,
        None,
        dtypes=QUANTIZED_DTYPES,
        flops=_matmul_flops,
        decompose=_decompose_matmul_integer,
        doc="(a - a_zero_point) @ (b - b_zero_point) accumulated in i32 (numpy matmul shapes); a, b are i8 or u8; "
        "a_zero_point broadcasts to a (per tensor or per row [M, 1]), b_zero_point to b (per column [1, N])",
    )
)


__all__ = ["QUANTIZED_DTYPES", "dequantize", "quantize", "quantized_range"]
