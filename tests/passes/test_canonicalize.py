"""canonicalize: the exact rules keep every output bit-identical, the full rule set stays within a
tolerance of the float64 oracle, a second run changes nothing, and each rule rewrites its
pattern (Before and Expected IR side by side) and leaves alone what it must not touch."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ir
from ir import DType, GraphBuilder, ShapeError
from ir.testing import assert_equivalent, graphs
from passes import Numerics, make_pass, parse_pipeline
from passes.attention_rules import ATTENTION
from passes.canonicalize import EXACT_RULES, RULES, holds_every_value
from tests.passes.canonical_cases import EXACT, FULL, canonical_and_stable, check_rule_case

# The inexact rules reassociate or rescale in f64 and round once more: a few ulps of f32, then
# what the following ops make of that.
RTOL, ATOL = 1e-5, 1e-5


# -- properties over random graphs ------------------------------------------------------------------


@given(graphs())
def test_exact_rules_keep_every_output_bit_identical(graph):
    assert_equivalent(graph, canonical_and_stable(graph, EXACT))


@given(graphs())
def test_all_rules_stay_close_to_the_oracle(graph):
    assert_equivalent(graph, canonical_and_stable(graph, FULL), oracle=True, rtol=RTOL, atol=ATOL)


# Random graphs over the whole op table rarely hold the chains these rules look for (a transpose
# feeding a matmul, a batch-norm after a conv with constant weights, a splat of -0.0), so this
# strategy builds chains of exactly such steps.

_FLOATS = (DType.f32, DType.f16, DType.bf16)


_IDENTITIES = {"mul": [1.0, -1.0], "div": [1.0], "pow": [1.0], "sub": [0.0], "add": [-0.0, 0.0]}


def _splat_constant(draw, b: GraphBuilder, v: ir.Value, op: str) -> ir.Value:
    """A constant of v's dtype, mostly holding the op's identity, as `const` or `full`."""
    value = draw(st.sampled_from(_IDENTITIES.get(op, [1.0]) * 3 + [2.0, 0.0]))
    value = value if v.type.dtype.is_float else int(value)
    shape = v.type.shape[draw(st.integers(0, v.type.rank)) :]  # a suffix: broadcasts to v
    if draw(st.integers(0, 4)) == 0:
        shape = (2, *v.type.shape)  # larger than v: must not be dropped
    if draw(st.booleans()):
        return b.full(shape=shape, value=value, dtype=v.type.dtype)
    return b.constant(np.full(shape, value, v.type.dtype.numpy), "k")


def _identity_arithmetic(draw, b, v, ops=("mul", "div", "sub", "add", "pow", "maximum", "minimum")):
    op = draw(st.sampled_from(ops))
    k = v if op in ("maximum", "minimum") and draw(st.booleans()) else _splat_constant(draw, b, v, op)
    return b.op(op, *((v, k) if draw(st.integers(0, 2)) else (k, v)))


def _unary_twice(draw, b, v, ops=("neg", "abs", "relu", "reciprocal", "floor", "round", "sign")):
    op = draw(st.sampled_from(ops))
    return b.op(op, b.op(op, v))


def _continuous_arithmetic(draw, b, v):
    # Not div or pow: x + 0 -> x turns a +0.0 into -0.0, and 1 / x or x ** -1 turn that into -inf.
    return _identity_arithmetic(draw, b, v, ops=("mul", "sub", "add", "maximum", "minimum"))


def _continuous_unary_twice(draw, b, v):
    return _unary_twice(draw, b, v, ops=("neg", "abs", "relu", "reciprocal"))


def _reshapes(draw, b, v):
    kind = draw(st.sampled_from(["unsqueeze", "flatten", "reshape", "squeeze_unsqueeze"]))
    if kind == "unsqueeze":
        return b.reshape(b.unsqueeze(v, axes=(0,)), shape=v.type.shape[::-1])
    if kind == "flatten":
        return b.reshape(b.flatten(v), shape=(*v.type.shape, 1))
    if kind == "reshape":
        return b.reshape(b.reshape(v, shape=(-1,)), shape=v.type.shape)
    return b.squeeze(b.unsqueeze(v, axes=(v.type.rank,)), axes=(-1,))


def _transposes(draw, b, v):
    perms = st.permutations(range(v.type.rank)).map(tuple)
    v = b.transpose(v, perm=draw(perms))
    return b.transpose(v, perm=draw(perms)) if draw(st.booleans()) else v


def _expand_or_slice(draw, b, v):
    if draw(st.booleans()):
        return b.expand(b.expand(v, shape=v.type.shape), shape=(2, *v.type.shape))
    step = draw(st.sampled_from([1, 1, -1, 2]))
    return b.slice(v, starts=(0 if step > 0 else -1,), ends=(2**62 if step > 0 else -(2**62),), steps=(step,))


def _casts(draw, b, v):
    middle, target = draw(st.sampled_from(list(DType))), draw(st.sampled_from([v.type.dtype, DType.f32, DType.i32]))
    return b.cast(b.cast(v, dtype=middle), dtype=target)


def _matmul(draw, b, v, rng):
    """v @ transpose(w), transpose(v) @ w, or v @ w, perhaps plus a bias; ints and floats."""
    if v.type.dtype not in (*_FLOATS, DType.f64, DType.i32) or v.type.rank < 1:
        raise ShapeError("no matmul here")
    k, n = v.type.shape[-1], draw(st.integers(1, 4))
    if draw(st.booleans()):
        product = b.matmul(v, b.transpose(_weights(b, rng, (n, k), v.type.dtype), perm=(1, 0)))
    elif v.type.rank == 2 and draw(st.booleans()):
        w = _weights(b, rng, (v.type.shape[0], n), v.type.dtype)
        transposed = b.transpose(v, perm=(1, 0))
        product = b.matmul(transposed, w) if draw(st.booleans()) else b.gemm(transposed, w, trans_a=True)
    else:
        product = b.matmul(v, _weights(b, rng, (k, n), v.type.dtype))
    if draw(st.booleans()):
        bias = _weights(b, rng, product.type.shape[-draw(st.integers(0, 1)) :], v.type.dtype)
        product = b.add(*((product, bias) if draw(st.booleans()) else (bias, product)))
    return product


def _batch_norm(draw, b, v, rng):
    """batch_norm after a conv (rank 4) or a gemm/matmul ([batch, features]), f32."""
    if v.type.dtype != DType.f32 or v.type.rank not in (2, 4):
        raise ShapeError("no batch_norm here")
    channels = draw(st.integers(1, 3))
    if v.type.rank == 4:
        w = _weights(b, rng, (channels, v.type.shape[1], 1, 1), DType.f32)
        bias = [_weights(b, rng, (channels,), DType.f32)] if draw(st.booleans()) else []
        y = b.conv(v, w, *bias)
    elif draw(st.booleans()):
        y = b.matmul(v, _weights(b, rng, (v.type.shape[1], channels), DType.f32))
    else:
        trans_b = draw(st.booleans())
        w = _weights(b, rng, (channels, v.type.shape[1]) if trans_b else (v.type.shape[1], channels), DType.f32)
        c = [_weights(b, rng, (channels,), DType.f32)] if draw(st.booleans()) else []
        y = b.gemm(v, w, *c, trans_b=trans_b, alpha=draw(st.sampled_from([1.0, 0.5])))
    scale, shift, mean = (_weights(b, rng, (channels,), DType.f32) for _ in range(3))
    var = b.constant(rng.uniform(0.5, 2, channels).astype(np.float32), "var")
    return b.batch_norm(y, scale, shift, mean, var)


def _weights(b: GraphBuilder, rng: np.random.Generator, shape, dtype: DType) -> ir.Value:
    return b.constant(rng.uniform(-1, 1, shape).astype(dtype.numpy) if dtype.is_float else rng.integers(-3, 4, shape))


_STEPS = [_identity_arithmetic, _unary_twice, _reshapes, _transposes, _expand_or_slice, _casts]
# No floor, round, sign or casts to integers: a rounding difference could make them jump.
_CONTINUOUS = [_continuous_arithmetic, _continuous_unary_twice, _reshapes, _transposes, _expand_or_slice]


@st.composite
def patterned_graphs(draw, continuous: bool = False) -> ir.Graph:
    """Chains of the steps above from one input; some intermediate values are outputs too, so
    rules meet values with other readers."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtypes = [DType.f32] if continuous else [DType.f32, DType.f16, DType.bf16, DType.i32, DType.f64]
    rank = draw(st.sampled_from([2, 4, 1, 3]))
    b = GraphBuilder("patterns")
    v = b.input("x", tuple(draw(st.integers(1, 3)) for _ in range(rank)), draw(st.sampled_from(dtypes)))
    outputs = []
    steps = _CONTINUOUS if continuous else _STEPS
    for _ in range(draw(st.integers(1, 5))):
        step = draw(st.sampled_from([*steps, _matmul, _batch_norm]))
        try:
            made = step(draw, b, v, rng) if step in (_matmul, _batch_norm) else step(draw, b, v)
        except ShapeError:
            continue
        if draw(st.integers(0, 3)) == 0:
            outputs.append(v)
        v = made
    return b.build(v, *outputs)


