"""The block/panel loop every CPU GEMM template shares: one parallel loop over (batch, column panel,
block of row tiles), each iteration preparing its panel of B once and then computing the row tiles
of its block one after another, with the edges (the last panel's N % NR columns, the last tile's
M % MR rows, a last block with fewer tiles) as micro-kernels of their own behind `If`s, so full
tiles carry no guards.

    for t in 0 .. batch * col_panels * row_blocks:     # row blocks innermost: a panel stays in cache
        batch_index, jp, ib = unflatten(t); j0 = jp * NR
        <the panel's statements: pack B, column sums, ...>
        for q in 0 .. per_block:                        # it = ib * per_block + q
            <the row tile at i0 = it * MR: rows x cols accumulators, written back>

The f32 GEMM (`templates_gemm.contraction_loops`), the int8 GEMM and the int8 implicit-GEMM
convolution (`templates_quant`, `templates_quant_conv`) differ only in what the panel and the tile
hold; `panel_blocks` is that loop once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from backends.lowering.expr import i64, unflatten
from backends.lowering.group import GroupLowering
from ir.loop import Expr, For, If, Ref, Stmt

TileAt = Callable[[Expr, int], list[Stmt]]
"""(first row i0, rows) -> the statements of one row tile of the current panel."""
Panel = Callable[[Sequence[Expr], Expr, int], tuple[list[Stmt], TileAt]]
"""(batch index, first column j0, columns) -> the panel's own statements (run once per block) and
the function that makes the block's row tiles."""


@dataclass(frozen=True)
class Blocking:
    """How a [batch..., M, N] result is cut: MR x NR tiles, `per_block` row tiles per iteration."""

    batch_shape: tuple[int, ...]
    m: int
    n: int
    mr: int
    nr: int
    per_block: int

    @property
    def row_tiles(self) -> int:
        return -(-self.m // self.mr)

    @property
    def col_panels(self) -> int:
        return -(-self.n // self.nr)


def panel_blocks(lowering: GroupLowering, blocking: Blocking, panel: Panel) -> list[Stmt]:
    """The loop nest of the module doc; `panel` gives each panel's statements and its tiles."""
    mr, nr, row_tiles, col_panels = blocking.mr, blocking.nr, blocking.row_tiles, blocking.col_panels
    m_edge, n_edge = blocking.m % mr, blocking.n % nr
    per_block = min(blocking.per_block, row_tiles)
    row_blocks = -(-row_tiles // per_block)
    t = lowering.var("block")
    ib = Ref(t) % row_blocks if row_blocks > 1 else i64(0)
    jp = (Ref(t) // row_blocks) % col_panels if col_panels > 1 else i64(0)
    batch_flat = Ref(t) // (row_blocks * col_panels)
    batch_index = unflatten(batch_flat, blocking.batch_shape) if blocking.batch_shape else []
    j0 = jp * nr if nr > 1 else jp

    def rows_of(it: Expr, tile: TileAt) -> list[Stmt]:
        i0 = it * mr if mr > 1 else it
        if not m_edge:
            return tile(i0, mr)
        if row_tiles == 1:
            return tile(i0, m_edge)
        return [If(it.lt(i64(row_tiles - 1)), tuple(tile(i0, mr)), tuple(tile(i0, m_edge)))]

    def panel_of(cols: int) -> list[Stmt]:
        statements, tile = panel(batch_index, j0, cols)
        if per_block == 1:
            return [*statements, *rows_of(ib, tile)]
        q = lowering.var("q")
        it = ib * per_block + Ref(q) if row_blocks > 1 else Ref(q)
        body = rows_of(it, tile)
        if row_tiles % per_block:  # the last block has fewer tiles
            body = [If(it.lt(i64(row_tiles)), tuple(body))]
        return [*statements, For(q, per_block, tuple(body))]

    if not n_edge:
        body = panel_of(nr)
    elif col_panels == 1:
        body = panel_of(n_edge)
    else:
        body = [If(jp.lt(i64(col_panels - 1)), tuple(panel_of(nr)), tuple(panel_of(n_edge)))]
    return [For(t, math.prod(blocking.batch_shape) * row_blocks * col_panels, tuple(body))]
