"""Small helpers for building kernel-IR expressions during lowering: constants of a dtype,
row-major flat indices, and fresh names."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from ir import DType
from ir.loop import Const, Expr


def i64(value: int) -> Const:
    return Const(int(value), DType.i64)


def const(value: float | int | bool, dtype: DType) -> Const:
    if dtype == DType.bool:
        return Const(bool(value), dtype)
    return Const(int(value) if dtype.is_integer else float(value), dtype)


class Unflattened(list):
    """A multi-index that `unflatten` made from an offset: flattening it again in the same shape
    gives that offset back, so a read through a reshape costs no division, and two positions
    reached through reshapes compare equal when their offsets do."""

    def __init__(self, index: Sequence[Expr], offset: Expr, shape: Sequence[int]) -> None:
        super().__init__(index)
        self.offset = offset
        self.shape = tuple(shape)


def flat_index(index: Sequence[Expr], shape: Sequence[int]) -> Expr:
    """The row-major offset of `index` in a tensor of `shape` (dimensions of size 1 add nothing)."""
    if isinstance(index, Unflattened) and index.shape == tuple(shape) and math.prod(shape) != 1:
        return index.offset  # (a one-element tensor's offset is 0, whatever expression carried it)
    offset: Expr | None = None
    stride = 1
    for position, size in reversed(list(zip(index, shape))):
        if size != 1:
            term = position if stride == 1 else position * stride
            offset = term if offset is None else term + offset
        stride *= size
    return offset if offset is not None else i64(0)


def unflatten(offset: Expr, shape: Sequence[int]) -> Unflattened:
    """The multi-index of row-major `offset` (which is below the tensor's size) in `shape`."""
    strides, stride = [], 1
    for size in reversed(shape):
        strides.append(stride)
        stride *= size
    strides.reverse()
    index: list[Expr] = []
    for axis, (size, step) in enumerate(zip(shape, strides)):
        if size == 1:
            index.append(i64(0))
            continue
        position = offset if step == 1 else offset // step
        outermost = all(s == 1 for s in shape[:axis])  # nothing above it, so no wrap-around
        index.append(position if outermost else position % size)
    return Unflattened(index, offset, shape)


class Names:
    """Fresh identifiers for variables and buffers of one kernel."""

    def __init__(self) -> None:
        self._counters: dict[str, itertools.count] = {}

    def fresh(self, stem: str) -> str:
        counter = self._counters.setdefault(stem, itertools.count())
        return f"{stem}{next(counter)}"
