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

Launch dimensions are derived from the kernel IR itself (`launch_dims`): the grid along an axis
is the extent of its BLOCK loop, the block the extent of its THREAD loop; the printer reads them
for `__launch_bounds__`, the runtime for the launch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from ir.loop.nodes import Assign, Const, For, If, Kernel, LoopKind, Ref, Stmt, Var

Dim3 = tuple[int, int, int]

_BLOCK_KINDS = (LoopKind.BLOCK_X, LoopKind.BLOCK_Y, LoopKind.BLOCK_Z)
_THREAD_KINDS = (LoopKind.THREAD_X, LoopKind.THREAD_Y, LoopKind.THREAD_Z)
WARP = 32
"""Threads per warp: block sizes are rounded up to whole warps."""


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


def launch_dims(kernel: Kernel) -> tuple[Dim3, Dim3]:
    """`(grid, block)` of a scheduled kernel: per axis, the largest extent of a loop bound to it
    (1 where none is); a kernel without GPU loops is one thread of one block."""
    grid, block = [1, 1, 1], [1, 1, 1]
    for loop in _loops(kernel.body):
        if loop.kind in _BLOCK_KINDS:
            axis = _BLOCK_KINDS.index(loop.kind)
            grid[axis] = max(grid[axis], loop.extent)
        elif loop.kind in _THREAD_KINDS:
            axis = _THREAD_KINDS.index(loop.kind)
            block[axis] = max(block[axis], loop.extent)
    return (grid[0], grid[1], grid[2]), (block[0], block[1], block[2])


def _loops(body: Sequence[Stmt]) -> Iterator[For]:
    for stmt in body:
        match stmt:
            case For(_, _, loop_body, _):
                yield stmt
                yield from _loops(loop_body)
            case If(_, then, otherwise):
                yield from _loops(then)
                yield from _loops(otherwise)