@given(patterned_graphs())
def test_exact_rules_on_rewritable_chains_are_bit_identical(graph):
    assert_equivalent(graph, canonical_and_stable(graph, EXACT))


@given(patterned_graphs(continuous=True))
def test_all_rules_on_rewritable_chains_stay_close_to_the_oracle(graph):
    assert_equivalent(graph, canonical_and_stable(graph, FULL), oracle=True, rtol=RTOL, atol=ATOL)


@given(patterned_graphs())
def test_all_rules_on_rewritable_chains_keep_types_and_verify(graph):
    after = canonical_and_stable(graph, FULL)
    assert [v.type for v in after.outputs] == [v.type for v in graph.outputs]


# -- each rule: Before and Expected ---------------------------------------------------------------

# (rule, before, expected); `canonicalize` (all rules) turns each Before into its Expected.
CASES = [
    (
        "mul_by_one",
        """\
graph @g(%x: f32[2,3]) -> (f32[2,3]) {
  %one = const @one : f32[3]
  %0 = mul(%one, %x) : f32[2,3]
  return %0
}

constants {
  @one : f32[3] = splat(1.0)
}
""",
        """\
graph @g(%x: f32[2,3]) -> (f32[2,3]) {
  return %x
}
""",
    ),
    (
        "div_by_one",
        """\
graph @g(%x: i32[2,3]) -> (i32[2,3]) {
  %one = const @one : i32[1]
  %0 = div(%x, %one) : i32[2,3]
  return %0
}

constants {
  @one : i32[1] = [1]
}
""",
        """\
graph @g(%x: i32[2,3]) -> (i32[2,3]) {
  return %x
}
""",
    ),
    (
        "pow_one",
        """\
graph @g(%x: f16[4]) -> (f16[4]) {
  %0 = full() {dtype=f16, shape=[], value=1.0} : f16[]
  %1 = pow(%x, %0) : f16[4]
  return %1
}
""",
        """\
graph @g(%x: f16[4]) -> (f16[4]) {
  return %x
}
""",
    ),
    (
        "sub_zero",
        """\
graph @g(%x: f32[4]) -> (f32[4]) {
  %0 = full() {dtype=f32, shape=[4], value=0.0} : f32[4]
  %1 = sub(%x, %0) : f32[4]
  return %1
}
""",
        """\
graph @g(%x: f32[4]) -> (f32[4]) {
  return %x
}
""",
    ),
    (
        "add_negative_zero",
        """\
graph @g(%x: f32[4]) -> (f32[4]) {
  %0 = full() {dtype=f32, shape=[4], value=-0.0} : f32[4]
  %1 = add(%0, %x) : f32[4]
  return %1
}
""",
        """\
graph @g(%x: f32[4]) -> (f32[4]) {
  return %x
}
""",
    ),
    (
        "add_zero",
        """\
graph @g(%x: f32[4]) -> (f32[4]) {
  %0 = full() {dtype=f32, shape=[4], value=0.0} : f32[4]
  %1 = add(%x, %0) : f32[4]
  return %1
}
""",
        """\
graph @g(%x: f32[4]) -> (f32[4]) {
  return %x
}
""",
    ),
    (
        "mul_by_minus_one",
        """\
graph @g(%x: i32[4]) -> (i32[4]) {
  %0 = full() {dtype=i32, shape=[1], value=-1.0} : i32[1]
  %1 = mul(%x, %0) : i32[4]
  return %1
}
""",
        """\
graph @g(%x: i32[4]) -> (i32[4]) {
  %0 = neg(%x) : i32[4]
  return %0
}
""",
    ),
    (
        "idempotent_pair",
        """\
graph @g(%x: f32[4], %y: bool[4]) -> (f32[4], bool[4]) {
  %0 = maximum(%x, %x) : f32[4]
  %1 = and(%y, %y) : bool[4]
  return %0, %1
}
""",
        """\
graph @g(%x: f32[4], %y: bool[4]) -> (f32[4], bool[4]) {
  return %x, %y
}
""",
    ),
    (
        "idempotent_twice",
        """\
graph @g(%x: f32[4]) -> (f32[4]) {
  %0 = relu(%x) : f32[4]
  %1 = relu(%0) : f32[4]
  %2 = floor(%1) : f32[4]
  %3 = floor(%2) : f32[4]
  return %3
}
""",
        """\
graph @g(%x: f32[4]) -> (f32[4]) {
  %0 = relu(%x) : f32[4]
  %1 = floor(%0) : f32[4]
  return %1
}
""",
    ),
    (
        "involution_twice",
        """\
graph @g(%x: f32[4], %y: bool[4]) -> (f32[4], bool[4]) {
  %0 = neg(%x) : f32[4]
  %1 = neg(%0) : f32[4]
  %2 = not(%y) : bool[4]
  %3 = not(%2) : bool[4]
  return %1, %3
}
""",
        """\
graph @g(%x: f32[4], %y: bool[4]) -> (f32[4], bool[4]) {
  return %x, %y
}
""",
    ),
    (
        "rounding_involution_twice",
        """\
graph @g(%x: f32[4]) -> (f32[4]) {
  %0 = reciprocal(%x) : f32[4]
  %1 = reciprocal(%0) : f32[4]
  return %1
}
""",
        """\
graph @g(%x: f32[4]) -> (f32[4]) {
  return %x
}
""",
    ),
    (
        "reshape_to_same_shape",
        """\
graph @g(%x: f32[2,3]) -> (f32[2,3]) {
  %0 = reshape(%x) {shape=[-1, 3]} : f32[2,3]
  return %0
}
""",
        """\
graph @g(%x: f32[2,3]) -> (f32[2,3]) {
  return %x
}
""",
    ),
    (
        "reshape_of_reshape",
        """\
graph @g(%x: f32[2,3]) -> (f32[3,2], f32[2,3]) {
  %0 = unsqueeze(%x) {axes=[0]} : f32[1,2,3]
  %1 = reshape(%0) {shape=[3, 2]} : f32[3,2]
  %2 = unsqueeze(%x) {axes=[2]} : f32[2,3,1]
  %3 = squeeze(%2) {axes=[2]} : f32[2,3]
  return %1, %3
}
""",
        """\
graph @g(%x: f32[2,3]) -> (f32[3,2], f32[2,3]) {
  %0 = reshape(%x) {shape=[3, 2]} : f32[3,2]
  return %0, %x
}
""",
    ),
    (
        "identity_transpose",
        """\
graph @g(%x: f32[2,3]) -> (f32[2,3]) {
  %0 = transpose(%x) {perm=[0, 1]} : f32[2,3]
  return %0
}
""",
        """\
graph @g(%x: f32[2,3]) -> (f32[2,3]) {
  return %x
}
""",
    ),
    (
        "transpose_of_transpose",
        """\
graph @g(%x: f32[2,3,4]) -> (f32[4,2,3], f32[2,3,4]) {
  %0 = transpose(%x) {perm=[1, 2, 0]} : f32[3,4,2]
  %1 = transpose(%0) {perm=[1, 2, 0]} : f32[4,2,3]
  %2 = transpose(%x) {perm=[0, 2, 1]} : f32[2,4,3]
  %3 = transpose(%2) {perm=[0, 2, 1]} : f32[2,3,4]
  return %1, %3
}
""",
        """\
graph @g(%x: f32[2,3,4]) -> (f32[4,2,3], f32[2,3,4]) {
  %0 = transpose(%x) {perm=[2, 0, 1]} : f32[4,2,3]
  return %0, %x
}
""",
    ),
    (
        "expand_to_same_shape",
        """\
graph @g(%x: f32[2,3]) -> (f32[2,3]) {
  %0 = expand(%x) {shape=[2, 3]} : f32[2,3]
  return %0
}
""",
        """\
graph @g(%x: f32[2,3]) -> (f32[2,3]) {
  return %x
}
""",
    ),
    (
        "expand_of_expand",
        """\
graph @g(%x: f32[3]) -> (f32[4,2,3]) {
  %0 = expand(%x) {shape=[2, 3]} : f32[2,3]
  %1 = expand(%0) {shape=[4, 2, 3]} : f32[4,2,3]
  return %1
}
""",
        """\
graph @g(%x: f32[3]) -> (f32[4,2,3]) {
  %0 = expand(%x) {shape=[4, 2, 3]} : f32[4,2,3]
  return %0
}
""",
    ),
    (
        "full_slice",
        """\
graph @g(%x: f32[2,1]) -> (f32[2,1]) {
  %0 = slice(%x) {axes=[0, 1], ends=[2, -3], starts=[0, 0], steps=[1, -1]} : f32[2,1]
  return %0
}
""",
        """\
graph @g(%x: f32[2,1]) -> (f32[2,1]) {
  return %x
}
""",
    ),
    (
        "no_padding",
        """\
graph @g(%x: f32[2,3]) -> (f32[2,3]) {
  %0 = pad(%x) {mode="reflect", pads=[0, 0, 0, 0]} : f32[2,3]
  return %0
}
""",
        """\
graph @g(%x: f32[2,3]) -> (f32[2,3]) {
  return %x
}
""",
    ),
    (
        "tile_once",
        """\
graph @g(%x: f32[2,3]) -> (f32[2,3]) {
  %0 = tile(%x) {repeats=[1, 1]} : f32[2,3]
  return %0
}
""",
        """\
graph @g(%x: f32[2,3]) -> (f32[2,3]) {
  return %x
}
""",
    ),
    (
        "concat_of_one",
        """\
graph @g(%x: f32[2,3]) -> (f32[2,3]) {
  %0 = concat(%x) {axis=1} : f32[2,3]
  return %0
}
""",
        """\
graph @g(%x: f32[2,3]) -> (f32[2,3]) {
  return %x
}
""",
    ),
    (
        "cast_to_same_dtype",
        """\
graph @g(%x: bf16[2]) -> (bf16[2]) {
  %0 = cast(%x) {dtype=bf16} : bf16[2]
  return %0
}
""",
        """\
graph @g(%x: bf16[2]) -> (bf16[2]) {
  return %x
}
""",
    ),
    (
        "lossless_cast_chain",
        """\
graph @g(%x: f16[2], %i: i8[2]) -> (f64[2], f16[2], i64[2]) {
  %0 = cast(%x) {dtype=f32} : f32[2]
  %1 = cast(%0) {dtype=f64} : f64[2]
  %2 = cast(%0) {dtype=f16} : f16[2]
  %3 = cast(%i) {dtype=i32} : i32[2]
  %4 = cast(%3) {dtype=i64} : i64[2]
  return %1, %2, %4
}
""",
        """\
graph @g(%x: f16[2], %i: i8[2]) -> (f64[2], f16[2], i64[2]) {
  %0 = cast(%x) {dtype=f64} : f64[2]
  %1 = cast(%i) {dtype=i64} : i64[2]
  return %0, %x, %1
}
""",
    ),
    (
        "transpose_into_matmul",
        """\
graph @g(%x: f32[5,2,3], %m: f32[3,2]) -> (f32[5,2,4], f32[2,4]) {
  %w = const @w : f32[4,3]
  %0 = transpose(%w) {perm=[1, 0]} : f32[3,4]
  %1 = matmul(%x, %0) : f32[5,2,4]
  %2 = transpose(%m) {perm=[1, 0]} : f32[2,3]
  %3 = matmul(%2, %0) : f32[2,4]
  return %1, %3
}

constants {
  @w : f32[4,3] = splat(0.5)
}
""",
        """\
graph @g(%x: f32[5,2,3], %m: f32[3,2]) -> (f32[5,2,4], f32[2,4]) {
  %w = const @w : f32[4,3]
  %0 = gemm(%x, %w) {trans_b=true} : f32[5,2,4]
  %1 = gemm(%m, %w) {trans_a=true, trans_b=true} : f32[2,4]
  return %0, %1
}

constants {
  @w : f32[4,3] = splat(0.5)
}
""",
    ),
    (
        "unexpand_matmul_operand",
        """\
graph @g(%x: f32[5,2,3], %w: f32[3,4], %v: f32[5,1,2]) -> (f32[5,2,4], f32[5,2,4]) {
  %0 = expand(%w) {shape=[5, 3, 4]} : f32[5,3,4]
  %1 = matmul(%x, %0) : f32[5,2,4]
  %2 = expand(%v) {shape=[5, 2, 2]} : f32[5,2,2]
  %3 = matmul(%2, %1) : f32[5,2,4]
  return %1, %3
}
""",
        """\
graph @g(%x: f32[5,2,3], %w: f32[3,4], %v: f32[5,1,2]) -> (f32[5,2,4], f32[5,2,4]) {
  %0 = matmul(%x, %w) : f32[5,2,4]
  %1 = expand(%v) {shape=[5, 2, 2]} : f32[5,2,2]
  %2 = matmul(%1, %0) : f32[5,2,4]
  return %0, %2
}
""",
    ),
    (
        "transpose_into_gemm",
        """\
graph @g(%m: f32[3,2], %w: f32[3,4]) -> (f32[2,4]) {
  %0 = transpose(%w) {perm=[1, 0]} : f32[4,3]
  %1 = gemm(%m, %0) {alpha=0.5, trans_a=true, trans_b=true} : f32[2,4]
  return %1
}
""",
        """\
graph @g(%m: f32[3,2], %w: f32[3,4]) -> (f32[2,4]) {
  %0 = gemm(%m, %w) {alpha=0.5, trans_a=true} : f32[2,4]
  return %0
}
""",
    ),
    (
        "bias_into_gemm",
        """\
graph @g(%x: f32[2,3], %w: f32[3,4], %b: f32[4]) -> (f32[2,4], i32[2,4]) {
  %0 = matmul(%x, %w) : f32[2,4]
  %1 = add(%b, %0) : f32[2,4]
  %2 = cast(%x) {dtype=i32} : i32[2,3]
  %3 = cast(%w) {dtype=i32} : i32[3,4]
  %4 = gemm(%2, %3) : i32[2,4]
  %5 = cast(%b) {dtype=i32} : i32[4]
  %6 = add(%4, %5) : i32[2,4]
  return %1, %6
}
""",
        """\
graph @g(%x: f32[2,3], %w: f32[3,4], %b: f32[4]) -> (f32[2,4], i32[2,4]) {
  %0 = gemm(%x, %w, %b) : f32[2,4]
  %1 = cast(%x) {dtype=i32} : i32[2,3]
  %2 = cast(%w) {dtype=i32} : i32[3,4]
  %3 = cast(%b) {dtype=i32} : i32[4]
  %4 = gemm(%1, %2, %3) : i32[2,4]
  return %0, %4
}
""",
    ),
    (
        "bias_into_gemm_low_precision",
        """\
graph @g(%x: f16[2,3], %w: f16[3,4], %b: f16[2,1]) -> (f16[2,4]) {
  %0 = matmul(%x, %w) : f16[2,4]
  %1 = add(%0, %b) : f16[2,4]
  return %1
}
""",
        """\
graph @g(%x: f16[2,3], %w: f16[3,4], %b: f16[2,1]) -> (f16[2,4]) {
  %0 = gemm(%x, %w, %b) : f16[2,4]
  return %0
}
""",
    ),
    (
        # factor = scale / sqrt(var + 1) = [2, 3]; bias' = (0 - mean) * factor + shift = [-1.5, 0]
        "batch_norm_into_conv",
        """\
graph @g(%x: f32[1,1,2,2]) -> (f32[1,2,2,2]) {
  %w = const @w : f32[2,1,1,1]
  %0 = conv(%x, %w) : f32[1,2,2,2]
  %scale = const @scale : f32[2]
  %shift = const @shift : f32[2]
  %mean = const @mean : f32[2]
  %var = const @var : f32[2]
  %1 = batch_norm(%0, %scale, %shift, %mean, %var) {epsilon=1.0} : f32[1,2,2,2]
  return %1
}

constants {
  @w : f32[2,1,1,1] = [1.0, 2.0]
  @scale : f32[2] = [4.0, 3.0]
  @shift : f32[2] = [0.5, 0.0]
  @mean : f32[2] = [1.0, 0.0]
  @var : f32[2] = [3.0, 0.0]
}
""",
        """\
graph @g(%x: f32[1,1,2,2]) -> (f32[1,2,2,2]) {
  %folded_weight = const @folded_weight : f32[2,1,1,1]
  %folded_bias = const @folded_bias : f32[2]
  %0 = conv(%x, %folded_weight, %folded_bias) : f32[1,2,2,2]
  return %0
}

constants {
  @folded_weight : f32[2,1,1,1] = [2.0, 6.0]
  @folded_bias : f32[2] = [-1.5, 0.0]
}
""",
    ),
    (
        # The same statistics on the columns of a linear layer: c' = c * factor + offset = [0.5, 3]
        "batch_norm_into_gemm",
        """\
graph @g(%x: f32[5,3]) -> (f32[5,2]) {
  %w = const @w : f32[2,3]
  %c = const @c : f32[2]
  %0 = gemm(%x, %w, %c) {trans_b=true} : f32[5,2]
  %scale = const @scale : f32[2]
  %shift = const @shift : f32[2]
  %mean = const @mean : f32[2]
  %var = const @var : f32[2]
  %1 = batch_norm(%0, %scale, %shift, %mean, %var) {epsilon=1.0} : f32[5,2]
  return %1
}

constants {
  @w : f32[2,3] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
  @c : f32[2] = splat(1.0)
  @scale : f32[2] = [4.0, 3.0]
  @shift : f32[2] = [0.5, 0.0]
  @mean : f32[2] = [1.0, 0.0]
  @var : f32[2] = [3.0, 0.0]
}
""",
        """\
graph @g(%x: f32[5,3]) -> (f32[5,2]) {
  %folded_weight = const @folded_weight : f32[2,3]
  %folded_bias = const @folded_bias : f32[2]
  %0 = gemm(%x, %folded_weight, %folded_bias) {trans_b=true} : f32[5,2]
  return %0
}

constants {
  @folded_weight : f32[2,3] = [2.0, 0.0, 0.0, 0.0, 3.0, 0.0]
  @folded_bias : f32[2] = [0.5, 3.0]
}
""",
    ),
    (
        "constant_second",
        """\
graph @g(%x: f32[3]) -> (f32[3]) {
  %c = const @c : f32[3]
  %0 = add(%c, %x) : f32[3]
  return %0
}

constants {
  @c : f32[3] = [1.0, 2.0, 3.0]
}
""",
        """\
graph @g(%x: f32[3]) -> (f32[3]) {
  %c = const @c : f32[3]
  %0 = add(%x, %c) : f32[3]
  return %0
}

constants {
  @c : f32[3] = [1.0, 2.0, 3.0]
}
""",
    ),
    (
        "constant_second_signed_zero",
        """\
graph @g(%x: f32[3]) -> (f32[3]) {
  %c = const @c : f32[3]
  %0 = maximum(%c, %x) : f32[3]
  return %0
}

constants {
  @c : f32[3] = [0.0, 2.0, 3.0]
}
""",
        """\
graph @g(%x: f32[3]) -> (f32[3]) {
  %c = const @c : f32[3]
  %0 = maximum(%x, %c) : f32[3]
  return %0
}

constants {
  @c : f32[3] = [0.0, 2.0, 3.0]
}
""",
    ),
]


