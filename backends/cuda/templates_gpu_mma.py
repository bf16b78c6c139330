"""The tensor-core GEMM (`gemm.mma`) of `backends.cuda.templates_gpu_gemm`, for f16 and bf16.

Warps of a WARPS_M x WARPS_N grid each own a (BM/WARPS_M) x (BN/WARPS_N) part of the block's tile
as m16n8 accumulator fragments (f32). Each operand's stage keeps its global contiguous axis
contiguous (so cp.async copies 16-byte vectors): K for A as [m][k] and for gemm's trans_b B as
[n][k], M or N otherwise ([k][m], [k][n]), padded by 8 elements per row (16 bytes: the eight rows
one ldmatrix reads fall in distinct banks). Per 16 of K, each warp loads its fragments with
`ldmatrix_x4` (four 8 x 8 matrices: one A fragment of m16 x k16, or the B fragments of two n8
blocks) into packed registers (two 16-bit elements each), `.trans` for a stage that is not
K-contiguous, and calls `mma_m16n8k16_f16x2/bf16x2` on them (the PTX ISA's m16n8k16 layout, lane =
4 * group + quad: A rows group and group + 8, columns 2 quad, 2 quad + 1 and those + 8; B columns
group, rows 2 quad, 2 quad + 1 and those + 8). ldmatrix gives lane l, in register j, row l / 4 and
columns 2 (l % 4), + 1 of matrix j: so matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7,
k 8-15), (rows 8-15, k 8-15) are A's registers a0..a3 in order, and (n 0-7, k 0-7), (n 0-7, k 8-15)
are B's b0, b1 (then the next n8 block's), lane l supplying a row of matrix l / 8.
The lockstep interpreter implements both layouts independently (`ir.loop.lockstep`,
`ir.loop.lockstep_tiles`), so a wrong row or element here gives a wrong product there.
"""

from __future__ import annotations

from dataclasses import dataclass

from backends.cuda.gemm_block import BlockTile
from backends.cuda.gemm_staging import Layout, OperandStage
from backends.lowering.group import GroupLowering
from backends.lowering.templates_gemm import Contraction
from ir import DType, Node
from ir.loop import WARP_SIZE, Assign, Call, Const, Expr, For, Load, LoopKind, Ref, Stmt, Var


@dataclass(frozen=True)
class MmaTiles:
    """The tensor-core template's tile: a BM x BN block tile over WARPS_M x WARPS_N warps, BK of
    K (a multiple of 16) per stage, `stages` shared-memory slots per operand. With 2 stages the
    128 x 128 tile takes 40 KiB, inside the 48 KiB of static shared memory."""

    bm: int = 64
    bn: int = 64
    bk: int = 32
    warps_m: int = 2
    warps_n: int = 2
    stages: int = 2

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
        if (self.bm % (16 * self.warps_m) or self.bn % (8 * self.warps_n) or self.bk % 16 or self.threads > 1024
                or self.stages < 1):  # fmt: skip
            raise ValueError(f"MMA tiles need warp tiles of whole m16n8 fragments, BK a multiple of 16: {self}")


def choose_mma_tiles(m: int, n: int) -> MmaTiles:
    """128 x 128 over 8 warps (64 x 32 each) for large outputs, 64 x 64 over 4 warps otherwise."""
    return MmaTiles(128, 128, 32, 2, 4) if m >= 256 and n >= 256 else MmaTiles()


MMA = {DType.f16: "mma_m16n8k16_f16x2", DType.bf16: "mma_m16n8k16_bf16x2"}
"""The tensor-core `Call` per operand dtype, on packed registers as ldmatrix gives them (unpacking
f16 into float registers and packing it again would cost two conversions per element)."""
PADDING = 8
"""Elements added to each row of a stage (16 bytes)."""


