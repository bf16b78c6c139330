"""What the GPU GEMM templates (`backends.cuda.templates_gpu_gemm`: FMA tiles, tensor-core MMA)
share: the block's tile position, the pipelined K loop over shared-memory stages, and the writes of
the group's outputs.

The K loop keeps `stages` slots per operand in shared memory and copies K step kt + stages - 1
while computing step kt (`gemm_staging`: cp_async where proven, else plain loads and stores):

    copy steps 0 .. stages - 2 into their slots; commit each           (prologue)
    for kt in 0 .. k_steps:
        wait until at most stages - 2 groups are in flight               (step kt has landed)
        barrier                                                          (... for the whole block, and
                                                                          every thread is done with kt - 1)
        if kt + stages - 1 < k_steps: copy it into slot (kt - 1) % stages; commit (empty groups count)
        compute step kt from slot kt % stages

One barrier per step: the one after the wait both publishes step kt and orders the reads of slot
(kt - 1) % stages (step kt - 1) before the copies that overwrite it. Plain copies land at once,
so the same order is right for them (the wait and commit are left out when no operand copies
asynchronously).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from backends.cuda.epilogue_scatter import reshape_index
from backends.cuda.gemm_staging import Element, Layout, OperandStage, plan_stage, unit_axis
from backends.cuda.templates_gpu import write_outputs
from backends.lowering.expr import Unflattened, i64, unflatten
from backends.lowering.group import GroupLowering
from backends.lowering.templates_gemm import Contraction
from ir import DType, Node
from ir.loop import (
    Assign,
    Barrier,
    Binary,
    Buffer,
    Call,
    Const,
    Expr,
    For,
    If,
    Kernel,
    LoopKind,
    Ref,
    Scope,
    Stmt,
    Store,
    Var,
)

Compute = Callable[[Expr], list[Stmt]]

_ROW_MAJOR_PRODUCTS = frozenset({"matmul", "gemm"})
"""Contractions whose result is [batch, M, N] row-major (batch dims and gemm's leading rows
flattened): `templates_gemm`'s `_matmul` and `_gemm` store (b, i, j) at (b * M + i) * N + j."""
"""(slot) -> the statements that use the K step in that slot of every operand."""


