"""ATen contractions, normalisations, pooling and attention, emitted as IR (for `torch_ops`).

Several of these ATen ops return more than the model uses: batch and layer norm return the
saved statistics for the backward pass, max pooling its indices, the CPU attention kernel a
log-sum-exp. The functions return a tuple with `None` where the IR does not compute a result;
the converter refuses a model only if it reads one of those.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from compiler.frontends.torch_graph import Emitter
from ir import DType, Value


def _same_dtype(e: Emitter, *values: Value | None) -> list[Value | None]:
    dtype = e.out_dtype
    return [None if v is None else e.cast(v, dtype) for v in values]


# --- contractions --------------------------------------------------------------------------------------------


def addmm(e: Emitter, bias: Value, a: Value, b: Value, *, beta: float = 1, alpha: float = 1) -> Value:
    a, b, bias = _same_dtype(e, a, b, bias)
    return e.op("gemm", a, b, bias, alpha=alpha, beta=beta)


def matmul(e: Emitter, a: Value, b: Value) -> Value:
    """mm, bmm and matmul: numpy matmul semantics cover all three."""
    a, b = _same_dtype(e, a, b)
    return e.op("matmul", a, b)


def linear(e: Emitter, x: Value, weight: Value, bias: Value | None = None) -> Value:
    x, weight, bias = _same_dtype(e, x, weight, bias)
    inputs = (x, weight) if bias is None else (x, weight, bias)
    return e.op("gemm", *inputs, trans_b=True)


def _per_axis(values: Any, count: int) -> tuple[int, ...]:
    """ATen lists such as stride may hold one entry for every spatial axis."""
    values = [values] if isinstance(values, int) else list(values)
    return tuple(values * count if len(values) == 1 else values)


def convolution(
    e: Emitter,
    x: Value,
    weight: Value,
    bias: Value | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    transposed: bool,
    output_padding: list[int],
    groups: int,
) -> Value:
    spatial = x.type.rank - 2
    x, weight, bias = _same_dtype(e, x, weight, bias)
    pad = _per_axis(padding, spatial)
    attrs = {
        "strides": _per_axis(stride, spatial),
        "pads": pad + pad,  # torch pads both ends alike; the IR lists all begins, then all ends
        "dilations": _per_axis(dilation, spatial),
        "groups": groups,
    }
    inputs = (x, weight) if bias is None else (x, weight, bias)
    if transposed:
        return e.op("conv_transpose", *inputs, output_padding=_per_axis(output_padding, spatial), **attrs)
    return e.op("conv", *inputs, **attrs)


# --- normalisation -------------------------------------------------------------------------------------------


def _channel_parameter(e: Emitter, value: Value | None, channels: int, fill: float, dtype: DType) -> Value:
    if value is None:
        return e.constant(np.full((channels,), fill, dtype=dtype.numpy), "ones" if fill else "zeros")
    return e.cast(value, dtype)


def batch_norm_inference(
    e: Emitter, x: Value, weight: Value | None, bias: Value | None, mean: Value, var: Value, momentum: float, eps: float
) -> tuple[Value, None, None]:
    """_native_batch_norm_legit_no_training: running statistics, no update."""
    dtype, channels = x.type.dtype, x.type.shape[1]
    scale = _channel_parameter(e, weight, channels, 1.0, dtype)
    shift = _channel_parameter(e, bias, channels, 0.0, dtype)
    out = e.op("batch_norm", x, scale, shift, e.cast(mean, dtype), e.cast(var, dtype), epsilon=eps)
    return out, None, None


def batch_norm(
    e: Emitter, x: Value, weight, bias, mean, var, training: bool, momentum: float, eps: float
) -> tuple[Value, None, None]:
    """native_batch_norm and _native_batch_norm_legit: only their inference form."""
    if training or mean is None:
        raise e.unsupported("training-mode batch norm (batch statistics); call module.eval() before compiling")
    return batch_norm_inference(e, x, weight, bias, mean, var, momentum, eps)


def layer_norm(
    e: Emitter, x: Value, normalized_shape: list[int], weight: Value | None = None, bias: Value | None = None, eps=1e-5
) -> tuple[Value, Value | None, Value | None]:
    axis = x.type.rank - len(normalized_shape)
    inputs = [x] + [e.cast(p, x.type.dtype) for p in (weight, bias) if p is not None]
    if weight is None and bias is not None:
        inputs.insert(1, e.constant(np.ones(tuple(normalized_shape), dtype=x.type.dtype.numpy), "ones"))
    out = e.op("layer_norm", *inputs, axis=axis, epsilon=eps)
    used = e.used_outputs()
    if not used & {1, 2}:
        return out, None, None
    # the saved statistics, shaped like torch's: x.shape[:axis] + [1] * len(normalized_shape)
    axes = tuple(range(axis, x.type.rank))
    mean = e.op("mean", x, axes=axes, keepdims=True)
    centered = e.op("sub", x, mean)
    variance = e.op("mean", e.op("mul", centered, centered), axes=axes, keepdims=True)
    rstd = e.op("rsqrt", e.op("add", variance, e.scalar(eps, x.type.dtype)))
    return out, mean, rstd


def group_norm(
    e: Emitter, x: Value, weight, bias, batch: int, channels: int, spatial: int, groups: int, eps: float
) -> tuple[Value, None, None]:
    dtype = x.type.dtype
    scale = _channel_parameter(e, weight, channels, 1.0, dtype)
    shift = _channel_parameter(e, bias, channels, 0.0, dtype)
    return e.op("group_norm", x, scale, shift, num_groups=groups, epsilon=eps), None, None


# --- pooling ------------------------------------------------------------------------------------------------


def _window(x: Value, kernel: list[int], stride: list[int], padding: Any) -> dict[str, tuple[int, ...]]:
    spatial = x.type.rank - 2
    kernel = _per_axis(kernel, spatial)
    pad = _per_axis(padding, spatial)
    return {"kernel": kernel, "strides": _per_axis(stride, spatial) if stride else kernel, "pads": pad + pad}


def max_pool(
    e: Emitter, x: Value, kernel_size, stride=(), padding=0, dilation=1, ceil_mode: bool = False
) -> tuple[Value, None]:
    """max_pool*_with_indices (the indices are not imported) and max_pool*."""
    dilations = _per_axis(dilation, x.type.rank - 2)
    out = e.op("max_pool", x, **_window(x, kernel_size, stride, padding), dilations=dilations, ceil_mode=ceil_mode)
    return out, None


def max_pool_single(e: Emitter, *args: Any, **kwargs: Any) -> Value:
    return max_pool(e, *args, **kwargs)[0]


def avg_pool(
    e: Emitter,
    x: Value,
    kernel_size,
    stride=(),
    padding=0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> Value:
    if divisor_override is not None:
        raise e.unsupported("avg_pool with divisor_override")
    window = _window(x, kernel_size, stride, padding)
    return e.op("avg_pool", x, **window, ceil_mode=ceil_mode, count_include_pad=count_include_pad)


def adaptive_avg_pool(e: Emitter, x: Value, output_size: list[int]) -> Value:
    spatial = x.type.shape[2:]
    output = _per_axis(output_size, len(spatial))
    if all(o == 1 for o in output):
        return e.op("global_avg_pool", x)
    if any(size % o for size, o in zip(spatial, output)):
        raise e.unsupported(f"adaptive pooling from {list(spatial)} to {list(output)} (windows of unequal size)")
    # equal windows: adaptive pooling is plain pooling with kernel = stride = input / output
    kernel = tuple(size // o for size, o in zip(spatial, output))
    return e.op("avg_pool", x, kernel=kernel, strides=kernel)


# --- attention -----------------------------------------------------------------------------------------------


def _attention(e: Emitter, q, k, v, mask, dropout_p: float, is_causal: bool, scale, enable_gqa=False) -> Value:
    if dropout_p:
        raise e.unsupported(f"attention dropout ({dropout_p}); call module.eval() before compiling")
    dtype = q.type.dtype
    k, v = e.cast(k, dtype), e.cast(v, dtype)
    heads, kv_heads = q.type.shape[-3] if q.type.rank >= 3 else 1, k.type.shape[-3] if k.type.rank >= 3 else 1
    if heads != kv_heads:  # grouped-query attention: each key/value head serves heads // kv_heads queries
        k, v = _repeat_heads(e, k, heads // kv_heads), _repeat_heads(e, v, heads // kv_heads)
    inputs = [q, k, v]
    if mask is not None:
        inputs.append(mask if mask.type.dtype == DType.bool else e.cast(mask, dtype))
    return e.op("scaled_dot_product_attention", *inputs, causal=is_causal, scale=scale)


def _repeat_heads(e: Emitter, x: Value, groups: int) -> Value:
    """[..., H, S, E] -> [..., H * groups, S, E], each head repeated in place (repeat_interleave)."""
    shape = x.type.shape
    wide = e.op("unsqueeze", x, axes=(x.type.rank - 2,))
    wide = e.op("expand", wide, shape=(*shape[:-2], groups, *shape[-2:]))
    return e.op("reshape", wide, shape=(*shape[:-3], shape[-3] * groups, *shape[-2:]))


def sdpa(e: Emitter, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None, enable_gqa=False) -> Value:
    return _attention(e, q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa)


def sdpa_cpu(e: Emitter, q, k, v, dropout_p=0.0, is_causal=False, *, attn_mask=None, scale=None) -> tuple:
    """_scaled_dot_product_flash_attention_for_cpu -> (out, logsumexp)."""
    return _attention(e, q, k, v, attn_mask, dropout_p, is_causal, scale), None


def sdpa_efficient(e: Emitter, q, k, v, attn_bias, compute_log_sumexp, dropout_p=0.0, is_causal=False, *, scale=None):
    """_scaled_dot_product_efficient_attention -> (out, logsumexp, seed, offset)."""
    return _attention(e, q, k, v, attn_bias, dropout_p, is_causal, scale), None, None, None


def sdpa_flash(e: Emitter, q, k, v, dropout_p=0.0, is_causal=False, return_debug_mask=False, *, scale=None):
    """_scaled_dot_product_flash_attention -> (out, and eight outputs for the backward pass)."""
    return (_attention(e, q, k, v, None, dropout_p, is_causal, scale), *([None] * 8))
