"""ATen views, movement, indexing and tensor creation, emitted as IR (for `torch_ops`).

torch's views (view, permute, expand, slice, select...) become the IR's copying movement ops;
aliasing no longer matters once export has functionalised the graph. Where torch accepts a
shorthand (a -1 size, an end of sys.maxsize, dims that are not size 1 in squeeze), the node's
result shape from torch, or Python's own slice arithmetic, gives the exact IR attributes.
"""

from __future__ import annotations

from typing import Any

from compiler.frontends.torch_graph import Emitter
from compiler.frontends.torch_ops_math import normalize_dim
from ir import DType, Value


def identity(e: Emitter, x: Value, *_: Any, **__: Any) -> Value:
    """clone, contiguous, alias, detach, lift_fresh_copy: the same values."""
    return x


def reshape(e: Emitter, x: Value, *_: Any) -> Value:
    shape = e.out_shape  # torch resolved any -1
    return x if x.type.shape == shape else e.op("reshape", x, shape=shape)


def permute(e: Emitter, x: Value, dims: list[int]) -> Value:
    perm = tuple(normalize_dim(d, x.type.rank) for d in dims)
    return x if perm == tuple(range(x.type.rank)) else e.op("transpose", x, perm=perm)


def transpose(e: Emitter, x: Value, dim0: int = 0, dim1: int = 1) -> Value:
    if x.type.rank < 2:
        return x  # t() of a vector or scalar
    perm = list(range(x.type.rank))
    a, b = normalize_dim(dim0, x.type.rank), normalize_dim(dim1, x.type.rank)
    perm[a], perm[b] = perm[b], perm[a]
    return permute(e, x, perm)


def expand(e: Emitter, x: Value, *_: Any, **__: Any) -> Value:
    shape = e.out_shape  # torch resolved the -1 sizes
    return x if x.type.shape == shape else e.op("expand", x, shape=shape)


def slice_(e: Emitter, x: Value, dim: int = 0, start: int | None = None, end: int | None = None, step: int = 1):
    axis = normalize_dim(dim, x.type.rank)
    size = x.type.shape[axis]
    # Python's slice arithmetic clamps and resolves negative bounds exactly as torch does
    begin, stop, stride = slice(start, end, step).indices(size)
    stop = max(stop, begin)
    if (begin, stop, stride) == (0, size, 1):
        return x
    return e.op("slice", x, starts=(begin,), ends=(stop,), axes=(axis,), steps=(stride,))


def select(e: Emitter, x: Value, dim: int, index: int) -> Value:
    axis = normalize_dim(dim, x.type.rank)
    index = normalize_dim(index, x.type.shape[axis])
    piece = e.op("slice", x, starts=(index,), ends=(index + 1,), axes=(axis,))
    return e.op("squeeze", piece, axes=(axis,))


def squeeze(e: Emitter, x: Value, dims: Any = None) -> Value:
    if dims is None:
        dims = list(range(x.type.rank))
    elif isinstance(dims, int):
        dims = [dims]
    # torch leaves a named axis alone when it is not of size 1
    axes = tuple(sorted({normalize_dim(d, x.type.rank) for d in dims if x.type.shape[d] == 1}))
    return e.op("squeeze", x, axes=axes) if axes else x


def unsqueeze(e: Emitter, x: Value, dim: int) -> Value:
    return e.op("unsqueeze", x, axes=(normalize_dim(dim, x.type.rank + 1),))


def cat(e: Emitter, tensors: list[Value], dim: int = 0) -> Value:
    dtype = e.out_dtype
    rank = len(e.out_shape)
    # torch's legacy rule skips 1-D empty tensors in cat whatever the other ranks are
    kept = [e.cast(t, dtype) for t in tensors if not (t.type.rank == 1 and t.type.shape[0] == 0 and rank != 1)]
    if len(kept) == 1:
        return kept[0]
    return e.op("concat", *kept, axis=normalize_dim(dim, rank))


