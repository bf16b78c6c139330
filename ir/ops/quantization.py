"""Quantization: `quantize_linear`, `dequantize_linear` and the integer contractions `matmul_integer`
and `conv_integer`, the ops that int8 models are written in (ONNX's QuantizeLinear / DequantizeLinear / MatMulInteger,
and what `passes.quantize` makes of a float model).

Scales and zero points *broadcast* against the tensor (numpy rules) rather than naming an axis:
per-tensor is a scalar, per-channel on axis 1 of an NCHW tensor is `[C, 1, 1]`, per-row dynamic
quantization of an `[M, K]` activation is `[M, 1]`. One rule covers them all, the ops stay
broadcast ops that fusion inlines and the CPU lowering computes from a scalar formula
(`backends.lowering.scalar`); the ONNX frontend reshapes a per-axis scale to this form.

Numerics (ONNX's): quantize is saturate(round_half_even(x / scale) + zero_point), computed in the
scale's float type, nan giving 0 (as a saturating float-to-int conversion does); dequantize is
(x - zero_point) * scale with the difference taken exactly in i32. `matmul_integer` subtracts the
zero points in i32 and sums the products in i32, which is exact for K < 2^16 (|a-za|,|b-zb| <= 255);
`conv_integer` likewise, its padding taps reading x's zero point (0 once centered, as ONNX's ConvInteger).
"""

from __future__ import annotations

import numpy as np

from ir.attributes import Attr, AttrKind
from ir.dtype import FLOAT_DTYPES, DType
from ir.ops.contraction import _CONV_ATTRS, _conv, _conv_flops, _infer_conv, _infer_matmul, _matmul_flops
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


def _packed(a: TensorType, b: TensorType, packed_columns: int) -> TensorType:
    """The [K, N] i8 matrix that words b hold when `packed_columns` = N (`unpack_bytes`' layout)."""
    return _infer_unpack_bytes(b, dtype=DType.i8, shape=(a.shape[-1] if a.rank else 0, packed_columns))


def _infer_matmul_integer(
    a: TensorType,
    b: TensorType,
    a_zero_point: TensorType | None = None,
    b_zero_point: TensorType | None = None,
    *,
    packed_columns: int = 0,
) -> TensorType:
    if packed_columns:
        b = _packed(a, b, packed_columns)
    require_dtype("matmul_integer", b, QUANTIZED_DTYPES, "b")
    for what, point, operand in (("a_zero_point", a_zero_point, a), ("b_zero_point", b_zero_point, b)):
        if point is not None:
            require(point.dtype == operand.dtype, f"matmul_integer: {what} {point} must have the dtype of {operand}")
            _require_broadcasts("matmul_integer", what, point, operand)
    return _infer_matmul(a.with_dtype(DType.i32), b.with_dtype(DType.i32))


def _decompose_matmul_integer(builder, a, b, a_zero_point=None, b_zero_point=None, *, packed_columns=0):
    """(a - za) @ (b - zb) in i32: what the interpreter runs, and what the CPU lowering inlines
    into its integer GEMM (the casts and subtractions are read as the GEMM loads its operands);
    packed words are unpacked first (the CPU's int8 GEMM loads them whole instead)."""
    if packed_columns:
        b = builder.op("unpack_bytes", b, dtype=DType.i8, shape=(a.type.shape[-1], packed_columns))

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
        attrs=(Attr("packed_columns", AttrKind.INT, 0),),
        dtypes=QUANTIZED_DTYPES,
        flops=_matmul_flops,
        decompose=_decompose_matmul_integer,
        doc="(a - a_zero_point) @ (b - b_zero_point) accumulated in i32 (numpy matmul shapes); a, b are i8 or u8; "
        "a_zero_point broadcasts to a (per tensor or per row [M, 1]), b_zero_point to b (per column [1, N]); with "
        "packed_columns = N, b is an i8 [K, N] stored as `unpack_bytes` words (the CPU's weight layout)",
    )
)


# --- conv_integer -------------------------------------------------------------------------------


def _infer_conv_integer(
    x: TensorType,
    w: TensorType,
    x_zero_point: TensorType | None = None,
    w_zero_point: TensorType | None = None,
    **attrs,
) -> TensorType:
    require_dtype("conv_integer", w, QUANTIZED_DTYPES, "w")
    for what, point, operand in (("x_zero_point", x_zero_point, x), ("w_zero_point", w_zero_point, w)):
        if point is not None:
            require(point.dtype == operand.dtype, f"conv_integer: {what} {point} must have the dtype of {operand}")
            _require_broadcasts("conv_integer", what, point, operand)
    return _infer_conv(x.with_dtype(DType.i32), w.with_dtype(DType.i32), **attrs)


