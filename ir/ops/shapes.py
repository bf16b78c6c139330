"""Helpers that type/shape rules share: broadcasting, axis normalisation, dtype checks.

Each raises `ShapeError` with a message that names the op and the offending types, so a rule
reads as a list of requirements.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ir.dtype import DType
from ir.errors import ShapeError
from ir.types import Shape, TensorType


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ShapeError(message)


def broadcast_shapes(op: str, *shapes: Shape) -> Shape:
    """numpy broadcasting: align right, a dimension of 1 stretches, others must agree."""
    rank = max((len(s) for s in shapes), default=0)
    result = []
    for axis in range(rank):
        dims = {s[len(s) - rank + axis] for s in shapes if len(s) - rank + axis >= 0}
        dims.discard(1)
        if len(dims) > 1:
            listed = " with ".join(f"[{','.join(map(str, s))}]" for s in shapes)
            raise ShapeError(f"{op}: cannot broadcast {listed} (axis {axis - rank} has sizes {sorted(dims)})")
        result.append(dims.pop() if dims else 1)
    return tuple(result)


def broadcasts_to(shape: Shape, target: Shape) -> bool:
    """Whether numpy broadcasting stretches `shape` to exactly `target` (an epilogue operand)."""
    return len(shape) <= len(target) and all(s in (1, t) for s, t in zip(reversed(shape), reversed(target)))


def same_dtype(op: str, *types: TensorType) -> DType:
    """The one dtype all `types` share; the IR never promotes implicitly (frontends cast)."""
    dtypes = {t.dtype for t in types}
    if len(dtypes) != 1:
        listed = ", ".join(str(t) for t in types)
        raise ShapeError(f"{op}: inputs must have one dtype, got {listed} (insert a cast)")
    return dtypes.pop()


def normalize_axis(op: str, axis: int, rank: int) -> int:
    """`axis` in [0, rank), counting negatives from the end."""
    if not -rank <= axis < rank:
        raise ShapeError(f"{op}: axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def normalize_axes(op: str, axes: Iterable[int], rank: int) -> tuple[int, ...]:
    """Sorted, non-negative, distinct axes."""
    result = [normalize_axis(op, a, rank) for a in axes]
    if len(set(result)) != len(result):
        raise ShapeError(f"{op}: repeated axis in {tuple(axes)}")
    return tuple(sorted(result))


def require_dtype(op: str, t: TensorType, allowed: Iterable[DType], what: str = "input") -> None:
    allowed = frozenset(allowed)
    if t.dtype not in allowed:
        names = ", ".join(sorted(d.value for d in allowed))
        raise ShapeError(f"{op}: {what} must be one of {names}, got {t}")


def require_rank(op: str, t: TensorType, ranks: Sequence[int] | int, what: str = "input") -> None:
    ranks = (ranks,) if isinstance(ranks, int) else tuple(ranks)
    if t.rank not in ranks:
        expected = " or ".join(str(r) for r in ranks)
        raise ShapeError(f"{op}: {what} must have rank {expected}, got {t}")


def same_type(t: TensorType, **_attrs: object) -> TensorType:
    """The rule of ops whose output has the type of their input, whatever their attributes."""
    return t
