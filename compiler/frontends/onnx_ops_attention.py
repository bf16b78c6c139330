"""ONNX Attention (opset 23+) decomposed onto the IR's matmul, softmax and masking ops.

The ONNX op does more than the IR's `scaled_dot_product_attention`: 3-D inputs split into
heads, grouped-query heads, a KV cache (past key/value in, present key/value out), per-batch
padding (`nonpad_kv_seqlen`), bottom-right causal masks with an offset, sliding windows, a
softcap, a softmax precision and a debug output of the scores. So it is written out with the
table's ops, following the order of ONNX's reference: an additive bias (0 where a key may be
attended, -inf where not) built from the masks, scores scaled by sqrt(scale) on both sides,
softmax, and rows with no key left give zeros rather than nan.
"""

from __future__ import annotations

import math

import numpy as np

from compiler.frontends.onnx_context import NodeContext, UnsupportedNode, dtype_of_onnx
from ir import DType, Value


def _split_heads(ctx: NodeContext, x: Value, heads: int) -> Value:
    """[B, S, H * D] -> [B, H, S, D]"""
    batch, length, hidden = x.type.shape
    x = ctx.op("reshape", x, shape=(batch, length, heads, hidden // heads))
    return ctx.op("transpose", x, perm=(0, 2, 1, 3))


def _additive(ctx: NodeContext, allowed: Value, dtype: DType) -> Value:
    """0 where allowed, -inf elsewhere."""
    return ctx.op("where", allowed, ctx.scalar(0, dtype), ctx.scalar(-np.inf, dtype))


def _add_bias(ctx: NodeContext, bias: Value | None, more: Value) -> Value:
    return more if bias is None else ctx.op("add", bias, more)


def _attention(ctx: NodeContext) -> list[Value | None]:
    q, k, v = ctx.input(0), ctx.input(1), ctx.input(2)
    mask, past_key, past_value, nonpad = (ctx.optional(i) for i in (3, 4, 5, 6))
    dtype = q.type.dtype
    three_d = q.type.rank == 3
    if three_d:
        q_heads, kv_heads = ctx.attr("q_num_heads"), ctx.attr("kv_num_heads")
        if not q_heads or not kv_heads:
            raise UnsupportedNode("3-D inputs without q_num_heads and kv_num_heads")
        q, k, v = _split_heads(ctx, q, q_heads), _split_heads(ctx, k, kv_heads), _split_heads(ctx, v, kv_heads)
    if past_key is not None:
        k = ctx.op("concat", past_key, k, axis=2)
        v = ctx.op("concat", past_value, v, axis=2)
    present_key, present_value = k, v
    batch, q_heads, q_length, head_size = q.type.shape
    kv_heads, kv_length = k.type.shape[1], k.type.shape[2]
    scale = ctx.attr("scale")
    root_scale = ctx.scalar(math.sqrt(1 / math.sqrt(head_size) if scale is None else scale), dtype)

    bias = None
    if mask is not None:
        if mask.type.shape[-1] < kv_length:  # a shorter mask is padded with "not allowed"
            pads = [0] * (2 * mask.type.rank)
            pads[-1] = kv_length - mask.type.shape[-1]
            fill = 0.0 if mask.type.dtype == DType.bool else -np.inf
            mask = ctx.op("pad", mask, pads=pads, value=fill)
        bias = _additive(ctx, mask, dtype) if mask.type.dtype == DType.bool else ctx.cast(mask, dtype)
    # The causal frontier and windows are aligned bottom-right by an offset: the past length,
    # or nonpad_kv_seqlen - q_length per batch (a run-time value), else 0.
    rows = np.arange(q_length).reshape(-1, 1)
    cols = np.arange(kv_length).reshape(1, -1)
    static_offset = past_key.type.shape[2] if past_key is not None else 0
    per_batch_offset = None
    if nonpad is not None and past_key is None:
        per_batch_offset = ctx.op(
            "reshape", ctx.op("sub", ctx.cast(nonpad, DType.i64), ctx.scalar(q_length, DType.i64)), shape=(-1, 1, 1, 1)
        )

    def frontier(allowed_if_at_most: np.ndarray, *, flip: bool = False) -> Value:
        """Allowed where value <= offset (value: a [q, kv] array of ints); flip: where value >= offset."""
        if per_batch_offset is None:
            allowed = (allowed_if_at_most >= static_offset) if flip else (allowed_if_at_most <= static_offset)
            return ctx.constant(allowed, "allowed")
        values = ctx.constant(allowed_if_at_most.astype(np.int64), "positions")
        return ctx.op("greater_equal" if flip else "less_equal", values, per_batch_offset)

    if ctx.attr("is_causal"):
        bias = _add_bias(ctx, bias, _additive(ctx, frontier(cols - rows), dtype))  # j - i <= offset
    left, right = ctx.attr("left_window_size", -1), ctx.attr("right_window_size", -1)
    if left is not None and left >= 0:
        bias = _add_bias(ctx, bias, _additive(ctx, frontier(cols - rows + left, flip=True), dtype))
    if right is not None and right >= 0:
        bias = _add_bias(ctx, bias, _additive(ctx, frontier(cols - rows - right), dtype))
    if nonpad is not None:
        lengths = ctx.op("reshape", ctx.cast(nonpad, DType.i64), shape=(-1, 1, 1, 1))
        keys = ctx.constant(np.arange(kv_length, dtype=np.int64).reshape(1, 1, 1, -1), "key_positions")
        bias = _add_bias(ctx, bias, _additive(ctx, ctx.op("less", keys, lengths), dtype))

    if q_heads != kv_heads:  # grouped-query attention: each kv head serves q_heads / kv_heads query heads
        repeats = q_heads // kv_heads

        def repeat(x: Value) -> Value:
            b, h, s, d = x.type.shape
            x = ctx.op("expand", ctx.op("unsqueeze", x, axes=(2,)), shape=(b, h, repeats, s, d))
            return ctx.op("reshape", x, shape=(b, h * repeats, s, d))

        k, v = repeat(k), repeat(v)
    keys_t = ctx.op("transpose", ctx.op("mul", k, root_scale), perm=(0, 1, 3, 2))
    scores = ctx.op("matmul", ctx.op("mul", q, root_scale), keys_t)
    softcap = ctx.attr("softcap") or 0.0
    if softcap > 0:
        scores = ctx.op(
            "mul", ctx.op("tanh", ctx.op("div", scores, ctx.scalar(softcap, dtype))), ctx.scalar(softcap, dtype)
        )
    mode = ctx.attr("qk_matmul_output_mode") or 0
    debug = scores
    with_bias = scores if bias is None else ctx.op("add", scores, bias)
    if mode == 2:
        debug = with_bias
    precision = ctx.attr("softmax_precision")
    if precision:
        with_bias = ctx.cast(with_bias, dtype_of_onnx(precision, "softmax_precision"))
    probabilities = ctx.op("softmax", with_bias, axis=-1)
    if bias is not None:
        # A row whose keys are all masked has no softmax; ONNX makes it zeros.
        masked_row = ctx.op("equal", ctx.op("max", bias, axes=(-1,), keepdims=True), ctx.scalar(-np.inf, dtype))
        probabilities = ctx.op("where", masked_row, ctx.scalar(0, probabilities), probabilities)
    if mode == 3:
        debug = probabilities
    probabilities = ctx.cast(probabilities, dtype)
    y = ctx.op("matmul", probabilities, v)
    if three_d:
        y = ctx.op("transpose", y, perm=(0, 2, 1, 3))
        y = ctx.op("reshape", y, shape=(batch, q_length, -1))
    return [y, present_key, present_value, ctx.cast(debug, dtype)]


ATTENTION_OPS = {"Attention": _attention}
