"""The TF32 tensor-core GEMM (`gemm.tf32`, `conv.tf32`): f32 contractions on mma.sync m16n8k8
with .tf32 operands and f32 accumulators, taken only when the user allows it
(`compile(..., target="cuda", allow_tf32=True)`; otherwise f32 runs on the FMA tiles of
`backends.cuda.templates_gpu_gemm`). `gemm_template` and `conv_template` build it.

The block tile, its K pipeline and the writes are `gemm_block.BlockTile`'s, the warp grid the f16
template's (`templates_gpu_mma.MmaTiles`): warps of WARPS_M x WARPS_N each own m16n8 accumulator
fragments. Each operand's stage keeps its global contiguous axis contiguous (so cp.async copies
16-byte vectors of four f32), padded so that a warp's fragment reads hit 32 distinct banks: lane
(group, quad) reads element (row group, k quad) of a fragment, at group * pitch + quad in a stage
whose rows are K-contiguous (pitch / 4 odd: BK + 4) and at quad * pitch + group in one stored
K-major (pitch / 8 odd: rows + 8, or + 16). ldmatrix moves 16-bit elements, so each lane loads its
f32 fragment elements from shared memory itself, by the PTX ISA's m16n8k8 .tf32 layout
(group = lane / 4, quad = lane % 4): A's a0..a3 at (group, quad), (group + 8, quad), (group,
quad + 4), (group + 8, quad + 4), B's b0, b1 at (k quad, column group), (k quad + 4, column group).

Each fragment element is rounded to TF32 once as it is loaded (`tf32_round`: cvt.rna.tf32.f32,
nearest with ties away from zero, 10 mantissa bits), not per product: an A fragment serves
WARP_N / 8 products and a B fragment WARP_M / 16. The lockstep interpreter gives both intrinsics
their meaning (`ir.loop.lockstep_tf32`) independently of the CUDA prelude's twins.

Numerics: each operand loses its 13 low mantissa bits (a relative error up to 2^-11 each), the
products of TF32 values are exact, and they accumulate in f32 (the interpreters: in k order, one
rounding per step; the device: its own order). So the result is, to f32 accumulation accuracy,
the exact product of the TF32-rounded operands, and within about 2^-10 * sum |a||b| of the f32
product: what the user opts into for tensor-core speed.
"""

from __future__ import annotations

from backends.cuda.gemm_block import BlockTile
from backends.cuda.gemm_staging import Layout, OperandStage
from backends.cuda.templates_gpu_mma import MmaTiles
from backends.lowering.group import GroupLowering
from backends.lowering.templates_gemm import Contraction
from ir import DType, Node
from ir.loop import WARP_SIZE, Assign, Call, Const, Expr, For, Load, LoopKind, Ref, Stmt, Var

__all__ = ["TF32_MMA", "TF32_ROUND", "Tf32Kernel", "choose_tf32_tiles"]

TF32_MMA = "mma_m16n8k8_tf32"
"""The tensor-core `Call` (`ir.loop.lockstep_tf32`): four A and two B elements (TF32 values in
f32 registers), four C elements, and the index of the D element it gives."""
TF32_ROUND = "tf32_round"
"""f32 -> TF32 (as f32): cvt.rna.tf32.f32."""
K_STEP = 8
"""The MMA's depth."""


def choose_tf32_tiles(m: int, n: int) -> MmaTiles:
    """128 x 128 over 8 warps (64 x 32 each) for large outputs, 64 x 64 over 4 warps otherwise;
    BK = 16 (f32 stages are twice the f16 ones: 2 stages of 128 x 128 take 40 KiB)."""
    return MmaTiles(128, 128, 16, 2, 4) if m >= 256 and n >= 256 else MmaTiles(64, 64, 16, 2, 2)


def _pitch(layout_rows: int, depth: int, depth_major: bool) -> int:
    """The padded row length of a stage (see the module doc: conflict-free fragment reads)."""
    if depth_major:
        return depth + 4  # depth is a multiple of 8: the pitch is 4 times an odd number
    return layout_rows + (8 if layout_rows % 16 == 0 else 16)  # 8 times an odd number