def conv_integer(x, w, x_zero_point=None, w_zero_point=None, **attrs) -> np.ndarray:
    """The convolution of (x - x_zero_point) with (w - w_zero_point), padding 0 once centered; summed
    exactly in i64 and wrapped to i32 (what an i32 accumulator computes)."""

    def centered(a: np.ndarray, point: np.ndarray | None) -> np.ndarray:
        return a.astype(np.int64) - (0 if point is None else point.astype(np.int64))

    return _conv(centered(x, x_zero_point), centered(w, w_zero_point), **attrs).astype(np.int32)


register(
    OpDef(
        "conv_integer",
        OpKind.CONTRACTION,
        ("x", "w", "x_zero_point?", "w_zero_point?"),
        _infer_conv_integer,
        conv_integer,
        attrs=(*_CONV_ATTRS, Attr("groups", AttrKind.INT, 1)),
        dtypes=QUANTIZED_DTYPES,
        flops=_conv_flops,
        doc="conv of (x - x_zero_point) with (w - w_zero_point) accumulated in i32 (conv's shapes and attributes); "
        "x, w are i8 or u8; x_zero_point broadcasts to x (per tensor or per image [N, 1, ...]), w_zero_point to w "
        "(per output channel [M, 1, ...]); padding taps count as x_zero_point",
    )
)


# --- unpack_bytes -------------------------------------------------------------------------------


def _infer_unpack_bytes(words: TensorType, *, dtype: DType, shape: tuple[int, ...]) -> TensorType:
    require(words.dtype == DType.i32 and words.rank == 3, f"unpack_bytes: words must be i32[P, G, W], got {words}")
    require(dtype in QUANTIZED_DTYPES, f"unpack_bytes: dtype must be i8 or u8, got {dtype}")
    require(len(shape) == 2, f"unpack_bytes: shape must be [K, N], got {list(shape)}")
    (panels, groups, width), (depth, columns) = words.shape, shape
    require(
        -(-depth // 4) == groups and -(-columns // max(width, 1)) == panels,
        f"unpack_bytes: words {words} do not hold a [{depth}, {columns}] matrix in panels of {width} columns",
    )
    return TensorType(tuple(shape), dtype)


def unpack_bytes(words: np.ndarray, *, dtype: DType, shape: tuple[int, ...]) -> np.ndarray:
    """The [K, N] byte matrix whose bytes k = 4g .. 4g + 3 of column p * W + j are word words[p, g, j]
    (little-endian); the padding bytes past K and N are dropped."""
    panels, groups, width = words.shape
    data = np.ascontiguousarray(words, dtype="<i4").view(np.uint8).reshape(panels, groups, width, 4)
    matrix = data.transpose(1, 3, 0, 2).reshape(4 * groups, panels * width)[: shape[0], : shape[1]]
    return np.ascontiguousarray(matrix).view(dtype.numpy)


def pack_bytes(matrix: np.ndarray, width: int) -> np.ndarray:
    """`unpack_bytes`'s inverse: a [K, N] i8 or u8 matrix as i32 words [ceil(N / W), ceil(K / 4), W],
    zeros padding K to a multiple of 4 and N to one of `width`."""
    depth, columns = matrix.shape
    panels, groups = -(-columns // width), -(-depth // 4)
    padded = np.zeros((4 * groups, panels * width), np.uint8)
    padded[:depth, :columns] = matrix.view(np.uint8)
    data = padded.reshape(groups, 4, panels, width).transpose(2, 0, 3, 1)
    return np.ascontiguousarray(data).view("<i4").reshape(panels, groups, width).astype(np.int32)


register(
    OpDef(
        "unpack_bytes",
        OpKind.MOVEMENT,
        ("words",),
        _infer_unpack_bytes,
        unpack_bytes,
        attrs=(Attr("dtype", AttrKind.DTYPE), Attr("shape", AttrKind.INTS)),
        dtypes=frozenset({DType.i32}),
        doc="the [K, N] i8/u8 matrix stored as i32 words [P, G, W]: panels of W columns, each column's bytes four "
        "to a word along K (little-endian), as the CPU's int8 GEMM reads its weight (`passes.layout` packs it)",
    )
)


__all__ = [
    "QUANTIZED_DTYPES",
    "conv_integer",
    "dequantize",
    "pack_bytes",
    "quantize",
    "quantized_range",
    "unpack_bytes",
]
