"""`backends.cpu.independence`: a loop is called independent only when no two of its iterations
touch one element of a buffer it writes (checked by enumerating every access), and the loops that
lowering makes (a GEMM's blocks over unflattened panel and row indices, its per-k scalars inside
an edge tile's branch, its private panel and tile) are found independent."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from backends.cpu.independence import iterations_independent
from ir import DType
from ir.loop import Assign, Binary, Buffer, Const, Expr, For, If, Load, Ref, Scope, Store, Var

F32, I64 = DType.f32, DType.i64


def _c(value: int) -> Expr:
    return Const(value, I64)


def _evaluate(expr: Expr, env: dict[Var, int]) -> int:
    match expr:
        case Const(value=value):
            return value
        case Ref(var=var):
            return env[var]
        case Binary(op="add", a=a, b=b):
            return _evaluate(a, env) + _evaluate(b, env)
        case Binary(op="mul", a=a, b=b):
            return _evaluate(a, env) * _evaluate(b, env)
        case Binary(op="div", a=a, b=b):
            return _evaluate(a, env) // _evaluate(b, env)  # operands are never negative here
        case Binary(op="mod", a=a, b=b):
            return _evaluate(a, env) % _evaluate(b, env)
    raise AssertionError(expr)


def _touched(loop: For, inner: list[For], indices: list[Expr]) -> list[set[int]]:
    """The elements each iteration of `loop` touches, by enumeration."""
    per_iteration = []
    for i in range(loop.extent):
        seen = set()
        for values in itertools.product(*(range(f.extent) for f in inner)):
            env = {loop.var: i, **{f.var: v for f, v in zip(inner, values, strict=True)}}
            seen |= {_evaluate(index, env) for index in indices}
        per_iteration.append(seen)
    return per_iteration


@st.composite
def _loops(draw):
    """A loop over i whose body stores to `out` at sums of digits of i, inner indices and offsets."""
    extent = draw(st.integers(1, 12))
    i = Var("i")
    radix = draw(st.integers(1, 6))
    digit_forms = {
        "whole": [Ref(i)],
        "two digits": [Binary("mod", Ref(i), _c(radix)), Binary("div", Ref(i), _c(radix))],
        "nested": [Binary("mod", Ref(i), _c(radix)), Binary("mod", Binary("div", Ref(i), _c(radix)), _c(3))],
        "high digit only": [Binary("div", Ref(i), _c(radix))],
    }
    digits = digit_forms[draw(st.sampled_from(sorted(digit_forms)))]
    digit_coefficients = [draw(st.integers(0, 30)) for _ in digits]
    inner = [For(Var(f"j{k}"), draw(st.integers(1, 4)), ()) for k in range(draw(st.integers(0, 2)))]
    indices = []
    for _ in range(draw(st.integers(1, 3))):
        coefficients = digit_coefficients if draw(st.booleans()) else [draw(st.integers(0, 30)) for _ in digits]
        index: Expr = _c(draw(st.integers(0, 20)))
        for digit, c in zip(digits, coefficients, strict=True):
            index = Binary("add", index, Binary("mul", digit, _c(c)))
        for f in inner:
            index = Binary("add", index, Binary("mul", Ref(f.var), _c(draw(st.integers(0, 30)))))
        indices.append(index)
    size = 1 + max(max(s, default=0) for s in _touched(For(i, extent, ()), inner, indices))
    out = Buffer("out", F32, (size,))
    body: tuple = tuple(Store(out, index, Const(1.0, F32)) for index in indices)
    for f in reversed(inner):
        body = (For(f.var, f.extent, body),)
    return For(i, extent, body), inner, indices


@settings(max_examples=400, deadline=None)
@given(_loops())
def test_a_loop_called_independent_touches_disjoint_elements(drawn):
    loop, inner, indices = drawn
    if iterations_independent(loop):
        touched = _touched(loop, inner, indices)
        for a, b in itertools.combinations(range(len(touched)), 2):
            assert not touched[a] & touched[b], (a, b, sorted(touched[a] & touched[b]))


def _gemm_like(rows_per_tile: int = 6, tiles: int = 16, panels: int = 36, width: int = 64) -> For:
    """A GEMM's block loop: block = (panel, row block); each block stores rows_per_tile unrolled
    rows of a width-wide column panel for each of its row tiles (as `backends.lowering.panels`)."""
    n = panels * width
    out = Buffer("out", F32, (2 * tiles * rows_per_tile * n,))
    block, q, jj = Var("block"), Var("q"), Var("jj")
    row_block, panel = Binary("mod", Ref(block), _c(2)), Binary("mod", Binary("div", Ref(block), _c(2)), _c(panels))
    tile = Binary("add", Binary("mul", row_block, _c(tiles)), Ref(q))
    column = Binary("add", Binary("mul", panel, _c(width)), Ref(jj))
    stores = []
    for r in range(rows_per_tile):
        row = Binary("add", Binary("mul", tile, _c(rows_per_tile)), _c(r))
        index = Binary("add", Binary("mul", row, _c(n)), column)
        stores.append(For(jj, width, (Store(out, index, Const(0.0, F32)),)))
    return For(block, 2 * panels, (For(q, tiles, tuple(stores)),))


def test_a_gemm_block_loop_is_independent():
    assert iterations_independent(_gemm_like())
    # 65 columns at a step of 64: neighbouring panels overlap
    loop = _gemm_like(panels=4)
    tiles = loop.body[0]
    wider = For(tiles.body[0].var, 65, tiles.body[0].body)
    assert not iterations_independent(For(loop.var, loop.extent, (For(tiles.var, tiles.extent, (wider,)),)))


def test_private_locals_and_scalars_assigned_inside_a_branch():
    i, k, jj = Var("i"), Var("k"), Var("jj")
    a, out = Buffer("a", F32, (4, 8)), Buffer("out", F32, (4, 8))
    tile = Buffer("tile", F32, (8,), Scope.LOCAL)
    x = Var("x", F32)
    per_k = (Assign(x, Load(a, Binary("add", Binary("mul", Ref(i), _c(8)), Ref(k)))),
             For(jj, 8, (Store(tile, Ref(jj), Binary("add", Load(tile, Ref(jj)), Ref(x))),)))  # fmt: skip
    zero = For(jj, 8, (Store(tile, Ref(jj), Const(0.0, F32)),))
    write = For(jj, 8, (Store(out, Binary("add", Binary("mul", Ref(i), _c(8)), Ref(jj)), Load(tile, Ref(jj))),))
    branch = If(Binary("lt", Ref(i), _c(3)), (zero, For(k, 8, per_k), write), (zero, write))
    loop = For(i, 4, (branch,))
    assert iterations_independent(loop, frozenset({tile}))
    assert not iterations_independent(loop)  # the tile is shared unless it is the piece's own
    # the tile read before it is written: an iteration would see the one before
    late = For(i, 4, (If(Binary("lt", Ref(i), _c(3)), (For(k, 8, per_k), write)),))
    assert not iterations_independent(late, frozenset({tile}))
    # x assigned under a branch of its own and read after it: another iteration's value leaks
    leak = For(i, 4, (If(Binary("lt", Ref(i), _c(3)), (per_k[0],)), Store(out, Ref(i), Ref(x))))
    assert not iterations_independent(leak)
