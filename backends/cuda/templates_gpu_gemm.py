"""GPU GEMM templates: a fused group whose one heavy node is a `matmul` or `gemm` (batched and
broadcast batches, gemm's transposes, alpha, beta and bias, the group's prologue and epilogue)
lowered straight to GPU-scheduled kernel IR. `backends.cuda.schedule.schedule_group` tries this
before the other templates (`backends.cuda.templates_gpu`).

The contraction itself (which element of A and B each (batch, i, k) and (batch, k, j) reads,
through transposes, broadcasts and casts, and what gemm does to a result before it is stored)
is the CPU template's (`backends.lowering.templates_gemm.contraction`), so both backends share
one definition of matmul and gemm; only the loops differ. Each block computes one BM x BN tile
of one batch (blocks in a row of tiles are neighbours, so they share A's rows in L2); the K loop
runs over `stages` shared-memory slots per operand, copying the next K step (with cp.async where
proven: `backends.cuda.gemm_staging`) while computing this one (`backends.cuda.gemm_block`):

- **f32: FMA tiles** (`gemm.fma`, here). T = (BM/TM) x (BN/TN) threads, each a TM x TN micro-tile
  of register accumulators; its rows are ty, ty + BM/TM, ... and its columns tx, tx + BN/TN, ...,
  so a warp reads consecutive shared-memory words (no bank conflicts) and writes consecutive
  columns (coalesced). A stage holds A's BK x BM (K-major, so A is transposed on the way unless
  gemm's trans_a stores it so) and B's BK x BN; out-of-range elements are 0, so edge tiles need no
  other guard; BK rank-1 updates (`fma`) per step.
- **f16/bf16: tensor cores** (`gemm.mma`, `backends.cuda.templates_gpu_mma`): warps own parts of
  the tile as m16n8 accumulator fragments, loaded from shared memory with ldmatrix, multiplied
  with mma.sync m16n8k16.
- **f32 under `allow_tf32`: TF32 tensor cores** (`gemm.tf32`, `backends.cuda.templates_gpu_tf32`):
  the same warp tiles with f32 stages, each fragment element rounded to TF32 as it is loaded,
  multiplied with mma.sync m16n8k8 .tf32; only when the user allows it (`compile(allow_tf32=True)`).

The group's outputs are written at the end from each accumulator, through the epilogue, as the
row template does: every output is computed at the position the accumulator belongs to, so a
group whose outputs read the product elsewhere falls back to the generic schedule. Batched
matmul ([B, M, K] x [B, K, N], batches broadcast) is a grid of batch x tiles of the same kernel.

Numerics: f32 accumulates with one rounding per step (fma) in k order, as the CPU does; the MMA
multiplies exactly and accumulates in f32 in the tensor cores' order (the lockstep interpreter:
in k order), then rounds once to f16/bf16 at the store. Both agree with the interpreter within
the lowering tests' tolerance. TF32 rounds each operand to 10 mantissa bits first: it agrees with
the interpreter run on TF32-rounded operands at that tolerance (`templates_gpu_tf32`).
"""

from __future__ import annotations

from dataclasses import dataclass

from backends.cuda.gemm_block import BlockTile
from backends.cuda.gemm_staging import Layout
from backends.cuda.templates_gpu_mma import MMA, MmaKernel, MmaTiles, choose_mma_tiles
from backends.cuda.templates_gpu_tf32 import Tf32Kernel, choose_tf32_tiles
from backends.lowering.group import EpilogueMismatch, GroupLowering, inlinable
from backends.lowering.templates_gemm import TEMPLATES_GEMM, Contraction, contraction
from ir import DType, Node
from ir.loop import WARP_SIZE, Assign, Call, Const, Expr, For, Kernel, Load, LoopKind, Ref, Stmt

__all__ = ["FmaTiles", "MmaTiles", "choose_fma_tiles", "choose_mma_tiles", "gemm_template"]


