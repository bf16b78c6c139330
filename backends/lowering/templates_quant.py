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

The loop nest (the ABI's one parallel loop; tile sizes from `templates_gemm.tile_chooser`):

    for t in 0 .. col_panels * row_blocks:
        panel[g, jj] = the 4 bytes b[4g .. 4g+3, j0 + jj] as one i32 (little-endian)  # B packed per block
        colsum[jj]   = dot4_u8s8(colsum[jj], 0x01010101, panel[g, jj]) summed over g (when needed)
        for each row tile of the block:
            tile = 0
            for g in 0 .. K/4:
                a_r = the 4 bytes a'[i0 + r, 4g .. 4g+3] as one i32             (a broadcast per row)
                vectorized jj: tile[r, jj] = dot4_u8s8(tile[r, jj], a_r, panel[g, jj])
            vectorized jj: out[i0 + r, j0 + jj] = epilogue(tile[r, jj] - z'_r * colsum[jj])

K % 4 trailing bytes form one more group whose missing bytes are zeros. B is packed inside the kernel,
once per block of row tiles (the kernel IR has no way to read four bytes of a constant as one i32);
the copy costs K x NR per block_tiles x MR x K x NR products.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from backends.lowering.expr import const, i64, unflatten
from backends.lowering.group import GroupLowering
from backends.lowering.indexing import broadcast_index
from backends.lowering.templates_gemm import (
    MAX_VECTOR_LANES,
    TEMPLATES_GEMM,
    VECTOR_LANES_MULTIPLE,
    GemmShape,
    tile_chooser,
)
from ir import DType, Node, Value
from ir.loop import Assign, Call, Expr, For, If, Load, LoopKind, Ref, Stmt, Store

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


def _unsigned_byte(element: Expr) -> Expr:
    """A byte of u8 or i8 storage as the i32 0..255 holding its bits (i8 reinterpreted, not shifted)."""
    return element.cast(DType.u8).cast(DType.i32)


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


def _is_zero(lowering: GroupLowering, value: Value | None) -> bool:
    if value is None:
        return True
    node = lowering.producers.get(value)
    return node is not None and node.op == "const" and not np.any(lowering.body.constants[node.attrs["name"]])


def _int8_operands(lowering: GroupLowering, node: Node) -> tuple[_Operand, _Operand] | None:
    a, b = node.inputs
    if node.output.type.dtype != DType.i32 or a.type.rank < 2 or b.type.rank != 2:
        return None
    left, right = _widened(lowering, a), _widened(lowering, b)
    if left is None or right is None or right.value.type.dtype != DType.i8 or not _is_zero(lowering, right.zero_point):
        return None
    point = left.zero_point
    if point is not None and point.type.rank and point.type.shape[-1] != 1:
        return None  # a zero point that varies along K is no per-row correction
    return left, right


# -- the template --------------------------------------------------------------------------------


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

    def a_word(self, row: Expr, first: Expr, count: int) -> Expr:
        """The bytes a'[row, first .. first + count - 1] as one i32."""
        at = list(unflatten(row, self.lead)) if len(self.lead) > 1 else [row]
        elements = [self.lowering.element(self.a.value, [*at, first + q if q else first]) for q in range(count)]
        if self.shift:
            return pack_bytes([e.cast(DType.i32) + i32(128) for e in elements])
        return pack_bytes([_unsigned_byte(e) for e in elements])

    def b_word(self, first: Expr, column: Expr, count: int) -> Expr:
        elements = [self.lowering.element(self.b.value, [first + q if q else first, column]) for q in range(count)]
        return pack_bytes([_unsigned_byte(e) for e in elements])

    def zero_point(self, row: Expr) -> Expr:
        """z' of a row: A's zero point (+128 for i8 A), in i32."""
        shift = i32(128) if self.shift else None
        point = self.a.zero_point
        if point is None:
            return shift
        at = list(unflatten(row, self.lead)) if len(self.lead) > 1 else [row]
        z = self.lowering.element(point, broadcast_index([*at, i64(0)], point.type.shape)).cast(DType.i32)
        return z + shift if shift is not None else z

    def write(self, row: Expr, column: Expr, value: Expr) -> list[Stmt]:
        at = list(unflatten(row, self.lead)) if len(self.lead) > 1 else [row]
        return self.lowering.store(self.y, [*at, column], value)

    # -- the loop nest --------------------------------------------------------------------------

    def loops(self) -> list[Stmt]:
        lowering, m, n = self.lowering, self.m, self.n
        if not m * n:
            return []
        tiles = tile_chooser(GemmShape(1, m, n, self.k, DType.i32))
        mr, nr = min(tiles.mr, m), min(tiles.nr, n, MAX_VECTOR_LANES)
        row_tiles, col_panels = -(-m // mr), -(-n // nr)
        # The panel is packed once per block: share it among all row tiles unless that leaves too few
        # blocks for the threads (the rule templates_gemm follows for gathered panels).
        shared = row_tiles if col_panels >= 8 else 16
        per_block = min(row_tiles, max(tiles.block_tiles, min(shared, 64)))
        row_blocks = -(-row_tiles // per_block)
        t = lowering.var("block")
        ib = Ref(t) % row_blocks if row_blocks > 1 else i64(0)
        jp = Ref(t) // row_blocks if col_panels > 1 else i64(0)
        self.j0 = jp * nr if nr > 1 else jp
        self.panel = lowering.scratch(((self.groups + (self.tail > 0)) * nr,), DType.i32)
        self.colsum = lowering.scratch((nr,), DType.i32) if self.compensate else None
        m_edge, n_edge = m % mr, n % nr

        def rows_of(it: Expr, cols: int) -> list[Stmt]:
            i0 = it * mr if mr > 1 else it
            if not m_edge:
                return self.tile(i0, mr, cols)
            if row_tiles == 1:
                return self.tile(i0, m_edge, cols)
            return [If(it.lt(i64(row_tiles - 1)), tuple(self.tile(i0, mr, cols)), tuple(self.tile(i0, m_edge, cols)))]

        def panel_of(cols: int) -> list[Stmt]:
            statements = self.pack(cols)
            if per_block == 1:
                return [*statements, *rows_of(ib, cols)]
            q = lowering.var("q")
            it = ib * per_block + Ref(q) if row_blocks > 1 else Ref(q)
            body = rows_of(it, cols)
            if row_tiles % per_block:
                body = [If(it.lt(i64(row_tiles)), tuple(body))]
            return [*statements, For(q, per_block, tuple(body))]

        if not n_edge:
            body = panel_of(nr)
        elif col_panels == 1:
            body = panel_of(n_edge)
        else:
            body = [If(jp.lt(i64(col_panels - 1)), tuple(panel_of(nr)), tuple(panel_of(n_edge)))]
        return [For(t, row_blocks * col_panels, tuple(body))]

    def _columns(self, cols: int, body: Callable[[Expr], list[Stmt]]) -> list[Stmt]:
        """`body(jj)` for jj in 0 .. cols: a vectorized loop over a multiple of 16 columns, a serial rest."""
        vector = cols - cols % VECTOR_LANES_MULTIPLE
        loops = []
        for start, width, kind in ((0, vector, LoopKind.VECTORIZED), (vector, cols - vector, LoopKind.SERIAL)):
            if width:
                jj = self.lowering.var("jj")
                loops.append(For(jj, width, tuple(body(Ref(jj) + start if start else Ref(jj))), kind))
        return loops

    def pack(self, cols: int) -> list[Stmt]:
        """B's panel for the columns j0 .. j0 + cols as i32 words (4 bytes along K each), and its
        column sums when the result needs them."""
        lowering, panel, colsum = self.lowering, self.panel, self.colsum
        statements: list[Stmt] = []
        if colsum is not None:
            statements += self._columns(cols, lambda jj: [Store(colsum, jj, i32(0))])

        def group(g: Expr, count: int) -> Callable[[Expr], list[Stmt]]:
            def body(jj: Expr) -> list[Stmt]:
                word = lowering.var("w", DType.i32)
                stores: list[Stmt] = [Assign(word, self.b_word(g * 4, self.j0 + jj, count))]
                stores.append(Store(panel, g * cols + jj, Ref(word)))
                if colsum is not None:
                    stores.append(Store(colsum, jj, dot4(Load(colsum, jj), i32(ONES), Ref(word))))
                return stores

            return body

        if self.groups:
            g = lowering.var("g")
            statements.append(For(g, self.groups, tuple(self._columns(cols, group(Ref(g), 4)))))
        if self.tail:
            statements += self._columns(cols, group(i64(self.groups), self.tail))
        return statements

    def tile(self, i0: Expr, rows: int, cols: int) -> list[Stmt]:
        """The rows x cols block at (i0, j0): accumulators in a local tile (registers after LLVM)."""
        lowering, panel = self.lowering, self.panel
        tile = lowering.scratch((rows * cols,), DType.i32)
        rows_at = [i0 + r if r else i0 for r in range(rows)]
        z = lowering.var("z")
        statements: list[Stmt] = [For(z, rows * cols, (Store(tile, Ref(z), i32(0)),))]

        def step(g: Expr, count: int) -> list[Stmt]:
            body: list[Stmt] = []
            for r in range(rows):
                a = lowering.var(f"a{r}_", DType.i32)
                body.append(Assign(a, self.a_word(rows_at[r], g * 4, count)))
                body += self._columns(cols, lambda jj, r=r, a=a: [
                    Store(tile, jj + r * cols, dot4(Load(tile, jj + r * cols), Ref(a), Load(panel, g * cols + jj)))
                ])  # fmt: skip
            return body

        if self.groups:
            g = lowering.var("g")
            statements.append(For(g, self.groups, tuple(step(Ref(g), 4))))
        if self.tail:
            statements += step(i64(self.groups), self.tail)
        for r in range(rows):
            point = self.zero_point(rows_at[r]) if self.compensate else None

            def result(jj: Expr, r: int = r, point: Expr | None = point) -> list[Stmt]:
                value = Load(tile, jj + r * cols)
                if point is not None:
                    value = value - point * Load(self.colsum, jj)
                return self.write(rows_at[r], self.j0 + jj, value)

            statements += self._columns(cols, result)
        return statements


TEMPLATES_QUANT: dict[str, Callable[[GroupLowering, Node], list[Stmt]]] = {"matmul": _matmul}
"""Follows TEMPLATES_GEMM in `TEMPLATES`: its `matmul` takes the int8 form and passes on the rest."""
