"""The pieces of the int8 kernels (`templates_quant`'s GEMM, `templates_quant_conv`'s convolution):
the `dot4_u8s8` kernel-IR call, which the LLVM backend emits as AVX-512 VNNI's `vpdpbusd` (64 byte
products summed into 16 i32 lanes per instruction) and as plain i32 arithmetic elsewhere; bytes packed
four to an i32 word; a panel of such words with its column sums; and the register tile of i32 sums
that multiplies words of a row (unsigned bytes, broadcast) by the panel's words (signed bytes, vectors).

`vpdpbusd` multiplies *unsigned* bytes by *signed* ones; each kernel picks which operand is the
unsigned side and takes the +128 shift that makes an i8 operand unsigned back through the other
operand's sums (see the kernels' docs). Every term is exact in i32 wrapping arithmetic, a ring, so
results equal the interpreter's i32 sums bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from backends.lowering.expr import const, i64
from backends.lowering.group import GroupLowering
from backends.lowering.templates_gemm import _column_parts as column_parts  # the f32 GEMM's column split
from ir import DType, Value
from ir.loop import Assign, Buffer, Call, Expr, For, Load, Ref, Stmt, Store

ONES = 0x01010101
"""Four bytes of 1: dot4_u8s8(acc, ONES, w) adds up the four signed bytes of w."""
_BYTE_PLACES = (1, 1 << 8, 1 << 16, 1 << 24)


def dot4(acc: Expr, a: Expr, b: Expr) -> Expr:
    return Call("dot4_u8s8", (acc, a, b), DType.i32)


def i32(value: int) -> Expr:
    return const(int(np.uint32(value & 0xFFFFFFFF).view(np.int32)), DType.i32)


def pack_bytes(unsigned_bytes: Sequence[Expr]) -> Expr:
    """Up to four i32 values in 0..255 as the bytes of one i32, the first the least significant (the
    sum wraps in i32 where the last byte is >= 128: the bits are the same)."""
    word = unsigned_bytes[0]
    for place, byte in zip(_BYTE_PLACES[1:], unsigned_bytes[1:]):
        word = word + byte * i32(place)
    return word


def unsigned_byte(element: Expr) -> Expr:
    """A byte of u8 or i8 storage as the i32 0..255 holding its bits (i8 reinterpreted, not shifted)."""
    return element.cast(DType.u8).cast(DType.i32)


def is_zero(lowering: GroupLowering, value: Value | None) -> bool:
    if value is None:
        return True
    node = lowering.producers.get(value)
    return node is not None and node.op == "const" and not np.any(lowering.body.constants[node.attrs["name"]])


def columns(lowering: GroupLowering, cols: int, body: Callable[[Expr], list[Stmt]]) -> list[Stmt]:
    """`body(jj)` for jj in 0 .. cols, in the parts of `templates_gemm.column_parts` (whole vectors of
    16k lanes, then 8 and 4: vpdpbusd on a ymm and an xmm register, then the rest serially)."""
    loops: list[Stmt] = []
    for start, width, kind in column_parts(cols):
        jj = lowering.var("jj")
        loops.append(For(jj, width, tuple(body(Ref(jj) + start if start else Ref(jj))), kind))
    return loops


def pack_words(lowering: GroupLowering, groups: int, tail: int, cols: int, word: Callable[[Expr, int, Expr], Expr],
               panel: Buffer | None, colsum: Buffer | None) -> list[Stmt]:  # fmt: skip
    """panel[g * cols + jj] = word(g, bytes, jj), the 4-byte group g of column jj (the last group
    holding `tail` bytes), for every group and column (unless the words are read where they are:
    no panel); and colsum[jj], the sum of the column's signed bytes, when asked."""
    statements: list[Stmt] = []
    if colsum is not None:
        statements += columns(lowering, cols, lambda jj: [Store(colsum, jj, i32(0))])

    def group(g: Expr, count: int) -> Callable[[Expr], list[Stmt]]:
        def body(jj: Expr) -> list[Stmt]:
            w = lowering.var("w", DType.i32)
            stores: list[Stmt] = [Assign(w, word(g, count, jj))]
            if panel is not None:
                stores.append(Store(panel, g * cols + jj, Ref(w)))
            if colsum is not None:
                stores.append(Store(colsum, jj, dot4(Load(colsum, jj), i32(ONES), Ref(w))))
            return stores

        return body

    if groups:
        g = lowering.var("g")
        statements.append(For(g, groups, tuple(columns(lowering, cols, group(Ref(g), 4)))))
    if tail:
        statements += columns(lowering, cols, group(i64(groups), tail))
    return statements


def dot4_tile(lowering: GroupLowering, rows: int, cols: int, groups: int, tail: int,
              a_word: Callable[[int, Expr, int], Expr], panel: Callable[[Expr, Expr], Expr],
              result: Callable[[int, Expr, Expr], list[Stmt]], unsigned_panel: bool = False) -> list[Stmt]:  # fmt: skip
    """A rows x cols tile of i32 sums: tile[r, jj] = sum over g of dot4_u8s8(a_word(r, g, bytes),
    panel(g, jj)) (u8 bytes of the row's word times s8 bytes of the panel's; the other way
    round with `unsigned_panel`), accumulated in a local tile that LLVM keeps in registers, then
    `result(r, jj, sum)`."""
    tile = lowering.scratch((rows * cols,), DType.i32)
    pair = (lambda a, b: (b, a)) if unsigned_panel else (lambda a, b: (a, b))
    z = lowering.var("z")
    statements: list[Stmt] = [For(z, rows * cols, (Store(tile, Ref(z), i32(0)),))]

    def step(g: Expr, count: int) -> list[Stmt]:
        body: list[Stmt] = []
        for r in range(rows):
            a = lowering.var(f"a{r}_", DType.i32)
            body.append(Assign(a, a_word(r, g, count)))
            body += columns(lowering, cols, lambda jj, r=r, a=a: [
                Store(tile, jj + r * cols, dot4(Load(tile, jj + r * cols), *pair(Ref(a), panel(g, jj))))
            ])  # fmt: skip
        return body

    if groups:
        g = lowering.var("g")
        statements.append(For(g, groups, tuple(step(Ref(g), 4))))
    if tail:
        statements += step(i64(groups), tail)
    for r in range(rows):
        statements += columns(lowering, cols, lambda jj, r=r: result(r, jj, Load(tile, jj + r * cols)))
    return statements


def shared_panel_tiles(row_tiles: int, panels: int, block_tiles: int) -> int:
    """Row tiles per block sharing one packed panel: all of them (up to 64) unless that leaves too
    few blocks for the threads (the rule of templates_gemm's gathered panels)."""
    shared = row_tiles if panels >= 8 else 16
    return min(row_tiles, max(block_tiles, min(shared, 64)))