def _special_inputs(graph: ir.Graph) -> list[np.ndarray]:
    """Inputs full of the values where float identities break: signed zeros, infinities, nan,
    subnormals; integers at their limits."""
    arrays = []
    for value in graph.inputs:
        dtype, shape = value.type.dtype, value.type.shape
        if dtype.is_float:
            pool = [-0.0, 0.0, np.inf, -np.inf, np.nan, 1e-45, -3.5, 1.0]
        elif dtype == DType.bool:
            pool = [True, False]
        else:
            pool = [np.iinfo(dtype.numpy).min, np.iinfo(dtype.numpy).max, 0, -1, 7]
        count = int(np.prod(shape))
        arrays.append(np.resize(np.array(pool).astype(dtype.numpy), count).reshape(shape))
    return arrays


@pytest.mark.parametrize(("rule", "before", "expected"), CASES, ids=[case[0] for case in CASES])
def test_each_rule_rewrites_its_pattern(rule, before, expected):
    check_rule_case(rule, before, expected, _special_inputs, RTOL, ATOL)


def test_every_rule_has_a_before_and_expected_case():
    # The attention rules have theirs in test_attention_rules.py.
    assert {rule.name for rule in RULES} - {rule.name for rule in ATTENTION} == {case[0] for case in CASES}


