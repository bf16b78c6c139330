"""`reshape_index`, which moves a GEMM's (batch, row, column) through the reshapes of a scattering
epilogue: for every reshape of every shape, the index it gives is numpy's (the row-major offset
unravelled in the new shape), and an axis that a reshape leaves alone keeps its index untouched,
so the division that regrouped axes need is made once per row or column, not per element."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from backends.cuda.epilogue_scatter import reshape_index
from backends.lowering.expr import flat_index
from ir.loop import Binary, Expr, Ref, Var
from ir.loop.interpreter import Evaluator


class _Values(Evaluator):
    """Evaluates index expressions over variables bound to integers."""

    kernel = None

    def __init__(self, values: dict[Var, int]) -> None:
        self.values = values

    def ref(self, var: Var):
        return np.int64(self.values[var])


def _divides(expr: Expr) -> set[str]:
    """The variables that a division or remainder in `expr` reads."""
    found: set[str] = set()

    def walk(e: Expr, under: bool) -> None:
        if isinstance(e, Ref):
            if under:
                found.add(e.var.name)
        elif isinstance(e, Binary):
            inner = under or e.op in ("div", "mod")
            walk(e.a, inner)
            walk(e.b, inner)

    walk(expr, False)
    return found


@st.composite
def reshapes(draw) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """A shape, another of the same size (its factors regrouped, unit axes anywhere) and an index."""
    factors = draw(st.lists(st.sampled_from([1, 2, 3, 4, 5]), min_size=1, max_size=6))

    def group(values: list[int]) -> tuple[int, ...]:
        cuts = sorted(draw(st.sets(st.integers(1, max(len(values) - 1, 1)), max_size=len(values))))
        pieces = [values[a:b] for a, b in zip([0, *cuts], [*cuts, len(values)], strict=True) if values[a:b]]
        shape = [math.prod(piece) for piece in pieces]
        for _ in range(draw(st.integers(0, 2))):
            shape.insert(draw(st.integers(0, len(shape))), 1)
        return tuple(shape)

    source, target = group(factors), group(factors)
    index = tuple(draw(st.integers(0, size - 1)) for size in source)
    return source, target, index


@given(reshapes())
def test_reshape_index_is_numpys_row_major_reshape(drawn):
    source, target, index = drawn
    variables = [Var(f"x{axis}") for axis in range(len(source))]
    moved = reshape_index([Ref(v) for v in variables], source, target)
    values = _Values(dict(zip(variables, index, strict=True)))
    want = np.unravel_index(np.ravel_multi_index(index, source), target)
    assert [int(values.eval(e)) for e in moved] == [int(w) for w in want]
    # It flattens back to the source's offset, as the epilogue's reads compare offsets.
    assert flat_index(moved, target) == flat_index([Ref(v) for v in variables], source)


def test_a_qkv_split_divides_only_the_column():
    """[B, M, 3 * H * D] -> [B, M, 3, H, D]: the batch and row pass through; only the column is divided."""
    batch, row, column = Var("b"), Var("i"), Var("j")
    moved = reshape_index([Ref(batch), Ref(row), Ref(column)], (2, 128, 2304), (2, 128, 3, 12, 64))
    assert moved[0] == Ref(batch) and moved[1] == Ref(row)
    assert all(_divides(e) == {"j"} for e in moved[2:])


def test_flattened_rows_are_divided_per_row_only():
    """A GEMM's rows are batch x sequence flattened: [1, 8 * 128, N] -> [8, 128, N]."""
    batch, row, column = Var("b"), Var("i"), Var("j")
    moved = reshape_index([Ref(batch), Ref(row), Ref(column)], (1, 1024, 768), (8, 128, 768))
    assert all(_divides(e) == {"i"} for e in moved[:2]) and moved[2] == Ref(column)
