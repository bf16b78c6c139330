"""The convolutions of `passes.quantize`: a `conv` whose weight is a constant runs on int8 weights
per output channel (symmetric, as the matmuls': s_m = max |W[m]| / 127, q = round_half_even(W / s_m)),
and, by mode:

- `weight`: the conv reads `dequantize_linear(q, s[M, 1, ...], 0)`; activations stay f32.
- `dynamic`: each image is quantized at run time, symmetric int8, s_x = max |x[n]| / 127 (per image:
  the conv's K spans channels and taps, so a per-row scale like the matmuls' has no meaning here);
  y = (f32(conv_integer(q_x, q_w)) * s_x) * s_w[m], then bias.
- `static`: the activation's scale and zero point z are fixed from the calibration ranges (the pass's
  observer), asymmetric uint8 per tensor as the matmuls' (symmetric int8 read one OCR line of 8 wrong,
  asymmetric none). The zero point's work is done now, exactly: padding becomes a `pad` of q_x with z
  (so the conv has none), and sum_k (q_x - z) w = sum_k q_x w - z * rowsum(w), the row sums a
  constant; y = f32(conv_integer(q_x, q_w) - z * rowsum(q_w)) * (s_x * s_w[m]), then bias. So the
  integer conv is u8 x s8 with no zero point, `vpdpbusd`'s own form
  (`backends.lowering.templates_quant_conv`).

Kept in float, with the reason: depthwise convolutions (one input channel per output channel: each
output sums only its kernel's taps, K = 9 or 25, so there is no GEMM for the int8 tile to run; the
f32 direct loop is bound by memory, and int8 would add a quantizing pass over the tensor for a few
multiply-adds per element), convs with one output pixel (squeeze-excitation on a pooled vector: a
matrix-vector product that int8 does not speed up, and a per-channel gain that the OCR model's output
was seen to be most sensitive to), transposed convolutions, and convs whose weight is not a constant.

Numerics: precision-reducing; the integer sums are exact (`conv_integer` accumulates in i32), so the
graph equals the float simulation of the same rounding, as for the matmuls.
"""

from __future__ import annotations

import math

import numpy as np

from ir import DType, Graph, GraphBuilder, Node, Value

INT8_MAX = np.float32(127)


def conv_weight(graph: Graph, node: Node) -> np.ndarray | None:
    """The constant weight [M, C/g, *kernel] of an f32 conv; None if it is not a constant."""
    producer = graph.producers.get(node.inputs[1])
    if node.op != "conv" or producer is None or producer.op != "const":
        return None
    return graph.constants[producer.attrs["name"]]


def conv_kept_reason(graph: Graph, node: Node) -> str | None:
    """Why a conv stays in float (None: it can be quantized)."""
    weight = conv_weight(graph, node)
    if weight is None:
        return "its weight is not a constant"
    if node.attrs["groups"] > 1 and weight.shape[1] == 1:
        return "depthwise conv: K is one channel's taps, no GEMM for the int8 tile (memory-bound in f32 anyway)"
    if math.prod(node.output.type.shape[2:]) == 1:
        return "one output pixel (squeeze-excitation on a pooled vector): a matrix-vector product, too small to gain"
    return None


def quantize_conv_weight(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output channel: (q of the weight's shape, scale [M] f32)."""
    rows = weight.reshape(weight.shape[0], -1).astype(np.float32)
    scale = (np.abs(rows).max(axis=1) / INT8_MAX).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1)).astype(np.float32)  # an all-zero channel: any scale
    q = np.clip(np.rint(rows / scale[:, None]), -127, 127).astype(np.int8)
    return q.reshape(weight.shape), scale


def _per_channel(array: np.ndarray, rank: int) -> np.ndarray:
    """[M] as [M, 1, ...], broadcasting along axis 1 of a rank-`rank` NCHW tensor."""
    return array.reshape(-1, *(1,) * (rank - 2))


def _bias(builder: GraphBuilder, graph: Graph, node: Node, inputs: list[Value], result: Value) -> Value:
    """result + bias along the channel axis; a constant bias is reshaped now (no folding runs after this pass)."""
    if len(inputs) < 3:
        return result
    rank = node.output.type.rank
    producer = graph.producers.get(node.inputs[2])
    if producer is not None and producer.op == "const":
        bias = builder.constant(_per_channel(graph.constants[producer.attrs["name"]], rank), "bias")
    else:
        bias = builder.reshape(inputs[2], shape=(node.output.type.shape[1], *(1,) * (rank - 2)))
    return builder.add(result, bias)


