"""fuse_qdq: the quantize/dequantize patterns of models quantized by other tools (ONNX Runtime's
`quantize_static` in QDQ format) rewritten so that one integer kernel computes each matmul, gemm
and convolution.

A QDQ model keeps float ops and says where values are rounded to int8 with QuantizeLinear ->
DequantizeLinear pairs: `MatMul(DQ(Q(x)), DQ(w_int8))`. The ONNX frontend imports Q and DQ as the
float ops of their definitions (`compiler.frontends.onnx_ops_elementwise`), so the rules here
work in two steps, in one rule table:

1. Forms (exact): the float forms of the ONNX definitions become the IR's quantization ops,
   `mul(sub(cast(q, f32), cast(z, f32)), s)` -> `dequantize_linear(q, s, z)` (q of i8 or u8; the
   difference of two bytes is exact in f32 as in i32) and
   `cast(clip(add(round(div(x, s)), cast(z, f32)), lo, hi), i8|u8)` -> `quantize_linear(x, s, z)`
   where lo..hi is the whole range of the byte type (equal bit for bit; a nan input, which ONNX
   leaves undefined, gives 0).
   And round trips (exact): `quantize_linear(dequantize_linear(q, s, z), s, z)` -> q, also through
   reshape/transpose-like ops between them with per-tensor s, z (the QDQ format wraps every
   movement op in such a pair): (q - z) * s / s rounds back to q - z for s in [1e-30, 1e30].
   And a `conv_integer` (ConvInteger, QLinearConv) with a constant weight and constant zero points
   (the weight's zero) loses them, exactly, as `_without_x_zero_point` says: the int8 tile's form.
2. Integer contraction (reassociating): `matmul(dequantize_linear(qa, sa, za),
   dequantize_linear(qb, sb, zb))` -> `f32(matmul_integer(qa, qb, za, zb)) * sa * sb`, and `gemm`
   the same with its transposed B, alpha and bias; `conv(dequantize_linear(qx, ..), dequantize_linear(qw,
   ..)[, bias])` -> `f32(conv_integer(qx, qw, zx, zw)) * (sx * sw[m]) + bias[m]` (x per tensor, the
   weight per tensor or per output channel; a constant x zero point folded into a `pad` and a
   constant row-sum term, `_integer_conv`). It needs each scale constant along the summed
   axes (a per tensor or per row, b per tensor or per output column), so that it factors out of
   the sum: equal in exact arithmetic, and the integer sum is exact where the float one rounds.
   A weight zero point known to be all zeros (symmetric per-channel weights) becomes a scalar 0,
   the form the int8 kernel takes.
   The result is the input form of the CPU's int8 GEMM (`backends.lowering.templates_quant`) and
   convolution (`templates_quant_conv`) with a dequantizing epilogue; a Q that follows stays a
   `quantize_linear` the fusion takes into the same kernel.

`quantize_dynamic`'s models need no rule: DynamicQuantizeLinear, MatMulInteger and ConvInteger import
as `quantize_linear`, `matmul_integer` and `conv_integer` already, followed by the cast and scale
multiplies.

Runs first at O2 (`passes.pipelines`), before constant folding would turn DQ(int8 weight) into a
float weight; the frontend leaves DequantizeLinear unfolded for this reason.
"""

from __future__ import annotations

import numpy as np

from ir import DType, Graph, Value
from ir.ops.quantization import QUANTIZED_DTYPES, quantized_range
from passes.manager import Numerics, Pass, register_pass
from passes.rewrite import Rewriter, Rule, RuleTable, pat, rewrite_to_fixpoint, var

_ARRANGING = frozenset({"reshape", "transpose", "squeeze", "unsqueeze", "expand"})
"""Single-input ops that only arrange or repeat elements (all zeros in, all zeros out; a quantized
value arranged is the arranged value quantized)."""


# -- step 1: the ONNX float forms into quantization ops -----------------------------------------


def _broadcasts_into(small: Value, big: Value) -> bool:
    """Whether `small` broadcasts to `big`'s shape without growing it."""
    try:
        return np.broadcast_shapes(small.type.shape, big.type.shape) == tuple(big.type.shape)
    except ValueError:
        return False