def split_with_sizes(e: Emitter, x: Value, sizes: list[int], dim: int = 0) -> tuple[Value, ...]:
    pieces = e.op("split", x, axis=normalize_dim(dim, x.type.rank), sizes=tuple(sizes))
    return pieces if isinstance(pieces, tuple) else (pieces,)


def split(e: Emitter, x: Value, split_size: int, dim: int = 0) -> tuple[Value, ...]:
    total = x.type.shape[normalize_dim(dim, x.type.rank)]
    sizes = [min(split_size, total - start) for start in range(0, total, split_size)]
    return split_with_sizes(e, x, sizes, dim)


def unbind(e: Emitter, x: Value, dim: int = 0) -> tuple[Value, ...]:
    axis = normalize_dim(dim, x.type.rank)
    pieces = split_with_sizes(e, x, [1] * x.type.shape[axis], axis)
    return tuple(e.op("squeeze", p, axes=(axis,)) for p in pieces)


def index_select(e: Emitter, x: Value, dim: int, index: Value) -> Value:
    return e.op("gather", x, index, axis=normalize_dim(dim, x.type.rank))


def gather(e: Emitter, x: Value, dim: int, index: Value, sparse_grad: bool = False) -> Value:
    return e.op("gather_elements", x, index, axis=normalize_dim(dim, x.type.rank))


def index(e: Emitter, x: Value, indices: list[Value | None]) -> Value:
    """x[..., idx, ...] with one integer index tensor: a take along that axis."""
    given = [(axis, i) for axis, i in enumerate(indices) if i is not None]
    if len(given) != 1 or given[0][1].type.dtype == DType.bool:
        raise e.unsupported("indexing with several index tensors or a bool mask; only one integer index tensor")
    axis, positions = given[0]
    return e.op("gather", x, positions, axis=axis)


def embedding(e: Emitter, weight: Value, indices: Value, *_: Any) -> Value:
    return e.op("gather", weight, indices, axis=0)


def constant_pad(e: Emitter, x: Value, pad: list[int], value: float = 0.0) -> Value:
    """torch pads from the last axis backwards in (begin, end) pairs; the IR wants all begins, then all ends."""
    rank = x.type.rank
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(pad) // 2):
        begins[rank - 1 - i], ends[rank - 1 - i] = pad[2 * i], pad[2 * i + 1]
    return e.op("pad", x, pads=tuple(begins + ends), value=float(value))


def repeat(e: Emitter, x: Value, repeats: list[int]) -> Value:
    extra = len(repeats) - x.type.rank
    if extra > 0:  # torch prepends size-1 axes when repeats has more entries than x has axes
        x = e.op("reshape", x, shape=(1,) * extra + x.type.shape)
    return e.op("tile", x, repeats=tuple(repeats))


def cast(e: Emitter, x: Value, *_: Any, **__: Any) -> Value:
    """_to_copy and friends: a dtype conversion (device and layout do not exist in the IR)."""
    return e.cast(x, e.out_dtype)


# --- creation ------------------------------------------------------------------------------------------------


def fill(value_arg: int | None, default: float | None = None):
    """full/zeros/ones/*_like/scalar_tensor: the node's shape and dtype, filled with the argument at
    position `value_arg` (or `default`)."""

    def emit(e: Emitter, *args: Any, **kwargs: Any) -> Value:
        value = args[value_arg] if value_arg is not None and len(args) > value_arg else default
        if value is None:
            value = kwargs.get("fill_value", 0.0)
        return e.op("full", shape=e.out_shape, value=float(value), dtype=e.out_dtype)

    return emit


def arange(e: Emitter, *bounds: float, **_: Any) -> Value:
    """arange(end), arange(start, end), arange(start, end, step)."""
    start, end, step = (0, bounds[0], 1) if len(bounds) == 1 else (*bounds[:2], bounds[2] if len(bounds) > 2 else 1)
    return e.op("arange", start=float(start), limit=float(end), delta=float(step), dtype=e.out_dtype)
