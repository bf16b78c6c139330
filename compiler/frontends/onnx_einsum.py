"""ONNX Einsum lowered onto the IR's transpose, reshape, sum and matmul.

An equation `ab,bc->ac` is parsed into one letter list per operand (an ellipsis becomes
placeholder letters, aligned right as numpy broadcasting aligns them). Operands are combined
left to right: letters that no later operand and not the output need are summed away first,
then the two operands are transposed to [batch..., kept..., contracted] and [batch...,
contracted, kept...], the kept and contracted letters are merged so that one `matmul` does the
product (its batch axes broadcast), and the result is reshaped back to one axis per letter. The
last step transposes to the output's order. A letter repeated within one operand (a diagonal)
is not supported.
"""

from __future__ import annotations

import math

from compiler.frontends.onnx_context import NodeContext, UnsupportedNode
from ir import Value

_PLACEHOLDERS = "ΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠ"  # never ONNX equation letters (those are ASCII)


def _parse(equation: str, ranks: list[int]) -> tuple[list[str], str]:
    equation = equation.replace(" ", "")
    inputs_text, arrow, output_text = equation.partition("->")
    terms = inputs_text.split(",")
    if len(terms) != len(ranks):
        raise UnsupportedNode(f"equation {equation!r} names {len(terms)} operands, the node has {len(ranks)}")
    ellipsis_rank = max(
        (rank - len(term.replace("...", "")) for term, rank in zip(terms, ranks) if "..." in term), default=0
    )
    ellipsis = _PLACEHOLDERS[:ellipsis_rank]
    letters = []
    for term, rank in zip(terms, ranks):
        if "..." in term:
            own = rank - len(term.replace("...", ""))
            term = term.replace("...", ellipsis[ellipsis_rank - own :])
        if len(term) != rank:
            raise UnsupportedNode(f"equation term {term!r} for an operand of rank {rank}")
        if len(set(term)) != len(term):
            raise UnsupportedNode(f"a repeated letter within {term!r} (a diagonal)")
        letters.append(term)
    if arrow:
        output = output_text.replace("...", ellipsis)
    else:  # implicit output: the ellipsis, then the letters used once, alphabetically
        counts = {c: sum(t.count(c) for t in letters) for c in set("".join(letters)) - set(ellipsis)}
        output = ellipsis + "".join(sorted(c for c, n in counts.items() if n == 1))
    return letters, output


def _sum_away(ctx: NodeContext, x: Value, term: str, keep: set[str]) -> tuple[Value, str]:
    axes = tuple(i for i, c in enumerate(term) if c not in keep)
    if not axes:
        return x, term
    return ctx.op("sum", x, axes=axes, keepdims=False), "".join(c for c in term if c in keep)


def _transpose(ctx: NodeContext, x: Value, term: str, order: str) -> Value:
    perm = tuple(term.index(c) for c in order)
    return x if perm == tuple(range(len(perm))) else ctx.op("transpose", x, perm=perm)


def _size(sizes: dict[str, int], letters: str) -> int:
    return math.prod(sizes[c] for c in letters)


def _pair(ctx: NodeContext, a: Value, ta: str, b: Value, tb: str, keep: set[str]) -> tuple[Value, str]:
    """a (letters ta) times b (letters tb), summing over shared letters not in `keep`."""
    shared = [c for c in ta if c in tb]
    batch = "".join(c for c in shared if c in keep)
    contracted = "".join(c for c in shared if c not in keep)
    left = "".join(c for c in ta if c not in tb)
    right = "".join(c for c in tb if c not in ta)
    sizes_a = dict(zip(ta, a.type.shape))
    sizes_b = dict(zip(tb, b.type.shape))
    a = _transpose(ctx, a, ta, batch + left + contracted)
    b = _transpose(ctx, b, tb, batch + contracted + right)
    batch_a = tuple(sizes_a[c] for c in batch)
    batch_b = tuple(sizes_b[c] for c in batch)
    k = _size(sizes_a, contracted)
    a = ctx.op("reshape", a, shape=(*batch_a, _size(sizes_a, left), k))
    b = ctx.op("reshape", b, shape=(*batch_b, k, _size(sizes_b, right)))
    product = ctx.op("matmul", a, b)  # batch axes broadcast where one side has size 1
    batch_out = product.type.shape[: len(batch)]
    shape = (*batch_out, *(sizes_a[c] for c in left), *(sizes_b[c] for c in right))
    return ctx.op("reshape", product, shape=shape), batch + left + right


def einsum(ctx: NodeContext, equation: str, operands: list[Value]) -> Value:
    letters, output = _parse(equation, [v.type.rank for v in operands])
    dtype = operands[0].type.dtype
    operands = [ctx.cast(v, dtype) for v in operands]
    # Each operand first loses the letters that appear nowhere else.
    current, term = None, ""
    for index, (value, own) in enumerate(zip(operands, letters)):
        later = set(output).union(*letters[index + 1 :]) if index + 1 < len(letters) else set(output)
        needed = later | (set(term) if current is not None else set())
        value, own = _sum_away(ctx, value, own, needed | set())
        if current is None:
            current, term = _sum_away(ctx, value, own, later)
            continue
        current, term = _pair(ctx, current, term, value, own, later)
    current, term = _sum_away(ctx, current, term, set(output))
    return _transpose(ctx, current, term, output)
