"""ONNX neural-network ops into the IR: reductions, softmax and friends, normalisations,
contractions (MatMul, Gemm, Conv, ConvTranspose, Einsum), pooling and the losses.

Each entry of `NN_OPS` maps an ONNX op type to a small function that reads a `NodeContext` and
returns the IR value(s) of the node's outputs. Where ONNX has a form the IR table lacks
(ReduceL2, LpPool, LayerNormalization's statistics outputs, the losses) it is decomposed
onto the table's ops; ONNX's `auto_pad` is resolved to explicit pads here, since the IR's
shapes are static.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from compiler.frontends.onnx_context import NodeContext, UnsupportedNode
from compiler.frontends.onnx_einsum import einsum
from ir import DType, Value

Mapping = Callable[[NodeContext], object]


# -- reductions ----------------------------------------------------------------------------------


def _reduce_axes(ctx: NodeContext, x: Value) -> tuple[int, ...] | None:
    """The reduced axes (sorted, non-negative; all of them when none are given), or None when
    `noop_with_empty_axes` makes the node an identity."""
    if ctx.schema is not None and "axes" in ctx.schema.attributes:
        axes = tuple(ctx.attr("axes") or ())
    else:
        axes = ctx.ints(1, "axes") if ctx.optional(1) is not None else ()
    if not axes:
        return None if ctx.attr("noop_with_empty_axes", 0) else tuple(range(x.type.rank))
    return tuple(sorted(a % x.type.rank for a in axes)) if x.type.rank else ()


def _reduction(build: Callable[[NodeContext, Value, tuple[int, ...], bool], Value]) -> Mapping:
    def convert(ctx: NodeContext) -> Value:
        x = ctx.input(0)
        axes = _reduce_axes(ctx, x)
        if axes is None:
            return x
        if x.type.dtype == DType.bool:  # max is any, min is all: the same on 0/1 bytes
            return ctx.cast(build(ctx, ctx.cast(x, DType.u8), axes, bool(ctx.attr("keepdims"))), DType.bool)
        return build(ctx, x, axes, bool(ctx.attr("keepdims")))

    convert.__name__ = build.__name__
    return convert


def _plain(op: str, empty_fill: float | None = None):
    def build(ctx: NodeContext, x: Value, axes: tuple[int, ...], keepdims: bool) -> Value:
        if empty_fill is not None and any(x.type.shape[a] == 0 for a in axes):
            # ONNX defines max/min of nothing as the lowest/highest value; the IR has no identity for them.
            shape = tuple(1 if i in axes else d for i, d in enumerate(x.type.shape) if keepdims or i not in axes)
            info = np.iinfo(x.type.dtype.numpy) if not x.type.dtype.is_float else None
            fill = empty_fill if info is None else (info.max if empty_fill > 0 else info.min)
            return ctx.op("full", shape=shape, value=float(fill), dtype=x.type.dtype)
        return ctx.op(op, x, axes=axes, keepdims=keepdims)

    build.__name__ = f"reduce_{op}"
    return build


def _reduce_l1(ctx, x, axes, keepdims):
    return ctx.op("sum", ctx.op("abs", x), axes=axes, keepdims=keepdims)


def _reduce_sum_square(ctx, x, axes, keepdims):
    return ctx.op("sum", ctx.op("mul", x, x), axes=axes, keepdims=keepdims)


def _reduce_l2(ctx, x, axes, keepdims):
    if not x.type.dtype.is_float:  # sqrt of an integer sum: compute in f64, truncate back
        root = ctx.op("sqrt", ctx.cast(_reduce_sum_square(ctx, ctx.cast(x, DType.f64), axes, keepdims), DType.f64))
        return ctx.cast(root, x.type.dtype)
    return ctx.op("sqrt", _reduce_sum_square(ctx, x, axes, keepdims))


def _reduce_log_sum(ctx, x, axes, keepdims):
    return ctx.op("log", ctx.op("sum", x, axes=axes, keepdims=keepdims))


def _reduce_log_sum_exp(ctx, x, axes, keepdims):
    if any(x.type.shape[a] == 0 for a in axes):
        return _reduce_log_sum(ctx, ctx.op("exp", x), axes, keepdims)  # log(0) = -inf
    # log(sum(exp(x))) = m + log(sum(exp(x - m))) with m the max: no overflow in exp.
    peak = ctx.op("max", x, axes=axes, keepdims=True)
    shifted = ctx.op("exp", ctx.op("sub", x, peak))
    result = ctx.op("add", ctx.op("log", ctx.op("sum", shifted, axes=axes, keepdims=True)), peak)
    return result if keepdims else ctx.op("squeeze", result, axes=axes)


def _arg(op: str) -> Mapping:
    def convert(ctx: NodeContext) -> Value:
        return ctx.op(
            op,
            ctx.input(0),
            axis=ctx.attr("axis"),
            keepdims=bool(ctx.attr("keepdims")),
            select_last_index=bool(ctx.attr("select_last_index")),
        )

    return convert


def _softmax(op: str) -> Mapping:
    def convert(ctx: NodeContext) -> Value:
        return ctx.op(op, ctx.input(0), axis=ctx.attr("axis"))

    return convert


def _hardmax(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    axis = ctx.attr("axis") % x.type.rank
    index = ctx.op("argmax", x, axis=axis, keepdims=True)  # the first of equal maxima, as ONNX says
    positions = np.arange(x.type.shape[axis]).reshape([-1 if d == axis else 1 for d in range(x.type.rank)])
    return ctx.cast(ctx.op("equal", ctx.constant(positions, "positions"), index), x.type.dtype)


def _cumsum(ctx: NodeContext) -> Value:
    axis = int(np.asarray(ctx.const(1, "axis")).reshape(()))
    return ctx.op(
        "cumsum", ctx.input(0), axis=axis, exclusive=bool(ctx.attr("exclusive")), reverse=bool(ctx.attr("reverse"))
    )


# -- normalisations ------------------------------------------------------------------------------


def _batch_norm(ctx: NodeContext) -> Value:
    if ctx.attr("training_mode", 0):
        raise UnsupportedNode("training_mode=1 (batch statistics)")
    x = ctx.input(0)
    params = [ctx.cast(ctx.input(i), x.type.dtype) for i in range(1, 5)]
    return ctx.op("batch_norm", x, *params, epsilon=ctx.attr("epsilon"))


def _exactly(ctx: NodeContext, value: Value, shape: tuple[int, ...], dtype: DType) -> Value:
    """A parameter broadcast to exactly `shape` (ONNX lets norm parameters broadcast; the IR does not)."""
    value = ctx.cast(value, dtype)
    if value.type.shape != shape:
        value = ctx.op("expand", value, shape=shape)
    return value


def _layer_norm(ctx: NodeContext) -> list[Value | None]:
    x, scale, bias = ctx.input(0), ctx.input(1), ctx.optional(2)
    axis = ctx.attr("axis") % x.type.rank
    epsilon = ctx.attr("epsilon")
    normalized = x.type.shape[axis:]
    wants_statistics = any(name for name in ctx.node.output[1:])
    if not wants_statistics:
        params = [_exactly(ctx, p, normalized, x.type.dtype) for p in (scale, bias) if p is not None]
        return [ctx.op("layer_norm", x, *params, axis=axis, epsilon=epsilon)]
    # The mean and 1/std outputs need the pieces, computed in the stash type (f32 by default).
    compute = DType.f64 if ctx.attr("stash_type") == 11 else DType.f32
    axes = tuple(range(axis, x.type.rank))
    wide = ctx.cast(x, compute)
    mean = ctx.op("mean", wide, axes=axes, keepdims=True)
    centered = ctx.op("sub", wide, mean)
    variance = ctx.op("mean", ctx.op("mul", centered, centered), axes=axes, keepdims=True)
    inv_std = ctx.op("rsqrt", ctx.op("add", variance, ctx.scalar(epsilon, compute)))
    y = ctx.cast(ctx.op("mul", centered, inv_std), x.type.dtype)
    y = ctx.op("mul", y, ctx.cast(scale, x.type.dtype))
    if bias is not None:
        y = ctx.op("add", y, ctx.cast(bias, x.type.dtype))
    return [y, mean, inv_std]


def _rms_norm(ctx: NodeContext) -> Value:
    x, scale = ctx.input(0), ctx.input(1)
    axis = ctx.attr("axis") % x.type.rank
    weight = _exactly(ctx, scale, x.type.shape[axis:], x.type.dtype)
    return ctx.op("rms_norm", x, weight, axis=axis, epsilon=ctx.attr("epsilon"))


def _group_norm(ctx: NodeContext) -> Value:
    x, scale, bias = ctx.input(0), ctx.input(1), ctx.input(2)
    groups, channels = ctx.attr("num_groups"), x.type.shape[1]
    if scale.type.shape == (groups,) and groups != channels:
        # Opset 18 gave one scale and bias per group: spread them over each group's channels.
        spread = ctx.constant(np.repeat(np.arange(groups), channels // groups), "group_of_channel")
        scale, bias = ctx.op("gather", scale, spread), ctx.op("gather", bias, spread)
    params = [ctx.cast(p, x.type.dtype) for p in (scale, bias)]
    return ctx.op("group_norm", x, *params, num_groups=groups, epsilon=ctx.attr("epsilon"))


def _instance_norm(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    params = [ctx.cast(ctx.input(i), x.type.dtype) for i in (1, 2)]
    return ctx.op("group_norm", x, *params, num_groups=x.type.shape[1], epsilon=ctx.attr("epsilon"))


def _lp_norm(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    axis, p = ctx.attr("axis") % x.type.rank, ctx.attr("p")
    if p == 1:
        norm = ctx.op("sum", ctx.op("abs", x), axes=(axis,), keepdims=True)
    elif p == 2:
        norm = ctx.op("sqrt", ctx.op("sum", ctx.op("mul", x, x), axes=(axis,), keepdims=True))
    else:
        raise UnsupportedNode(f"p={p}")
    # A zero vector stays zero (ONNX's reference), rather than 0 / 0.
    zero = ctx.op("equal", norm, ctx.scalar(0, norm))
    return ctx.op("where", zero, ctx.scalar(0, x), ctx.op("div", x, ctx.op("where", zero, ctx.scalar(1, norm), norm)))


def _mean_variance_norm(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    axes = tuple(sorted(a % x.type.rank for a in ctx.attr("axes")))
    mean = ctx.op("mean", x, axes=axes, keepdims=True)
    centered = ctx.op("sub", x, mean)
    variance = ctx.op("mean", ctx.op("mul", centered, centered), axes=axes, keepdims=True)
    # The ONNX function body: (x - E[x]) / (sqrt(E[(x - E[x])^2]) + 1e-9).
    std = ctx.op("add", ctx.op("sqrt", variance), ctx.scalar(1e-9, x))
    return ctx.op("div", centered, std)


# -- contractions --------------------------------------------------------------------------------


def _matmul(ctx: NodeContext) -> Value:
    return ctx.op("matmul", ctx.input(0), ctx.input(1))


def _gemm(ctx: NodeContext) -> Value:
    a, b, c = ctx.input(0), ctx.input(1), ctx.optional(2)
    return ctx.op(
        "gemm",
        a,
        b,
        *([c] if c is not None else []),
        trans_a=bool(ctx.attr("transA")),
        trans_b=bool(ctx.attr("transB")),
        alpha=ctx.attr("alpha"),
        beta=ctx.attr("beta"),
    )


def _window(ctx: NodeContext, x: Value, kernel: tuple[int, ...]) -> tuple[tuple, tuple, tuple]:
    """Strides, pads and dilations of a windowed node, with `auto_pad` resolved to pads."""
    spatial = len(kernel)
    strides = tuple(ctx.attr("strides") or (1,) * spatial)
    dilations = tuple(ctx.attr("dilations") or (1,) * spatial)
    pads = tuple(ctx.attr("pads") or (0,) * (2 * spatial))
    auto_pad = ctx.attr("auto_pad") or "NOTSET"
    if auto_pad == "VALID":
        pads = (0,) * (2 * spatial)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s, d in zip(x.type.shape[2:], kernel, strides, dilations):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else large)
            ends.append(large if auto_pad == "SAME_UPPER" else small)
        pads = (*begins, *ends)
    return strides, pads, dilations


def _conv(ctx: NodeContext) -> Value:
    x, w, bias = ctx.input(0), ctx.input(1), ctx.optional(2)
    kernel = tuple(ctx.attr("kernel_shape") or w.type.shape[2:])
    strides, pads, dilations = _window(ctx, x, kernel)
    return ctx.op(
        "conv",
        x,
        w,
        *([bias] if bias is not None else []),
        strides=strides,
        pads=pads,
        dilations=dilations,
        groups=ctx.attr("group"),
    )


def _conv_transpose(ctx: NodeContext) -> Value:
    x, w, bias = ctx.input(0), ctx.input(1), ctx.optional(2)
    kernel = tuple(ctx.attr("kernel_shape") or w.type.shape[2:])
    spatial = len(kernel)
    strides = tuple(ctx.attr("strides") or (1,) * spatial)
    dilations = tuple(ctx.attr("dilations") or (1,) * spatial)
    output_padding = tuple(ctx.attr("output_padding") or (0,) * spatial)
    pads = tuple(ctx.attr("pads") or (0,) * (2 * spatial))
    auto_pad = ctx.attr("auto_pad") or "NOTSET"
    output_shape = ctx.attr("output_shape")
    if output_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        sizes = x.type.shape[2:]
        targets = tuple(output_shape)[-spatial:] if output_shape else tuple(n * s for n, s in zip(sizes, strides))
        begins, ends = [], []
        for n, k, s, d, p, target in zip(sizes, kernel, strides, dilations, output_padding, targets):
            total = s * (n - 1) + p + (k - 1) * d + 1 - target
            # ONNX: SAME_UPPER puts the smaller half first; otherwise the larger half goes first.
            half = total // 2  # floor division, as ONNX's reference: a negative total adds at the end
            begin, end = (half, total - half) if auto_pad == "SAME_UPPER" else (total - half, half)
            begins.append(begin)
            ends.append(end)
        pads = (*begins, *ends)
    elif auto_pad == "VALID":
        pads = (0,) * (2 * spatial)
    group = ctx.attr("group")
    if all(p >= 0 for p in pads):
        return ctx.op(
            "conv_transpose",
            x,
            w,
            *([bias] if bias is not None else []),
            strides=strides,
            pads=pads,
            dilations=dilations,
            output_padding=output_padding,
            groups=group,
        )
    # A negative pad asks for output positions that no input reaches: they hold only the bias.
    y = ctx.op(
        "conv_transpose",
        x,
        w,
        strides=strides,
        pads=tuple(max(p, 0) for p in pads),
        dilations=dilations,
        output_padding=output_padding,
        groups=group,
    )
    widths = (0, 0, *(max(-p, 0) for p in pads[:spatial]), 0, 0, *(max(-p, 0) for p in pads[spatial:]))
    y = ctx.op("pad", y, pads=widths)
    if bias is not None:
        y = ctx.op("add", y, ctx.op("reshape", bias, shape=(-1, *(1,) * spatial)))
    return y


def _einsum(ctx: NodeContext) -> Value:
    return einsum(ctx, ctx.attr("equation"), [ctx.input(i) for i in range(len(ctx.inputs))])


# -- pooling -------------------------------------------------------------------------------------


def _max_pool(ctx: NodeContext) -> Value:
    if len(ctx.node.output) > 1 and ctx.node.output[1]:
        raise UnsupportedNode("the Indices output")
    if ctx.attr("storage_order"):
        raise UnsupportedNode("storage_order=1")
    x = ctx.input(0)
    kernel = tuple(ctx.attr("kernel_shape"))
    strides, pads, dilations = _window(ctx, x, kernel)
    return ctx.op(
        "max_pool",
        x,
        kernel=kernel,
        strides=strides,
        pads=pads,
        dilations=dilations,
        ceil_mode=bool(ctx.attr("ceil_mode")),
    )


def _avg_pool(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    kernel = tuple(ctx.attr("kernel_shape"))
    strides, pads, dilations = _window(ctx, x, kernel)
    if any(d != 1 for d in dilations):
        raise UnsupportedNode("dilations other than 1")
    return ctx.op(
        "avg_pool",
        x,
        kernel=kernel,
        strides=strides,
        pads=pads,
        ceil_mode=bool(ctx.attr("ceil_mode")),
        count_include_pad=bool(ctx.attr("count_include_pad")),
    )


def _lp_pool(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    kernel = tuple(ctx.attr("kernel_shape"))
    strides, pads, dilations = _window(ctx, x, kernel)
    if any(d != 1 for d in dilations):
        raise UnsupportedNode("dilations other than 1")
    p = float(ctx.attr("p"))
    powered = ctx.op("pow", ctx.op("abs", x), ctx.scalar(p, x))
    # The window sum is the mean over the padded window times its size (padding adds zeros).
    mean = ctx.op(
        "avg_pool",
        powered,
        kernel=kernel,
        strides=strides,
        pads=pads,
        ceil_mode=bool(ctx.attr("ceil_mode")),
        count_include_pad=True,
    )
    total = ctx.op("mul", mean, ctx.scalar(math.prod(kernel), x))
    return ctx.op("pow", total, ctx.scalar(1 / p, x))


def _global_avg_pool(ctx: NodeContext) -> Value:
    return ctx.op("global_avg_pool", ctx.input(0))


def _global_max_pool(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    return ctx.op("max", x, axes=tuple(range(2, x.type.rank)), keepdims=True)


# -- losses --------------------------------------------------------------------------------------


def _nll_loss(ctx: NodeContext, log_prob: Value, target: Value, weight: Value | None) -> Value:
    """ONNX NegativeLogLikelihoodLoss: -log_prob[n, target[n, ...], ...] * weight[target], with
    ignored targets weighing 0 and `mean` dividing by the total weight."""
    reduction, ignore_index = ctx.attr("reduction"), ctx.attr("ignore_index")
    dtype = log_prob.type.dtype
    safe_target = target
    ignored = None
    if ignore_index is not None:
        ignored = ctx.op("equal", target, ctx.scalar(ignore_index, target))
        safe_target = ctx.op("where", ignored, ctx.scalar(0, target), target)
    picked = ctx.op("gather_elements", log_prob, ctx.op("unsqueeze", safe_target, axes=(1,)), axis=1)
    loss = ctx.op("neg", ctx.op("squeeze", picked, axes=(1,)))
    weights = ctx.op("gather", weight, safe_target, axis=0) if weight is not None else None
    if ignored is not None:
        weights = weights if weights is not None else ctx.op("full", shape=target.type.shape, value=1.0, dtype=dtype)
        weights = ctx.op("where", ignored, ctx.scalar(0, dtype), weights)
    if weights is not None:
        loss = ctx.op("mul", loss, weights)
    if reduction == "none":
        return loss
    total = ctx.op("sum", loss)
    if reduction == "sum":
        return total
    if weights is None:
        return ctx.op("div", total, ctx.scalar(target.type.numel, dtype))
    return ctx.op("div", total, ctx.op("sum", weights))


def _negative_log_likelihood(ctx: NodeContext) -> Value:
    return _nll_loss(ctx, ctx.input(0), ctx.input(1), ctx.optional(2))


def _softmax_cross_entropy(ctx: NodeContext) -> list[Value]:
    scores = ctx.input(0)
    log_prob = ctx.op("log_softmax", scores, axis=1)
    return [_nll_loss(ctx, log_prob, ctx.input(1), ctx.optional(2)), log_prob]


_REDUCTIONS = {
    "ReduceSum": _plain("sum"),
    "ReduceMean": _plain("mean"),
    "ReduceProd": _plain("prod"),
    "ReduceMax": _plain("max", -np.inf),
    "ReduceMin": _plain("min", np.inf),
    "ReduceL1": _reduce_l1,
    "ReduceL2": _reduce_l2,
    "ReduceSumSquare": _reduce_sum_square,
    "ReduceLogSum": _reduce_log_sum,
    "ReduceLogSumExp": _reduce_log_sum_exp,
}

NN_OPS: dict[str, Mapping] = {
    **{onnx_op: _reduction(build) for onnx_op, build in _REDUCTIONS.items()},
    "ArgMax": _arg("argmax"),
    "ArgMin": _arg("argmin"),
    "Softmax": _softmax("softmax"),
    "LogSoftmax": _softmax("log_softmax"),
    "Hardmax": _hardmax,
    "CumSum": _cumsum,
    "BatchNormalization": _batch_norm,
    "LayerNormalization": _layer_norm,
    "RMSNormalization": _rms_norm,
    "GroupNormalization": _group_norm,
    "InstanceNormalization": _instance_norm,
    "LpNormalization": _lp_norm,
    "MeanVarianceNormalization": _mean_variance_norm,
    "MatMul": _matmul,
    "Gemm": _gemm,
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Einsum": _einsum,
    "MaxPool": _max_pool,
    "AveragePool": _avg_pool,
    "LpPool": _lp_pool,
    "GlobalAveragePool": _global_avg_pool,
    "GlobalMaxPool": _global_max_pool,
    "NegativeLogLikelihoodLoss": _negative_log_likelihood,
    "SoftmaxCrossEntropyLoss": _softmax_cross_entropy,
}
