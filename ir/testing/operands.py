"""Per-op samplers for the graph strategy (`ir.testing.strategies`): a testing reader of the op table.

Most ops need no sampler: `ir.testing.drawing.sample_generic` draws them from their table entry.
Ops whose attributes constrain each other (axes in range, sizes that add up, kernels that fit)
have a small sampler here, keyed by op name, which draws operands from the values built so far
or makes constants (index inputs are constants drawn in range). A sampler only has to be
plausible: the strategy asks the op's own shape rule and draws again when the rule says no.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import strategies as st

from ir.dtype import FLOAT_DTYPES, DType
from ir.errors import ShapeError
from ir.graph import Value
from ir.ops import OPS, OpDef
from ir.testing.drawing import Drawing, Sampler, Skip, broadcastable, sample_generic
from ir.types import Shape

SAMPLERS: dict[str, Sampler] = {}
"""op name -> sampler, for the ops in the table whose attributes need more than `draw_attribute`."""


def sampler(*names: str) -> Callable[[Sampler], Sampler]:
    def register(function: Sampler) -> Sampler:
        # Only ops the table declares: the strategy works whichever op families are present.
        SAMPLERS.update({name: function for name in names if name in OPS})
        return function

    return register


def _float_operand(d: Drawing, op: OpDef, min_rank: int = 0, fallback: Shape | None = None) -> Value:
    return d.pick(op.dtypes & FLOAT_DTYPES, min_rank=min_rank, fallback=fallback)


# -- elementwise and source ops ------------------------------------------------------------


@sampler("where")
def _where(d: Drawing, op: OpDef):
    condition = d.pick({DType.bool}, fallback=d.some_shape())
    a = d.pick(where=lambda v: broadcastable(condition.type.shape, v.type.shape))
    b = d.pick({a.type.dtype}, where=lambda v: broadcastable(condition.type.shape, a.type.shape, v.type.shape))
    return [condition, a, b], {}


@sampler("full")
def _full(d: Drawing, op: OpDef):
    like = d.pick()  # the shape of a value built so far, so that the result broadcasts with it
    dtype = d.choice(sorted(d.dtypes, key=lambda t: t.value))
    value = d.choice((0.0, 1.0, 2.0, 3.0) if not dtype.is_signed else (0.0, 1.0, -2.0, 0.5))
    return [], {"shape": like.type.shape, "value": value, "dtype": dtype}


@sampler("arange")
def _arange(d: Drawing, op: OpDef):
    dtype = d.choice(sorted(d.dtypes - {DType.bool}, key=lambda t: t.value))
    count = d.integer(1, d.max_dim)
    start = float(d.integer(0 if not dtype.is_signed else -3, 3))
    delta = d.choice((1.0, 2.0) if not dtype.is_signed else (1.0, -1.0, 2.0, 0.5))
    return [], {"start": start, "limit": start + count * delta, "delta": delta, "dtype": dtype}


# -- reductions and normalisations ---------------------------------------------------------


@sampler("sum", "mean", "max", "min", "prod")
def _reduce(d: Drawing, op: OpDef):
    x = d.pick(op.dtypes)
    axes = [a - x.type.rank if d.boolean() else a for a in d.subset(range(x.type.rank))]
    return [x], {"axes": axes, "keepdims": d.boolean()}


@sampler("argmax", "argmin")
def _arg_reduce(d: Drawing, op: OpDef):
    x = d.pick(op.dtypes, min_rank=1)
    return [x], {"axis": d.axis(x.type.rank), "keepdims": d.boolean(), "select_last_index": d.boolean()}


@sampler("softmax", "log_softmax")
def _softmax(d: Drawing, op: OpDef):
    x = _float_operand(d, op, min_rank=1)
    return [x], {"axis": d.axis(x.type.rank)}


@sampler("cumsum")
def _cumsum(d: Drawing, op: OpDef):
    x = d.pick(op.dtypes, min_rank=1)
    return [x], {"axis": d.axis(x.type.rank), "exclusive": d.boolean(), "reverse": d.boolean()}


_EPSILONS = (1e-05, 0.001)


@sampler("batch_norm")
def _batch_norm(d: Drawing, op: OpDef):
    x = _float_operand(d, op, min_rank=2, fallback=d.spatial_shape())
    channels, dtype = (x.type.shape[1],), x.type.dtype
    variance = d.array_constant(d.rng.uniform(0.5, 2.0, channels).astype(dtype.numpy), "var")
    inputs = [x, d.operand(channels, dtype), d.operand(channels, dtype), d.operand(channels, dtype), variance]
    return inputs, {"epsilon": d.choice(_EPSILONS)}


@sampler("layer_norm", "rms_norm")
def _last_axes_norm(d: Drawing, op: OpDef):
    x = _float_operand(d, op, min_rank=1)
    axis = d.axis(x.type.rank)
    inputs = [x]
    for _ in op.inputs[1:]:  # weight, then bias: each optional, and bias only after weight
        if not d.boolean():
            break
        inputs.append(d.operand(x.type.shape[axis:], x.type.dtype))
    return inputs, {"axis": axis, "epsilon": d.choice(_EPSILONS)}


@sampler("group_norm")
def _group_norm(d: Drawing, op: OpDef):
    x = _float_operand(d, op, min_rank=2, fallback=d.spatial_shape())
    channels = x.type.shape[1]
    groups = d.choice([g for g in range(1, channels + 1) if channels % g == 0])
    weight, bias = (d.operand((channels,), x.type.dtype) for _ in range(2))
    return [x, weight, bias], {"num_groups": groups, "epsilon": d.choice(_EPSILONS)}


# -- movement ------------------------------------------------------------------------------


def _factors(n: int) -> list[int]:
    result, p = [], 2
    while n > 1:
        while n % p == 0:
            result.append(p)
            n //= p
        p += 1
    return result


@sampler("reshape")
def _reshape(d: Drawing, op: OpDef):
    x = d.pick()
    factors = d.draw(st.permutations(_factors(x.type.numel)))
    rank = d.integer(0 if not factors else 1, max(len(factors), 1) + 1)
    shape = [1] * rank
    for f in factors:
        shape[d.integer(0, rank - 1)] *= f
    if shape and d.integer(0, 3) == 0:
        shape[d.integer(0, rank - 1)] = -1
    return [x], {"shape": shape}


@sampler("transpose")
def _transpose(d: Drawing, op: OpDef):
    x = d.pick()
    return [x], {"perm": d.draw(st.permutations(range(x.type.rank)))}


@sampler("expand")
def _expand(d: Drawing, op: OpDef):
    x = d.pick()
    leading = [d.integer(1, d.max_dim) for _ in range(d.integer(0, 1))]
    return [x], {"shape": leading + [d.integer(1, d.max_dim) if s == 1 else s for s in x.type.shape]}


@sampler("concat")
def _concat(d: Drawing, op: OpDef):
    x = d.pick(min_rank=1)
    rank, axis = x.type.rank, d.axis(x.type.rank)

    def other_axes(shape: Shape) -> Shape:
        return shape[: axis % rank] + shape[axis % rank + 1 :]

    def fits(v: Value) -> bool:
        return v.type.rank == rank and other_axes(v.type.shape) == other_axes(x.type.shape)

    inputs = [x] + [d.pick({x.type.dtype}, where=fits) for _ in range(d.integer(0, 2))]
    return inputs, {"axis": axis}


@sampler("split")
def _split(d: Drawing, op: OpDef):
    x = d.pick(min_rank=1, where=lambda v: max(v.type.shape) > 1)
    axis = d.choice([a for a, n in enumerate(x.type.shape) if n > 1])
    size = x.type.shape[axis]
    cuts = d.subset(range(1, size), min_size=1, max_size=2)  # always several outputs
    bounds = [0, *cuts, size]
    return [x], {
        "axis": axis - x.type.rank if d.boolean() else axis,
        "sizes": [b - a for a, b in itertools.pairwise(bounds)],
    }


_END = 2**62  # "to the end" in ONNX's clamping semantics


@sampler("slice")
def _slice(d: Drawing, op: OpDef):
    x = d.pick(min_rank=1)
    axes = d.subset(range(x.type.rank), min_size=1)
    starts, ends, steps = [], [], []
    for axis in axes:
        size, step = x.type.shape[axis], d.choice((1, 1, 2, -1, -2))
        start = d.integer(0, size - 1)
        if step > 0:
            end = d.integer(start + 1, size)
            if d.boolean():  # the same bounds counted from the end, or clamped
                start, end = start - size, end - size if end < size else _END
        else:
            end = d.integer(-1, start - 1)
            end = -_END if end == -1 else end  # -1 alone would count from the end
        starts.append(start)
        ends.append(end)
        steps.append(step)
    attrs = {"starts": starts, "ends": ends, "axes": axes, "steps": steps}
    if axes == list(range(len(axes))) and d.boolean():
        del attrs["axes"]  # the default, range(len(starts))
    if set(steps) == {1} and d.boolean():
        del attrs["steps"]
    return [x], attrs


@sampler("gather")
def _gather(d: Drawing, op: OpDef):
    x = d.pick(min_rank=1)
    axis = d.axis(x.type.rank)
    shape = tuple(d.integer(1, 3) for _ in range(d.integer(0, 2)))
    return [x, d.indices(shape, x.type.shape[axis])], {"axis": axis}


@sampler("gather_elements")
def _gather_elements(d: Drawing, op: OpDef):
    x = d.pick(min_rank=1)
    axis = d.axis(x.type.rank) % x.type.rank
    shape = tuple(d.integer(1, d.max_dim) if i == axis else d.integer(1, n) for i, n in enumerate(x.type.shape))
    return [x, d.indices(shape, x.type.shape[axis])], {"axis": axis}


@sampler("scatter")
def _scatter(d: Drawing, op: OpDef):
    x = d.pick(min_rank=1)
    axis = d.axis(x.type.rank) % x.type.rank
    size = x.type.shape[axis]
    shape = tuple(d.integer(1, n) for n in x.type.shape)
    # Distinct indices along the axis: with "none", colliding updates have no defined winner.
    keys = d.rng.random(x.type.shape)
    order = np.argsort(keys, axis=axis)[tuple(slice(0, n) for n in shape)]
    if d.boolean():
        order = np.where(d.rng.random(order.shape) < 0.5, order - size, order)  # the same targets, counted from the end
    indices = d.array_constant(order.astype(np.int64), "indices")
    reduction = d.choice(op.attr_index["reduction"].choices)
    return [x, indices, d.operand(shape, x.type.dtype)], {"axis": axis, "reduction": reduction}


@sampler("pad")
def _pad(d: Drawing, op: OpDef):
    x = d.pick()
    pads = [d.integer(-1, 2) for _ in range(2 * x.type.rank)]
    mode = d.choice(op.attr_index["mode"].choices)
    return [x], {"pads": pads, "mode": mode, "value": d.choice((0.0, 1.0, -2.5))}


@sampler("squeeze")
def _squeeze(d: Drawing, op: OpDef):
    x = d.pick()
    ones = [i for i, n in enumerate(x.type.shape) if n == 1]
    return [x], {"axes": [a - x.type.rank if d.boolean() else a for a in d.subset(ones)]}


@sampler("unsqueeze")
def _unsqueeze(d: Drawing, op: OpDef):
    x = d.pick(max_rank=4)
    added = d.integer(1, 2)
    rank = x.type.rank + added
    axes = d.subset(range(rank), min_size=added, max_size=added)
    return [x], {"axes": [a - rank if d.boolean() else a for a in axes]}


@sampler("flatten")
def _flatten(d: Drawing, op: OpDef):
    x = d.pick(min_rank=1)
    start, end = sorted((d.integer(0, x.type.rank - 1), d.integer(0, x.type.rank - 1)))
    return [x], {"start_axis": start, "end_axis": end - x.type.rank if d.boolean() else end}


@sampler("tile")
def _tile(d: Drawing, op: OpDef):
    x = d.pick()
    return [x], {"repeats": [d.integer(1, 2) for _ in x.type.shape]}


# -- contractions, pooling, attention ------------------------------------------------------


def _infers(op: OpDef, inputs: list[Value], attrs: dict[str, Any]) -> bool:
    try:
        op.infer_types(tuple(v.type for v in inputs), op.normalize_attrs(attrs))
    except ShapeError:
        return False
    return True


@sampler("matmul")
def _matmul(d: Drawing, op: OpDef):
    a = d.pick(op.dtypes, min_rank=1)
    if d.boolean():  # a value built so far, if one fits
        try:
            return [a, d.pick({a.type.dtype}, min_rank=1, where=lambda v: _infers(op, [a, v], {}))], {}
        except Skip:
            pass
    k = a.type.shape[-1]
    batch = a.type.shape[:-2] if d.boolean() else ()
    shape = (k,) if d.integer(0, 3) == 0 else (*batch, k, d.integer(1, d.max_dim))
    return [a, d.constant(shape, a.type.dtype, "w")], {}


@sampler("gemm")
def _gemm(d: Drawing, op: OpDef):
    a = d.pick(op.dtypes, min_rank=2, max_rank=2, fallback=(d.integer(1, d.max_dim), d.integer(1, d.max_dim)))
    trans_a, trans_b = d.boolean(), d.boolean()
    m, k = a.type.shape[::-1] if trans_a else a.type.shape
    n = d.integer(1, d.max_dim)
    b = d.operand((n, k) if trans_b else (k, n), a.type.dtype)
    inputs = [a, b]
    if d.boolean():
        inputs.append(d.operand(d.choice([(n,), (m, n), (1, n), (m, 1), ()]), a.type.dtype))
    attrs = {"trans_a": trans_a, "trans_b": trans_b, "alpha": d.choice((1.0, 0.5, -2.0)), "beta": d.choice((1.0, 0.5))}
    return inputs, attrs


def _windows(d: Drawing, spatial: Shape, with_dilations: bool = True) -> dict[str, Any]:
    """Kernel, strides, pads and dilations for these spatial sizes; the op's rule rejects misfits."""
    kernel = [d.integer(1, min(3, n + 1)) for n in spatial]
    return {
        "kernel": kernel,
        "strides": [d.integer(1, 2) for _ in spatial],
        "pads": [d.integer(0, k // 2) for k in kernel * 2],
        "dilations": [d.integer(1, 2) if with_dilations else 1 for _ in spatial],
    }


@sampler("conv")
def _conv(d: Drawing, op: OpDef):
    x = _float_operand(d, op, min_rank=3, fallback=d.spatial_shape())
    channels, spatial = x.type.shape[1], x.type.shape[2:]
    groups = d.choice([g for g in range(1, channels + 1) if channels % g == 0])
    windows = _windows(d, spatial)
    out_channels = groups * d.integer(1, 2)
    inputs = [x, d.constant((out_channels, channels // groups, *windows.pop("kernel")), x.type.dtype, "w")]
    if d.boolean():
        inputs.append(d.operand((out_channels,), x.type.dtype))
    return inputs, {**windows, "groups": groups}


@sampler("conv_transpose")
def _conv_transpose(d: Drawing, op: OpDef):
    x = _float_operand(d, op, min_rank=3, fallback=d.spatial_shape())
    channels, spatial = x.type.shape[1], x.type.shape[2:]
    groups = d.choice([g for g in range(1, channels + 1) if channels % g == 0])
    windows = _windows(d, spatial)
    per_group = d.integer(1, 2)
    inputs = [x, d.constant((channels, per_group, *windows.pop("kernel")), x.type.dtype, "w")]
    if d.boolean():
        inputs.append(d.operand((groups * per_group,), x.type.dtype))
    # output_padding must be smaller than the stride or the dilation of its axis
    output_padding = [d.integer(0, max(s, dl) - 1) for s, dl in zip(windows["strides"], windows["dilations"])]
    return inputs, {**windows, "groups": groups, "output_padding": output_padding}


@sampler("max_pool", "avg_pool")
def _pool(d: Drawing, op: OpDef):
    x = d.pick(op.dtypes, min_rank=3, fallback=d.spatial_shape())
    attrs = {**_windows(d, x.type.shape[2:], with_dilations="dilations" in op.attr_index), "ceil_mode": d.boolean()}
    attrs["count_include_pad"] = d.boolean()
    return [x], {name: value for name, value in attrs.items() if name in op.attr_index}


@sampler("global_avg_pool")
def _global_pool(d: Drawing, op: OpDef):
    return [d.pick(op.dtypes, min_rank=3, fallback=d.spatial_shape())], {}


@sampler("scaled_dot_product_attention")
def _attention(d: Drawing, op: OpDef):
    q = _float_operand(d, op, min_rank=2, fallback=d.spatial_shape()[1:])
    *batch, length, embed = q.type.shape
    source = d.integer(1, d.max_dim)
    k = d.operand((*batch, source, embed), q.type.dtype)
    v = d.operand((*batch, source, d.integer(1, d.max_dim)), q.type.dtype)
    inputs = [q, k, v]
    causal = d.boolean()
    if not causal and d.boolean():
        inputs.append(d.operand((length, source), d.choice((DType.bool, q.type.dtype))))
    return inputs, {"causal": causal, "scale": d.draw(st.none() | st.sampled_from((0.5, 1.0)))}


def sampler_for(op: OpDef) -> Sampler:
    return SAMPLERS.get(op.name, sample_generic)


# -- quantization ----------------------------------------------------------------------------
# The quantized types (i8, u8) are not among the default drawn dtypes: quantize_linear's results
# are drawn whatever the dtypes (`strategies.QUANTIZING_OPS`), and the readers of quantized values
# take one of them or, when none was drawn, a constant.

_QUANTIZED = (DType.i8, DType.u8)


def _quantized_operand(d: Drawing, shape: Shape, name: str) -> Value:
    """A drawn i8/u8 value of rank >= 1 if there is one, else a constant over the type's full range."""
    built = [v for v in reversed(d.pool) if v.type.dtype in _QUANTIZED and v.type.rank >= 1]
    if built and d.boolean():
        return d.choice(built)
    dtype = d.choice(_QUANTIZED)
    info = np.iinfo(dtype.numpy)
    return d.array_constant(d.rng.integers(info.min, info.max + 1, shape).astype(dtype.numpy), name)


def _quantization_parameters(d: Drawing, like: Shape, scale_dtype: DType, point_dtype: DType) -> list[Value]:
    """A scale (positive) and a zero point per tensor, per last axis or per leading axis of `like`."""
    forms = [()] + ([(like[-1],), (like[0],) + (1,) * (len(like) - 1)] if like else [])
    shape = d.choice(forms)
    scale = d.rng.uniform(0.01, 0.5, shape).astype(scale_dtype.numpy)
    info = np.iinfo(point_dtype.numpy)
    point = d.rng.integers(info.min, info.max + 1, shape).astype(point_dtype.numpy)
    return [d.array_constant(scale, "scale"), d.array_constant(point, "zero_point")]


@sampler("quantize_linear")
def _quantize_linear(d: Drawing, op: OpDef):
    x = _float_operand(d, op)
    return [x, *_quantization_parameters(d, x.type.shape, x.type.dtype, d.choice(_QUANTIZED))], {}


@sampler("dequantize_linear")
def _dequantize_linear(d: Drawing, op: OpDef):
    x = _quantized_operand(d, d.some_shape() or (d.integer(1, d.max_dim),), "q")
    scale_dtype = d.choice(sorted(d.dtypes & FLOAT_DTYPES, key=lambda t: t.value) or [DType.f32])
    return [x, *_quantization_parameters(d, x.type.shape, scale_dtype, x.type.dtype)], {}


@sampler("matmul_integer")
def _matmul_integer(d: Drawing, op: OpDef):
    a = _quantized_operand(d, (d.integer(1, d.max_dim), d.integer(1, d.max_dim)), "a")
    k, n = a.type.shape[-1], d.integer(1, d.max_dim)
    b = _quantized_operand(d, (k, n), "b")
    if b.type.rank != 2 or b.type.shape[0] != k:
        raise Skip
    inputs = [a, b]
    if d.boolean():  # zero points: per tensor for a, per tensor or per column for b
        points = ((a, ()), (b, d.choice([(), (b.type.shape[-1],)])))
        for operand, shape in points:
            info = np.iinfo(operand.type.dtype.numpy)
            array = d.rng.integers(info.min, info.max + 1, shape).astype(operand.type.dtype.numpy)
            inputs.append(d.array_constant(array, "zero_point"))
    return inputs, {}


@sampler("conv_integer")
def _conv_integer(d: Drawing, op: OpDef):
    """x: a drawn i8/u8 value of rank 3-4 (a quantize_linear of a conv input) or a constant; w: i8 or u8;
    zero points (sometimes): x's per tensor, w's per tensor or per output channel."""
    built = [v for v in reversed(d.pool) if v.type.dtype in _QUANTIZED and v.type.rank in (3, 4)]
    floats = [v for v in reversed(d.pool) if v.type.dtype in FLOAT_DTYPES and v.type.rank in (3, 4)]
    if built and d.boolean():
        x = d.choice(built)
    elif floats and d.boolean():  # a float activation quantized here, as passes.quantize does
        source = d.choice(floats)
        scale = d.array_constant(np.array(d.rng.uniform(0.01, 0.5), source.type.dtype.numpy), "scale")
        x = d.builder.quantize_linear(source, scale, d.array_constant(np.array(0, d.choice(_QUANTIZED).numpy), "zp"))
    else:
        x = _quantized_operand(d, d.spatial_shape(), "x")
    if x.type.rank not in (3, 4):
        raise Skip
    channels, spatial = x.type.shape[1], x.type.shape[2:]
    groups = d.choice([g for g in range(1, channels + 1) if channels % g == 0])
    windows = _windows(d, spatial)
    out_channels = groups * d.integer(1, 2)
    w_dtype = d.choice(_QUANTIZED)
    info = np.iinfo(w_dtype.numpy)
    w_shape = (out_channels, channels // groups, *windows.pop("kernel"))
    inputs = [x, d.array_constant(d.rng.integers(info.min, info.max + 1, w_shape).astype(w_dtype.numpy), "w")]
    if d.boolean():
        for operand, shape in ((x, ()), (inputs[1], d.choice([(), (out_channels, *(1,) * (x.type.rank - 1))]))):
            info = np.iinfo(operand.type.dtype.numpy)
            array = d.rng.integers(info.min, info.max + 1, shape).astype(operand.type.dtype.numpy)
            inputs.append(d.array_constant(array, "zero_point"))
    return inputs, {**windows, "groups": groups}


@sampler("unpack_bytes")
def _unpack_bytes(d: Drawing, op: OpDef):
    """Words of random bits holding a [K, N] byte matrix in panels of W columns."""
    depth, columns = d.integer(1, 2 * d.max_dim), d.integer(1, 2 * d.max_dim)
    width = d.integer(1, columns)
    shape = (-(-columns // width), -(-depth // 4), width)
    words = d.rng.integers(-(2**31), 2**31, shape, dtype=np.int64).astype(np.int32)
    return [d.array_constant(words, "words")], {"dtype": d.choice(_QUANTIZED), "shape": [depth, columns]}