def _byte_widened(rewriter: Rewriter, value: Value) -> Value | None:
    """q where value is cast(q, f32) and q is i8/u8."""
    node = rewriter.producer(value)
    if node is None or node.op != "cast" or value.type.dtype != DType.f32:
        return None
    inner = node.inputs[0]
    return inner if inner.type.dtype in QUANTIZED_DTYPES else None


def _dequantize_form(rewriter: Rewriter, node, difference: Value, scale: Value) -> Value | None:
    """mul(sub(cast(q), cast(z)), s) or mul(cast(q), s) -> dequantize_linear(q, s, z)."""
    if node.output.type.dtype != DType.f32 or scale.type.dtype != DType.f32:
        return None
    q = _byte_widened(rewriter, difference)
    if q is not None:
        zero = rewriter.constant(np.zeros((), q.type.dtype.numpy), "zero_point")
    else:
        sub = rewriter.producer(difference)
        if sub is None or sub.op != "sub":
            return None
        q, zero = _byte_widened(rewriter, sub.inputs[0]), _byte_widened(rewriter, sub.inputs[1])
        if q is None or zero is None or zero.type.dtype != q.type.dtype:
            return None
    if not (_broadcasts_into(scale, q) and _broadcasts_into(zero, q)):
        return None
    return rewriter.op("dequantize_linear", q, scale, zero)


def _quantize_form(rewriter: Rewriter, node, clip, rounded: Value, x: Value, scale: Value) -> Value | None:
    """cast(clip([add](round(div(x, s)), [cast(z)]), lo, hi), i8|u8) -> quantize_linear(x, s, z)."""
    dtype = node.attrs["dtype"]
    if dtype not in QUANTIZED_DTYPES or x.type.dtype != DType.f32 or scale.type.dtype != DType.f32:
        return None
    if (clip.attrs["min"], clip.attrs["max"]) != tuple(float(b) for b in quantized_range(dtype)):
        return None
    add = rewriter.producer(clip.inputs[0])
    if add is not None and add.op == "add":  # with a zero point: one input is the rounding, the other cast(z)
        others = [v for v in add.inputs if v != rounded]
        zero = _byte_widened(rewriter, others[0]) if len(others) == 1 else None
        if zero is None or zero.type.dtype != dtype:
            return None
    elif clip.inputs[0] == rounded:
        zero = rewriter.constant(np.zeros((), dtype.numpy), "zero_point")
    else:
        return None
    if not (_broadcasts_into(scale, x) and _broadcasts_into(zero, x)):
        return None
    return rewriter.op("quantize_linear", x, scale, zero)


def _same_parameter(rewriter: Rewriter, first: Value, second: Value) -> np.ndarray | None:
    """The contents of two scales (or zero points) that are the same constant; None otherwise."""
    one, other = rewriter.array(first), rewriter.array(second)
    if one is None or other is None or one.dtype != other.dtype or one.shape != other.shape:
        return None
    return one if np.array_equal(one, other) else None


def _round_trip(rewriter: Rewriter, node, dequantize, x: Value, scale: Value, zero: Value) -> Value | None:
    """quantize_linear(dequantize_linear(q, s, z), s, z) -> q, also with element-arranging ops between
    (per-tensor s and z there): (q - z) * s / s rounds back to q - z exactly, |q - z| <= 255 being far
    below 2^23. QDQ models put such pairs around every reshape and transpose."""
    q, s_in, z_in = dequantize.inputs
    scales, zeros = _same_parameter(rewriter, s_in, scale), _same_parameter(rewriter, z_in, zero)
    if scales is None or zeros is None or q.type.dtype != zero.type.dtype:
        return None
    if not np.all((scales >= 1e-30) & (scales <= 1e30)):  # no overflow, underflow, 0, inf or nan in (q - z) * s
        return None
    if x == dequantize.output:
        return q if q.type.shape == node.output.type.shape else None
    move = rewriter.producer(x)
    if scales.size != 1 or zeros.size != 1 or move is None or len(move.inputs) != 1:
        return None
    return rewriter.op(move.op, q, **move.attrs)


