"""The lockstep interpreter's meaning of the vector accesses (`ir.loop.nodes.Call`): `vector_load`
(one element of an aligned vector of a global buffer) and `vector_store` (the value of a `Store`
that writes consecutive elements at once). `ir.loop.lockstep._Block` calls these with itself.

The device moves a vector with one 4-, 8- or 16-byte access, which faults unless its address is a
multiple of its size; so here a vector whose first index is not a multiple of its element count,
or that reaches past its buffer, fails the run (the schedule must prove alignment, not hope for
it). Elements are read and written through the block's race tracking like any other access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ir.loop.lockstep_tiles import _aligned, _write
from ir.loop.nodes import Buffer, Call, Const, Expr, Load, Scope

if TYPE_CHECKING:
    from ir.loop.lockstep import _Block

ACCESS_BYTES = (4, 8, 16)
"""The sizes of one vector access."""
VECTOR_CALLS = frozenset({"vector_load"})
"""The expression-like vector calls (`vector_store` is only ever a `Store`'s value)."""


def vector_load(block: _Block, expr: Call) -> np.ndarray:
    """`vector_load(src, elements, lane)` for the active threads: element `lane` of the vector."""
    src, elements, lane = expr.args
    count = int(elements.value) if isinstance(elements, Const) else 0
    if (not isinstance(src, Load) or src.buffer.scope is not Scope.GLOBAL or expr.dtype != src.dtype
            or count * src.dtype.itemsize not in ACCESS_BYTES or not isinstance(lane, Const)
            or not 0 <= int(lane.value) < count):  # fmt: skip
        raise block.fail(f"vector_load reads a lane (a constant below the element count) of a 4-, 8- or 16-byte "
                         f"vector of a global buffer, in its dtype: {expr!r}")  # fmt: skip
    lanes = np.flatnonzero(block.active)
    result = np.zeros(block.threads, src.dtype.numpy)
    if lanes.size:
        start = _aligned(block, src.buffer, block.addresses(src.buffer, src.index, lanes), count, lanes)
        result[lanes] = block.read_at(src.buffer, lanes, start + int(lane.value))
    return result


def vector_store(block: _Block, buffer: Buffer, index: Expr, vector: Call) -> None:
    """`Store(buffer, index, vector_store(x0, ..., xn-1))` for the active threads."""
    count = len(vector.args)
    if (buffer.scope is not Scope.GLOBAL or vector.dtype != buffer.dtype
            or any(x.dtype != buffer.dtype for x in vector.args)
            or count * buffer.dtype.itemsize not in ACCESS_BYTES):  # fmt: skip
        raise block.fail(f"vector_store writes 4, 8 or 16 bytes of elements of its buffer's dtype into a global "
                         f"buffer: {vector!r} into {buffer.name}")  # fmt: skip
    lanes = np.flatnonzero(block.active)
    if not lanes.size:
        return
    values = [block.full(block.eval(x))[lanes].astype(buffer.dtype.numpy) for x in vector.args]  # all, then write
    start = _aligned(block, buffer, block.addresses(buffer, index, lanes), count, lanes)
    for e, value in enumerate(values):
        _write(block, buffer, lanes, start + e, value)
