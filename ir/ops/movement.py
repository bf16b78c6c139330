"""Movement (injective) ops: reshape, transpose, expand, concat, split, slice, gather, gather_elements,
scatter, pad, squeeze, unsqueeze, flatten and tile.

Every output element of these ops is one input element or a constant, so they do no arithmetic
(FLOPs 0; their cost is the bytes they move) and a backend may fold many of them into index
arithmetic of the kernel that reads them. `scatter` is the exception that writes where its
indices say and may combine colliding updates, so it is declared OPAQUE. Attributes follow
ONNX where torch and ONNX disagree (slice clamping, pad layout, negative indices), and the
shape rules reject what torch or ONNX reject (a reflect pad wider than the axis, a step of 0)
rather than guess a meaning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ir.attributes import Attr, AttrKind
from ir.dtype import INDEX_DTYPES
from ir.ops.shapes import normalize_axes, normalize_axis, require, require_dtype, same_dtype
from ir.ops.table import OpDef, OpKind, register
from ir.types import Shape, TensorType


def _text(shape: Sequence[int]) -> str:
    """A shape or list of ints as the text form writes it: `[2,-1,3]`."""
    return f"[{','.join(str(d) for d in shape)}]"


def _movement(name: str, inputs: tuple[str, ...], infer, reference, attrs: tuple[Attr, ...], doc: str) -> None:
    register(OpDef(name, OpKind.MOVEMENT, inputs, infer, reference, attrs=attrs, doc=doc))


# -- reshape, transpose, expand ----------------------------------------------------------------


def _reshape_shape(x: TensorType, shape: Shape) -> Shape:
    require(all(d >= -1 for d in shape), f"reshape: shape {_text(shape)} has a negative size other than -1")
    unknown = [i for i, d in enumerate(shape) if d == -1]
    require(len(unknown) <= 1, f"reshape: shape {_text(shape)} has more than one -1")
    known = math.prod(d for d in shape if d != -1)
    if unknown:
        # With a 0 elsewhere any size fits the -1, so there is nothing to infer it from.
        require(known != 0, f"reshape: cannot infer the -1 of {_text(shape)} since the other sizes multiply to 0")
        require(
            x.numel % known == 0,
            f"reshape: cannot reshape {x} ({x.numel} elements) to {_text(shape)}: not a multiple of {known}",
        )
        shape = tuple(x.numel // known if d == -1 else d for d in shape)
    require(
        math.prod(shape) == x.numel,
        f"reshape: cannot reshape {x} ({x.numel} elements) to {_text(shape)} ({math.prod(shape)} elements)",
    )
    return shape


_movement(
    "reshape",
    ("x",),
    lambda x, *, shape: x.with_shape(_reshape_shape(x, shape)),
    lambda x, *, shape: x.reshape(shape),
    (Attr("shape", AttrKind.INTS),),
    "the same elements in row-major order under a new shape; one -1 is inferred, 0 is a zero size",
)


def _infer_transpose(x: TensorType, *, perm: tuple[int, ...]) -> TensorType:
    require(
        sorted(perm) == list(range(x.rank)),
        f"transpose: perm {_text(perm)} is not a permutation of range({x.rank}) for {x}",
    )
    return x.with_shape(tuple(x.shape[p] for p in perm))


_movement(
    "transpose",
    ("x",),
    _infer_transpose,
    lambda x, *, perm: np.transpose(x, perm),
    (Attr("perm", AttrKind.INTS),),
    "permute the axes: output axis i is input axis perm[i]",
)


def _infer_expand(x: TensorType, *, shape: tuple[int, ...]) -> TensorType:
    require(all(d >= 0 for d in shape), f"expand: shape {_text(shape)} has a negative size")
    offset = len(shape) - x.rank
    fits = offset >= 0 and all(d in (1, shape[offset + i]) for i, d in enumerate(x.shape))
    require(fits, f"expand: {x} does not broadcast to {_text(shape)} (align right; each size must match or be 1)")
    return x.with_shape(shape)


_movement(
    "expand",
    ("x",),
    _infer_expand,
    # broadcast_to gives a read-only view that aliases x; the copy keeps values independent.
    lambda x, *, shape: np.broadcast_to(x, shape).copy(),
    (Attr("shape", AttrKind.INTS),),
    "broadcast x to exactly `shape` (numpy broadcast_to: size-1 and missing leading axes stretch)",
)


# -- concat, split -----------------------------------------------------------------------------


def _infer_concat(*inputs: TensorType, axis: int) -> TensorType:
    dtype = same_dtype("concat", *inputs)
    first = inputs[0]
    require(first.rank > 0, f"concat: cannot concatenate scalars, got {first}")
    for t in inputs[1:]:
        require(t.rank == first.rank, f"concat: inputs differ in rank: {first} vs {t}")
    axis = normalize_axis("concat", axis, first.rank)
    for t in inputs[1:]:
        for d in range(first.rank):
            require(d == axis or t.shape[d] == first.shape[d], f"concat: inputs differ on axis {d}: {first} vs {t}")
    size = sum(t.shape[axis] for t in inputs)
    return TensorType((*first.shape[:axis], size, *first.shape[axis + 1 :]), dtype)


_movement(
    "concat",
    ("*inputs",),
    _infer_concat,
    lambda *inputs, axis: np.concatenate(inputs, axis=axis),
    (Attr("axis", AttrKind.INT),),
    "join the inputs along `axis`; their other sizes must be equal",
)


def _infer_split(x: TensorType, *, axis: int, sizes: tuple[int, ...]) -> tuple[TensorType, ...]:
    axis = normalize_axis("split", axis, x.rank)
    require(len(sizes) > 0, "split: sizes must name at least one piece")
    require(all(s >= 0 for s in sizes), f"split: sizes {_text(sizes)} has a negative size")
    require(
        sum(sizes) == x.shape[axis],
        f"split: sizes {_text(sizes)} sum to {sum(sizes)}, but axis {axis} of {x} has size {x.shape[axis]}",
    )
    return tuple(x.with_shape((*x.shape[:axis], s, *x.shape[axis + 1 :])) for s in sizes)


def _split(x: np.ndarray, *, axis: int, sizes: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


_movement(
    "split",
    ("x",),
    _infer_split,
    _split,
    (Attr("axis", AttrKind.INT), Attr("sizes", AttrKind.INTS)),
    "cut x along `axis` into consecutive pieces of the given sizes (one output per piece)",
)


# -- slice -------------------------------------------------------------------------------------


def _slice_plan(
    x_shape: Shape, starts: tuple[int, ...], ends: tuple[int, ...], axes: tuple[int, ...], steps: tuple[int, ...]
) -> tuple[tuple[slice, ...], Shape]:
    """The numpy index that implements an ONNX Slice and the shape it gives.

    ONNX first counts negative starts and ends from the end, then clamps them into the axis:
    to [0, size] going forwards, to [0, size - 1] (starts) and [-1, size - 1] (ends) going
    backwards, so INT64_MAX and INT64_MIN mean "to the end". That is Python's slicing except for
    a backward slice whose start lies before the first element: ONNX starts it at element 0,
    Python gives nothing (onnxruntime follows the ONNX text; onnx's reference evaluator, Python)."""
    rank = len(x_shape)
    axes = axes or tuple(range(len(starts)))
    steps = steps or (1,) * len(starts)
    counts = (len(starts), len(ends), len(axes), len(steps))
    require(
        len(set(counts)) == 1,
        "slice: starts, ends, axes and steps need one entry per sliced axis, got {}, {}, {} and {}".format(*counts),
    )
    normalize_axes("slice", axes, rank)  # rejects repeats and out-of-range axes
    index = [slice(None)] * rank
    shape = list(x_shape)
    for axis, start, end, step in zip(axes, starts, ends, steps):
        axis = normalize_axis("slice", axis, rank)
        require(step != 0, f"slice: step 0 on axis {axis}")
        size = x_shape[axis]
        start, end = start + size if start < 0 else start, end + size if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), size), min(max(end, 0), size)
        else:
            start, end = min(max(start, 0), size - 1), min(max(end, -1), size - 1)
        shape[axis] = max(0, -((start - end) // step))  # ceil((end - start) / step)
        # A backward stop of -1 means "past the first element", which Python spells None.
        index[axis] = slice(start, None if end < 0 else end, step)
    return tuple(index), tuple(shape)


def _infer_slice(x: TensorType, *, starts, ends, axes, steps) -> TensorType:
    return x.with_shape(_slice_plan(x.shape, starts, ends, axes, steps)[1])


def _slice(x: np.ndarray, *, starts, ends, axes, steps) -> np.ndarray:
    return x[_slice_plan(x.shape, starts, ends, axes, steps)[0]]


_movement(
    "slice",
    ("x",),
    _infer_slice,
    _slice,
    (
        Attr("starts", AttrKind.INTS),
        Attr("ends", AttrKind.INTS),
        Attr("axes", AttrKind.INTS, ()),
        Attr("steps", AttrKind.INTS, ()),
    ),
    "ONNX Slice: x[start:end:step] on each listed axis (default range(len(starts)), steps 1); "
    "negative bounds count from the end, out-of-range bounds clamp",
)


# -- gather, gather_elements, scatter ----------------------------------------------------------


def _wrap_indices(op: str, indices: np.ndarray, size: int) -> np.ndarray:
    """Indices in [0, size): negatives count from the end (ONNX); anything else is out of range
    and an error, as in torch, rather than clamped."""
    if indices.size and (indices.min() < -size or indices.max() >= size):
        raise IndexError(f"{op}: indices must lie in [{-size}, {size}), got {indices.min()} to {indices.max()}")
    return np.where(indices < 0, indices + size, indices)


def _infer_gather(x: TensorType, indices: TensorType, *, axis: int) -> TensorType:
    require_dtype("gather", indices, INDEX_DTYPES, "indices")
    axis = normalize_axis("gather", axis, x.rank)
    return x.with_shape(x.shape[:axis] + indices.shape + x.shape[axis + 1 :])


_movement(
    "gather",
    ("x", "indices"),
    _infer_gather,
    lambda x, indices, *, axis: np.take(x, _wrap_indices("gather", indices, x.shape[axis]), axis=axis),
    (Attr("axis", AttrKind.INT, 0),),
    "numpy take: the slices of x at `indices` along `axis` (an embedding lookup with axis 0)",
)


def _require_indices_fit(op: str, x: TensorType, indices: TensorType, axis: int) -> None:
    """ONNX GatherElements/ScatterElements and torch.gather/scatter index with the position of
    each index along the other axes, so indices may be no larger than x there."""
    require(indices.rank == x.rank, f"{op}: indices must have the rank of x, got {x} and {indices}")
    for d in range(x.rank):
        require(
            d == axis or indices.shape[d] <= x.shape[d],
            f"{op}: indices {indices} are larger than x {x} on axis {d}",
        )


def _infer_gather_elements(x: TensorType, indices: TensorType, *, axis: int) -> TensorType:
    require_dtype("gather_elements", indices, INDEX_DTYPES, "indices")
    axis = normalize_axis("gather_elements", axis, x.rank)
    _require_indices_fit("gather_elements", x, indices, axis)
    return x.with_shape(indices.shape)


def _gather_elements(x: np.ndarray, indices: np.ndarray, *, axis: int) -> np.ndarray:
    axis = axis % x.ndim
    # Only the leading part of x is read on the other axes when indices are smaller there.
    window = tuple(slice(None) if d == axis else slice(0, n) for d, n in enumerate(indices.shape))
    return np.take_along_axis(x[window], _wrap_indices("gather_elements", indices, x.shape[axis]), axis=axis)


_movement(
    "gather_elements",
    ("x", "indices"),
    _infer_gather_elements,
    _gather_elements,
    (Attr("axis", AttrKind.INT, 0),),
    "ONNX GatherElements / torch.gather: out[i][j] = x[indices[i][j]][j] for axis 0, out shaped like indices",
)


def _infer_scatter(x: TensorType, indices: TensorType, updates: TensorType, *, axis: int, reduction: str) -> TensorType:
    require_dtype("scatter", indices, INDEX_DTYPES, "indices")
    same_dtype("scatter", x, updates)
    require(
        indices.shape == updates.shape, f"scatter: indices and updates must have one shape, got {indices} and {updates}"
    )
    axis = normalize_axis("scatter", axis, x.rank)
    _require_indices_fit("scatter", x, indices, axis)
    return x


_SCATTER_REDUCTIONS = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _scatter(x: np.ndarray, indices: np.ndarray, updates: np.ndarray, *, axis: int, reduction: str) -> np.ndarray:
    axis = axis % x.ndim
    # The target of updates[p] is p with its `axis` coordinate replaced by indices[p].
    target = list(np.indices(indices.shape, sparse=True))
    target[axis] = _wrap_indices("scatter", indices, x.shape[axis])
    result = x.copy()
    if reduction == "none":
        result[tuple(target)] = updates  # colliding indices: ONNX leaves the winner undefined
    else:
        # ufunc.at applies every update, so colliding indices combine instead of overwriting.
        _SCATTER_REDUCTIONS[reduction].at(result, tuple(target), updates)
    return result


register(
    OpDef(
        "scatter",
        OpKind.OPAQUE,
        ("x", "indices", "updates"),
        _infer_scatter,
        _scatter,
        attrs=(
            Attr("axis", AttrKind.INT, 0),
            Attr("reduction", AttrKind.STR, "none", choices=("none", "add", "mul", "max", "min")),
        ),
        flops=lambda inputs, outputs, attrs: 0 if attrs["reduction"] == "none" else inputs[2].numel,
        doc="ONNX ScatterElements: a copy of x with updates written (or combined by `reduction`) at indices",
    )
)


# -- pad ---------------------------------------------------------------------------------------


def _infer_pad(x: TensorType, *, pads: tuple[int, ...], mode: str, value: float) -> TensorType:
    rank = x.rank
    require(
        len(pads) == 2 * rank,
        f"pad: pads must hold 2 * rank = {2 * rank} values (all begins, then all ends), got {len(pads)} for {x}",
    )
    shape = []
    for axis, (begin, end) in enumerate(zip(pads[:rank], pads[rank:])):
        kept = x.shape[axis] + min(begin, 0) + min(end, 0)
        require(kept >= 0, f"pad: pads {_text(pads)} crop more than the {x.shape[axis]} elements of axis {axis} of {x}")
        widest = max(begin, end, 0)
        # Reflection mirrors around the edge element without repeating it, so it needs widest + 1 elements.
        require(
            mode != "reflect" or widest == 0 or widest < kept,
            f"pad: reflect padding of {widest} on axis {axis} needs more than {widest} elements, {x} has {kept} there",
        )
        require(
            mode != "edge" or widest == 0 or kept > 0,
            f"pad: edge padding of axis {axis} of {x} needs an element to repeat, it has none",
        )
        shape.append(kept + max(begin, 0) + max(end, 0))
    return x.with_shape(tuple(shape))


def _pad(x: np.ndarray, *, pads: tuple[int, ...], mode: str, value: float) -> np.ndarray:
    begins, ends = pads[: x.ndim], pads[x.ndim :]
    # Negative pads crop first; the positive ones then pad what is left, so edge and reflect
    # padding start from the cropped edge.
    cropped = x[tuple(slice(-min(b, 0), size + min(e, 0)) for b, e, size in zip(begins, ends, x.shape))]
    widths = [(max(b, 0), max(e, 0)) for b, e in zip(begins, ends)]
    if not widths:  # np.pad cannot take the empty widths of a scalar
        return cropped.copy()
    if mode == "constant":
        return np.pad(cropped, widths, mode="constant", constant_values=value)
    return np.pad(cropped, widths, mode=mode)


_movement(
    "pad",
    ("x",),
    _infer_pad,
    _pad,
    (
        Attr("pads", AttrKind.INTS),
        Attr("mode", AttrKind.STR, "constant", choices=("constant", "reflect", "edge")),
        Attr("value", AttrKind.FLOAT, 0.0),
    ),
    "ONNX Pad: pads = [x1_begin, x2_begin, ..., x1_end, x2_end, ...], negative pads crop; "
    "mode constant (fill with value), reflect (mirror without the edge) or edge (repeat the edge)",
)


# -- squeeze, unsqueeze, flatten, tile ---------------------------------------------------------


def _squeeze_axes(shape: Shape, axes: tuple[int, ...]) -> tuple[int, ...]:
    if not axes:
        return tuple(i for i, d in enumerate(shape) if d == 1)
    axes = normalize_axes("squeeze", axes, len(shape))
    for a in axes:
        require(shape[a] == 1, f"squeeze: axis {a} of {_text(shape)} has size {shape[a]}, not 1")
    return axes


def _infer_squeeze(x: TensorType, *, axes: tuple[int, ...]) -> TensorType:
    dropped = _squeeze_axes(x.shape, axes)
    return x.with_shape(tuple(d for i, d in enumerate(x.shape) if i not in dropped))


_movement(
    "squeeze",
    ("x",),
    _infer_squeeze,
    lambda x, *, axes: np.squeeze(x, axis=_squeeze_axes(x.shape, axes)),
    (Attr("axes", AttrKind.INTS, ()),),
    "drop the listed size-1 axes (default: every size-1 axis)",
)


def _infer_unsqueeze(x: TensorType, *, axes: tuple[int, ...]) -> TensorType:
    shape = list(x.shape)
    for a in normalize_axes("unsqueeze", axes, x.rank + len(axes)):  # ascending, so earlier inserts stay put
        shape.insert(a, 1)
    return x.with_shape(tuple(shape))


_movement(
    "unsqueeze",
    ("x",),
    _infer_unsqueeze,
    lambda x, *, axes: np.expand_dims(x, axis=axes),
    (Attr("axes", AttrKind.INTS),),
    "insert size-1 axes; `axes` are positions in the output (ONNX Unsqueeze), negatives from its end",
)


def _flatten_shape(shape: Shape, start_axis: int, end_axis: int) -> Shape:
    shape = shape or (1,)  # torch flattens a scalar to [1]
    start = normalize_axis("flatten", start_axis, len(shape))
    end = normalize_axis("flatten", end_axis, len(shape))
    require(start <= end, f"flatten: start_axis {start_axis} comes after end_axis {end_axis} for rank {len(shape)}")
    return (*shape[:start], math.prod(shape[start : end + 1]), *shape[end + 1 :])


_movement(
    "flatten",
    ("x",),
    lambda x, *, start_axis, end_axis: x.with_shape(_flatten_shape(x.shape, start_axis, end_axis)),
    lambda x, *, start_axis, end_axis: x.reshape(_flatten_shape(x.shape, start_axis, end_axis)),
    (Attr("start_axis", AttrKind.INT, 0), Attr("end_axis", AttrKind.INT, -1)),
    "torch.flatten: merge axes start_axis..end_axis (inclusive) into one; a scalar becomes [1]",
)


def _infer_tile(x: TensorType, *, repeats: tuple[int, ...]) -> TensorType:
    require(len(repeats) == x.rank, f"tile: repeats {_text(repeats)} must have one entry per axis of {x}")
    require(all(r >= 0 for r in repeats), f"tile: repeats {_text(repeats)} has a negative count")
    return x.with_shape(tuple(d * r for d, r in zip(x.shape, repeats)))


_movement(
    "tile",
    ("x",),
    _infer_tile,
    lambda x, *, repeats: np.tile(x, repeats),
    (Attr("repeats", AttrKind.INTS),),
    "repeat the whole of x repeats[i] times along axis i",
)