class BlockTile:
    """One block's BM x BN tile of one batch; subclasses give `threads` and `body`."""

    template = ""
    threads: int

    def __init__(self, lowering: GroupLowering, node: Node, problem: Contraction, bm: int, bn: int) -> None:
        self.lowering, self.node, self.problem = lowering, node, problem
        self.bm, self.bn = bm, bn
        shape = problem.shape
        self.tiles_m, self.tiles_n = -(-shape.m // bm), -(-shape.n // bn)
        self.block, self.thread = lowering.var("block"), lowering.var("thread")
        self.batch, self.i0, self.j0 = lowering.var("b"), lowering.var("i0"), lowering.var("j0")
        self.batch_index = unflatten(Ref(self.batch), problem.batch_shape) if problem.batch_shape else []
        (self.y,) = node.outputs
        # The contraction's write ends in `lowering.store` of the product: it goes to this
        # stand-in, and `write` turns each such store into the group's outputs at that position.
        self.staging = Buffer(f"{lowering.name}_product", self.y.type.dtype, self.y.type.shape or (1,))
        lowering.epilogues = {}
        lowering.buffers[self.y] = self.staging

    def kernel(self) -> Kernel:
        shape = self.problem.shape
        blocks = shape.batch * self.tiles_m * self.tiles_n
        tile: Expr = Ref(self.block)
        start = [
            Assign(self.j0, (tile % self.tiles_n) * self.bn if self.tiles_n > 1 else i64(0)),
            Assign(self.i0, (tile // self.tiles_n) % self.tiles_m * self.bm if self.tiles_m > 1 else i64(0)),
            Assign(self.batch, tile // (self.tiles_m * self.tiles_n) if shape.batch > 1 else i64(0)),
        ]
        try:
            body = [*start, *self.body()]
        finally:
            del self.lowering.buffers[self.y]
        lowering = self.lowering
        inner = For(self.thread, self.threads, tuple(body), LoopKind.THREAD_X)
        params = (*lowering.params, *lowering.outputs)
        outputs = tuple(range(len(lowering.params), len(params)))
        loop = For(self.block, blocks, (inner,), LoopKind.BLOCK_X)
        return Kernel(lowering.name, params, (loop,), tuple(lowering.locals), lowering.source, outputs)

    def body(self) -> list[Stmt]:
        raise NotImplementedError

    # -- operands and the K loop -----------------------------------------------------------------

    def shared(self, stem: str, dtype: DType, size: int) -> Buffer:
        """A fresh shared buffer of `size` elements."""
        buffer = Buffer(self.lowering.names.fresh(stem), dtype, (size,), Scope.SHARED)
        self.lowering.locals.append(buffer)
        return buffer

    def a(self, row: Expr, k: Expr) -> Expr:
        return self.problem.a(self.batch_index, row, k)

    def b(self, column: Expr, k: Expr) -> Expr:
        return self.problem.b(self.batch_index, k, column)

    def operand(self, stem: str, dtype: DType, layout: Layout, stages: int, element: Element, operand: int,
                along_depth: bool) -> OperandStage:  # fmt: skip
        """Operand 0 (A, rows of M) or 1 (B, columns of N) staged in `stages` slots of `layout`,
        consecutive threads along K when `along_depth` (coalesced where K is contiguous)."""
        tile = self.shared(stem, dtype, stages * layout.size)
        origin, extent = (self.i0, self.problem.shape.m) if operand == 0 else (self.j0, self.problem.shape.n)
        stage = OperandStage(self.lowering, tile, layout, element, origin, extent, self.problem.shape.k, self.thread,
                             self.threads, along_depth)  # fmt: skip
        return plan_stage(stage)

    def pipeline(self, operands: list[OperandStage], stages: int, depth: int, compute: Compute) -> list[Stmt]:
        """The K loop (see the module doc) over steps of `depth`."""
        k_steps = -(-self.problem.shape.k // depth)
        asynchronous = any(op.vector for op in operands)
        token = self.lowering.var("copies", DType.i32)
        commit = [Assign(token, Call("cp_async_commit", (), DType.i32))] if asynchronous else []

        def copy(step: Expr, slot: Expr) -> list[Stmt]:
            return [s for op in operands for s in op.copies(step * depth, slot)]

        prologue: list[Stmt] = []
        for step in range(stages - 1):
            if step < k_steps:
                prologue += copy(i64(step), i64(step))
            prologue += commit
        kt = self.lowering.var("kt")
        loop: list[Stmt] = []
        if asynchronous:
            loop.append(Assign(token, Call("cp_async_wait", (Const(stages - 2, DType.i32),), DType.i32)))
        loop.append(Barrier())
        if k_steps > stages - 1:
            ahead = Ref(kt) + (stages - 1)
            loop.append(If(ahead.lt(i64(k_steps)), tuple(copy(ahead, ahead % stages))))
        loop += commit  # an empty group near the end keeps the count `cp_async_wait` relies on
        loop += compute(Ref(kt) % stages if stages > 1 else i64(0))
        return [*prologue, For(kt, k_steps, tuple(loop))]

    # -- the writes --------------------------------------------------------------------------------

    def mma_accumulators(
        self, frags_m: int, frags_n: int, warp_corner: tuple[Expr, Expr], group: Var, quad: Var
    ) -> Iterator[tuple[int, int, int, Expr, Expr]]:
        """(mi, ni, e, row, column) of every m16n8 accumulator register of a warp whose tile starts
        at `warp_corner` (block-relative), by the PTX ISA's C fragment layout shared by the f16/bf16,
        tf32 and int8 mma: register e of fragment (mi, ni) is at row `group` (+ 8 for e >= 2) and
        column 2 * `quad` + e % 2."""
        for mi in range(frags_m):
            for ni in range(frags_n):
                for e in range(4):
                    row = warp_corner[0] + (mi * 16 + 8 * (e // 2)) + Ref(group)
                    column = warp_corner[1] + (ni * 8 + e % 2) + Ref(quad) * 2
                    yield mi, ni, e, row, column

    def write(self, i: Expr, j: Expr, acc: Expr) -> list[Stmt]:
        """The group's outputs at product element (i, j) of this block's batch, guarded at the
        edges of M and N."""
        shape = self.problem.shape
        statements: list[Stmt] = []
        for stmt in self.problem.write(self.batch_index, i, j, acc):
            if isinstance(stmt, Store) and stmt.buffer is self.staging:
                index = self.product_index(i, j, stmt.index)
                statements += write_outputs(self.lowering, self.y, stmt.index, stmt.value, index)
            else:
                statements.append(stmt)
        guards = [g for g, edge in ((i.lt(i64(shape.m)), shape.m % self.bm), (j.lt(i64(shape.n)), shape.n % self.bn))
                  if edge]  # fmt: skip
        if not guards:
            return statements
        return [If(guards[0] if len(guards) == 1 else Binary("and", *guards), tuple(statements))]

    def product_index(self, i: Expr, j: Expr, offset: Expr) -> Unflattened | None:
        """The index in the product of element (i, j) of this block's batch, which `problem.write`
        stored at flat `offset`; None where the product is not laid out as [batch, M, N]. Handed to
        the epilogue so that it indexes per axis: one division per row and per column of the
        thread's tile where a reshape regroups an axis, not one per element (`epilogue_scatter`)."""
        if self.node.op not in _ROW_MAJOR_PRODUCTS:
            return None
        shape = self.problem.shape
        rows = Unflattened([Ref(self.batch), i, j], offset, (shape.batch, shape.m, shape.n))
        return reshape_index(rows, rows.shape, self.y.type.shape)

    def transposed(self, operand: int) -> bool:
        """Whether operand 0 (A) or 1 (B) is read across K in memory (gemm's trans flags)."""
        attrs = self.node.attrs
        return bool(attrs.get("trans_a" if operand == 0 else "trans_b", False))

    def along_depth(self, operand: int) -> bool:
        """Whether consecutive threads copy operand 0 (A) or 1 (B) along K: where K is its
        contiguous axis in memory (or, when the index says neither, where gemm's flags say so)."""
        axis = unit_axis(self.lowering, self.a if operand == 0 else self.b)
        return axis == "depth" if axis else (self.transposed(operand) == (operand == 1))