_DEQUANTIZED = pat("dequantize_linear", var(), var(), var(), name="dequantize")
ROUND_TRIPS = RuleTable(
    (
        Rule("quantize_dequantized", pat("quantize_linear", _DEQUANTIZED, var("scale"), var("zero"), name="node"),
             lambda rewriter, node, dequantize, scale, zero: _round_trip(
                 rewriter, node, dequantize, node.inputs[0], scale, zero)),
        Rule("quantize_arranged_dequantized",
             pat("quantize_linear", pat(_ARRANGING, _DEQUANTIZED), var("scale"), var("zero"), name="node"),
             lambda rewriter, node, dequantize, scale, zero: _round_trip(
                 rewriter, node, dequantize, node.inputs[0], scale, zero)),
    )
)  # fmt: skip
"""Exact: a value dequantized, arranged, and quantized again with the same parameters is the value arranged."""


_ROUNDED = pat("round", pat("div", var("x"), var("scale")), name="rounded_node")


def _quantize_rule(rewriter: Rewriter, node, clip, rounded_node, x, scale):
    return _quantize_form(rewriter, node, clip, rounded_node.output, x, scale)


FORMS = RuleTable(
    (
        Rule("dequantize_form", pat("mul", var("difference"), var("scale"), name="node"), _dequantize_form),
        Rule(
            "quantize_form",
            pat("cast", pat("clip", pat("add", _ROUNDED, var()), name="clip"), name="node"),
            _quantize_rule,
        ),
        Rule(
            "quantize_form_no_zero_point", pat("cast", pat("clip", _ROUNDED, name="clip"), name="node"), _quantize_rule
        ),
    )
)
"""Exact: the ONNX definitions' float forms as `quantize_linear` / `dequantize_linear`."""


# -- step 2: dequantized operands of a contraction into the integer contraction ------------------


def _constant_along(value: Value, rank: int, axis: int) -> bool:
    """Whether a parameter that broadcasts to a rank-`rank` tensor is constant along `axis` (< 0)."""
    shape = (1,) * (rank - value.type.rank) + tuple(value.type.shape)
    return shape[axis] == 1


def _as_columns(rewriter: Rewriter, value: Value) -> Value:
    """A parameter of a transposed [N, K] operand as one of the [K, N] operand (per row -> per column)."""
    if value.type.rank < 2:
        return value  # a scalar, or (constant along K, checked) a 1-element vector
    return rewriter.op("transpose", value, perm=(1, 0))


def _arranged_constant(rewriter: Rewriter, value: Value) -> np.ndarray | None:
    """The constant that `value` is, or that it arranges (a per-channel zero point reshaped to
    broadcast): its elements, not necessarily in `value`'s shape; None if it is not one."""
    node = rewriter.producer(value)
    while node is not None and node.op in _ARRANGING and len(node.inputs) == 1:
        value, node = node.inputs[0], rewriter.producer(node.inputs[0])
    return rewriter.array(value)


def _all_zero(rewriter: Rewriter, value: Value) -> bool:
    """Whether `value` is known to be all zeros."""
    array = _arranged_constant(rewriter, value)
    return array is not None and not np.any(array)


def _integer_contraction(rewriter: Rewriter, node, a, b) -> Value | None:
    qa, sa, za = a.inputs
    qb, sb, zb = b.inputs
    out = node.output
    if out.type.dtype != DType.f32 or sa.type.dtype != DType.f32 or sb.type.dtype != DType.f32:
        return None
    if qa.type.rank < 2 or qb.type.rank != 2 or qa.type.dtype not in QUANTIZED_DTYPES:
        return None
    transposed = node.op == "gemm" and node.attrs["trans_b"]
    if node.op == "gemm" and node.attrs["trans_a"]:
        return None
    k_axis_of_b = -1 if transposed else -2
    if not (_constant_along(sa, qa.type.rank, -1) and _constant_along(za, qa.type.rank, -1)):
        return None
    if not (_constant_along(sb, 2, k_axis_of_b) and _constant_along(zb, 2, k_axis_of_b)):
        return None
    if _all_zero(rewriter, zb):  # symmetric weights (per channel, too): the int8 kernel takes no zero point
        zb = rewriter.constant(np.zeros((), qb.type.dtype.numpy), "zero_point")
    if transposed:
        stored = rewriter.array(qb)  # a constant weight is stored transposed (folding may skip a large one)
        qb = (
            rewriter.op("transpose", qb, perm=(1, 0))
            if stored is None
            else rewriter.constant(np.ascontiguousarray(stored.T), "weight_int8")
        )
        sb, zb = _as_columns(rewriter, sb), _as_columns(rewriter, zb)
    try:
        if np.broadcast_shapes(out.type.shape, sa.type.shape, sb.type.shape) != tuple(out.type.shape):
            return None
    except ValueError:
        return None
    accumulated = rewriter.op("matmul_integer", qa, qb, za, zb)
    real = rewriter.op("cast", accumulated, dtype=DType.f32)
    if sa.type.numel == 1:  # per tensor: one combined scale (folded when both are constants)
        real = rewriter.op("mul", real, rewriter.op("mul", sa, sb))
    else:  # per row (dynamic): a row scale, then a column scale, each broadcast in the epilogue
        real = rewriter.op("mul", rewriter.op("mul", real, sa), sb)
    if node.op == "gemm":
        real = _gemm_tail(rewriter, node, real)
    return real


