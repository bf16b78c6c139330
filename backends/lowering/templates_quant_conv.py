"""The int8 convolution: `conv_integer` as an implicit GEMM on the `dot4_u8s8` tile (VNNI's
`vpdpbusd`), with the window gather, the row tiles and the write-back of the f32 convolution
(`templates_conv.implicit_gemm`) and the int8 GEMM's pieces (`int8_kernel`).

Per image and group, y[m, p] = sum over k of w[m, k] * x(k, p), k = (channel, tap) as in
`templates_conv`. A is the weight (rows: output channels, a word of 4 taps broadcast per row), B the
input's im2col panel (columns: output pixels, vectors). `vpdpbusd` wants one side unsigned, and here
that is the weight, shifted by +128, because its compensation is then a sum over the *panel*, which
each block computes once for all its row tiles, while a shifted activation would need each weight
row's sum, per row tile:

    sum_k w[m, k] * x[k, p]  =  sum_k (w[m, k] + 128) * x[k, p]  -  128 * colsum(x)[p]

The loop nest (`panels.panel_blocks`): per block, the panel's bytes are gathered exactly as the f32
convolution gathers its floats (padding taps read 0), packed four taps to a word with the column sums,
and each row tile of the block runs `int8_kernel.dot4_tile` on it, writing
tile - 128 * colsum through the group's epilogue (the dequantizing multiply, bias, activation).

A u8 x (static quantization: `passes.quantize_conv` folds the zero point away at compile time) is
`vpdpbusd`'s unsigned side as it is, and needs no compensation: the panel's words are the unsigned
operand and the weight's the signed one.

Taken by this tile: i8 w and i8 or u8 x, without zero points (or zero ones), which is what
`passes.quantize` makes. Other forms (u8 weights, zero points) take an i32 implicit GEMM on
`templates_gemm`'s micro-kernel with the zero points subtracted as the operands are read: exact,
without VNNI.
"""

from __future__ import annotations

from collections.abc import Sequence

from backends.lowering.expr import const, unflatten
from backends.lowering.group import GroupLowering
from backends.lowering.indexing import broadcast_index
from backends.lowering.int8_kernel import (
    dot4_tile,
    i32,
    is_zero,
    pack_bytes,
    pack_words,
    shared_panel_tiles,
    unsigned_byte,
)
from backends.lowering.panels import Blocking, TileAt, panel_blocks
from backends.lowering.templates_conv import implicit_gemm
from backends.lowering.templates_gemm import MAX_VECTOR_LANES, Contraction, contraction_loops, tile_chooser
from ir import DType, Node, Value
from ir.loop import Expr, Load, Stmt

SHIFT = 128
"""What makes an i8 weight byte unsigned (and what the panel's column sums are multiplied by)."""


def conv_integer(lowering: GroupLowering, node: Node) -> list[Stmt]:
    """`conv_integer`: the VNNI tile for i8 weights without zero points, else the i32 implicit GEMM."""
    w, *points = node.inputs[1:]
    x_point, w_point = [*points, None, None][:2]
    if w.type.dtype == DType.i8 and is_zero(lowering, x_point) and is_zero(lowering, w_point):
        return _vnni(lowering, node)
    return _i32(lowering, node, x_point, w_point)


def _i32(lowering: GroupLowering, node: Node, x_point: Value | None, w_point: Value | None) -> list[Stmt]:
    """(x - zx) conv (w - zw) with the differences taken in i32 as the operands are read."""
    x, w = node.inputs[:2]

    def centered(value: Value, point: Value | None, at: Sequence[Expr]) -> Expr:
        element = lowering.element(value, at).cast(DType.i32)
        if point is None:
            return element
        return element - lowering.element(point, broadcast_index(at, point.type.shape)).cast(DType.i32)

    parts = implicit_gemm(lowering, node, lambda at: centered(x, x_point, at), i32(0), DType.i32)

    def a(index: Sequence[Expr], i: Expr, k: Expr) -> Expr:
        return centered(w, w_point, unflatten(parts.weight_offset(index, i, k), w.type.shape))

    problem = Contraction(parts.shape, parts.batch_shape, a, lambda *_: i32(0), parts.write, parts.pack)
    return contraction_loops(lowering, problem)


def _vnni(lowering: GroupLowering, node: Node) -> list[Stmt]:
    """The module doc's loop nest; a u8 x is the unsigned side itself, with nothing to compensate."""
    x, w = node.inputs[:2]
    shift = x.type.dtype == DType.i8
    parts = implicit_gemm(lowering, node, lambda at: lowering.element(x, at), const(0, x.type.dtype), DType.i32)
    shape = parts.shape
    if not shape.batch * shape.m * shape.n:
        return []
    tiles = tile_chooser(shape)
    mr, nr = min(tiles.mr, shape.m), min(tiles.nr, shape.n, MAX_VECTOR_LANES)
    per_block = shared_panel_tiles(-(-shape.m // mr), shape.batch * -(-shape.n // nr), tiles.block_tiles)
    groups, tail = divmod(shape.k, 4)
    gathered = lowering.scratch((shape.k * nr,), x.type.dtype)
    panel = lowering.scratch(((groups + (tail > 0)) * nr,), DType.i32)
    colsum = lowering.scratch((nr,), DType.i32) if shift else None

    def panel_of(index: Sequence[Expr], j0: Expr, cols: int) -> tuple[list[Stmt], TileAt]:
        def word(g: Expr, count: int, jj: Expr) -> Expr:
            return pack_bytes([unsigned_byte(Load(gathered, (g * 4 + q) * cols + jj)) for q in range(count)])

        statements = parts.pack(index, j0, cols, gathered)
        statements += pack_words(lowering, groups, tail, cols, word, panel, colsum)

        def tile(i0: Expr, rows: int) -> list[Stmt]:
            rows_at = [i0 + r if r else i0 for r in range(rows)]

            def a_word(r: int, g: Expr, count: int) -> Expr:
                first = parts.weight_offset(index, rows_at[r], g * 4)
                taps = [lowering.element(w, unflatten(first + q if q else first, w.type.shape)) for q in range(count)]
                if not shift:
                    return pack_bytes([unsigned_byte(tap) for tap in taps])
                return pack_bytes([tap.cast(DType.i32) + i32(SHIFT) for tap in taps])

            def result(r: int, jj: Expr, value: Expr) -> list[Stmt]:
                if shift:
                    value = value - i32(SHIFT) * Load(colsum, jj)
                return parts.write(index, rows_at[r], j0 + jj, value)

            words = lambda g, jj: Load(panel, g * cols + jj)
            return dot4_tile(lowering, rows, cols, groups, tail, a_word, words, result, unsigned_panel=not shift)

        return statements, tile

    return panel_blocks(lowering, Blocking(parts.batch_shape, shape.m, shape.n, mr, nr, per_block), panel_of)
