"""The int8 GEMM on tensor cores: a fused group whose one heavy node is the i32 `matmul` that
`matmul_integer` decomposes into (bytes widened by `cast`, A's zero point subtracted), with the
dequantizing epilogue around it (`cast` to f32, the activation's and the weight's scales, bias,
activation), as `passes.quantize` makes it in its dynamic and static modes, lowered to mma.sync
m16n8k32 with s32 accumulators. `backends.cuda.schedule.schedule_group` tries it before the float
GEMM template (`templates_gpu_gemm`, which declines integer contractions). Weight-only int8 has no
integer contraction: fusion puts the weight's `dequantize_linear` into its f32 GEMM's group (the
weight prologue of `passes.fusion_groups`), and `gemm.fma` reads the int8 weight and dequantizes it
while staging B into shared memory (a convert and a multiply per element staged, once per block
tile), so no f32 copy of the weight is written or read per run.

What is recognised is the CPU int8 template's form (`backends.lowering.templates_quant`): A of rank
>= 2 in u8 or i8 with a zero point constant along K (per tensor or per row), B a 2-D i8 operand
without a zero point (or a zero one). The MMA takes the graph's operand types as they are:
`mma_m16n8k32_s8s8` for dynamic int8 (symmetric i8 activations, no zero point), `_u8s8` for static
(u8 activations with a zero point z). The CPU's +128 shift is a trick of its u8 x s8 instruction and
not in the graph, so it is not needed here. A zero point is taken back at the end:

    sum_k (a - z) * b  =  sum_k a * b  -  z * colsum(b)

exact in i32 wrapping arithmetic (a ring), so the i32 result equals the interpreter's bit for bit.
colsum(b) is summed by one thread per column of the block's tile from the staged B words
(`dot4_u8s8` with four bytes of 1, bk/4 dp4a per K step), kept in a register, and shared once at
the end.

The block's tile, its position and the writes through the epilogue are the GEMM templates'
(`backends.cuda.gemm_block.BlockTile`: one BM x BN tile per block, the group's outputs written at
each accumulator); warps of WARPS_M x WARPS_N own m16n8 accumulator fragments as in the f16
template (`templates_gpu_mma`). Bytes are packed four to an i32 word along K: per BK (a multiple of
32) the block stages A as [BM][BK/4] and B as [BN][BK/4] words in one shared-memory stage (4 words
of padding per row: the fragment reads of a warp's 8 rows x 4 words hit 32 distinct banks), bytes
past M, N or K as 0, then a barrier, the MMAs, a barrier. Per 32 of K each lane reads its
fragments as whole words by the PTX ISA's m16n8k32 layout (A: rows group and group + 8, words quad
and quad + 4; B: column group, words quad and quad + 4) and calls the MMA
(`ir.loop.lockstep_int8`; the prelude's `kiln_mma_s8_*`).

Next steps, with their seams: several stages with cp.async (`BlockTile.pipeline`, which stages
elements, would need a word-packing operand stage; with A and B bytes already K-contiguous in
memory a word is one 4-byte copy) and ldmatrix, as the f16 template has; the staging of B reads 4
bytes of 4 rows of K per word (a weight pre-packed K-major at compile time, as the CPU's layout pass
does, would make it one 4-byte load).
"""

from __future__ import annotations

from collections.abc import Callable

from backends.cuda.gemm_block import BlockTile
from backends.cuda.templates_gpu_mma import MmaTiles
from backends.lowering.expr import i64
from backends.lowering.group import EpilogueMismatch, GroupLowering, inlinable
from backends.lowering.indexing import broadcast_index
from backends.lowering.int8_kernel import ONES, dot4, i32, is_zero, pack_bytes
from backends.lowering.templates_gemm import Contraction, contraction
from backends.lowering.templates_quant import _int8_operands, _Operand
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
    Select,
    Stmt,
    Store,
    Var,
)

__all__ = ["Int8MmaKernel", "choose_int8_tiles", "int8_gemm_template"]

MMA_S8 = {DType.i8: "mma_m16n8k32_s8s8", DType.u8: "mma_m16n8k32_u8s8"}
"""The int8 tensor-core `Call` per dtype of A's bytes (B's are i8)."""


def choose_int8_tiles(m: int, n: int) -> MmaTiles:
    """128 x 64 over 4 warps (64 x 32 each, the f16 template's warp tile) for large outputs, 64 x 64
    over 4 warps otherwise; 64 of K per stage (two m16n8k32 steps), one stage. (128 x 128 over 8
    warps spills on sm_80 with the dequantizing epilogue: 255 registers.)"""
    return MmaTiles(128 if m >= 256 and n >= 256 else 64, 64, 64, 2, 2, stages=1)