@dataclass(frozen=True)
class FmaTiles:
    """The f32 template's tile: a BM x BN block tile, BK of K per stage, TM x TN per thread,
    `stages` shared-memory slots per operand."""

    bm: int = 64
    bn: int = 64
    bk: int = 16
    tm: int = 4
    tn: int = 4
    stages: int = 2

    @property
    def threads(self) -> int:
        return (self.bm // self.tm) * (self.bn // self.tn)

    def __post_init__(self) -> None:
        if (self.bm % self.tm or self.bn % self.tn or self.threads % WARP_SIZE or self.threads > 1024
                or self.stages < 1):  # fmt: skip
            raise ValueError(f"FMA tiles need TM | BM, TN | BN, whole warps up to 1024 threads, a stage: {self}")


def choose_fma_tiles(m: int, n: int) -> FmaTiles:
    """128 x 128 tiles of 8 x 8 per thread where the output has room for them (more work per
    shared-memory read), 64 x 64 of 4 x 4 otherwise (more blocks for small outputs)."""
    return FmaTiles(128, 128, 8, 8, 8) if m >= 256 and n >= 256 else FmaTiles()


def gemm_template(
    node: Node, name: str, source: str = "", fma_tiles: FmaTiles | None = None, mma_tiles: MmaTiles | None = None,
    allow_tf32: bool = False,
) -> tuple[Kernel, str] | None:  # fmt: skip
    """The GPU kernel of the `fused` node `node` when its group is one matmul or gemm with
    elementwise work around it, and the template's name; None otherwise. The tiles default to
    `choose_fma_tiles`/`choose_mma_tiles` (tests force small ones to reach the edges); with
    `allow_tf32`, f32 runs on TF32 tensor cores (`templates_gpu_tf32`, `mma_tiles` or
    `choose_tf32_tiles`) instead of the FMA tiles."""
    if any(value.type.numel == 0 for value in node.outputs):
        return None
    lowering = GroupLowering(node.attrs["body"], name, source)
    anchors = [n for n in lowering.body.nodes if n.op != "const" and not inlinable(n)]
    if len(anchors) != 1 or anchors[0].op not in TEMPLATES_GEMM:
        return None
    (contraction_node,) = anchors
    (y,) = contraction_node.outputs
    operand_dtype = contraction_node.inputs[0].type.dtype
    if y.type.dtype != operand_dtype or operand_dtype not in (DType.f32, *MMA):
        return None  # f64 and integer contractions keep the generic schedule
    problem = contraction(lowering, contraction_node)
    shape = problem.shape
    try:
        if operand_dtype == DType.f32 and allow_tf32:
            builder: BlockTile = Tf32Kernel(
                lowering, contraction_node, problem, mma_tiles or choose_tf32_tiles(shape.m, shape.n)
            )
        elif operand_dtype == DType.f32:
            tiles = fma_tiles or choose_fma_tiles(shape.m, shape.n)
            builder = FmaKernel(lowering, contraction_node, problem, tiles)
        else:
            tiles = mma_tiles or choose_mma_tiles(shape.m, shape.n)
            builder = MmaKernel(lowering, contraction_node, problem, tiles)
        return builder.kernel(), builder.template
    except EpilogueMismatch:  # an output reads the product at another element: no thread holds it
        return None


class FmaKernel(BlockTile):
    template = "gemm.fma"

    def __init__(self, lowering: GroupLowering, node: Node, problem: Contraction, tiles: FmaTiles) -> None:
        super().__init__(lowering, node, problem, tiles.bm, tiles.bn)
        self.tiles = tiles
        self.threads = tiles.threads

    def body(self) -> list[Stmt]:
        t, shape, lowering = self.tiles, self.problem.shape, self.lowering
        dtype = shape.dtype
        columns_of_threads, rows_of_threads = t.bn // t.tn, t.bm // t.tm
        # K-major stages: a thread's TM rows (TN columns) of one k are a warp's consecutive words.
        # A's padding spreads its transposing stores over the banks.
        a_layout, b_layout = Layout(t.bm, t.bk, False, t.bm + 4), Layout(t.bn, t.bk, False, t.bn)
        a_stage = self.operand("a_tile", dtype, a_layout, t.stages, self.a, 0, self.along_depth(0))
        b_stage = self.operand("b_tile", dtype, b_layout, t.stages, self.b, 1, self.along_depth(1))
        ty, tx, kk = lowering.var("ty"), lowering.var("tx"), lowering.var("kk")
        acc = [[lowering.var(f"acc{r}_{c}_", dtype) for c in range(t.tn)] for r in range(t.tm)]
        a = [lowering.var(f"a{r}_", dtype) for r in range(t.tm)]
        b = [lowering.var(f"b{c}_", dtype) for c in range(t.tn)]
        statements: list[Stmt] = [
            Assign(ty, Ref(self.thread) // columns_of_threads),
            Assign(tx, Ref(self.thread) % columns_of_threads),
            *(Assign(v, Const(0.0, dtype)) for row in acc for v in row),
        ]

        def compute(slot: Expr) -> list[Stmt]:
            a_at, b_at = slot * a_layout.size + Ref(kk) * a_layout.pitch, slot * b_layout.size + Ref(kk) * t.bn
            step: list[Stmt] = []
            step += [Assign(a[r], Load(a_stage.tile, a_at + (Ref(ty) + r * rows_of_threads))) for r in range(t.tm)]
            step += [Assign(b[c], Load(b_stage.tile, b_at + (Ref(tx) + c * columns_of_threads))) for c in range(t.tn)]
            step += [
                Assign(acc[r][c], Call("fma", (Ref(a[r]), Ref(b[c]), Ref(acc[r][c])), dtype))
                for r in range(t.tm)
                for c in range(t.tn)
            ]
            return [For(kk, t.bk, tuple(step), LoopKind.UNROLLED)]

        statements += self.pipeline([a_stage, b_stage], t.stages, t.bk, compute)
        for r in range(t.tm):
            for c in range(t.tn):
                i = Ref(self.i0) + (Ref(ty) + r * rows_of_threads)
                j = Ref(self.j0) + (Ref(tx) + c * columns_of_threads)
                statements += self.write(i, j, Ref(acc[r][c]))
        return statements


# The names the other block-tile templates (convolution, int8) imported before the split.
_Tiled, _FmaKernel, _MmaKernel, _MMA = BlockTile, FmaKernel, MmaKernel, MMA