def test_matmul_then_add_in_f16_rounds_once_instead_of_twice():
    graph = ir.parse_graph(dict((c[0], c[1]) for c in CASES)["bias_into_gemm_low_precision"])
    # One f16 rounding of the sum instead of two: half an f16 ulp of the result at most.
    assert_equivalent(graph, FULL.run(graph), rtol=2**-10, atol=2**-14)


# (why it must stay, before) with all rules: canonicalize leaves these graphs as they are.
UNCHANGED = [
    (
        "the ones broadcast x to a larger shape",
        """\
graph @g(%x: f32[3]) -> (f32[2,3]) {
  %one = const @one : f32[2,3]
  %0 = mul(%x, %one) : f32[2,3]
  return %0
}

constants {
  @one : f32[2,3] = splat(1.0)
}
""",
    ),
    (
        "x - (-0.0) is x + 0.0, which turns -0.0 into +0.0",
        """\
graph @g(%x: f32[4]) -> (f32[4]) {
  %0 = full() {dtype=f32, shape=[4], value=-0.0} : f32[4]
  %1 = sub(%x, %0) : f32[4]
  return %1
}
""",
    ),
    (
        "the f16 in the middle rounds",
        """\
graph @g(%x: f32[2]) -> (f32[2]) {
  %0 = cast(%x) {dtype=f16} : f16[2]
  %1 = cast(%0) {dtype=f32} : f32[2]
  return %1
}
""",
    ),
    (
        "a float out of i8's range converts as the platform pleases, an i32 wraps",
        """\
graph @g(%x: i32[2]) -> (i8[2]) {
  %0 = cast(%x) {dtype=f64} : f64[2]
  %1 = cast(%0) {dtype=i8} : i8[2]
  return %1
}
""",
    ),
    (
        "the matmul is returned too: absorbing it into a gemm would compute it twice",
        """\
graph @g(%x: f32[2,3], %w: f32[3,4], %b: f32[4]) -> (f32[2,4], f32[2,4]) {
  %0 = matmul(%x, %w) : f32[2,4]
  %1 = add(%0, %b) : f32[2,4]
  return %1, %0
}
""",
    ),
    (
        "gemm takes a matrix b, not a batch of them",
        """\
graph @g(%x: f32[5,2,3], %w: f32[5,4,3]) -> (f32[5,2,4]) {
  %0 = transpose(%w) {perm=[0, 2, 1]} : f32[5,3,4]
  %1 = matmul(%x, %0) : f32[5,2,4]
  return %1
}
""",
    ),
    (
        "a reversing slice keeps the shape but not the order",
        """\
graph @g(%x: f32[3]) -> (f32[3]) {
  %0 = slice(%x) {ends=[-9223372036854775808], starts=[-1], steps=[-1]} : f32[3]
  return %0
}
""",
    ),
    (
        "the conv weights are an input, not a constant to rescale",
        """\
graph @g(%x: f32[1,1,2,2], %w: f32[2,1,1,1]) -> (f32[1,2,2,2]) {
  %0 = conv(%x, %w) : f32[1,2,2,2]
  %s = const @s : f32[2]
  %1 = batch_norm(%0, %s, %s, %s, %s) : f32[1,2,2,2]
  return %1
}

constants {
  @s : f32[2] = splat(1.0)
}
""",
    ),
    (
        "batch-norm's channel axis 1 is not the gemm's column axis in a rank-3 output",
        """\
graph @g(%x: f32[2,2,3]) -> (f32[2,2,2]) {
  %w = const @w : f32[3,2]
  %0 = gemm(%x, %w) : f32[2,2,2]
  %s = const @s : f32[2]
  %1 = batch_norm(%0, %s, %s, %s, %s) : f32[2,2,2]
  return %1
}

constants {
  @w : f32[3,2] = splat(1.0)
  @s : f32[2] = splat(1.0)
}
""",
    ),
    (
        "both operands are constants: fold_constants' business, not an order to fix",
        """\
graph @g() -> (f32[2]) {
  %a = const @a : f32[2]
  %b = const @b : f32[2]
  %0 = add(%a, %b) : f32[2]
  return %0
}

constants {
  @a : f32[2] = [1.0, 2.0]
  @b : f32[2] = [3.0, 4.0]
}
""",
    ),
]


