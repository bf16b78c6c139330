"""`backends.cpu.simplify`: a simplified index has the same value as the original at every point
of its loops' ranges (enumerated, on random index expressions), and the heads-split copy's
divisions cancel into a contiguous index."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from backends.cpu.simplify import simplify_index
from ir import DType
from ir.loop import Binary, Const, Expr, Ref, Var

I64 = DType.i64
VARS = (Var("a"), Var("b"), Var("c"))


def _evaluate(expr: Expr, env: dict[Var, int]) -> int:
    match expr:
        case Const(value=value):
            return value
        case Ref(var=var):
            return env[var]
        case Binary(op=op, a=a, b=b):
            x, y = _evaluate(a, env), _evaluate(b, env)
            if op in ("div", "mod"):  # C: truncating division, remainder with the dividend's sign
                q = abs(x) // abs(y) * (1 if (x >= 0) == (y > 0) else -1)
                return q if op == "div" else x - q * y
            return {"add": x + y, "sub": x - y, "mul": x * y}[op]
    raise AssertionError(expr)


def _expressions():
    leaves = st.one_of(st.sampled_from(VARS).map(Ref), st.integers(-3, 40).map(lambda v: Const(v, I64)))

    def grow(children):
        scaled = st.tuples(children, st.integers(-2, 64)).map(lambda t: Binary("mul", t[0], Const(t[1], I64)))
        summed = st.tuples(children, children).map(lambda t: Binary("add", *t))
        cut = st.tuples(children, st.sampled_from(("div", "mod")), st.integers(1, 70)).map(
            lambda t: Binary(t[1], t[0], Const(t[2], I64))
        )
        return st.one_of(scaled, summed, cut)

    return st.recursive(leaves, grow, max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(_expressions(), st.tuples(st.integers(1, 5), st.integers(1, 9), st.integers(1, 70)))
def test_a_simplified_index_has_the_same_value_everywhere(expr, extents):
    ranges = dict(zip(VARS, extents, strict=True))
    simpler = simplify_index(expr, ranges)
    for values in itertools.product(*(range(e) for e in extents)):
        env = dict(zip(VARS, values, strict=True))
        assert _evaluate(simpler, env) == _evaluate(expr, env), (expr, simpler, env)


def test_heads_split_divisions_cancel():
    """(i0 * 98304 + i1 * 768 + i3) read as [128, 3, 768] of a [128, 2304] result."""
    i0, i1, i3 = Var("i0"), Var("i1"), Var("i3")
    flat = Binary("add", Binary("add", Binary("mul", Ref(i0), Const(98304, I64)),
                                Binary("mul", Ref(i1), Const(768, I64))), Ref(i3))  # fmt: skip
    row = Binary("mod", Binary("div", flat, Const(768, I64)), Const(128, I64))
    ranges = {i0: 3, i1: 128, i3: 768}
    assert simplify_index(row, ranges) == Ref(i1)
    assert simplify_index(Binary("div", flat, Const(98304, I64)), ranges) == Ref(i0)
    assert simplify_index(Binary("mod", flat, Const(768, I64)), ranges) == Ref(i3)
    # i3 may reach 768 with a wider loop: nothing cancels
    assert simplify_index(row, {**ranges, i3: 769}) == row
