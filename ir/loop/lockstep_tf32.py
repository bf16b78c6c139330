"""The TF32 tensor-core intrinsics in the lockstep interpreter (`ir.loop.lockstep`, through
`ir.loop.lockstep_tiles.run_tile_call`): `tf32_round` and `mma_m16n8k8_tf32`, what an f32 GEMM
runs on when the user allows TF32 (`backends.cuda.templates_gpu_tf32`).

- `tf32_round(x)` (f32 -> f32, per lane): x rounded to TF32, the f32 format cut to 10 explicit
  mantissa bits (the 13 low bits zero), to nearest with ties away from zero: PTX's
  `cvt.rna.tf32.f32`. Overflow gives the infinity of x's sign; a NaN stays a NaN (the quiet NaN of
  its sign, as the CUDA prelude's twin gives).
- `mma_m16n8k8_tf32(a0..a3, b0, b1, c0..c3, index)` (f32, warp-collective): D = A B + C with A
  16 x 8 and B 8 x 8 of TF32 values, C and D 16 x 8 f32, each lane holding its fragments by the PTX
  ISA's layout for m16n8k8 with .tf32 operands (group = lane / 4, quad = lane % 4): a0..a3 A's
  (group, quad), (group + 8, quad), (group, quad + 4), (group + 8, quad + 4); b0, b1 B's (quad,
  group), (quad + 4, group); c0..c3 C's (group, 2 quad), (group, 2 quad + 1) and those rows + 8.
  The value is element `index` of the lane's D fragment. A and B must hold TF32 values (as
  `tf32_round` gives): the device reads only their upper 19 bits, so an operand with any of the 13
  low bits set means a schedule that forgot to round, and the interpreter reports it. Products of
  TF32 values are exact in f32; they are accumulated into C in k order, one f32 rounding per step
  (the device's order and internal precision are its own: tests allow for both).

The layouts here are written from the PTX ISA's table independently of the CUDA prelude's host
twin (`backends/cuda/prelude.h`, "TF32 tensor cores"), so a fragment placed wrongly by either is
a wrong product against the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ir.dtype import DType
from ir.loop.nodes import WARP_SIZE, Call, Const

if TYPE_CHECKING:
    from ir.loop.lockstep import _Block

TF32_CALLS = frozenset({"tf32_round", "mma_m16n8k8_tf32"})
"""The TF32 intrinsics `run_tf32_call` takes."""
LOW_BITS = np.uint32(0x1FFF)
"""The 13 mantissa bits of an f32 that TF32 drops."""

Place = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def tf32_round(x: np.ndarray) -> np.ndarray:
    """f32 `x` rounded to TF32 (nearest, ties away from zero), as f32 (see the module doc)."""
    bits = np.asarray(x, np.float32).view(np.uint32)
    # Adding half of the lowest kept bit to the magnitude carries into the kept bits exactly when
    # the dropped part is at least half of it: ties round away from zero; a carry out of the
    # mantissa raises the exponent, past the largest finite value to infinity.
    with np.errstate(over="ignore"):
        rounded = (bits + np.uint32(0x1000)) & ~LOW_BITS
    quiet_nan = (bits & np.uint32(0x80000000)) | np.uint32(0x7FC00000)
    return np.where(np.isnan(x), quiet_nan, rounded).astype(np.uint32).view(np.float32)


def _lane_place(row: Callable[[np.ndarray, np.ndarray], np.ndarray],
                column: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Place:  # fmt: skip
    return lambda lane: (row(lane >> 2, lane % 4), column(lane >> 2, lane % 4))


A_FRAGMENT: tuple[Place, ...] = tuple(
    _lane_place(lambda g, q, i=i: g + 8 * (i & 1), lambda g, q, i=i: q + 4 * (i >> 1)) for i in range(4)
)
"""a0..a3 of the 16 x 8 A: rows group (+8 for a1, a3), columns quad (+4 for a2, a3)."""
B_FRAGMENT: tuple[Place, ...] = tuple(_lane_place(lambda g, q, i=i: q + 4 * i, lambda g, q: g) for i in range(2))
"""b0, b1 of the 8 x 8 B: rows quad (+4 for b1), column group."""
C_FRAGMENT: tuple[Place, ...] = tuple(
    _lane_place(lambda g, q, i=i: g + 8 * (i >> 1), lambda g, q, i=i: 2 * q + (i & 1)) for i in range(4)
)
"""c0..c3 (and D) of the 16 x 8 C: rows group (+8 for c2, c3), columns 2 quad + (index & 1)."""


def run_tf32_call(block: _Block, expr: Call) -> np.ndarray:
    """The value of the TF32 intrinsic `expr` over the block's threads."""
    if expr.name == "tf32_round":
        if len(expr.args) != 1 or expr.args[0].dtype != DType.f32 or expr.dtype != DType.f32:
            raise block.fail(f"tf32_round takes and gives f32: {expr!r}")
        return tf32_round(block.full(block.eval(expr.args[0])).astype(np.float32))
    return _mma(block, expr)


def _mma(block: _Block, expr: Call) -> np.ndarray:
    *fragments, index = expr.args
    dtypes = [a.dtype for a in fragments]
    if (dtypes != [DType.f32] * 10 or expr.dtype != DType.f32 or not isinstance(index, Const)
            or not 0 <= int(index.value) < 4):  # fmt: skip
        raise block.fail(f"{expr.name} takes 4 A and 2 B elements (TF32 values in f32), 4 C elements (f32) and a "
                         f"constant index 0..3 of D, and gives f32; got {dtypes}")  # fmt: skip
    block.whole_warps(expr.name)
    values = [block.full(block.eval(a)).astype(np.float32) for a in fragments]
    for position, value in enumerate(values[:6]):
        unrounded = (value.view(np.uint32) & LOW_BITS) != 0
        if (unrounded & block.active).any():
            thread = int(np.flatnonzero(unrounded & block.active)[0])
            operand = f"a{position}" if position < 4 else f"b{position - 4}"
            raise block.fail(f"{expr.name}: operand {operand} of thread {thread} is {value[thread]!r}, not a TF32 "
                             f"value (round it with tf32_round: the device reads only its upper 19 bits)")  # fmt: skip
    warps, lanes = block.threads // WARP_SIZE, np.arange(WARP_SIZE)
    a, b, c = (np.zeros((warps, 16, 8), np.float32), np.zeros((warps, 8, 8), np.float32),
               np.zeros((warps, 16, 8), np.float32))  # fmt: skip
    held = iter(values)
    for matrix, layout in ((a, A_FRAGMENT), (b, B_FRAGMENT), (c, C_FRAGMENT)):
        for place in layout:
            rows, columns = place(lanes)
            matrix[:, rows, columns] = next(held).reshape(-1, WARP_SIZE)
    d = c.copy()
    with np.errstate(all="ignore"):
        for k in range(8):  # products of TF32 values are exact in f32; one rounding per step, in k order
            d = d + a[:, :, k, None] * b[:, None, k, :]
    rows, columns = C_FRAGMENT[int(index.value)](lanes)
    return d[:, rows, columns].reshape(-1)
