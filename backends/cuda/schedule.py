"""GPU schedules: a lowered, CPU-style kernel (`backends.lowering`) rewritten into its GPU form,
still kernel IR, so that the CUDA printer (`backends.cuda.codegen`) only prints.

This is the first, correct-but-simple schedule. A kernel whose body is exactly one PARALLEL loop
(the runtime's work split on the CPU, whose iterations lowering made independent) runs one
iteration per GPU thread:

    parallel for i in 0..N { body }
becomes
    block.x for b in 0..ceil(N/T) {
      thread.x for t in 0..T {
        i = b * T + t
        if i < N { body }          (only when T does not divide N)
      }
    }

Any other kernel (serial nests, several loop nests in sequence with local buffers between them)
runs as one thread of one block: correct and slow; the real GPU templates (row reductions with
warp shuffles, tensor-core GEMM, ...) replace these per group kind. Parallel loops left inside
run serially on their thread, so they become SERIAL here. LOCAL buffers stay per-thread arrays,
which is what they are on the CPU (private to one worker, reused across its iterations).

Launch dimensions are derived from the kernel IR itself (`launch_dims`, defined beside the
lockstep interpreter that runs such kernels): the grid along an axis is the extent of its BLOCK
loop, the block the extent of its THREAD loop; the printer reads them for `__launch_bounds__`,
the runtime for the launch.

`schedule_group` is the entry point for a `fused` node: a GPU template
(`backends.cuda.templates_gpu_rows`: row reductions with warp shuffles; `templates_gpu`: pointwise;
`templates_gpu_attention`: fused flash-style attention; `templates_gpu_gemm`: matmul/gemm tiles,
FMA for f32, tensor cores for f16/bf16; `templates_gpu_conv`: convolutions as implicit GEMMs on
those tiles; `templates_gpu_quant`, `templates_gpu_quant_conv`: int8 GEMMs and convolutions on the
int8 MMA) where one fits the group, this generic
schedule of the CPU lowering otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from backends.cuda.templates_gpu import MAX_BLOCKS, gpu_template
from backends.cuda.templates_gpu_attention import attention_template
from backends.cuda.templates_gpu_conv import conv_template
from backends.cuda.templates_gpu_gemm import gemm_template
from backends.cuda.templates_gpu_quant import int8_gemm_template
from backends.cuda.templates_gpu_quant_conv import int8_conv_template
from backends.cuda.templates_gpu_rows import rows_template
from backends.lowering.group import lower_group
from ir import Node, print_graph
from ir.loop.lockstep import Dim3, launch_dims
from ir.loop.nodes import WARP_SIZE, Assign, Const, For, If, Kernel, LoopKind, Ref, Scope, Stmt, Var

WARP = WARP_SIZE
"""Threads per warp: block sizes are rounded up to whole warps."""

__all__ = ["GpuKernel", "gpu_schedule", "launch_dims", "schedule_group"]


@dataclass(frozen=True)
class GpuKernel:
    """A `fused` node's kernel, scheduled for the GPU, with its launch."""

    kernel: Kernel
    grid: Dim3
    block: Dim3
    template: str
    """What scheduled it: a GPU template ("rows.softmax", "pointwise", ...), or "spread" (one
    iteration of a parallel loop per thread) or "single-thread" (`gpu_schedule`'s fallbacks)."""

    @property
    def shared_bytes(self) -> int:
        """Static shared memory per block."""
        return sum(b.size * b.dtype.itemsize for b in self.kernel.locals if b.scope is Scope.SHARED)


def schedule_group(
    node: Node, name: str, threads_per_block: int = 256, threads_per_row: int | None = None,
    max_blocks: int = MAX_BLOCKS, allow_tf32: bool = False,
) -> GpuKernel:  # fmt: skip
    """The GPU kernel of the `fused` node `node`: by the GPU template that fits its group, else
    by `gpu_schedule` of its CPU lowering. `threads_per_row` forces the row templates' width (a
    power of two; above 32, a block per row) and `max_blocks` the pointwise grid (tests use both
    to reach the block reduction and the grid stride on small shapes). `allow_tf32` lets f32
    GEMMs and convolutions run on TF32 tensor cores (`templates_gpu_tf32`)."""
    source = print_graph(node.attrs["body"], max_constant_elements=4)
    templated = (
        int8_gemm_template(node, name, source)
        or int8_conv_template(node, name, source)
        or gemm_template(node, name, source, allow_tf32=allow_tf32)
        or conv_template(node, name, source, allow_tf32=allow_tf32)
        or attention_template(node, name, source, threads_per_row)
        or rows_template(node, name, source, threads_per_row)
        or gpu_template(node, name, source, threads_per_block, max_blocks)
    )
    if templated is not None:
        kernel, template = templated
        grid, block = launch_dims(kernel)
    else:
        kernel, (grid, block) = gpu_schedule(lower_group(node, name), threads_per_block)
        template = "single-thread" if block == (1, 1, 1) else "spread"
    return GpuKernel(kernel, grid, block, template)


def gpu_schedule(kernel: Kernel, threads_per_block: int = 256) -> tuple[Kernel, tuple[Dim3, Dim3]]:
    """The GPU form of `kernel` and its launch dimensions `(grid, block)`."""
    if threads_per_block <= 0 or threads_per_block % WARP or threads_per_block > 1024:
        raise ValueError(f"threads_per_block must be a multiple of {WARP} in {WARP}..1024, got {threads_per_block}")
    body = kernel.body
    if len(body) == 1 and isinstance(body[0], For) and body[0].kind is LoopKind.PARALLEL:
        body = (_spread(body[0], threads_per_block),)
    else:
        body = _serialize(body)
    scheduled = Kernel(kernel.name, kernel.params, body, kernel.locals, kernel.source, kernel.outputs)
    return scheduled, launch_dims(scheduled)


def _spread(loop: For, threads_per_block: int) -> For:
    """One iteration of `loop` per thread, over as many blocks as it takes."""
    extent = loop.extent
    threads = min(threads_per_block, -(-extent // WARP) * WARP)  # small loops: one block of whole warps
    blocks = -(-extent // threads)
    block, thread = Var("block", loop.var.dtype), Var("thread", loop.var.dtype)
    position = Ref(block) * Const(threads, loop.var.dtype) + Ref(thread)
    inner: tuple[Stmt, ...] = _serialize(loop.body)
    if blocks * threads != extent:
        inner = (If(Ref(loop.var).lt(Const(extent, loop.var.dtype)), inner),)
    body = (Assign(loop.var, position), *inner)
    return For(block, blocks, (For(thread, threads, body, LoopKind.THREAD_X),), LoopKind.BLOCK_X)


def _serialize(body: Sequence[Stmt]) -> tuple[Stmt, ...]:
    """`body` with its PARALLEL loops made SERIAL: they run on one GPU thread."""
    return tuple(_serialize_stmt(stmt) for stmt in body)


def _serialize_stmt(stmt: Stmt) -> Stmt:
    match stmt:
        case For(var, extent, body, kind):
            return For(var, extent, _serialize(body), LoopKind.SERIAL if kind is LoopKind.PARALLEL else kind)
        case If(condition, then, otherwise):
            return If(condition, _serialize(then), _serialize(otherwise))
    return stmt