@pytest.mark.parametrize(("why", "before"), UNCHANGED, ids=[case[0] for case in UNCHANGED])
def test_what_must_not_be_rewritten_is_not(why, before):
    assert str(FULL.run(ir.parse_graph(before))) == before


def test_only_exact_rules_promise_exact_numerics():
    assert FULL.numerics is Numerics.REASSOCIATING and EXACT.numerics is Numerics.EXACT
    (step,) = parse_pipeline("canonicalize{exact_only=true}")
    assert step == EXACT and step.numerics is Numerics.EXACT and str(step) == "canonicalize{exact_only=true}"
    assert make_pass("canonicalize").numerics is Numerics.REASSOCIATING
    assert all(rule.exact for rule in EXACT_RULES) and len(EXACT_RULES) < len(RULES)


def test_a_graph_already_canonical_comes_back_as_it_is():
    graph = ir.parse_graph(CASES[-1][2])
    assert FULL.run(graph) is graph


@pytest.mark.parametrize(
    ("source", "target", "lossless"),
    [
        (DType.f16, DType.f32, True),
        (DType.bf16, DType.f32, True),
        (DType.f32, DType.f64, True),
        (DType.f16, DType.bf16, False),  # bf16 has 7 significand bits to f16's 10
        (DType.bf16, DType.f16, False),  # f16 tops out at 65504
        (DType.f32, DType.f16, False),
        (DType.u8, DType.bf16, True),  # 0..255 needs 8 significant bits, bf16 has 8
        (DType.i32, DType.f32, False),  # 2**24 + 1
        (DType.i32, DType.f64, True),
        (DType.i64, DType.f64, False),
        (DType.u8, DType.i8, False),
        (DType.i8, DType.i64, True),
        (DType.bool, DType.u8, True),
        (DType.i32, DType.bool, False),
        (DType.f32, DType.i64, False),
    ],
)
def test_which_casts_hold_every_value(source, target, lossless):
    assert holds_every_value(source, target) is lossless
