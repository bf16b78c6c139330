"""GPU templates: fused groups lowered straight to GPU-scheduled kernel IR, for the group kinds
whose GPU form is not a CPU loop nest spread over threads. `backends.cuda.schedule.schedule_group`
tries them first and falls back to `gpu_schedule(lower_group(...))`.

- **Pointwise** (`_pointwise`): a group of elementwise and movement ops only: one output
  element per thread over a flat index, or V of them moved by 16-byte vector accesses where
  `templates_gpu_vector` proves it safe, with a grid-stride loop where the threads' shares
  outnumber `max_blocks` blocks.
- **Rows**: `templates_gpu_rows` (row reductions with warp shuffles, softmax, the norms).
- `write_outputs`: how every template that holds one element of its node's result per thread
  writes the group's outputs through the epilogue.

Numerics: per element, the same expressions as the CPU templates (`backends.lowering.templates`),
computed in f32 for f16/bf16; but a row's sum or max is combined in another order (strided
partial sums, then a tree), so sums differ from the serial interpreter by rounding (a few ulps
of the row's magnitude; max and min are exact). Tests compare with a tolerance for that reason.
"""

from __future__ import annotations

from collections.abc import Sequence

from backends.cuda.epilogue_scatter import reshape_index, scatter_outputs
from backends.cuda.templates_gpu_vector import plan_vectors
from backends.lowering.expr import flat_index, i64, unflatten

# The epilogue probe of the CPU lowering: `EpilogueMismatch` says an output reads the row's result at
# another position; `inlinable` is the lowering's rule for what is computed where it is read.
from backends.lowering.group import EpilogueMismatch, GroupLowering, inlinable
from ir import Node, Value
from ir.loop import (
    WARP_SIZE,
    Assign,
    Expr,
    For,
    If,
    Kernel,
    LoopKind,
    Ref,
    Stmt,
    Store,
    Var,
)

MAX_BLOCKS = 4096
"""Pointwise kernels launch at most this many blocks and loop over the rest (a grid stride)."""


def gpu_template(
    node: Node, name: str, source: str = "", threads_per_block: int = 256, max_blocks: int = MAX_BLOCKS
) -> tuple[Kernel, str] | None:
    """The GPU kernel of the `fused` node `node` by the pointwise template, and the template's
    name; None when the group holds a reduction or contraction (the row, GEMM and attention
    templates' modules take those) or is empty."""
    if any(value.type.numel == 0 for value in node.outputs):
        return None
    lowering = GroupLowering(node.attrs["body"], name, source)
    if any(n.op != "const" and not inlinable(n) for n in lowering.body.nodes):
        return None
    return _pointwise(lowering, threads_per_block, max_blocks), "pointwise"


# -- pointwise -----------------------------------------------------------------------------------


