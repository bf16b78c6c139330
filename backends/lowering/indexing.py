"""Movement ops as index maps: the element of a movement op's output at `index` is an element
of one of its inputs, at a position computed from `index`, so lowering never copies data for
them; it rewrites the index of the load that reads through them.

`INDEXING[op](element, node, index)` returns the expression of the output element at `index`,
calling `element(value, index)` for the input element it reads. Out-of-range gather indices
(an error in the interpreter) are clamped here so a kernel can never read outside a buffer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from backends.lowering.expr import Unflattened, const, flat_index, i64, unflatten
from ir import DType, Node, Value, get_op
from ir.loop import Binary, Expr, Select

Element = Callable[[Value, Sequence[Expr]], Expr]


def _same_order(element: Element, node: Node, index: Sequence[Expr]) -> Expr:
    """reshape, flatten, squeeze, unsqueeze: the row-major order of elements is unchanged."""
    (x,) = node.inputs
    offset = flat_index(index, node.outputs[0].type.shape)
    return element(x, unflatten(offset, x.type.shape))


def _transpose(element: Element, node: Node, index: Sequence[Expr]) -> Expr:
    perm = node.attrs["perm"]
    source = [i64(0)] * len(perm)
    for out_axis, in_axis in enumerate(perm):
        source[in_axis] = index[out_axis]
    return element(node.inputs[0], source)


def broadcast_index(index: Sequence[Expr], shape: Sequence[int]) -> Sequence[Expr]:
    """numpy broadcasting read backwards: the position in `shape` that feeds `index`."""
    if isinstance(index, Unflattened) and index.shape == tuple(shape):
        return index  # nothing broadcast: keep the offset it was made from
    lead = len(index) - len(shape)
    return [i64(0) if size == 1 else index[lead + axis] for axis, size in enumerate(shape)]


def _expand(element: Element, node: Node, index: Sequence[Expr]) -> Expr:
    x = node.inputs[0]
    return element(x, broadcast_index(index, x.type.shape))


def _slice_axes(node: Node) -> list[tuple[int, int]]:
    """(start, step) per input axis, found by slicing an iota with the op's own reference, so
    the clamping and negative-index rules are the table's, not a second copy of them."""
    x = node.inputs[0]
    attrs = dict(node.attrs)
    axes = attrs["axes"] or tuple(range(len(attrs["starts"])))
    result = [(0, 1)] * x.type.rank
    for k, axis in enumerate(axes):
        axis %= x.type.rank
        size = x.type.shape[axis]
        picked = get_op("slice").reference(np.arange(size), starts=(attrs["starts"][k],), ends=(attrs["ends"][k],),
                                           axes=(0,), steps=(attrs["steps"][k] if attrs["steps"] else 1,))  # fmt: skip
        step = attrs["steps"][k] if attrs["steps"] else 1
        result[axis] = (int(picked[0]) if len(picked) else 0, step)
    return result


def _slice(element: Element, node: Node, index: Sequence[Expr]) -> Expr:
    source = [position * step + start if (start, step) != (0, 1) else position
              for position, (start, step) in zip(index, _slice_axes(node))]  # fmt: skip
    return element(node.inputs[0], source)


def _tile(element: Element, node: Node, index: Sequence[Expr]) -> Expr:
    x = node.inputs[0]
    source = [position if size == repeat_size else position % size
              for position, size, repeat_size in zip(index, x.type.shape, node.outputs[0].type.shape)]  # fmt: skip
    return element(x, source)


def _pad(element: Element, node: Node, index: Sequence[Expr]) -> Expr:
    """Crop first (negative pads), then pad what is left, as the reference does."""
    x = node.inputs[0]
    rank = x.type.rank
    pads, mode = node.attrs["pads"], node.attrs["mode"]
    source, inside = [], None
    for axis in range(rank):
        begin, end, size = pads[axis], pads[axis + rank], x.type.shape[axis]
        crop = max(-begin, 0)
        kept = size - crop - max(-end, 0)
        position = index[axis] - max(begin, 0) if begin > 0 else index[axis]
        if mode == "edge":
            position = position.max(i64(0)).min(i64(kept - 1))
        elif mode == "reflect":
            position = Select(position.lt(i64(0)), -position, position)
            position = Select(position.ge(i64(kept)), i64(2 * (kept - 1)) - position, position)
        elif begin > 0 or end > 0:
            valid = Binary("and", position.ge(i64(0)), position.lt(i64(kept)))
            inside = valid if inside is None else Binary("and", inside, valid)
            position = position.max(i64(0)).min(i64(max(kept - 1, 0)))  # a safe address where masked
        source.append(position + crop if crop else position)
    value = element(x, source)
    if inside is None:
        return value
    return Select(inside, value, const(node.attrs["value"], x.type.dtype))