def _integer_conv(builder: GraphBuilder, node: Node, qx: Value, q: np.ndarray) -> Value:
    accumulated = builder.op("conv_integer", qx, builder.constant(q, "w_int8"), source=node.source, **node.attrs)
    return builder.cast(accumulated, dtype=DType.f32)


def _weight_only(builder: GraphBuilder, graph: Graph, node: Node, inputs: list[Value], _range) -> tuple[str, Value]:
    q, scale = quantize_conv_weight(conv_weight(graph, node))
    weight = builder.dequantize_linear(
        builder.constant(q, "w_int8"),
        builder.constant(scale.reshape(-1, *(1,) * (q.ndim - 1)), "w_scale"),  # along the weight's axis 0
        builder.constant(np.int8(0), "zero_i8"),
    )
    rebuilt = builder.op("conv", inputs[0], weight, *inputs[2:], source=node.source, **node.attrs)
    return "int8 weight per output channel, dequantized where read; f32 activations", rebuilt


def absolute_peak(builder: GraphBuilder, x: Value, axes: tuple[int, ...]) -> Value:
    """max |x| over `axes` (kept), as max(max(x), -min(x)): equal for every x (nan propagates through
    both), but written so, the two reductions read x itself and fusion gives them and x's
    quantization one kernel (an `abs` node of its own would join the producer's kernel and write |x|
    to memory for the reduction to read back)."""
    highest = builder.max(x, axes=axes, keepdims=True)
    return builder.maximum(highest, builder.neg(builder.min(x, axes=axes, keepdims=True)))


def _dynamic(builder: GraphBuilder, graph: Graph, node: Node, inputs: list[Value], _range) -> tuple[str, Value]:
    q, w_scale = quantize_conv_weight(conv_weight(graph, node))
    x = inputs[0]
    peak = absolute_peak(builder, x, tuple(range(1, x.type.rank)))
    x_scale = builder.div(peak, builder.constant(INT8_MAX, "int8_max"))
    qx = builder.quantize_linear(x, x_scale, builder.constant(np.int8(0), "zero_i8"))
    real = builder.mul(
        builder.mul(_integer_conv(builder, node, qx, q), x_scale),
        builder.constant(_per_channel(w_scale, x.type.rank), "w_scale"),
    )
    how = "int8 weight per output channel; activation int8 per image at run time (symmetric); i32 accumulation"
    return how, _bias(builder, graph, node, inputs, real)


def _static(builder: GraphBuilder, graph: Graph, node: Node, inputs: list[Value], observed) -> tuple[str, Value]:
    from passes.quantize import static_parameters  # the matmuls' rule: uint8 over the range widened to 0

    q, w_scale = quantize_conv_weight(conv_weight(graph, node))
    x_scale, x_point = static_parameters(*observed)
    x = inputs[0]
    qx = builder.quantize_linear(x, builder.constant(x_scale, "x_scale"), builder.constant(x_point, "x_zero"))
    attrs = dict(node.attrs)
    spatial = x.type.rank - 2
    pads = attrs["pads"] or (0,) * (2 * spatial)
    if any(pads):  # padding reads the zero point (real 0): done as a pad of q_x, so the conv has none
        qx = builder.pad(qx, pads=(0, 0, *pads[:spatial], 0, 0, *pads[spatial:]), value=float(x_point))
        attrs["pads"] = ()
    accumulated = builder.op("conv_integer", qx, builder.constant(q, "w_int8"), source=node.source, **attrs)
    if x_point:  # sum (q_x - z) w = sum q_x w - z * (the row sums of w), the last term known now
        sums = q.reshape(q.shape[0], -1).astype(np.int64).sum(axis=1) * int(x_point)
        accumulated = builder.sub(accumulated, builder.constant(_per_channel(sums.astype(np.int32), x.type.rank), "zw"))
    combined = _per_channel((x_scale * w_scale).astype(np.float32), x.type.rank)
    real = builder.mul(builder.cast(accumulated, dtype=DType.f32), builder.constant(combined, "scale"))
    how = (
        f"int8 weight per output channel; activation uint8 per tensor, scale {float(x_scale):.4g} and zero point "
        f"{int(x_point)} from calibration ({{observer}} observer), its padding and its term z * (row sums of w) "
        "folded at compile time; i32 accumulation"
    )
    return how, _bias(builder, graph, node, inputs, real)


CONV_QUANTIZERS = {"weight": _weight_only, "dynamic": _dynamic, "static": _static}
"""mode -> (builder, graph, node, its rebuilt inputs, the observed range of x) -> (how, the result)."""