def _pointwise(lowering: GroupLowering, threads_per_block: int, max_blocks: int) -> Kernel:
    """One output element per thread: element o of every output (of fewer elements: where o is
    below their count); or, where `plan_vectors` proves it safe, V consecutive elements per thread
    moved by 16-byte vector accesses, the last thread writing the elements past the last whole
    vector one at a time."""
    outputs = lowering.body.outputs
    count = max(v.type.numel for v in outputs)
    offset = lowering.var("o")  # the thread's first element
    plan = plan_vectors(lowering, offset)
    width = plan.width if plan is not None else 1
    units = -(-count // width)  # what one thread takes: an element or a vector (the last: the tail)
    threads = min(threads_per_block, -(-units // WARP_SIZE) * WARP_SIZE)
    blocks = min(-(-units // threads), max_blocks)
    strides = -(-units // (blocks * threads))
    block, thread = lowering.var("block"), lowering.var("thread")
    if plan is None:
        work: list[Stmt] = _element_stores(lowering, Ref(offset), count)
    else:
        whole = count // width * width
        work = list(plan.statements)
        if whole < count:  # the tail: elements whole .. count - 1, on the thread at offset `whole`
            j = lowering.var("j")
            tail = For(j, count - whole, tuple(_element_stores(lowering, Ref(offset) + Ref(j), count)))
            work = [If(Ref(offset).lt(i64(whole)), tuple(work), (tail,))]
    first = Ref(block) * threads + Ref(thread)
    if strides == 1:
        position = first if width == 1 else first * width
        guarded = work if blocks * threads == units else [If(Ref(offset).lt(i64(count)), tuple(work))]
        body: list[Stmt] = [Assign(offset, position), *guarded]
    else:  # a grid stride: all blocks take a pass over the next blocks * threads units
        k = lowering.var("k")
        position = Ref(k) * (blocks * threads) + first
        position = position if width == 1 else position * width
        body = [For(k, strides, (Assign(offset, position), If(Ref(offset).lt(i64(count)), tuple(work))))]
    return kernel_of(lowering, (block, blocks), (thread, threads), body)


def _element_stores(lowering: GroupLowering, offset: Expr, count: int) -> list[Stmt]:
    """Element `offset` of every output (of fewer than `count` elements: where it has one)."""
    stores: list[Stmt] = []
    for value, buffer in zip(lowering.body.outputs, lowering.outputs):
        index = unflatten(offset, value.type.shape)
        store: Stmt = Store(buffer, flat_index(index, value.type.shape), lowering.element(value, index))
        if value.type.numel < count:
            store = If(offset.lt(i64(value.type.numel)), (store,))
        stores.append(store)
    return stores


def kernel_of(lowering: GroupLowering, block: tuple[Var, int], thread: tuple[Var, int], body: Sequence[Stmt]) -> Kernel:
    """The kernel whose every thread of every block runs `body`."""
    inner = For(thread[0], thread[1], tuple(body), LoopKind.THREAD_X)
    params = (*lowering.params, *lowering.outputs)
    outputs = tuple(range(len(lowering.params), len(params)))
    loop = For(block[0], block[1], (inner,), LoopKind.BLOCK_X)
    return Kernel(lowering.name, params, (loop,), tuple(lowering.locals), lowering.source, outputs)


def write_outputs(lowering: GroupLowering, value: Value, offset: Expr, result: Expr,
                  index: Sequence[Expr] | None = None) -> list[Stmt]:  # fmt: skip
    """Store every group output at flat `offset`, the node's `value` there being `result`: the
    epilogue reads it where it was computed, as `GroupLowering.store` does on the CPU. Every GPU
    template that holds one element of its node's result per thread writes through this.
    Outputs that are the result moved (reshaped and transposed, split) are written where the
    element lands in them (`epilogue_scatter`). A template that knows the element's `index` in
    `value` (flattening to `offset`) passes it: reads then index per axis, not by dividing `offset`."""
    try:
        return _write_in_place(lowering, value, offset, result, index)
    except EpilogueMismatch:
        return scatter_outputs(lowering, value, offset, result, index)


def _write_in_place(lowering: GroupLowering, value: Value, offset: Expr, result: Expr,
                    index: Sequence[Expr] | None) -> list[Stmt]:  # fmt: skip
    held = lowering.var("y", value.type.dtype)
    statements: list[Stmt] = [Assign(held, result.cast(value.type.dtype))]
    # The offset as `flat_index` writes it, which the epilogue's reads compare with (0 for a
    # one-element value, whichever row variable carried it).
    lowering.overrides[value] = (flat_index(unflatten(offset, value.type.shape), value.type.shape), Ref(held))
    try:
        for output, buffer in zip(lowering.body.outputs, lowering.outputs):
            if output.type.numel != value.type.numel:
                raise EpilogueMismatch
            shape = output.type.shape
            at = unflatten(offset, shape) if index is None else reshape_index(index, value.type.shape, shape)
            statements.append(Store(buffer, flat_index(at, shape), lowering.element(output, at)))
    finally:
        del lowering.overrides[value]
    return statements