def int8_gemm_template(
    node: Node, name: str, source: str = "", tiles: MmaTiles | None = None
) -> tuple[Kernel, str] | None:
    """The GPU kernel of the `fused` node `node` when its group is one int8 contraction (the form
    of the module doc) with elementwise work around it, and the template's name; None otherwise.
    `tiles` defaults to `choose_int8_tiles` (tests force small ones to reach the edges); its BK
    must be a multiple of 32, with one stage."""
    if any(value.type.numel == 0 for value in node.outputs):
        return None
    lowering = GroupLowering(node.attrs["body"], name, source)
    anchors = [n for n in lowering.body.nodes if n.op != "const" and not inlinable(n)]
    if len(anchors) != 1 or anchors[0].op != "matmul":
        return None
    (matmul,) = anchors
    operands = _int8_operands(lowering, matmul)
    if operands is None or matmul.inputs[0].type.shape[-1] == 0:
        return None
    problem = contraction(lowering, matmul)
    shape = problem.shape
    try:
        builder = Int8MmaKernel(lowering, matmul, problem, tiles or choose_int8_tiles(shape.m, shape.n), *operands)
        return builder.kernel(), builder.template
    except EpilogueMismatch:  # an output reads the product at another element: no thread holds it
        return None


class Int8MmaKernel(BlockTile):
    """The int8 MMA tile over a contraction of bytes. A subclass changes where the bytes come from
    (`a_byte`, `b_byte`) and which way the block's threads walk them while staging (`a_along_k`,
    `b_along_k`: consecutive words along K where K is contiguous in memory, else consecutive rows):
    `templates_gpu_quant_conv` reads an im2col matrix and a weight this way."""

    template = "gemm.mma_s8"
    a_along_k = True
    """A [M, K] of a matmul: K is its contiguous axis."""
    b_along_k = False
    """B [K, N] of a matmul: N is."""

    def __init__(self, lowering: GroupLowering, node: Node, problem: Contraction, tiles: MmaTiles, a: _Operand,
                 b: _Operand) -> None:  # fmt: skip
        if tiles.bk % 32 or tiles.stages != 1:
            raise ValueError(f"int8 MMA tiles need BK a multiple of 32 (m16n8k32 steps) and one stage: {tiles}")
        if tiles.threads < tiles.bn:
            raise ValueError(f"int8 MMA tiles need a thread per column of the tile for B's column sums: {tiles}")
        super().__init__(lowering, node, problem, tiles.bm, tiles.bn)
        self.tiles, self.threads, self.a, self.b = tiles, tiles.threads, a, b
        self.call = MMA_S8[a.value.type.dtype]
        self.compensate = not is_zero(lowering, a.zero_point)

    # -- reading the operands' bytes ----------------------------------------------------------

    def a_byte(self, i: Expr, k: Expr) -> Expr:
        """A's byte at row i (of this block's batch) and depth k, in its stored dtype."""
        return self.lowering.element(self.a.value, [*self.batch_index, i, k])

    def b_byte(self, j: Expr, k: Expr) -> Expr:
        """B's byte at depth k and column j."""
        return self.lowering.element(self.b.value, [k, j])

    def _word(self, element, inside: Expr | None, k: Expr) -> Expr:
        """Four bytes along K from `k` as one i32 (the first the least significant), each read by
        `element(k + q)` as its bits 0..255 where `inside(k + q)` holds, 0 elsewhere."""
        shape = self.problem.shape
        bytes_ = []
        for q in range(4):
            at = k + q if q else k
            byte = element(at).cast(DType.u8).cast(DType.i32)
            guards = [g for g in (inside, (at.lt(i64(shape.k)) if shape.k % self.tiles.bk else None)) if g is not None]
            if guards:
                condition = guards[0] if len(guards) == 1 else Binary("and", *guards)
                byte = Select(condition, byte, i32(0))
            bytes_.append(byte)
        return pack_bytes(bytes_)

    def stage_words(
        self, buffer: Buffer, k0: Expr, rows: int, ld: int, origin: Var, extent: int,
        read: Callable[[Expr, Expr], Expr], along_k: bool,
    ) -> list[Stmt]:  # fmt: skip
        """Copy rows x BK/4 words of an operand into `buffer` (word (r, w) at r * ld + w), the
        block's threads taking consecutive words along K when `along_k` (A: K is contiguous in
        memory) or consecutive rows (B: N is), so that a warp's reads are coalesced. `read(r, k)`
        reads the byte of tile row r at k; rows past the operand's `extent` read as 0."""
        words, threads, lowering = self.tiles.bk // 4, self.threads, self.lowering
        total = rows * words
        pass_ = lowering.var("pass")
        e = Ref(pass_) * threads + Ref(self.thread) if total > threads else Ref(self.thread)
        r, w = (e // words, e % words) if along_k else (e % rows, e // rows)
        inside = (Ref(origin) + r).lt(i64(extent)) if extent % rows else None
        value = self._word(lambda k: read(r, k), inside, k0 + w * 4)
        store: Stmt = Store(buffer, r * ld + w, value)
        if total % threads:
            store = If(e.lt(i64(total)), (store,))
        return [For(pass_, -(-total // threads), (store,), LoopKind.SERIAL)] if total > threads else [store]

    def zero_point(self, i: Expr) -> Expr:
        point = self.a.zero_point
        index = broadcast_index([*self.batch_index, i, i64(0)], point.type.shape)
        return self.lowering.element(point, index).cast(DType.i32)

    # -- the kernel ---------------------------------------------------------------------------

    def body(self) -> list[Stmt]:
        t, shape, lowering = self.tiles, self.problem.shape, self.lowering
        words = t.bk // 4
        ld = words + 4  # words per shared row: 4 of padding keep a warp's fragment reads conflict-free
        a_tile, b_tile = self.shared("a_words", DType.i32, t.bm * ld), self.shared("b_words", DType.i32, t.bn * ld)
        warp, group, quad = lowering.var("warp"), lowering.var("group"), lowering.var("quad")
        wm, wn, kt, ks = lowering.var("wm"), lowering.var("wn"), lowering.var("kt"), lowering.var("ks")
        frags_m, frags_n = t.warp_m // 16, t.warp_n // 8
        acc = [[[lowering.var(f"c{mi}_{ni}_{e}_", DType.i32) for e in range(4)] for ni in range(frags_n)]
               for mi in range(frags_m)]  # fmt: skip
        k0 = Ref(kt) * t.bk
        statements: list[Stmt] = [
            Assign(warp, Ref(self.thread) // WARP_SIZE),
            Assign(group, Ref(self.thread) % WARP_SIZE // 4),
            Assign(quad, Ref(self.thread) % 4),
            Assign(wm, Ref(warp) // t.warps_n),
            Assign(wn, Ref(warp) % t.warps_n),
            *(Assign(v, i32(0)) for row in acc for frag in row for v in frag),
        ]
        stage_a = self.stage_words(
            a_tile, k0, t.bm, ld, self.i0, shape.m, lambda r, k: self.a_byte(Ref(self.i0) + r, k), self.a_along_k
        )
        stage_b = self.stage_words(
            b_tile, k0, t.bn, ld, self.j0, shape.n, lambda c, k: self.b_byte(Ref(self.j0) + c, k), self.b_along_k
        )
        step: list[Stmt] = []
        a_frags, b_frags = [], []
        for mi in range(frags_m):  # a0..a3: rows group, group + 8, then both at k + 16 (words + 4)
            frag = [lowering.var(f"a{mi}_{r}_", DType.i32) for r in range(4)]
            for r, var in enumerate(frag):
                row = Ref(wm) * t.warp_m + (mi * 16 + 8 * (r & 1)) + Ref(group)
                step.append(Assign(var, Load(a_tile, row * ld + (Ref(ks) * 8 + 4 * (r >> 1)) + Ref(quad))))
            a_frags.append(frag)
        for ni in range(frags_n):  # b0, b1: column group, words quad and quad + 4
            frag = [lowering.var(f"b{ni}_{r}_", DType.i32) for r in range(2)]
            for r, var in enumerate(frag):
                column = Ref(wn) * t.warp_n + ni * 8 + Ref(group)
                step.append(Assign(var, Load(b_tile, column * ld + (Ref(ks) * 8 + 4 * r) + Ref(quad))))
            b_frags.append(frag)
        for mi in range(frags_m):
            for ni in range(frags_n):
                d = [lowering.var(f"d{e}_", DType.i32) for e in range(4)]
                operands = (*map(Ref, a_frags[mi]), *map(Ref, b_frags[ni]), *map(Ref, acc[mi][ni]))
                step += [Assign(d[e], Call(self.call, (*operands, Const(e, DType.i32)), DType.i32)) for e in range(4)]
                step += [Assign(acc[mi][ni][e], Ref(d[e])) for e in range(4)]
        k_loop = [*stage_a, *stage_b, Barrier(), For(ks, t.bk // 32, tuple(step), LoopKind.UNROLLED)]
        colsum = sums = None
        if self.compensate:  # one thread per column of the tile adds up B's staged bytes
            colsum, w = lowering.var("colsum", DType.i32), lowering.var("w")
            statements.append(Assign(colsum, i32(0)))
            word = Load(b_tile, Ref(self.thread) * ld + Ref(w))
            add = Assign(colsum, dot4(Ref(colsum), i32(ONES), word))
            k_loop.append(If(Ref(self.thread).lt(i64(t.bn)), (For(w, words, (add,), LoopKind.UNROLLED),)))
        statements.append(For(kt, -(-shape.k // t.bk), (*k_loop, Barrier())))
        if colsum is not None:
            sums = self.shared("colsums", DType.i32, t.bn)
            statements += [If(Ref(self.thread).lt(i64(t.bn)), (Store(sums, Ref(self.thread), Ref(colsum)),)), Barrier()]
        corner = (Ref(wm) * t.warp_m, Ref(wn) * t.warp_n)
        for mi, ni, e, row, column in self.mma_accumulators(frags_m, frags_n, corner, group, quad):
            i, value = Ref(self.i0) + row, Ref(acc[mi][ni][e])
            if sums is not None:
                value = value - self.zero_point(i) * Load(sums, column)
            statements += self.write(i, Ref(self.j0) + column, value)
        return statements