def _gemm_tail(rewriter: Rewriter, node, product: Value) -> Value:
    """alpha * product + beta * c, as the gemm did."""
    attrs = node.attrs
    if attrs["alpha"] != 1.0:
        product = rewriter.op("mul", product, rewriter.constant(np.float32(attrs["alpha"]), "alpha"))
    if len(node.inputs) == 3:
        bias = node.inputs[2]
        if attrs["beta"] != 1.0:
            bias = rewriter.op("mul", bias, rewriter.constant(np.float32(attrs["beta"]), "beta"))
        product = rewriter.op("add", product, bias)
    return product


def _per_channel(rewriter: Rewriter, parameter: Value, rank: int) -> Value:
    """A weight parameter constant along all but axis 0 ([M, 1, ...] or one element) as it broadcasts
    to the conv's output [N, M, *spatial]: [M, 1, ...] of the output's rank - 1, or a scalar."""
    if parameter.type.numel == 1:
        return rewriter.op("reshape", parameter, shape=())
    return rewriter.op("reshape", parameter, shape=(parameter.type.shape[0],) + (1,) * (rank - 2))


def _without_x_zero_point(rewriter: Rewriter, qx: Value, qw: Value, zx: Value, attrs) -> Value | None:
    """conv_integer(qx, qw, z) for a constant weight and a constant per-tensor z, in the int8 tile's
    form (no zero points): padding becomes a `pad` of qx with z (padding taps then contribute
    (z - z) * w = 0, as ONNX's ConvInteger's do), and sum (qx - z) w = sum qx w - z * rowsum(w), the
    row sums a constant (`passes.quantize_conv` does the same for static quantization). Exact in
    i32: the same integer. None if the weight or z is not a constant."""
    weight, point = rewriter.array(qw), _arranged_constant(rewriter, zx)
    if weight is None or point is None or point.size != 1:
        return None
    z, attrs = int(point.reshape(())), dict(attrs)
    spatial = qw.type.rank - 2
    pads = attrs["pads"] or (0,) * (2 * spatial)
    if z and any(pads):
        qx = rewriter.op("pad", qx, pads=(0, 0, *pads[:spatial], 0, 0, *pads[spatial:]), value=float(z))
        attrs["pads"] = ()
    accumulated = rewriter.op("conv_integer", qx, qw, **attrs)
    if not z:
        return accumulated
    sums = weight.reshape(weight.shape[0], -1).astype(np.int64).sum(axis=1) * z
    term = rewriter.constant(sums.astype(np.int32).reshape(-1, *(1,) * spatial), "zero_point_term")
    return rewriter.op("sub", accumulated, term)


def _integer_conv_zero_points(rewriter: Rewriter, node, x_point: Value, w_point: Value | None = None):
    """conv_integer(qx, qw, z[, 0]) -> the same without zero points (`_without_x_zero_point`), so that
    ConvInteger and QLinearConv with constant zero points run the int8 tile too."""
    if w_point is not None and not _all_zero(rewriter, w_point):
        return None
    if x_point.type.numel != 1:
        return None
    return _without_x_zero_point(rewriter, node.inputs[0], node.inputs[1], x_point, node.attrs)