class Tf32Kernel(BlockTile):
    template = "gemm.tf32"

    def __init__(self, lowering: GroupLowering, node: Node, problem: Contraction, tiles: MmaTiles) -> None:
        super().__init__(lowering, node, problem, tiles.bm, tiles.bn)
        if tiles.bk % K_STEP:
            raise ValueError(f"TF32 tiles need BK a multiple of {K_STEP}: {tiles}")
        self.tiles = tiles
        self.threads = tiles.threads

    def _stage(self, stem: str, operand: int, rows: int) -> OperandStage:
        t = self.tiles
        depth_first = self.along_depth(operand)
        layout = Layout(rows, t.bk, depth_first, _pitch(rows, t.bk, depth_first))
        element = self.a if operand == 0 else self.b
        return self.operand(stem, DType.f32, layout, t.stages, element, operand, depth_first)

    def body(self) -> list[Stmt]:
        t, lowering = self.tiles, self.lowering
        a_stage, b_stage = self._stage("a_tile", 0, t.bm), self._stage("b_tile", 1, t.bn)
        warp, lane, group, quad = (lowering.var(name) for name in ("warp", "lane", "group", "quad"))
        wm, wn, ks = lowering.var("wm"), lowering.var("wn"), lowering.var("ks")
        frags_m, frags_n = t.warp_m // 16, t.warp_n // 8
        acc = [[[lowering.var(f"c{mi}_{ni}_{e}_", DType.f32) for e in range(4)] for ni in range(frags_n)]
               for mi in range(frags_m)]  # fmt: skip
        # This lane's element of the warp's first fragment in each stage: (row group, k quad).
        a_lane, b_lane = lowering.var("a_lane"), lowering.var("b_lane")
        statements: list[Stmt] = [
            Assign(warp, Ref(self.thread) // WARP_SIZE),
            Assign(lane, Ref(self.thread) % WARP_SIZE),
            Assign(group, Ref(lane) // 4),
            Assign(quad, Ref(lane) % 4),
            Assign(wm, Ref(warp) // t.warps_n),
            Assign(wn, Ref(warp) % t.warps_n),
            Assign(a_lane, a_stage.layout.at(Ref(wm) * t.warp_m + Ref(group), Ref(quad))),
            Assign(b_lane, b_stage.layout.at(Ref(wn) * t.warp_n + Ref(group), Ref(quad))),
            *(Assign(v, Const(0.0, DType.f32)) for row in acc for frag in row for v in frag),
        ]

        def fragment(
            stem: str, stage: OperandStage, at: Var, slot: Expr, places: list[tuple[int, Expr]]
        ) -> tuple[list[Var], list[Stmt]]:
            """Registers loaded from `stage` at (rows, k) `places` from this lane's element, rounded."""
            layout = stage.layout
            registers = [lowering.var(f"{stem}{e}_", DType.f32) for e in range(len(places))]
            elements = [Load(stage.tile, slot * layout.size + Ref(at) + layout.at(r, k)) for r, k in places]
            return registers, [Assign(v, Call(TF32_ROUND, (row,), DType.f32)) for v, row in zip(registers, elements)]

        def compute(slot: Expr) -> list[Stmt]:
            k = Ref(ks) * K_STEP
            step: list[Stmt] = []
            a_frags, b_frags = [], []
            for mi in range(frags_m):  # a0..a3: rows + 0, 8, 0, 8 and k + 0, 0, 4, 4 from the lane's element
                row = mi * 16
                places = [(row, k), (row + 8, k), (row, k + 4), (row + 8, k + 4)]
                registers, loads = fragment(f"a{mi}_", a_stage, a_lane, slot, places)
                a_frags.append(registers)
                step += loads
            for ni in range(frags_n):  # b0, b1: k + 0, 4 of column ni * 8 + group (a row of B's stage)
                registers, loads = fragment(f"b{ni}_", b_stage, b_lane, slot, [(ni * 8, k), (ni * 8, k + 4)])
                b_frags.append(registers)
                step += loads
            for mi in range(frags_m):
                for ni in range(frags_n):
                    d = [lowering.var(f"d{e}_", DType.f32) for e in range(4)]
                    ops = (*map(Ref, a_frags[mi]), *map(Ref, b_frags[ni]), *map(Ref, acc[mi][ni]))
                    step += [Assign(d[e], Call(TF32_MMA, (*ops, Const(e, DType.i32)), DType.f32)) for e in range(4)]
                    step += [Assign(acc[mi][ni][e], Ref(d[e])) for e in range(4)]
            return [For(ks, t.bk // K_STEP, tuple(step), LoopKind.UNROLLED)]

        statements += self.pipeline([a_stage, b_stage], t.stages, t.bk, compute)
        corner = (Ref(wm) * t.warp_m, Ref(wn) * t.warp_n)
        for mi, ni, e, row, column in self.mma_accumulators(frags_m, frags_n, corner, group, quad):
            statements += self.write(Ref(self.i0) + row, Ref(self.j0) + column, Ref(acc[mi][ni][e]))
        return statements
