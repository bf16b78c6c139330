"""int8 convolutions on tensor cores: a fused group whose one heavy node is a `conv_integer` (1-D
or 2-D, i8 weights, u8 or i8 activations, no zero points or zero ones: what `passes.quantize_conv`
and `passes.qdq` leave) with its dequantizing epilogue, as an implicit GEMM on the int8 MMA tile of
`templates_gpu_quant` (mma.sync m16n8k32, s32 accumulators) with the im2col addressing of
`templates_gpu_conv` (`conv_contraction`, reading the stored bytes, padding taps as 0).
`backends.cuda.schedule.schedule_group` tries it beside the int8 GEMM, before the float templates.

The float conv template's GEMM is y[m, p] = W[m, k] * X(k, p) (A the weight). The MMA here takes
A's bytes as u8 or s8 and B's as s8 (`mma_m16n8k32_u8s8`, `_s8s8`), and static quantization makes
u8 activations and i8 weights, so the roles swap: per image and group

    y^T[p, m] = sum over k of X^T(p, k) * W^T(k, m)    A: im2col rows (output pixels), B: the weight

Rows of the tile are output pixels, columns output channels. Staging A, the block's threads take
consecutive pixels (the contiguous axis of NCHW); staging B, consecutive words along K (the
weight [Cout, Cin/g * taps] is K-contiguous). Each word packs 4 bytes of K computed by im2col's
division of k into channel and tap, padding taps and bytes past K read as 0 behind guards whose
unchosen side is never evaluated. The accumulators go through the group's epilogue (the cast to
f32, the activation's and the weight's scales, the compile-time z * rowsum(w) of static mode, bias,
residual, activation, the next layer's quantize) at (channel, pixel) in NCHW.

Exact: the i32 accumulators wrap as the interpreter's (both are the true sum modulo 2^32).
Zero points that are not 0 (an x zero point makes padding taps read z), u8 weights, depthwise and
3-D convolutions are declined: they take the generic schedule.
"""

from __future__ import annotations

from backends.cuda.templates_gpu_conv import SPATIAL_AXES, conv_contraction
from backends.cuda.templates_gpu_mma import MmaTiles
from backends.cuda.templates_gpu_quant import MMA_S8, Int8MmaKernel
from backends.lowering.expr import const
from backends.lowering.group import EpilogueMismatch, GroupLowering, inlinable
from backends.lowering.int8_kernel import is_zero
from backends.lowering.templates_gemm import Contraction, GemmShape
from backends.lowering.templates_quant import _Operand
from ir import DType, Node
from ir.loop import Expr, Kernel

__all__ = ["choose_int8_conv_tiles", "int8_conv_template"]


def choose_int8_conv_tiles(pixels: int, channels: int) -> MmaTiles:
    """4 warps, 64 of K per stage, one stage; the channel side (N) as narrow as the output's
    channels per group allow (16, 32 or 64: a small conv's Cout leaves most of a 64-wide tile
    idle), 128 pixels per block for large outputs, 64 otherwise."""
    bn = 16 if channels <= 16 else 32 if channels <= 32 else 64
    return MmaTiles(128 if pixels >= 256 else 64, bn, 64, 2, 2, stages=1)


def int8_conv_template(
    node: Node, name: str, source: str = "", tiles: MmaTiles | None = None
) -> tuple[Kernel, str] | None:
    """The GPU kernel of the `fused` node `node` when its group is one `conv_integer` of the module
    doc's form with elementwise work around it, and the template's name ("conv.mma_s8"); None
    otherwise. `tiles` defaults to `choose_int8_conv_tiles`; BK a multiple of 32, one stage."""
    if any(value.type.numel == 0 for value in node.outputs):
        return None
    lowering = GroupLowering(node.attrs["body"], name, source)
    anchors = [n for n in lowering.body.nodes if n.op != "const" and not inlinable(n)]
    if len(anchors) != 1 or anchors[0].op != "conv_integer":
        return None
    (conv,) = anchors
    x, w, *points = conv.inputs
    if x.type.rank - 2 not in SPATIAL_AXES or w.type.dtype != DType.i8 or x.type.dtype not in MMA_S8:
        return None
    if not all(is_zero(lowering, point) for point in points):
        return None
    if conv.attrs["groups"] > 1 and w.type.shape[1] == 1:
        return None  # depthwise: K is one channel's taps, no GEMM for the tile
    problem = _transposed(conv_contraction(lowering, conv, lowering.element, const(0, x.type.dtype)))
    shape = problem.shape
    if shape.k == 0:
        return None
    try:
        builder = _Int8ConvKernel(
            lowering, conv, problem, tiles or choose_int8_conv_tiles(shape.m, shape.n), _Operand(x, None),
            _Operand(w, None),
        )  # fmt: skip
        return builder.kernel(), builder.template
    except EpilogueMismatch:  # an output reads the product at another element: no thread holds it
        return None


def _transposed(conv: Contraction) -> Contraction:
    """The conv's GEMM with A and B exchanged (the module doc): rows are pixels, columns channels."""
    s = conv.shape
    return Contraction(
        GemmShape(s.batch, s.n, s.m, s.k, s.dtype),
        conv.batch_shape,
        lambda index, i, k: conv.b(index, k, i),
        lambda index, k, j: conv.a(index, j, k),
        lambda index, i, j, acc: conv.write(index, j, i, acc),
    )


class _Int8ConvKernel(Int8MmaKernel):
    template = "conv.mma_s8"
    a_along_k = False  # im2col rows are output pixels: consecutive threads, consecutive pixels
    b_along_k = True  # the weight's rows are K-contiguous

    def a_byte(self, i: Expr, k: Expr) -> Expr:
        return self.problem.a(self.batch_index, i, k)

    def b_byte(self, j: Expr, k: Expr) -> Expr:
        return self.problem.b(self.batch_index, k, j)
