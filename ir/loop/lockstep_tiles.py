"""The lockstep interpreter's meaning of the tile-movement intrinsics (`ir.loop.nodes.Call`):
asynchronous copies from global to shared memory (`cp_async`, `cp_async_commit`,
`cp_async_wait`) and warp-collective fragment loads from shared memory (`ldmatrix_x4`,
`ldmatrix_x4_trans`) into packed registers, and the tensor-core MMA on such registers
(`mma_m16n8k16_f16x2`, `_bf16x2`); the TF32 intrinsics (`tf32_round`, `mma_m16n8k8_tf32`) are
`ir.loop.lockstep_tf32`'s, dispatched from here. `ir.loop.lockstep._Block` calls these with itself.

A `cp_async` reads its source when it is issued and lands (writes shared memory) only at a
`cp_async_wait` that covers its group, so a schedule that reads a tile without waiting for it
reads stale data and computes a wrong result here, as it might on the device. The shared write
is race-checked twice: at the issue (the device may write any time from then on, so a thread still
reading the slot without a barrier in between is a race) and when it lands (so a thread reading it
after the wait but before a barrier is one too). Both copies and fragment rows must be aligned as
the device requires (16-byte rows for ldmatrix; a copy of n bytes at a multiple of n), else the
interpreter fails as the device would fault.

`ldmatrix` follows the PTX ISA ("Warp-level matrix load instruction: ldmatrix"): lane l supplies
the address of row l % 8 of matrix l // 8 (8 contiguous 16-bit elements); its register j holds,
of matrix j, the elements at row l // 4, columns 2 (l % 4) and 2 (l % 4) + 1, the first in the low
half (with `.trans`, rows 2 (l % 4) and 2 (l % 4) + 1 of column l // 4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ir.dtype import DType
from ir.loop.lockstep_tf32 import TF32_CALLS, run_tf32_call
from ir.loop.nodes import WARP_SIZE, Buffer, Call, Const, Expr, Load, Scope

if TYPE_CHECKING:
    from ir.loop.lockstep import _Block

ASYNC_COPY_CALLS = frozenset({"cp_async_commit", "cp_async_wait"})
"""The statement-like calls of the asynchronous copy (`cp_async` itself is a `Store`'s value)."""
LDMATRIX_CALLS = {"ldmatrix_x4": False, "ldmatrix_x4_trans": True}
"""The fragment loads, and whether each transposes."""
ROW = 8
"""Elements of one ldmatrix row (16 bytes of 16-bit elements)."""


@dataclass
class AsyncCopy:
    """Copies issued by threads `lanes` (one row each of `at`, `values`) in their groups `group`."""

    buffer: Buffer
    lanes: np.ndarray
    at: np.ndarray
    values: np.ndarray
    group: np.ndarray


def async_copy(block: _Block, buffer: Buffer, index: Expr, copy: Call) -> None:
    """`Store(buffer, index, cp_async(src, elements, valid))` for the active threads."""
    src, elements, valid = copy.args
    count = int(elements.value) if isinstance(elements, Const) else 0
    if (buffer.scope is not Scope.SHARED or not isinstance(src, Load) or src.buffer.scope is not Scope.GLOBAL
            or src.buffer.dtype != buffer.dtype or count * buffer.dtype.itemsize not in (4, 8, 16)
            or valid.dtype != DType.bool):  # fmt: skip
        raise block.fail(f"cp_async copies 4, 8 or 16 bytes from a global buffer into a shared one of the same "
                         f"dtype, with a bool validity: {copy!r} into {buffer.name}")  # fmt: skip
    lanes = np.flatnonzero(block.active)
    at = _aligned(block, buffer, block.addresses(buffer, index, lanes), count, lanes)
    ok = block.full(block.eval(valid)).astype(bool)
    values = np.zeros((lanes.size, count), buffer.dtype.numpy)  # zero-filled where not valid
    outer = block.active
    block.active = outer & ok
    reading = np.flatnonzero(block.active)
    if reading.size:
        start = _aligned(block, src.buffer, block.addresses(src.buffer, src.index, reading), count, reading)
        rows = np.searchsorted(lanes, reading)
        for e in range(count):
            values[rows, e] = block.read_at(src.buffer, reading, start + e)
    block.active = outer
    destination = at[:, None] + np.arange(count)
    for e in range(count):
        _write(block, buffer, lanes, destination[:, e], None)
    block.copies.append(AsyncCopy(buffer, lanes, destination, values, block.commits[lanes].copy()))


def run_tile_call(block: _Block, expr: Call) -> np.ndarray:
    if expr.name in LDMATRIX_CALLS:
        return _ldmatrix(block, expr)
    if expr.name in PACKED_MMA:
        return _packed_mma(block, expr)
    if expr.name in TF32_CALLS:
        return run_tf32_call(block, expr)
    lanes = np.flatnonzero(block.active)
    if expr.name == "cp_async_commit":
        block.commits[lanes] += 1
    else:
        (pending,) = expr.args
        if not isinstance(pending, Const):
            raise block.fail("cp_async_wait takes a constant count of groups left in flight")
        _land(block, lanes, int(pending.value))
    return np.zeros(block.threads, np.int32)


def _land(block: _Block, lanes: np.ndarray, pending: int) -> None:
    """Land the copies of threads `lanes` in all their committed groups but the newest `pending`."""
    waiting = np.zeros(block.threads, bool)
    waiting[lanes] = True
    kept = []
    for copy in block.copies:
        due = waiting[copy.lanes] & (copy.group < block.commits[copy.lanes] - pending)
        if due.any():
            for e in range(copy.at.shape[1]):
                _write(block, copy.buffer, copy.lanes[due], copy.at[due, e], copy.values[due, e])
        if not due.all():
            kept.append(AsyncCopy(copy.buffer, copy.lanes[~due], copy.at[~due], copy.values[~due], copy.group[~due]))
    block.copies = kept


def _write(block: _Block, buffer: Buffer, lanes: np.ndarray, at: np.ndarray, values: np.ndarray | None) -> None:
    """A race-checked write of `values` by threads `lanes` (None: checked and recorded only)."""
    tracker = block.trackers.get(buffer)
    if tracker is not None:
        thread = block.id * block.threads + lanes
        clash = tracker.unordered_write(at, thread, block.id, block.epoch)
        clash |= tracker.unordered_read(at, thread, block.id, block.epoch)
        if clash.any():
            block.race(buffer, at, lanes, clash, "writes (cp_async)")
        tracker.wrote(at, thread, block.id, block.epoch)
    if values is not None:
        block.memory[buffer][at] = values


def _aligned(block: _Block, buffer: Buffer, at: np.ndarray, count: int, lanes: np.ndarray) -> np.ndarray:
    wrong = (at % count != 0) | (at + count > buffer.size)
    if wrong.any():
        first = int(np.flatnonzero(wrong)[0])
        raise block.fail(f"{count} elements at {int(at[first])} of {buffer.name}[{buffer.size}] are not a whole "
                         f"aligned vector ({block.where(lanes[first])}); the device faults")  # fmt: skip
    return at


def _ldmatrix(block: _Block, expr: Call) -> np.ndarray:
    row, index = expr.args
    if (not isinstance(row, Load) or row.buffer.scope is not Scope.SHARED
            or row.buffer.dtype not in (DType.f16, DType.bf16) or expr.dtype != DType.i32
            or not isinstance(index, Const) or not 0 <= int(index.value) < 4):  # fmt: skip
        raise block.fail(f"{expr.name} takes a row (a Load of a shared f16/bf16 buffer) and a constant register "
                         f"0..3, and gives i32: {expr!r}")  # fmt: skip
    block.whole_warps(expr.name)
    lanes = np.flatnonzero(block.active)
    starts = np.zeros(block.threads, np.int64)
    starts[lanes] = _aligned(block, row.buffer, block.addresses(row.buffer, row.index, lanes), ROW, lanes)
    lane = lanes % WARP_SIZE
    first = lanes - lane + ROW * int(index.value)  # the lane that supplies row 0 of the matrix
    halves = []
    for half in range(2):
        if LDMATRIX_CALLS[expr.name]:  # transposed: rows 2 (l % 4) + half, column l // 4
            at = starts[first + 2 * (lane % 4) + half] + lane // 4
        else:  # row l // 4, column 2 (l % 4) + half
            at = starts[first + lane // 4] + 2 * (lane % 4) + half
        halves.append(block.read_at(row.buffer, lanes, at).view(np.uint16).astype(np.uint32))
    result = np.zeros(block.threads, np.int32)
    result[lanes] = (halves[0] | halves[1] << 16).view(np.int32)
    return result


def _unpack(registers: np.ndarray, dtype: DType) -> tuple[np.ndarray, np.ndarray]:
    """The two 16-bit elements of i32 `registers` (low half first), as float32."""
    bits = registers.astype(np.int32).view(np.uint32)
    return tuple((bits >> shift & 0xFFFF).astype(np.uint16).view(dtype.numpy).astype(np.float32) for shift in (0, 16))


def _packed_mma(block: _Block, expr: Call) -> np.ndarray:
    """`mma_m16n8k16_*x2`: the MMA of `ir.loop.lockstep`, with A and B in packed registers."""
    from ir.loop.lockstep import A_FRAGMENT, B_FRAGMENT, C_FRAGMENT

    *fragments, index = expr.args
    dtypes = [a.dtype for a in fragments]
    if dtypes != [DType.i32] * 6 + [DType.f32] * 4 or not isinstance(index, Const) or not 0 <= int(index.value) < 4:
        raise block.fail(f"{expr.name} takes 4 A and 2 B registers (i32), 4 C elements (f32) and a constant index "
                         f"0..3 of D; got {dtypes}")  # fmt: skip
    block.whole_warps(expr.name)
    operand = PACKED_MMA[expr.name]
    values = [block.full(block.eval(a)) for a in fragments]
    elements = [half for register in values[:6] for half in _unpack(register, operand)]
    elements += [v.astype(np.float32) for v in values[6:]]
    warps = block.threads // WARP_SIZE
    a, b, c = (
        np.zeros((warps, 16, 16), np.float32),
        np.zeros((warps, 16, 8), np.float32),
        np.zeros((warps, 16, 8), np.float32),
    )
    lanes, held = np.arange(WARP_SIZE), iter(elements)
    for matrix, layout in ((a, A_FRAGMENT), (b, B_FRAGMENT), (c, C_FRAGMENT)):
        for place in layout:
            rows, columns = place(lanes)
            matrix[:, rows, columns] = next(held).reshape(-1, WARP_SIZE)
    d = c.copy()
    with np.errstate(all="ignore"):
        for k in range(16):  # exact products, one f32 rounding per step, in k order (as ir.loop.lockstep)
            d = d + a[:, :, k, None] * b[:, None, k, :]
    rows, columns = C_FRAGMENT[int(index.value)](lanes)
    return d[:, rows, columns].reshape(-1)


PACKED_MMA = {"mma_m16n8k16_f16x2": DType.f16, "mma_m16n8k16_bf16x2": DType.bf16}
"""The tensor-core `Call`s on packed registers and the dtype of their A and B elements."""
TILE_CALLS = ASYNC_COPY_CALLS | LDMATRIX_CALLS.keys() | PACKED_MMA.keys() | TF32_CALLS
"""Every call `run_tile_call` takes."""
