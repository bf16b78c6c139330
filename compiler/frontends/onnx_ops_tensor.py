"""ONNX tensor ops into the IR: reshapes and other movement, indexing, and the ops that make
tensors from nothing or from shapes (Constant, ConstantOfShape, Shape, Size, Range, EyeLike).

Each entry of `TENSOR_OPS` maps an ONNX op type to a small function that reads a `NodeContext`
and returns the IR value(s) of the node's outputs. ONNX passes shapes, starts, pads, repeats and
axes as tensors; the IR's shapes are static, so those inputs are read at import time
(`NodeContext.const`). Shape and Size are constants, since every shape is known.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from compiler.frontends.onnx_context import NodeContext, UnsupportedNode, dtype_of_onnx
from ir import DType, Value

Mapping = Callable[[NodeContext], object]


def _reshape(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    shape = list(ctx.ints(1, "shape"))
    if not ctx.attr("allowzero", 0):
        # 0 copies the input's size on that axis, unless allowzero says it means an empty axis.
        shape = [x.type.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return ctx.op("reshape", x, shape=shape)


def _transpose(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    perm = ctx.attr("perm")
    return ctx.op("transpose", x, perm=tuple(perm) if perm else tuple(reversed(range(x.type.rank))))


def _broadcast(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    rank = max(len(a), len(b))
    a, b = (1,) * (rank - len(a)) + a, (1,) * (rank - len(b)) + b
    return tuple(y if x == 1 else x for x, y in zip(a, b))


def _expand(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    # Bidirectional: a 1 in the requested shape keeps the input's size there.
    return ctx.op("expand", x, shape=_broadcast(x.type.shape, ctx.ints(1, "shape")))


def _concat(ctx: NodeContext) -> Value:
    values = [v for v in ctx.inputs if v is not None]
    return ctx.op("concat", *values, axis=ctx.attr("axis"))


def _split(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    axis = ctx.attr("axis") % x.type.rank
    size = x.type.shape[axis]
    if ctx.optional(1) is not None:
        sizes = ctx.ints(1, "split")
    elif ctx.attr("split"):
        sizes = tuple(ctx.attr("split"))
    else:
        count = ctx.attr("num_outputs") or len(ctx.node.output)
        # ONNX: pieces of ceil(size / count), the last one smaller.
        piece = -(-size // count)
        sizes = tuple(min(piece, max(size - i * piece, 0)) for i in range(count))
    outputs = ctx.op("split", x, axis=axis, sizes=sizes)
    return list(outputs) if isinstance(outputs, tuple) else [outputs]


def _slice(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    starts, ends = ctx.ints(1, "starts"), ctx.ints(2, "ends")
    axes = ctx.ints(3, "axes") if ctx.optional(3) is not None else ()
    steps = ctx.ints(4, "steps") if ctx.optional(4) is not None else ()
    return ctx.op("slice", x, starts=starts, ends=ends, axes=axes, steps=steps)


def _gather(ctx: NodeContext) -> Value:
    return ctx.op("gather", ctx.input(0), ctx.input(1), axis=ctx.attr("axis"))


def _gather_elements(ctx: NodeContext) -> Value:
    return ctx.op("gather_elements", ctx.input(0), ctx.input(1), axis=ctx.attr("axis"))


def _scatter_elements(ctx: NodeContext) -> Value:
    reduction = ctx.attr("reduction") or "none"
    return ctx.op("scatter", ctx.input(0), ctx.input(1), ctx.input(2), axis=ctx.attr("axis"), reduction=reduction)


def _pad(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    mode = ctx.attr("mode")
    if mode not in ("constant", "reflect", "edge"):
        raise UnsupportedNode(f"mode={mode}")
    pads = ctx.ints(1, "pads")
    rank = x.type.rank
    if ctx.optional(3) is not None:  # pads for the listed axes only
        axes = [a % rank for a in ctx.ints(3, "axes")]
        full = [0] * (2 * rank)
        for i, axis in enumerate(axes):
            full[axis], full[rank + axis] = pads[i], pads[len(axes) + i]
        pads = tuple(full)
    value = 0.0
    if ctx.optional(2) is not None:
        value = float(np.asarray(ctx.const(2, "constant_value")).reshape(()))
    return ctx.op("pad", x, pads=pads, mode=mode, value=value)


def _axes_of(ctx: NodeContext) -> tuple[int, ...]:
    """Squeeze/Unsqueeze axes: an input since opset 13."""
    return ctx.ints(1, "axes") if ctx.optional(1) is not None else tuple(ctx.attr("axes", None) or ())


def _squeeze(ctx: NodeContext) -> Value:
    return ctx.op("squeeze", ctx.input(0), axes=_axes_of(ctx))


def _unsqueeze(ctx: NodeContext) -> Value:
    return ctx.op("unsqueeze", ctx.input(0), axes=_axes_of(ctx))


def _flatten(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    axis = ctx.attr("axis")
    axis = axis + x.type.rank if axis < 0 else axis  # ONNX's axis lies in [-rank, rank]
    outer = int(np.prod(x.type.shape[:axis], dtype=np.int64))
    inner = int(np.prod(x.type.shape[axis:], dtype=np.int64))
    return ctx.op("reshape", x, shape=(outer, inner))  # ONNX always gives a matrix


def _tile(ctx: NodeContext) -> Value:
    return ctx.op("tile", ctx.input(0), repeats=ctx.ints(1, "repeats"))


def _depth_to_space(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    n, c, h, w = x.type.shape
    b = ctx.attr("blocksize")
    if ctx.attr("mode") == "CRD":
        tmp = ctx.op("reshape", x, shape=(n, c // (b * b), b, b, h, w))
        tmp = ctx.op("transpose", tmp, perm=(0, 1, 4, 2, 5, 3))
    else:  # DCR
        tmp = ctx.op("reshape", x, shape=(n, b, b, c // (b * b), h, w))
        tmp = ctx.op("transpose", tmp, perm=(0, 3, 4, 1, 5, 2))
    return ctx.op("reshape", tmp, shape=(n, c // (b * b), h * b, w * b))


def _space_to_depth(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    n, c, h, w = x.type.shape
    b = ctx.attr("blocksize")
    tmp = ctx.op("reshape", x, shape=(n, c, h // b, b, w // b, b))
    # DCR (the default) puts the block offset before the channel, CRD (opset 28) after it.
    perm = (0, 1, 3, 5, 2, 4) if ctx.attr("mode", "DCR") == "CRD" else (0, 3, 5, 1, 2, 4)
    tmp = ctx.op("transpose", tmp, perm=perm)
    return ctx.op("reshape", tmp, shape=(n, c * b * b, h // b, w // b))


def _trilu(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    k = int(np.asarray(ctx.const(1, "k")).reshape(())) if ctx.optional(1) is not None else 0
    rows, cols = x.type.shape[-2:]
    ones = np.ones((rows, cols), dtype=bool)
    keep = np.triu(ones, k) if ctx.attr("upper") else np.tril(ones, k)
    return ctx.op("where", ctx.constant(keep, "trilu_mask"), x, ctx.scalar(0, x))


def _dropout(ctx: NodeContext) -> list[Value]:
    x = ctx.input(0)
    training = ctx.optional(2) is not None and bool(np.asarray(ctx.const(2, "training_mode")).reshape(()))
    ratio = float(np.asarray(ctx.const(1, "ratio")).reshape(())) if ctx.optional(1) is not None else 0.5
    if training and ratio > 0:
        raise UnsupportedNode("training_mode=true (random dropping)")
    outputs = [x]
    if len(ctx.node.output) > 1 and ctx.node.output[1]:
        outputs.append(ctx.op("full", shape=x.type.shape, value=1.0, dtype=DType.bool))
    return outputs


def _one_hot(ctx: NodeContext) -> Value:
    indices, values = ctx.input(0), ctx.input(2)
    depth = int(np.asarray(ctx.const(1, "depth")).reshape(()))
    rank = indices.type.rank + 1
    axis = ctx.attr("axis") % rank
    indices = ctx.cast(indices, DType.i64)  # ONNX allows float indices (they are truncated)
    # Negative indices count from the end of the depth.
    wrapped = ctx.op(
        "where",
        ctx.op("less", indices, ctx.scalar(0, indices)),
        ctx.op("add", indices, ctx.scalar(depth, indices)),
        indices,
    )
    positions = np.arange(depth, dtype=np.int64).reshape([-1 if d == axis else 1 for d in range(rank)])
    hot = ctx.op("equal", ctx.op("unsqueeze", wrapped, axes=(axis,)), ctx.constant(positions, "positions"))
    off = ctx.op("slice", values, starts=(0,), ends=(1,))
    on = ctx.op("slice", values, starts=(1,), ends=(2,))
    return ctx.op("where", hot, on, off)


def _center_crop_pad(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    target = ctx.ints(1, "shape")
    rank = x.type.rank
    axes = [a % rank for a in (ctx.attr("axes") or range(rank))]
    starts, ends, slice_axes = [], [], []
    pads = [0] * (2 * rank)
    for axis, size in zip(axes, target):
        current = x.type.shape[axis]
        if size < current:  # crop the middle; an odd surplus leaves one more at the end
            start = (current - size) // 2
            starts.append(start)
            ends.append(start + size)
            slice_axes.append(axis)
        elif size > current:  # pad around; an odd surplus puts one more at the end
            pads[axis] = (size - current) // 2
            pads[rank + axis] = size - current - pads[axis]
    if slice_axes:
        x = ctx.op("slice", x, starts=starts, ends=ends, axes=slice_axes)
    if any(pads):
        x = ctx.op("pad", x, pads=pads)
    return x


# -- tensors from nothing and from shapes --------------------------------------------------------


def _constant(ctx: NodeContext) -> Value:
    for name in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if ctx.has_attr(name):
            value = ctx.attr(name)
            if name in ("value_float", "value_floats"):
                value = np.asarray(value, dtype=np.float32)
            elif name in ("value_int", "value_ints"):
                value = np.asarray(value, dtype=np.int64)
            return ctx.constant(value, ctx.node.output[0])
    given = ", ".join(a.name for a in ctx.node.attribute) or "no value"
    raise UnsupportedNode(f"a Constant holding {given}")


def _constant_of_shape(ctx: NodeContext) -> Value:
    shape = ctx.ints(0, "shape")
    fill = ctx.attr("value")
    fill = np.zeros(1, np.float32) if fill is None else np.asarray(fill).reshape(-1)
    return ctx.constant(np.full(shape, fill[0], dtype=fill.dtype), "filled")


def _shape(ctx: NodeContext) -> Value:
    shape = ctx.input(0).type.shape
    start, end = ctx.attr("start", 0), ctx.attr("end", None)
    return ctx.constant(np.array(shape[slice(start, end)], dtype=np.int64), "shape")


def _size(ctx: NodeContext) -> Value:
    return ctx.constant(np.array(ctx.input(0).type.numel, dtype=np.int64), "size")


def _range(ctx: NodeContext) -> Value:
    start, limit, delta = (np.asarray(ctx.const(i, name)) for i, name in enumerate(("start", "limit", "delta")))
    dtype = start.dtype
    count = max(int(np.ceil((float(limit) - float(start)) / float(delta))), 0)
    # Computed in the input type, as ONNX's loop of additions is specified for integers.
    values = start + np.arange(count).astype(dtype) * delta
    return ctx.constant(values.astype(dtype), "range")


def _eye_like(ctx: NodeContext) -> Value:
    x = ctx.input(0)
    dtype_code = ctx.attr("dtype", None)
    dtype = dtype_of_onnx(dtype_code, "the dtype attribute") if dtype_code is not None else x.type.dtype
    rows, cols = x.type.shape
    return ctx.constant(np.eye(rows, cols, k=ctx.attr("k"), dtype=dtype.numpy), "eye")


TENSOR_OPS: dict[str, Mapping] = {
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Expand": _expand,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Gather": _gather,
    "GatherElements": _gather_elements,
    "ScatterElements": _scatter_elements,
    "Pad": _pad,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Flatten": _flatten,
    "Tile": _tile,
    "DepthToSpace": _depth_to_space,
    "SpaceToDepth": _space_to_depth,
    "Trilu": _trilu,
    "Dropout": _dropout,
    "OneHot": _one_hot,
    "CenterCropPad": _center_crop_pad,
    "Constant": _constant,
    "ConstantOfShape": _constant_of_shape,
    "Shape": _shape,
    "Size": _size,
    "Range": _range,
    "EyeLike": _eye_like,
}
