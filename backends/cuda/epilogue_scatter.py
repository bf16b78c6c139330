"""Epilogues that move a template's result: a GPU template holds one element of its node's
result per thread (a GEMM accumulator, a row's softmax value) and writes the group's outputs from
it (`templates_gpu.write_outputs`). When the outputs are the result reshaped, transposed, split or
sliced (a QKV projection split into queries, keys and values; an attention output projection
transposed back before its residual add), the element a thread holds lands at *another* position
of each output. This module finds that position by pushing the held element's index forward
through the movement ops, the inverse of the index maps `backends.lowering.indexing` reads with:

    reshape, flatten, squeeze, unsqueeze   same row-major offset, unflattened in the new shape
    transpose                              the index permuted
    split, slice (step 1)                  the axis shifted back, guarded to the piece's range
    elementwise ops                        the same index (the moved value is not broadcast)

Each output element is then computed by the CPU lowering's `element`, with the held value
standing for the result at whatever position it is read (`GroupLowering.overrides` with no
offset). That is sound only because the values that depend on the result form a tree in which
each op reads exactly one of them, once, element for element: then the one read of the result
behind an output element is the read at the pushed position. `scatter_outputs` checks that, and
that the tree writes every output, and raises `EpilogueMismatch` otherwise (the caller then
falls back to the generic schedule).

Index arithmetic is per axis where it can be: a caller that knows the held element's index (a
GEMM's (batch, row, column)) hands it over, and a reshape moves only the axes it regroups
(`reshape_index`: [M, 3 * D] -> [M, 3, D] divides the column by D and leaves the row alone). A
thread holds a few rows and a few columns of a tile, so the compiler shares each division among
the row's or column's elements; dividing each element's flat offset instead cost BERT's QKV
projection (fp16, sm_90) 254 registers and a spill.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from backends.lowering.expr import Unflattened, flat_index, i64, unflatten
from backends.lowering.group import EpilogueMismatch, GroupLowering, inlinable
from backends.lowering.indexing import INDEXING, _slice_axes
from ir import Node, Value
from ir.loop import Assign, Binary, Expr, If, Ref, Stmt, Store

__all__ = ["reshape_index", "scatter_outputs"]

_SAME_ORDER = frozenset({"reshape", "flatten", "squeeze", "unsqueeze"})

Placed = tuple[Value, Sequence[Expr], Expr | None]
"""A value of the tree, the index the held element has in it, and the condition that it is there."""


def scatter_outputs(lowering: GroupLowering, value: Value, offset: Expr, result: Expr,
                    index: Sequence[Expr] | None = None) -> list[Stmt]:  # fmt: skip
    """Store every group output element that the element of `value` at flat `offset` (whose
    value is `result`) becomes, through the movement and elementwise ops between them. `index`,
    when given, is that element's index in `value` (flattening to `offset`)."""
    placed = _push(lowering, value, unflatten(offset, value.type.shape) if index is None else index)
    reached = {v for v, _, _ in placed}
    if any(output not in reached for output in lowering.body.outputs):
        raise EpilogueMismatch  # an output that is not made of the result: no thread holds it
    held = lowering.var("y", value.type.dtype)
    statements: list[Stmt] = [Assign(held, result.cast(value.type.dtype))]
    lowering.overrides[value] = (None, Ref(held))
    try:
        for output, index, inside in placed:
            at = flat_index(index, output.type.shape)
            element = lowering.element(output, index)
            stores = tuple(
                Store(buffer, at, element) for v, buffer in zip(lowering.body.outputs, lowering.outputs) if v is output
            )
            if stores:
                statements += [If(inside, stores)] if inside is not None else list(stores)
    finally:
        del lowering.overrides[value]
    return statements


def _push(lowering: GroupLowering, value: Value, index: Sequence[Expr]) -> list[Placed]:
    """Every value that depends on `value`, with the held element's index in it (and a guard),
    checking that they form a tree of one-read-per-element ops."""
    body = lowering.body
    placed: list[Placed] = []
    seen: set[int] = set()
    pending: list[Placed] = [(value, index, None)]
    while pending:
        current, at, inside = pending.pop()
        placed.append((current, at, inside))
        readers = [node for node in body.nodes if current in node.inputs]
        for node in readers:
            if id(node) in seen or sum(v is current for v in node.inputs) != 1 or not inlinable(node):
                raise EpilogueMismatch  # a value read twice, or an op that reads two tree values
            seen.add(id(node))
            pending += _forward(node, current, at, inside)
    return placed


