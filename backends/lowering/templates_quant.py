"""The int8 GEMM: `matmul_integer` (u8 or s8 activations x s8 weights, i32 result) on the `dot4_u8s8`
kernel-IR call, which the LLVM backend emits as AVX-512 VNNI's `vpdpbusd` (64 byte products summed
into 16 i32 lanes per instruction) and as plain i32 arithmetic elsewhere.

`matmul_integer` is a composite op: lowering sees its decomposition, an i32 `matmul` of operands
widened from bytes (`cast(x, i32)`, minus `cast(zero_point, i32)`). This module's `matmul` template
recognises that form and otherwise hands the node to the ordinary GEMM (`templates_gemm`), so it
must follow `TEMPLATES_GEMM` in the `TEMPLATES` table. Recognised: A of rank >= 2 (leading axes
flattened into rows) in u8 or i8 with a zero point that is constant along K (per tensor or per
row); B a 2-D i8 operand without a zero point (or a zero one), which is what `passes.quantize`
makes. Anything else (u8 weights, per-column weight zero points, batched B) takes the i32 GEMM.

`vpdpbusd` multiplies *unsigned* bytes of one operand by *signed* bytes of the other. A is the
unsigned side: an i8 activation is shifted by +128 into u8 and the shift taken back with B's column
sums, together with A's zero point z (per row):

    sum_k (a - z) * b  =  sum_k a' * b  -  z' * colsum(b)     a' = a + 128, z' = z + 128 for i8 a
                                                               a' = a,       z' = z       for u8 a

Every term is exact in i32 wrapping arithmetic, which is a ring, so the result equals the
interpreter's i32 matmul bit for bit (both are the true sum modulo 2^32).

The loop nest (`panels.panel_blocks`, the one the f32 GEMM runs too; tiles from
`templates_gemm.tile_chooser`; the tile is `int8_kernel.dot4_tile`, shared with the int8 conv):

    for t in 0 .. col_panels * row_blocks:
        panel[g, jj] = the 4 bytes b[4g .. 4g+3, j0 + jj] as one i32 (little-endian)  # unless packed
        colsum[jj]   = dot4_u8s8(colsum[jj], 0x01010101, panel[g, jj]) summed over g (when needed)
        for each row tile of the block:
            tile = 0
            for g in 0 .. K/4:
                a_r = the 4 bytes a'[i0 + r, 4g .. 4g+3] as one i32             (a broadcast per row)
                vectorized jj: tile[r, jj] = dot4_u8s8(tile[r, jj], a_r, panel[g, jj])
            vectorized jj: out[i0 + r, j0 + jj] = epilogue(tile[r, jj] - z'_r * colsum[jj])

K % 4 trailing bytes form one more group whose missing bytes are zeros. A constant B is packed at
compile time (`passes.layout.pack_int8_weights`: `matmul_integer{packed_columns=N}` of i32 words in
panels of 64 columns, which its decomposition unpacks with `unpack_bytes`): the words are then read
where they are stored and only the column sums (K/4 x NR per block) remain; a B that is not a packed
constant (or whose panels are not a whole number of this schedule's) is packed once per block.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

from backends.lowering.expr import i64, unflatten
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
from backends.lowering.templates_gemm import MAX_VECTOR_LANES, TEMPLATES_GEMM, GemmShape, tile_chooser
from backends.lowering.templates_quant_conv import conv_integer
from ir import DType, Node, Value
from ir.loop import Expr, Load, Stmt

# -- recognising the decomposition ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Operand:
    value: Value
    """The bytes (u8 or i8) the i32 operand widens."""
    zero_point: Value | None


def _widened(lowering: GroupLowering, value: Value) -> _Operand | None:
    """`value` as cast(x, i32) or cast(x, i32) - cast(z, i32) with x, z bytes; None otherwise."""

    def byte_source(v: Value) -> Value | None:
        node = lowering.producers.get(v)
        if node is None or node.op != "cast" or v.type.dtype != DType.i32:
            return None
        source = node.inputs[0]
        return source if source.type.dtype in (DType.i8, DType.u8) else None

    direct = byte_source(value)
    if direct is not None:
        return _Operand(direct, None)
    node = lowering.producers.get(value)
    if node is None or node.op != "sub":
        return None
    x, z = (byte_source(v) for v in node.inputs)
    if x is None or z is None or x.type.dtype != z.type.dtype:
        return None
    return _Operand(x, z)


def _int8_operands(lowering: GroupLowering, node: Node) -> tuple[_Operand, _Operand] | None:
    a, b = node.inputs
    if node.output.type.dtype != DType.i32 or a.type.rank < 2 or b.type.rank != 2:
        return None
    left, right = _widened(lowering, a), _widened(lowering, b)
    if left is None or right is None or right.value.type.dtype != DType.i8 or not is_zero(lowering, right.zero_point):
        return None
    point = left.zero_point
    if point is not None and point.type.rank and point.type.shape[-1] != 1:
        return None  # a zero point that varies along K is no per-row correction
    return left, right


# -- the int8 GEMM -------------------------------------------------------------------------------


def _matmul(lowering: GroupLowering, node: Node) -> list[Stmt]:
    operands = _int8_operands(lowering, node)
    if operands is None:
        return TEMPLATES_GEMM["matmul"](lowering, node)
    return _Int8Gemm(lowering, node, *operands).loops()


class _Int8Gemm:
    def __init__(self, lowering: GroupLowering, node: Node, a: _Operand, b: _Operand) -> None:
        self.lowering, self.node, self.a, self.b = lowering, node, a, b
        (self.y,) = node.outputs
        self.lead = a.value.type.shape[:-1]
        self.m, self.k = math.prod(self.lead), a.value.type.shape[-1]
        self.n = b.value.type.shape[1]
        self.shift = a.value.type.dtype == DType.i8  # i8 activations become u8 by +128
        self.compensate = self.shift or a.zero_point is not None
        self.groups, self.tail = divmod(self.k, 4)

    # -- reading the operands ------------------------------------------------------------------

    def _row(self, row: Expr) -> list[Expr]:
        return list(unflatten(row, self.lead)) if len(self.lead) > 1 else [row]

    def a_word(self, row: Expr, first: Expr, count: int) -> Expr:
        """The bytes a'[row, first .. first + count - 1] as one i32."""
        at = self._row(row)
        elements = [self.lowering.element(self.a.value, [*at, first + q if q else first]) for q in range(count)]
        if self.shift:
            return pack_bytes([e.cast(DType.i32) + i32(128) for e in elements])
        return pack_bytes([unsigned_byte(e) for e in elements])

    def b_word(self, first: Expr, column: Expr, count: int) -> Expr:
        elements = [self.lowering.element(self.b.value, [first + q if q else first, column]) for q in range(count)]
        return pack_bytes([unsigned_byte(e) for e in elements])

    def zero_point(self, row: Expr) -> Expr:
        """z' of a row: A's zero point (+128 for i8 A), in i32."""
        shift = i32(128) if self.shift else None
        point = self.a.zero_point
        if point is None:
            return shift
        z = self.lowering.element(point, broadcast_index([*self._row(row), i64(0)], point.type.shape))
        return z.cast(DType.i32) + shift if shift is not None else z.cast(DType.i32)

    def packed_words(self, nr: int) -> Value | None:
        """The i32 words B was packed into at compile time (`passes.layout`: B is `unpack_bytes` of
        them), if their panels are a whole number of this schedule's (else B is read byte by byte)."""
        node = self.lowering.producers.get(self.b.value)
        if node is None or node.op != "unpack_bytes" or node.inputs[0].type.shape[2] % nr:
            return None
        return node.inputs[0]

    # -- the loop nest --------------------------------------------------------------------------

    def loops(self) -> list[Stmt]:
        lowering, m, n = self.lowering, self.m, self.n
        if not m * n:
            return []
        tiles = tile_chooser(GemmShape(1, m, n, self.k, DType.i32))
        mr, nr = min(tiles.mr, m), min(tiles.nr, n, MAX_VECTOR_LANES)
        per_block = shared_panel_tiles(-(-m // mr), -(-n // nr), tiles.block_tiles)
        words = self.packed_words(nr)
        panel = None if words else lowering.scratch(((self.groups + (self.tail > 0)) * nr,), DType.i32)
        colsum = lowering.scratch((nr,), DType.i32) if self.compensate else None

        def panel_of(_: Sequence[Expr], j0: Expr, cols: int) -> tuple[list[Stmt], TileAt]:
            if words is not None:  # packed at compile time: read where they are; a panel of W holds this one
                width = words.type.shape[2]
                at = (j0 // width, j0 % width) if width != nr else (j0 // nr, None)

                def stored(g: Expr, jj: Expr) -> Expr:
                    return lowering.element(words, [at[0], g, at[1] + jj if at[1] is not None else jj])

                word = lambda g, count, jj: stored(g, jj)
                b_at = stored
            else:
                word = lambda g, count, jj: self.b_word(g * 4, j0 + jj, count)
                b_at = lambda g, jj: Load(panel, g * cols + jj)
            statements: list[Stmt] = []
            if panel is not None or colsum is not None:  # packed words without a zero point: nothing to do
                statements = pack_words(lowering, self.groups, self.tail, cols, word, panel, colsum)

            def tile(i0: Expr, rows: int) -> list[Stmt]:
                rows_at = [i0 + r if r else i0 for r in range(rows)]
                points = [self.zero_point(row) for row in rows_at] if self.compensate else None

                def result(r: int, jj: Expr, value: Expr) -> list[Stmt]:
                    if points is not None:
                        value = value - points[r] * Load(colsum, jj)
                    return lowering.store(self.y, [*self._row(rows_at[r]), j0 + jj], value)

                a_word = lambda r, g, count: self.a_word(rows_at[r], g * 4, count)
                return dot4_tile(lowering, rows, cols, self.groups, self.tail, a_word, b_at, result)

            return statements, tile

        return panel_blocks(lowering, Blocking((), m, n, mr, nr, per_block), panel_of)


TEMPLATES_QUANT: dict[str, Callable[[GroupLowering, Node], list[Stmt]]] = {
    "matmul": _matmul,
    "conv_integer": conv_integer,
}
"""Follows TEMPLATES_GEMM in `TEMPLATES`: its `matmul` takes the int8 form and passes on the rest."""
