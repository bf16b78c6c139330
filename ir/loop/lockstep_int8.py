"""The int8 tensor-core MMA in the lockstep interpreter (`ir.loop.lockstep`): `mma_m16n8k32_s8s8`
and `mma_m16n8k32_u8s8`, mma.sync m16n8k32 with s32 accumulators, A's bytes signed or unsigned,
B's signed. The lockstep interpreter hands each warp's lanes' operands here; this module assembles
the warp's A (16 x 32), B (32 x 8) and C (16 x 8) from them by the PTX ISA's fragment layout for
m16n8k32 with .s8/.u8 operands, independently of the CUDA prelude's twin, so a schedule that puts a
byte at the wrong place computes a wrong product here as it would on the device.

Operands are i32 words of four bytes, byte q (the q-th least significant) the element at k + q:
a0..a3 of A, b0 and b1 of B, c0..c3 of C, then `index`, a constant 0..3: the call's value is
element `index` of the lane's D = A B + C fragment. The sums wrap modulo 2^32 (no .satfinite),
which is the kernel IR's i32 arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ir.dtype import DType
from ir.loop.nodes import WARP_SIZE, Call, Const, Expr

MMA_INT8 = {"mma_m16n8k32_s8s8": DType.i8, "mma_m16n8k32_u8s8": DType.u8}
"""The warp-collective int8 tensor-core `Call`s and the dtype of A's bytes (B's are i8)."""

Place = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def _a_word(register: int, byte: int) -> Place:
    """A's word a<register>: row group (+8 for a1, a3), columns 4 quad + byte (+16 for a2, a3)."""
    return lambda lane: ((lane >> 2) + 8 * (register & 1), 4 * (lane % 4) + byte + 16 * (register >> 1))


def _b_word(register: int, byte: int) -> Place:
    """B's word b<register>: rows 4 quad + byte (+16 for b1), column group."""
    return lambda lane: (4 * (lane % 4) + byte + 16 * register, lane >> 2)


def _c_element(index: int) -> Place:
    """c<index> (and d): row group (+8 for c2, c3), column 2 quad + (index & 1)."""
    return lambda lane: ((lane >> 2) + 8 * (index >> 1), 2 * (lane % 4) + (index & 1))


A_WORDS = tuple(tuple(_a_word(r, q) for q in range(4)) for r in range(4))
"""Per A word, per byte: (row, column) of the warp's 16 x 32 A held there, by lane."""
B_WORDS = tuple(tuple(_b_word(r, q) for q in range(4)) for r in range(2))
"""Per B word, per byte: (row, column) of the warp's 32 x 8 B held there, by lane."""
C_ELEMENTS = tuple(_c_element(i) for i in range(4))


def _bytes(words: np.ndarray, byte: int, signed: bool) -> np.ndarray:
    unsigned = (words.astype(np.int64) >> (8 * byte)) & 0xFF
    return unsigned - ((unsigned & 0x80) << 1) if signed else unsigned


def mma_int8(call: Call, evaluate: Callable[[Expr], np.ndarray], fail: Callable[[str], Exception]) -> np.ndarray:
    """Element `index` of every lane's D fragment for the int8 MMA `call`; `evaluate` gives an
    operand's value over the block's threads (whole warps, every lane taking part), `fail` the
    interpreter's error for a malformed call."""
    *words, index = call.args
    if (
        len(words) != 10
        or any(w.dtype != DType.i32 for w in words)
        or not isinstance(index, Const)
        or not 0 <= int(index.value) < 4
    ):
        raise fail(f"{call.name} takes 10 i32 words (4 of A, 2 of B, 4 of C) and a constant index 0..3")
    signed_a = MMA_INT8[call.name] == DType.i8
    values = [np.asarray(evaluate(w)).astype(np.int32).reshape(-1, WARP_SIZE) for w in words]
    warps, lanes = values[0].shape[0], np.arange(WARP_SIZE)
    a, b, c = (
        np.zeros((warps, 16, 32), np.int64),
        np.zeros((warps, 32, 8), np.int64),
        np.zeros((warps, 16, 8), np.int64),
    )
    for held, matrix, layout, signed in ((values[:4], a, A_WORDS, signed_a), (values[4:6], b, B_WORDS, True)):
        for word, places in zip(held, layout):
            for byte, place in enumerate(places):
                rows, columns = place(lanes)
                matrix[:, rows, columns] = _bytes(word, byte, signed)
    for word, place in zip(values[6:], C_ELEMENTS):
        rows, columns = place(lanes)
        c[:, rows, columns] = word
    d = c + np.einsum("wik,wkj->wij", a, b)  # exact in i64 (|sum| < 2^31 + 32 * 2^15); wraps below
    rows, columns = C_ELEMENTS[int(index.value)](lanes)
    return (d[:, rows, columns].reshape(-1) & 0xFFFFFFFF).astype(np.uint32).view(np.int32)