def _forward(node: Node, source: Value, index: Sequence[Expr], inside: Expr | None) -> list[Placed]:
    """Where `node`'s outputs hold the element of its input `source` at `index`."""
    out = node.outputs[0]
    if node.op in _SAME_ORDER:
        return [(out, reshape_index(index, source.type.shape, out.type.shape), inside)]
    if node.op == "transpose":
        return [(out, [index[axis] for axis in node.attrs["perm"]], inside)]
    if node.op == "split":
        axis = node.attrs["axis"] % source.type.rank
        pieces, start = [], 0
        for value, size in zip(node.outputs, node.attrs["sizes"]):
            pieces.append((value, *_window(index, axis, start, size, source.type.shape[axis], inside)))
            start += size
        return pieces
    if node.op == "slice":
        at, guard = list(index), inside
        for axis, (start, step) in enumerate(_slice_axes(node)):
            if step != 1:
                raise EpilogueMismatch
            at, guard = _window(at, axis, start, out.type.shape[axis], source.type.shape[axis], guard)
        return [(out, at, guard)]
    if node.op in INDEXING or len(node.outputs) != 1 or out.type.shape != source.type.shape:
        raise EpilogueMismatch  # expand, tile, pad, concat, gather; a broadcast elementwise read
    if node.op == "batch_norm" and node.inputs[0] is not source:
        raise EpilogueMismatch
    return [(out, index, inside)]


def reshape_index(index: Sequence[Expr], source: Sequence[int], target: Sequence[int]) -> Unflattened:
    """The index in `target` of the element at `index` of a tensor of shape `source` reshaped
    (row-major) to `target`. The axes are split into the smallest groups whose sizes multiply
    alike on both sides ([B, M, N] -> [B, M, H, D]: (B), (M), (N -> H, D)); an axis alone in its
    group on both sides keeps its index, the others are flattened and unflattened within their
    group only. The result flattens back to `index`'s offset (`Unflattened`)."""
    offset = flat_index(index, source)
    source, target = tuple(source), tuple(target)
    if math.prod(source) != math.prod(target) or math.prod(target) == 0:
        return unflatten(offset, target)
    out: list[Expr] = []
    s = t = 0
    while t < len(target):
        while s < len(source) and source[s] == 1:
            s += 1  # a unit axis of the source holds index 0: it moves nothing
        if target[t] == 1 or s == len(source):
            out.append(i64(0))
            t += 1
            continue
        group_source, group_target = [s], [t]
        source_size, target_size = source[s], target[t]
        s, t = s + 1, t + 1
        while source_size != target_size:  # the products agree in the end: the sizes are equal overall
            if source_size < target_size:
                group_source.append(s)
                source_size *= source[s]
                s += 1
            else:
                group_target.append(t)
                target_size *= target[t]
                t += 1
        sizes = [target[axis] for axis in group_target]
        if len(group_source) == 1 and sum(size != 1 for size in sizes) == 1:
            out += [index[group_source[0]] if size != 1 else i64(0) for size in sizes]
            continue
        within = flat_index([index[axis] for axis in group_source], [source[axis] for axis in group_source])
        out += unflatten(within, sizes)
    return Unflattened(out, offset, target)


def _both(a: Expr | None, b: Expr) -> Expr:
    return b if a is None else Binary("and", a, b)


def _window(index: Sequence[Expr], axis: int, start: int, size: int, extent: int,
            inside: Expr | None) -> tuple[list[Expr], Expr | None]:  # fmt: skip
    """`index` shifted to a piece [start, start + size) of an axis of `extent`, and the guard."""
    at = list(index)
    position = at[axis]
    if start > 0:
        inside = _both(inside, position.ge(i64(start)))
        at[axis] = position - start
    if start + size < extent:
        inside = _both(inside, position.lt(i64(start + size)))
    return at, inside
