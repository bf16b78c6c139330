"""GPU GEMM templates: a fused group whose one heavy node is a `matmul` or `gemm` (batched and
broadcast batches, gemm's transposes, alpha, beta and bias, the group's prologue and epilogue)
lowered straight to GPU-scheduled kernel IR. `backends.cuda.schedule.schedule_group` tries this
before the other templates (`backends.cuda.templates_gpu`).

The contraction itself (which element of A and B each (batch, i, k) and (batch, k, j) reads,
through transposes, broadcasts and casts, and what gemm does to a result before it is stored)
is the CPU template's (`backends.lowering.templates_gemm.contraction`), so both backends share
one definition of matmul and gemm; only the loops differ. Each block computes one BM x BN tile
of one batch (blocks in a row of tiles are neighbours, so they share A's rows in L2):

- **f32: FMA tiles** (`gemm.fma`). T = (BM/TM) x (BN/TN) threads, each a TM x TN micro-tile of
  register accumulators; its rows are ty, ty + BM/TM, ... and its columns tx, tx + BN/TN, ...,
  so a warp reads consecutive shared-memory words (no bank conflicts) and writes consecutive
  columns (coalesced). Per K step of BK, the block stages A's BM x BK and B's BK x BN tiles in
  shared memory (out-of-range elements as 0, so edge tiles need no other guard), a barrier, BK
  rank-1 updates (`fma`), a barrier.
- **f16/bf16: tensor cores** (`gemm.mma`). Warps of a WARPS_M x WARPS_N grid each own a
  (BM/WARPS_M) x (BN/WARPS_N) part of the tile as m16n8 accumulator fragments (f32); per 16 of
  K, each warp reads its A and B fragments from shared memory at the PTX ISA's m16n8k16 layout
  (lane = 4 * group + t: A rows group and group + 8, columns 2t, 2t + 1, 2t + 8, 2t + 9; B
  columns group, rows 2t, 2t + 1, 2t + 8, 2t + 9) and calls `mma_m16n8k16_f16/bf16` (`Call`
  names of `ir.loop.nodes`; the prelude's `kiln_mma_*` on the device, the lockstep interpreter
  warp-collectively here). Shared tiles keep K contiguous (A as [m][k], B as [n][k]) with 8
  elements of padding per row, the layout ldmatrix wants.

The group's outputs are written at the end from each accumulator, through the epilogue, as the
row template does: every output is computed at the position the accumulator belongs to, so a
group whose outputs read the product elsewhere falls back to the generic schedule.

Next steps, with their seams: double buffering (`_stage` writes one shared tile per operand; a
second one, filled with cp.async while the first is read, needs a cp.async/wait `Call` pair with
a lockstep meaning), ldmatrix for the fragments (`_fragment_loads`), and TF32 for f32 when the
user allows it (`_mma_kind`).

Numerics: f32 accumulates with one rounding per step (fma) in k order, as the CPU does; the MMA
multiplies exactly and accumulates in f32 in the tensor cores' order (the lockstep interpreter:
in k order), then rounds once to f16/bf16 at the store. Both agree with the interpreter within
the lowering tests' tolerance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from backends.cuda.templates_gpu import write_outputs
from backends.lowering.expr import i64, unflatten
from backends.lowering.group import EpilogueMismatch, GroupLowering, inlinable
from backends.lowering.templates_gemm import TEMPLATES_GEMM, Contraction, contraction
from ir import DType, Node
from ir.loop import (
    WARP_SIZE,
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
    Load,
    LoopKind,
    Ref,
    Scope,
    Select,
    Stmt,
    Store,
    Var,
)

__all__ = ["FmaTiles", "MmaTiles", "choose_fma_tiles", "choose_mma_tiles", "gemm_template"]


@dataclass(frozen=True)
class FmaTiles:
    """The f32 template's tile: a BM x BN block tile, BK of K per stage, TM x TN per thread."""

    bm: int = 64
    bn: int = 64
    bk: int = 16
    tm: int = 4
    tn: int = 4

    @property
    def threads(self) -> int:
        return (self.bm // self.tm) * (self.bn // self.tn)

    def __post_init__(self) -> None:
        if self.bm % self.tm or self.bn % self.tn or self.threads % WARP_SIZE or self.threads > 1024:
            raise ValueError(f"FMA tiles need TM | BM, TN | BN and whole warps, up to 1024 threads: {self}")


@dataclass(frozen=True)
class MmaTiles:
    """The tensor-core template's tile: a BM x BN block tile over WARPS_M x WARPS_N warps, BK of
    K (a multiple of 16) per stage."""

    bm: int = 64
    bn: int = 64
    bk: int = 32
    warps_m: int = 2
    warps_n: int = 2

    @property
    def threads(self) -> int:
        return self.warps_m * self.warps_n * WARP_SIZE

    @property
    def warp_m(self) -> int:
        return self.bm // self.warps_m

    @property
    def warp_n(self) -> int:
        return self.bn // self.warps_n

    def __post_init__(self) -> None:
        if self.bm % (16 * self.warps_m) or self.bn % (8 * self.warps_n) or self.bk % 16 or self.threads > 1024:
            raise ValueError(f"MMA tiles need warp tiles of whole m16n8 fragments and BK a multiple of 16: {self}")


def choose_fma_tiles(m: int, n: int) -> FmaTiles:
    """128 x 128 tiles of 8 x 8 per thread where the output has room for them (more work per
    shared-memory read), 64 x 64 of 4 x 4 otherwise (more blocks for small outputs)."""
    return FmaTiles(128, 128, 8, 8, 8) if m >= 256 and n >= 256 else FmaTiles()


def choose_mma_tiles(m: int, n: int) -> MmaTiles:
    """128 x 128 over 8 warps (64 x 32 each) for large outputs, 64 x 64 over 4 warps otherwise."""
    return MmaTiles(128, 128, 32, 2, 4) if m >= 256 and n >= 256 else MmaTiles()


_MMA = {DType.f16: "mma_m16n8k16_f16", DType.bf16: "mma_m16n8k16_bf16"}
"""The tensor-core `Call` per operand dtype."""


def gemm_template(
    node: Node, name: str, source: str = "", fma_tiles: FmaTiles | None = None, mma_tiles: MmaTiles | None = None
) -> tuple[Kernel, str] | None:
    """The GPU kernel of the `fused` node `node` when its group is one matmul or gemm with
    elementwise work around it, and the template's name; None otherwise. The tiles default to
    `choose_fma_tiles`/`choose_mma_tiles` (tests force small ones to reach the edges)."""
    if any(value.type.numel == 0 for value in node.outputs):
        return None
    lowering = GroupLowering(node.attrs["body"], name, source)
    anchors = [n for n in lowering.body.nodes if n.op != "const" and not inlinable(n)]
    if len(anchors) != 1 or anchors[0].op not in TEMPLATES_GEMM:
        return None
    (contraction_node,) = anchors
    (y,) = contraction_node.outputs
    operand_dtype = contraction_node.inputs[0].type.dtype
    if y.type.dtype != operand_dtype or operand_dtype not in (DType.f32, *_MMA):
        return None  # f64 and integer contractions keep the generic schedule
    problem = contraction(lowering, contraction_node)
    shape = problem.shape
    try:
        if operand_dtype == DType.f32:
            tiles = fma_tiles or choose_fma_tiles(shape.m, shape.n)
            builder: _Tiled = _FmaKernel(lowering, contraction_node, problem, tiles)
        else:
            tiles = mma_tiles or choose_mma_tiles(shape.m, shape.n)
            builder = _MmaKernel(lowering, contraction_node, problem, tiles)
        return builder.kernel(), builder.template
    except EpilogueMismatch:  # an output reads the product at another element: no thread holds it
        return None


# -- the tiles and their writes -------------------------------------------------------------------


class _Tiled:
    """What both templates share: the block's tile position, the staged operands, the writes."""

    template = ""

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
        # stand-in, and `_write` turns each such store into the group's outputs at that position.
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

    threads: int

    def body(self) -> list[Stmt]:
        raise NotImplementedError

    def shared(self, stem: str, dtype: DType, size: int) -> Buffer:
        buffer = Buffer(self.lowering.names.fresh(stem), dtype, (size,), Scope.SHARED)
        self.lowering.locals.append(buffer)
        return buffer

    def stage(self, buffer: Buffer, k0: Expr, rows: int, depth: int, at: Callable[[Expr, Expr], Expr],
              origin: Var, operand: Callable[[Expr, Expr], Expr], extent: int,
              depth_first: bool) -> list[Stmt]:  # fmt: skip
        """Copy a rows x depth tile of an operand into `buffer` (element (r, d) at `at(r, d)`), the
        block's threads taking consecutive elements: along the depth (K) when `depth_first` (the
        operand is contiguous in K: coalesced reads), else along the rows. `operand(r, d)` reads
        the element; those past the operand's `extent` rows (the tile's first is `origin`) or past
        K read as 0, so the edge tiles' accumulators need no other guard."""
        total, threads = rows * depth, self.threads
        shape, lowering = self.problem.shape, self.lowering
        pass_ = lowering.var("pass")
        e = Ref(pass_) * threads + Ref(self.thread) if total > threads else Ref(self.thread)
        r, d = (e // depth, e % depth) if depth_first else (e % rows, e // rows)
        guards = []
        if extent % rows:
            guards.append((Ref(origin) + r).lt(i64(extent)))
        if shape.k % depth:
            guards.append((k0 + d).lt(i64(shape.k)))
        value = operand(r, d).cast(buffer.dtype)
        if guards:
            inside = guards[0] if len(guards) == 1 else Binary("and", *guards)
            value = Select(inside, value, Const(0.0, buffer.dtype))
        store: Stmt = Store(buffer, at(r, d), value)
        if total % threads:
            store = If(e.lt(i64(total)), (store,))
        return [For(pass_, -(-total // threads), (store,), LoopKind.UNROLLED)] if total > threads else [store]

    def write(self, i: Expr, j: Expr, acc: Expr) -> list[Stmt]:
        """The group's outputs at product element (i, j) of this block's batch, guarded at the
        edges of M and N."""
        shape = self.problem.shape
        statements: list[Stmt] = []
        for stmt in self.problem.write(self.batch_index, i, j, acc):
            if isinstance(stmt, Store) and stmt.buffer is self.staging:
                statements += write_outputs(self.lowering, self.y, stmt.index, stmt.value)
            else:
                statements.append(stmt)
        guards = [g for g, edge in ((i.lt(i64(shape.m)), shape.m % self.bm), (j.lt(i64(shape.n)), shape.n % self.bn))
                  if edge]  # fmt: skip
        if not guards:
            return statements
        return [If(guards[0] if len(guards) == 1 else Binary("and", *guards), tuple(statements))]

    def transposed(self, operand: int) -> bool:
        """Whether operand 0 (A) or 1 (B) is read across K in memory (gemm's trans flags): the
        staging then takes consecutive threads along the other axis."""
        attrs = self.node.attrs
        return bool(attrs.get("trans_a" if operand == 0 else "trans_b", False))


# -- f32: FMA tiles -------------------------------------------------------------------------------


class _FmaKernel(_Tiled):
    template = "gemm.fma"

    def __init__(self, lowering: GroupLowering, node: Node, problem: Contraction, tiles: FmaTiles) -> None:
        super().__init__(lowering, node, problem, tiles.bm, tiles.bn)
        self.tiles = tiles
        self.threads = tiles.threads

    def body(self) -> list[Stmt]:
        t, shape, lowering = self.tiles, self.problem.shape, self.lowering
        dtype = shape.dtype
        columns_of_threads, rows_of_threads = t.bn // t.tn, t.bm // t.tm
        lda, ldb = t.bm + 4, t.bn  # A's padding spreads its K-major stores over the banks
        a_tile, b_tile = self.shared("a_tile", dtype, t.bk * lda), self.shared("b_tile", dtype, t.bk * ldb)
        ty, tx, kt, kk = lowering.var("ty"), lowering.var("tx"), lowering.var("kt"), lowering.var("kk")
        acc = [[lowering.var(f"acc{r}_{c}_", dtype) for c in range(t.tn)] for r in range(t.tm)]
        a = [lowering.var(f"a{r}_", dtype) for r in range(t.tm)]
        b = [lowering.var(f"b{c}_", dtype) for c in range(t.tn)]
        k0 = Ref(kt) * t.bk
        problem, batch = self.problem, self.batch_index
        statements: list[Stmt] = [
            Assign(ty, Ref(self.thread) // columns_of_threads),
            Assign(tx, Ref(self.thread) % columns_of_threads),
            *(Assign(v, Const(0.0, dtype)) for row in acc for v in row),
        ]
        stage_a = self.stage(
            a_tile, k0, t.bm, t.bk, lambda r, d: d * lda + r, self.i0,
            lambda r, d: problem.a(batch, Ref(self.i0) + r, k0 + d), shape.m, not self.transposed(0),
        )  # fmt: skip
        stage_b = self.stage(
            b_tile, k0, t.bn, t.bk, lambda c, d: d * ldb + c, self.j0,
            lambda c, d: problem.b(batch, k0 + d, Ref(self.j0) + c), shape.n, self.transposed(1),
        )  # fmt: skip
        step: list[Stmt] = []
        step += [Assign(a[r], Load(a_tile, Ref(kk) * lda + Ref(ty) + r * rows_of_threads)) for r in range(t.tm)]
        step += [Assign(b[c], Load(b_tile, Ref(kk) * ldb + Ref(tx) + c * columns_of_threads)) for c in range(t.tn)]
        step += [
            Assign(acc[r][c], Call("fma", (Ref(a[r]), Ref(b[c]), Ref(acc[r][c])), dtype))
            for r in range(t.tm)
            for c in range(t.tn)
        ]
        k_steps = -(-shape.k // t.bk)
        statements.append(
            For(kt, k_steps, (*stage_a, *stage_b, Barrier(), For(kk, t.bk, tuple(step), LoopKind.UNROLLED), Barrier()))
        )
        for r in range(t.tm):
            for c in range(t.tn):
                i = Ref(self.i0) + (Ref(ty) + r * rows_of_threads)
                j = Ref(self.j0) + (Ref(tx) + c * columns_of_threads)
                statements += self.write(i, j, Ref(acc[r][c]))
        return statements


# -- f16/bf16: tensor cores -----------------------------------------------------------------------


class _MmaKernel(_Tiled):
    template = "gemm.mma"

    def __init__(self, lowering: GroupLowering, node: Node, problem: Contraction, tiles: MmaTiles) -> None:
        super().__init__(lowering, node, problem, tiles.bm, tiles.bn)
        self.tiles = tiles
        self.threads = tiles.threads
        self.operand_dtype = node.inputs[0].type.dtype

    def body(self) -> list[Stmt]:
        t, shape, lowering = self.tiles, self.problem.shape, self.lowering
        low, acc_dtype = self.operand_dtype, shape.dtype
        lda = ldb = t.bk + 8  # K contiguous, 16 bytes of padding per row
        a_tile, b_tile = self.shared("a_tile", low, t.bm * lda), self.shared("b_tile", low, t.bn * ldb)
        warp, group, quad = lowering.var("warp"), lowering.var("group"), lowering.var("quad")
        wm, wn, kt, ks = lowering.var("wm"), lowering.var("wn"), lowering.var("kt"), lowering.var("ks")
        frags_m, frags_n = t.warp_m // 16, t.warp_n // 8
        acc = [[[lowering.var(f"c{mi}_{ni}_{e}_", acc_dtype) for e in range(4)] for ni in range(frags_n)]
               for mi in range(frags_m)]  # fmt: skip
        k0 = Ref(kt) * t.bk
        problem, batch = self.problem, self.batch_index
        statements: list[Stmt] = [
            Assign(warp, Ref(self.thread) // WARP_SIZE),
            Assign(group, Ref(self.thread) % WARP_SIZE // 4),
            Assign(quad, Ref(self.thread) % 4),
            Assign(wm, Ref(warp) // t.warps_n),
            Assign(wn, Ref(warp) % t.warps_n),
            *(Assign(v, Const(0.0, acc_dtype)) for row in acc for frag in row for v in frag),
        ]
        stage_a = self.stage(
            a_tile, k0, t.bm, t.bk, lambda r, d: r * lda + d, self.i0,
            lambda r, d: problem.a(batch, Ref(self.i0) + r, k0 + d), shape.m, not self.transposed(0),
        )  # fmt: skip
        stage_b = self.stage(
            b_tile, k0, t.bn, t.bk, lambda c, d: c * ldb + d, self.j0,
            lambda c, d: problem.b(batch, k0 + d, Ref(self.j0) + c), shape.n, self.transposed(1),
        )  # fmt: skip
        a_frags, b_frags, loads = self._fragment_loads(a_tile, b_tile, lda, ldb, Ref(ks) * 16, wm, wn, group, quad)
        step: list[Stmt] = list(loads)
        for mi in range(frags_m):
            for ni in range(frags_n):
                d = [lowering.var(f"d{e}_", acc_dtype) for e in range(4)]
                operands = (*map(Ref, a_frags[mi]), *map(Ref, b_frags[ni]), *map(Ref, acc[mi][ni]))
                step += [Assign(d[e], Call(_MMA[low], (*operands, Const(e, DType.i32)), acc_dtype)) for e in range(4)]
                step += [Assign(acc[mi][ni][e], Ref(d[e])) for e in range(4)]
        k_steps = -(-shape.k // t.bk)
        statements.append(
            For(kt, k_steps, (*stage_a, *stage_b, Barrier(), For(ks, t.bk // 16, tuple(step), LoopKind.UNROLLED),
                              Barrier()))
        )  # fmt: skip
        for mi in range(frags_m):
            for ni in range(frags_n):
                for e in range(4):  # C fragment: rows group (+ 8 for e >= 2), columns 2 * quad + e % 2
                    row = Ref(wm) * t.warp_m + (mi * 16 + 8 * (e // 2)) + Ref(group)
                    column = Ref(wn) * t.warp_n + (ni * 8 + e % 2) + Ref(quad) * 2
                    statements += self.write(Ref(self.i0) + row, Ref(self.j0) + column, Ref(acc[mi][ni][e]))
        return statements

    def _fragment_loads(self, a_tile: Buffer, b_tile: Buffer, lda: int, ldb: int, k: Expr, wm: Var, wn: Var,
                        group: Var, quad: Var) -> tuple[list[list[Var]], list[list[Var]], list[Stmt]]:  # fmt: skip
        """Each lane's A fragments (8 elements per m16 x k16 block) and B fragments (4 per k16 x
        n8 block) from the shared tiles, by the PTX ISA's m16n8k16 layout. ldmatrix would load
        them four registers at a time; its `Call` would replace these loads."""
        t, low, lowering = self.tiles, self.operand_dtype, self.lowering
        loads: list[Stmt] = []
        a_frags: list[list[Var]] = []
        for mi in range(t.warp_m // 16):
            frag = [lowering.var(f"a{mi}_{e}_", low) for e in range(8)]
            for e, var in enumerate(
                frag
            ):  # rows group (+ 8 for e in 2, 3, 6, 7); columns 2 quad + e % 2 (+ 8 from e = 4)
                row = Ref(wm) * t.warp_m + (mi * 16 + 8 * (e // 2 % 2)) + Ref(group)
                column = k + (e % 2 + 8 * (e // 4)) + Ref(quad) * 2
                loads.append(Assign(var, Load(a_tile, row * lda + column)))
            a_frags.append(frag)
        b_frags: list[list[Var]] = []
        for ni in range(t.warp_n // 8):
            frag = [lowering.var(f"b{ni}_{e}_", low) for e in range(4)]
            for e, var in enumerate(frag):  # column group; rows 2 quad + e % 2 (+ 8 from e = 2)
                column = Ref(wn) * t.warp_n + ni * 8 + Ref(group)
                row = k + (e % 2 + 8 * (e // 2)) + Ref(quad) * 2
                loads.append(Assign(var, Load(b_tile, column * ldb + row)))
            b_frags.append(frag)
        return a_frags, b_frags, loads