def _concat(element: Element, node: Node, index: Sequence[Expr]) -> Expr:
    axis = node.attrs["axis"] % node.outputs[0].type.rank
    offsets = np.cumsum([0] + [v.type.shape[axis] for v in node.inputs])
    result = None
    for value, start in reversed(list(zip(node.inputs, offsets[:-1]))):
        source = list(index)
        source[axis] = index[axis] - int(start) if start else index[axis]
        part = element(value, source)
        result = part if result is None else Select(index[axis].lt(i64(int(start) + value.type.shape[axis])),
                                                     part, result)  # fmt: skip
    return result


def _wrapped(position: Expr, size: int) -> Expr:
    """A gathered index: negatives count from the end; out of range clamps (see the module doc)."""
    position = position.cast(DType.i64)
    position = Select(position.lt(i64(0)), position + size, position)
    return position.max(i64(0)).min(i64(size - 1))


def _gather(element: Element, node: Node, index: Sequence[Expr]) -> Expr:
    x, indices = node.inputs
    axis = node.attrs["axis"] % x.type.rank
    middle = index[axis : axis + indices.type.rank]
    picked = _wrapped(element(indices, middle), x.type.shape[axis])
    return element(x, [*index[:axis], picked, *index[axis + indices.type.rank :]])


def _gather_elements(element: Element, node: Node, index: Sequence[Expr]) -> Expr:
    x, indices = node.inputs
    axis = node.attrs["axis"] % x.type.rank
    source = list(index)
    source[axis] = _wrapped(element(indices, index), x.type.shape[axis])
    return element(x, source)


def _unpack_bytes(element: Element, node: Node, index: Sequence[Expr]) -> Expr:
    """Byte k % 4 of the word holding (k, n) (`ir.ops.quantization.unpack_bytes`), by i64 arithmetic
    (the kernel IR has no shifts): the word as unsigned, divided by 256^(k % 4), truncated to a byte.
    Only readers other than the int8 GEMM (which loads the words whole) come here."""
    (words,) = node.inputs
    width = words.type.shape[2]
    k, n = index
    word = element(words, [n // width if width > 1 else n, k // 4, n % width if width > 1 else i64(0)]).cast(DType.i64)
    unsigned = Select(word.lt(i64(0)), word + i64(1 << 32), word)
    q = k % 4
    place = Select(
        q.eq(i64(0)), i64(1), Select(q.eq(i64(1)), i64(1 << 8), Select(q.eq(i64(2)), i64(1 << 16), i64(1 << 24)))
    )
    return ((unsigned // place) % i64(256)).cast(node.outputs[0].type.dtype)


INDEXING: dict[str, Callable[[Element, Node, Sequence[Expr]], Expr]] = {
    "reshape": _same_order,
    "flatten": _same_order,
    "squeeze": _same_order,
    "unsqueeze": _same_order,
    "transpose": _transpose,
    "expand": _expand,
    "slice": _slice,
    "tile": _tile,
    "pad": _pad,
    "concat": _concat,
    "gather": _gather,
    "gather_elements": _gather_elements,
    "unpack_bytes": _unpack_bytes,
}


def split_element(element: Element, node: Node, output: int, index: Sequence[Expr]) -> Expr:
    """Output `output` of a split: its slice of the input along the axis."""
    axis = node.attrs["axis"] % node.inputs[0].type.rank
    start = sum(node.attrs["sizes"][:output])
    source = list(index)
    source[axis] = index[axis] + start if start else index[axis]
    return element(node.inputs[0], source)