class MmaKernel(BlockTile):
    template = "gemm.mma"

    def __init__(self, lowering: GroupLowering, node: Node, problem: Contraction, tiles: MmaTiles) -> None:
        super().__init__(lowering, node, problem, tiles.bm, tiles.bn)
        self.tiles = tiles
        self.threads = tiles.threads
        self.operand_dtype = node.inputs[0].type.dtype

    def _stage(self, stem: str, operand: int, rows: int) -> OperandStage:
        t = self.tiles
        depth_first = self.along_depth(operand)
        layout = Layout(rows, t.bk, depth_first, (t.bk if depth_first else rows) + PADDING)
        element = self.a if operand == 0 else self.b
        return self.operand(stem, self.operand_dtype, layout, t.stages, element, operand, depth_first)

    def body(self) -> list[Stmt]:
        t, shape, lowering = self.tiles, self.problem.shape, self.lowering
        low, acc_dtype = self.operand_dtype, shape.dtype
        a_stage, b_stage = self._stage("a_tile", 0, t.bm), self._stage("b_tile", 1, t.bn)
        warp, lane, group, quad = (
            lowering.var("warp"),
            lowering.var("lane"),
            lowering.var("group"),
            lowering.var("quad"),
        )
        wm, wn, ks = lowering.var("wm"), lowering.var("wn"), lowering.var("ks")
        frags_m, frags_n = t.warp_m // 16, t.warp_n // 8
        acc = [[[lowering.var(f"c{mi}_{ni}_{e}_", acc_dtype) for e in range(4)] for ni in range(frags_n)]
               for mi in range(frags_m)]  # fmt: skip
        statements: list[Stmt] = [
            Assign(warp, Ref(self.thread) // WARP_SIZE),
            Assign(lane, Ref(self.thread) % WARP_SIZE),
            Assign(group, Ref(lane) // 4),
            Assign(quad, Ref(lane) % 4),
            Assign(wm, Ref(warp) // t.warps_n),
            Assign(wn, Ref(warp) % t.warps_n),
            *(Assign(v, Const(0.0, acc_dtype)) for row in acc for frag in row for v in frag),
        ]
        # The row of its matrix (lane // 8) that this lane supplies to ldmatrix, as offsets (rows,
        # k) from the fragment's corner. A: matrix j at rows + 8 (j % 2), k + 8 (j // 2); B: n + 8
        # (j // 2) (the second n8 block), k + 8 (j % 2); the lane's row (lane % 8) runs along the
        # stage's rows, or along K for a transposed stage.
        offsets = {}
        for name, stage, second_block in (("a", a_stage, False), ("b", b_stage, True)):
            rows_at, depth_at = lowering.var(f"{name}_row"), lowering.var(f"{name}_k")
            row_matrix = (Ref(lane) // 16 if second_block else Ref(lane) // 8 % 2) * 8
            depth_matrix = (Ref(lane) // 8 % 2 if second_block else Ref(lane) // 16) * 8
            within = Ref(lane) % 8
            rows_off, depth_off = (row_matrix + within, depth_matrix) if stage.layout.depth_major else (
                row_matrix, depth_matrix + within)  # fmt: skip
            statements += [Assign(rows_at, rows_off), Assign(depth_at, depth_off)]
            offsets[name] = (rows_at, depth_at)
        if frags_n % 2:  # the last B fragment alone: matrices 2 and 3 repeat 0 and 1 (registers unused)
            rows_at = lowering.var("b_row_last")
            statements.append(Assign(rows_at, Ref(lane) % 8 if b_stage.layout.depth_major else Const(0, DType.i64)))
            offsets["b_last"] = (rows_at, offsets["b"][1])

        def compute(slot: Expr) -> list[Stmt]:
            k = Ref(ks) * 16
            step: list[Stmt] = []
            a_frags = []
            for mi in range(frags_m):
                corner = Ref(wm) * t.warp_m + mi * 16
                frag, loads = self._ldmatrix(f"a{mi}_", a_stage, slot, corner, k, offsets["a"])
                a_frags.append(frag)
                step += loads
            b_frags: list[list[Var]] = []
            for ni in range(0, frags_n, 2):
                corner = Ref(wn) * t.warp_n + ni * 8
                pair = offsets["b"] if ni + 1 < frags_n else offsets["b_last"]
                frag, loads = self._ldmatrix(f"b{ni}_", b_stage, slot, corner, k, pair)
                b_frags += [frag[:2], frag[2:]][: frags_n - ni]
                step += loads
            for mi in range(frags_m):
                for ni in range(frags_n):
                    d = [lowering.var(f"d{e}_", acc_dtype) for e in range(4)]
                    ops = (*map(Ref, a_frags[mi]), *map(Ref, b_frags[ni]), *map(Ref, acc[mi][ni]))
                    step += [Assign(d[e], Call(MMA[low], (*ops, Const(e, DType.i32)), acc_dtype)) for e in range(4)]
                    step += [Assign(acc[mi][ni][e], Ref(d[e])) for e in range(4)]
            return [For(ks, t.bk // 16, tuple(step), LoopKind.UNROLLED)]

        statements += self.pipeline([a_stage, b_stage], t.stages, t.bk, compute)
        corner = (Ref(wm) * t.warp_m, Ref(wn) * t.warp_n)
        for mi, ni, e, row, column in self.mma_accumulators(frags_m, frags_n, corner, group, quad):
            statements += self.write(Ref(self.i0) + row, Ref(self.j0) + column, Ref(acc[mi][ni][e]))
        return statements

    def _ldmatrix(self, stem: str, stage: OperandStage, slot: Expr, corner: Expr, k: Expr,
                  offsets: tuple[Var, Var]) -> tuple[list[Var], list[Stmt]]:  # fmt: skip
        """Four registers per lane from four 8 x 8 matrices of `stage` whose first is at (`corner`,
        `k`), this lane supplying the row at its `offsets` from there."""
        rows_at, depth_at = offsets
        layout = stage.layout
        row = Load(stage.tile, slot * layout.size + layout.at(corner + Ref(rows_at), k + Ref(depth_at)))
        name = "ldmatrix_x4" if layout.depth_major else "ldmatrix_x4_trans"
        frag = [self.lowering.var(f"{stem}{e}_", DType.i32) for e in range(4)]
        return frag, [Assign(v, Call(name, (row, Const(e, DType.i32)), DType.i32)) for e, v in enumerate(frag)]