def _integer_conv(rewriter: Rewriter, node, a, b) -> Value | None:
    """conv(dequantize_linear(qx, sx, zx), dequantize_linear(qw, sw, zw)[, bias]) ->
    f32(conv_integer(qx, qw, zx, zw)) * (sx * sw[m]) [+ bias[m]]: x per tensor, the weight per tensor or
    per output channel (sw, zw constant along the channels and taps that are summed). With a
    constant weight and no weight zero point, x's zero point is folded away (`_without_x_zero_point`)."""
    qx, sx, zx = a.inputs
    qw, sw, zw = b.inputs
    out, rank = node.output, qw.type.rank
    if out.type.dtype != DType.f32 or sx.type.dtype != DType.f32 or sw.type.dtype != DType.f32:
        return None
    if qx.type.dtype not in QUANTIZED_DTYPES or qw.type.dtype not in QUANTIZED_DTYPES:
        return None
    if sx.type.numel != 1 or zx.type.numel != 1:  # x per tensor: constant along the channels and taps
        return None
    if not all(_constant_along(p, rank, axis) for p in (sw, zw) for axis in range(-rank + 1, 0)):
        return None
    w_point = None if _all_zero(rewriter, zw) else zw
    accumulated = None if w_point is not None else _without_x_zero_point(rewriter, qx, qw, zx, node.attrs)
    if accumulated is None:  # x's zero point as a scalar; a zero of x's type when only w has one
        points = (rewriter.op("reshape", zx, shape=()),) + ((w_point,) if w_point is not None else ())
        accumulated = rewriter.op("conv_integer", qx, qw, *points, **node.attrs)
    scale = rewriter.op("mul", rewriter.op("reshape", sx, shape=()), _per_channel(rewriter, sw, rank))
    real = rewriter.op("mul", rewriter.op("cast", accumulated, dtype=DType.f32), scale)
    if len(node.inputs) == 3:
        real = rewriter.op(
            "add", real, rewriter.op("reshape", node.inputs[2], shape=(out.type.shape[1],) + (1,) * (rank - 2))
        )
    return real


_DQ_A = pat("dequantize_linear", var(), var(), var(), name="a")
_DQ_B = pat("dequantize_linear", var(), var(), var(), name="b")

INTEGER_CONTRACTIONS = RuleTable(
    (
        Rule("integer_matmul", pat("matmul", _DQ_A, _DQ_B, name="node"), _integer_contraction, exact=False),
        Rule("integer_gemm", pat("gemm", _DQ_A, _DQ_B, name="node"), _integer_contraction, exact=False),
        Rule("integer_gemm_bias", pat("gemm", _DQ_A, _DQ_B, var(), name="node"), _integer_contraction, exact=False),
        Rule("integer_conv", pat("conv", _DQ_A, _DQ_B, name="node"), _integer_conv, exact=False),
        Rule("integer_conv_bias", pat("conv", _DQ_A, _DQ_B, var(), name="node"), _integer_conv, exact=False),
    )
)
"""Reassociating: a contraction of dequantized operands as `matmul_integer` or `conv_integer` and a
scale epilogue."""

CONV_ZERO_POINTS = RuleTable(
    (
        Rule("conv_integer_zero_point", pat("conv_integer", var(), var(), var("x_point"), name="node"),
             _integer_conv_zero_points),
        Rule("conv_integer_zero_points",
             pat("conv_integer", var(), var(), var("x_point"), var("w_point"), name="node"),
             _integer_conv_zero_points),
    )
)  # fmt: skip
"""Exact: conv_integer(x, w, z) = conv_integer(pad(x, z), w) - z * rowsum(w) for a constant w and z
(ConvInteger and QLinearConv with constant zero points onto the int8 tile)."""

EXACT_RULES = FORMS + ROUND_TRIPS + CONV_ZERO_POINTS
RULES = EXACT_RULES + INTEGER_CONTRACTIONS


@register_pass
class FuseQDQ(Pass):
    """Rewrite Q/DQ patterns (ONNX QDQ models) into quantization ops and integer matmuls."""

    name = "fuse_qdq"
    numerics = Numerics.REASSOCIATING

    exact_only: bool = False
    """Only recognise the quantization ops (step 1), leave contractions in float."""

    def __post_init__(self) -> None:
        if self.exact_only:
            object.__setattr__(self, "numerics", Numerics.EXACT)

    def run(self, graph: Graph) -> Graph:
        # Most graphs have nothing quantized: skip the sweep unless a byte-typed value exists.
        if not any(v.type.dtype in QUANTIZED_DTYPES for n in graph.nodes for v in n.outputs):
            return graph
        return rewrite_to_fixpoint(graph, EXACT_RULES if self.exact_only else RULES)
