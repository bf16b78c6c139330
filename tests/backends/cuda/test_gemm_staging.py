"""The index analysis that proves cp.async vectors safe (`backends.cuda.gemm_staging`): `linear`
writes an integer expression as coefficients times atoms plus a constant, which must equal the
expression for every value of its variables (property test), and `multiple_of` must never claim a
multiple that some value breaks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from backends.cuda.gemm_staging import linear, multiple_of
from ir import DType
from ir.loop import Binary, Const, Expr, Ref, Var

VARS = [Var("i"), Var("k"), Var("t")]


def _expressions() -> st.SearchStrategy[Expr]:
    leaves = st.one_of(st.sampled_from([Ref(v) for v in VARS]), st.integers(0, 40).map(lambda n: Const(n, DType.i64)))

    def extend(children: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
        constants = st.integers(1, 24).map(lambda n: Const(n, DType.i64))
        return st.one_of(
            st.tuples(st.sampled_from(["add", "sub", "mul"]), children, children).map(lambda t: Binary(*t)),
            st.tuples(st.sampled_from(["div", "mod", "mul"]), children, constants).map(lambda t: Binary(*t)),
        )

    return st.recursive(leaves, extend, max_leaves=8)


def _evaluate(expr: Expr, values: dict[Var, int]) -> int:
    match expr:
        case Const(value, _):
            return int(value)
        case Ref(var):
            return values[var]
        case Binary(op, a, b):
            x, y = _evaluate(a, values), _evaluate(b, values)
            match op:
                case "add":
                    return x + y
                case "sub":
                    return x - y
                case "mul":
                    return x * y
                case "div":  # C: towards zero
                    return abs(x) // abs(y) * (1 if (x >= 0) == (y > 0) else -1)
                case "mod":
                    return x - y * (abs(x) // abs(y) * (1 if (x >= 0) == (y > 0) else -1))
    raise AssertionError(expr)


@settings(max_examples=300, deadline=None)
@given(_expressions(), st.lists(st.integers(0, 1000), min_size=3, max_size=3))
def test_the_linear_form_equals_the_expression(expr, numbers):
    values = dict(zip(VARS, numbers, strict=True))
    terms, constant = linear(expr)
    assert sum(c * _evaluate(atom, values) for atom, c in terms.items()) + constant == _evaluate(expr, values)


@settings(max_examples=300, deadline=None)
@given(_expressions(), st.sampled_from([2, 4, 8]), st.lists(st.integers(0, 1000), min_size=3, max_size=3))
def test_a_proven_multiple_holds_for_every_value(expr, count, numbers):
    """`t` is known to be a multiple of 8 (a tile origin); the proof may use that and nothing else."""
    t = Ref(VARS[2])
    values = dict(zip(VARS, numbers, strict=True))
    values[VARS[2]] -= values[VARS[2]] % 8
    if multiple_of(expr, count, {t: 8}):
        assert _evaluate(expr, values) % count == 0


def test_a_row_major_index_is_proven_aligned_only_when_its_strides_are():
    i, k, i0 = (Ref(Var(name)) for name in ("i", "k", "i0"))
    rows_of_24 = (i0 + i) * 24 + k * 8
    assert multiple_of(rows_of_24, 8, {i0: 64}) and not multiple_of(rows_of_24 + 4, 8, {i0: 64})
    assert multiple_of(rows_of_24 + 4, 4, {i0: 64})
    assert not multiple_of((i0 + i) * 20 + k * 8, 8, {i0: 64})  # a row of 20 breaks 8-element vectors
    assert multiple_of(i0 + k * 8, 8, {i0: 64}) and not multiple_of(i0 + k * 8, 8, {})
