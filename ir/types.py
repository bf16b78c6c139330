"""Tensor types: a static shape and an element type.

Shapes are tuples of ints today. A dimension may later be a named symbol (`batch`), so code
that reads shapes should go through `numel`, `rank` and friends rather than assume ints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ir.dtype import DType

Shape = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TensorType:
    """The type of a value: `f32[32,1024]`; a scalar is `f32[]`."""

    shape: Shape
    dtype: DType

    def __post_init__(self) -> None:
        shape = tuple(self.shape)
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise ValueError(f"a shape holds non-negative ints, got {self.shape!r}")
        if not isinstance(self.dtype, DType):
            raise ValueError(f"a tensor type needs a DType, got {self.dtype!r}")
        object.__setattr__(self, "shape", shape)

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def with_shape(self, shape: Shape) -> TensorType:
        return TensorType(tuple(shape), self.dtype)

    def with_dtype(self, dtype: DType) -> TensorType:
        return TensorType(self.shape, dtype)

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"


def tensor_type_of(array) -> TensorType:
    """The type of a numpy array (or anything numpy can view as one)."""
    import numpy as np

    array = np.asarray(array)
    return TensorType(array.shape, DType.from_numpy(array.dtype))
