"""The drawing state that op samplers (`ir.testing.operands`) work with while the graph strategy
(`ir.testing.strategies`) draws one graph: hypothesis' `draw`, the builder, the pool of values
built so far, and small draws over them (an axis, a subset, an operand that fits, a constant).

Also the generic sampler, which draws an op from its table entry alone: an elementwise or
broadcasting op needs only operands of one of its dtypes whose shapes broadcast, and attributes
with `choices`, bools, dtypes and optional floats can be drawn from their declaration.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st

from ir.attributes import REQUIRED, Attr, AttrKind
from ir.builder import GraphBuilder
from ir.dtype import DType
from ir.graph import Value
from ir.ops import OpDef
from ir.types import Shape, TensorType


class Skip(Exception):
    """The op cannot be applied to anything drawn so far; the strategy draws another op."""


def broadcastable(*shapes: Shape) -> bool:
    aligned = itertools.zip_longest(*(reversed(s) for s in shapes), fillvalue=1)  # numpy aligns shapes right
    return all(len(set(dims) - {1}) <= 1 for dims in aligned)


def data_array(rng: np.random.Generator, shape: Shape, dtype: DType) -> np.ndarray:
    """Values in a modest range, so that exp and pow stay finite: floats in [-3, 3], ints in [-5, 5]."""
    if dtype == DType.bool:
        return rng.random(shape) < 0.5
    if dtype.is_float:
        return rng.uniform(-3, 3, shape).astype(dtype.numpy)
    low = 0 if not dtype.is_signed else -5
    return rng.integers(low, 6, shape).astype(dtype.numpy)


@dataclass
class Drawing:
    """The state a sampler sees while one graph is drawn: hypothesis' `draw`, the builder, and
    the pool of values that later nodes may read."""

    draw: Callable[[st.SearchStrategy], Any]
    builder: GraphBuilder
    pool: list[Value]
    dtypes: frozenset[DType]
    max_dim: int
    rng: np.random.Generator
    constants: bool = True
    """Whether new constants may be made (operands that no value fits, weights, indices)."""

    # -- small draws -----------------------------------------------------------------------

    def integer(self, low: int, high: int) -> int:
        return self.draw(st.integers(low, high))

    def boolean(self) -> bool:
        return self.draw(st.booleans())

    def choice(self, options: Iterable[Any]) -> Any:
        options = list(options)
        if not options:
            raise Skip
        return self.draw(st.sampled_from(options))

    def axis(self, rank: int) -> int:
        """An axis of a tensor of `rank`, sometimes counted from the end."""
        if rank == 0:
            raise Skip
        axis = self.integer(0, rank - 1)
        return axis - rank if self.boolean() else axis

    def subset(self, items: Iterable[Any], min_size: int = 0, max_size: int | None = None) -> list[Any]:
        """Distinct items, in their order."""
        items = list(items)
        if len(items) < min_size:
            raise Skip
        if not items:
            return []
        drawn = self.draw(st.lists(st.sampled_from(items), min_size=min_size, max_size=max_size, unique=True))
        return sorted(drawn, key=items.index)

    # -- operands --------------------------------------------------------------------------

    def pick(
        self,
        dtypes: Iterable[DType] | None = None,
        *,
        min_rank: int = 0,
        max_rank: int = 99,
        where: Callable[[Value], bool] | None = None,
        fallback: Shape | None = None,
    ) -> Value:
        """A value built so far, the most recent ones first so that shrinking makes chains; if
        none fits and `fallback` is given, a new constant of that shape and an allowed dtype."""
        allowed = self.dtypes if dtypes is None else frozenset(dtypes) & self.dtypes
        candidates = [
            v
            for v in reversed(self.pool)
            if v.type.dtype in allowed and min_rank <= v.type.rank <= max_rank and (where is None or where(v))
        ]
        if candidates or fallback is None:
            return self.choice(candidates)
        # f32 first, so that shrinking goes there
        dtype = self.choice(sorted(allowed, key=lambda t: (t != DType.f32, t.value)))
        value = self.constant(fallback, dtype)
        self.pool.append(value)
        return value

    def some_shape(self) -> Shape:
        """The shape of a value built so far: a new operand of it broadcasts with the others."""
        return self.choice(self.pool).type.shape

    def spatial_shape(self) -> Shape:
        """A shape for an operand with batch, channel and 1 or 2 spatial axes (conv, pooling)."""
        return tuple(self.integer(1, self.max_dim) for _ in range(self.integer(3, 4)))

    def constant(self, shape: Shape, dtype: DType, name: str = "c") -> Value:
        """A new constant of data values; sometimes a splat (one value repeated)."""
        if math.prod(shape) > 1 and self.integer(0, 4) == 0:
            array = np.full(shape, data_array(self.rng, (), dtype), dtype=dtype.numpy)
        else:
            array = data_array(self.rng, shape, dtype)
        return self.array_constant(array, name)

    def array_constant(self, array: np.ndarray, name: str) -> Value:
        if not self.constants:
            raise Skip
        return self.builder.constant(array, name)

    def operand(self, shape: Shape, dtype: DType) -> Value:
        """A value of exactly this type: one built so far (shared) if there is one, else a constant."""
        wanted = TensorType(tuple(shape), dtype)
        matches = [v for v in self.pool if v.type == wanted]
        if matches and self.boolean():
            return self.choice(matches)
        return self.constant(wanted.shape, dtype)

    def indices(self, shape: Shape, size: int, negative: bool = True) -> Value:
        """An index constant (i64, sometimes i32) with entries in range for an axis of `size`."""
        low = -size if negative else 0
        dtype = DType.i64 if self.integer(0, 3) else DType.i32
        return self.array_constant(self.rng.integers(low, size, shape).astype(dtype.numpy), "indices")


Sampler = Callable[[Drawing, OpDef], tuple[list[Value], dict[str, Any]]]

_FLOATS = (0.5, -1.0, 2.0, 0.0)


def draw_attribute(d: Drawing, attr: Attr) -> Any:
    """A value for an attribute that its declaration alone constrains; `Skip` for required ones it does not."""
    if attr.choices is not None:
        return d.choice(attr.choices)
    if attr.kind == AttrKind.BOOL:
        return d.boolean()
    if attr.kind == AttrKind.DTYPE:
        return d.choice(sorted(d.dtypes, key=lambda t: t.value))
    if attr.kind == AttrKind.FLOAT and (attr.optional or attr.default is None):
        return d.draw(st.none() | st.sampled_from(_FLOATS))
    if attr.default is REQUIRED:
        raise Skip
    return attr.default


def sample_generic(d: Drawing, op: OpDef) -> tuple[list[Value], dict[str, Any]]:
    """Operands of one dtype whose shapes broadcast together, and attributes drawn from their declarations."""
    first = d.pick(op.dtypes, fallback=d.some_shape())
    inputs = [first]
    names = op.inputs[1:] if not op.variadic else ("*",) * d.integer(0, 2)
    for name in names:
        if name.endswith("?") and not d.boolean():
            break
        shapes = [v.type.shape for v in inputs]
        inputs.append(d.pick({first.type.dtype}, where=lambda v, shapes=shapes: broadcastable(*shapes, v.type.shape)))
    return inputs, {a.name: draw_attribute(d, a) for a in op.attrs}
