"""canonicalize: algebraic simplification into one canonical form, by rewrite rules applied to a
fixpoint (`passes.rewrite`), then no dead nodes.

The rules, each with its identity next to it below, fall into six groups: identity arithmetic
(`x * 1 -> x`), ops applied twice (`neg(neg(x)) -> x`, `relu(relu(x)) -> relu(x)`), movement ops
that do nothing or compose (`reshape(reshape(x)) -> reshape(x)`, cast chains), contractions
(transposes folded into `gemm`, `matmul + bias -> gemm`, batch-norm folded into the weights of a
preceding conv or gemm), attention (in `passes.attention_rules`: batched matmuls freed of the
reshapes around them, `softmax(q @ k^T * c, masked) @ v -> scaled_dot_product_attention`) and a
canonical operand order (a commutative op takes its constant second, so CSE sees `x + c` and
`c + x` as one). Which ops a rule covers comes from the op table wherever the table says it
(`Law.IDEMPOTENT`, `Law.INVOLUTION`, `Law.COMMUTATIVE`). No rule changes an output's shape or
dtype, and a rule that would absorb a node others still read (a matmul into a gemm) waits until
it is the node's only reader, so no work is duplicated.

Numerics: reassociating. Most rules are exact (bit-identical in the reference interpreter); the
ones that are not say why and are marked `exact=False`:
  - `x + 0 -> x` (gives -0.0 where the original gave +0.0),
  - `reciprocal(reciprocal(x)) -> x` (1/(1/x) rounds twice),
  - `matmul + add -> gemm` in f16/bf16 (the gemm rounds once where matmul-then-add rounds twice),
  - batch-norm folding (rescaled weights round differently),
  - a constant holding a float zero moved second (maximum(0.0, -0.0) is -0.0, maximum(-0.0, 0.0)
    is 0.0: commuted operands differ only in the sign of a zero),
  - attention scaled by a division (the op multiplies by the reciprocal), in f16/bf16, or with an
    additive causal mask made `causal`, and matmuls freed of reshapes (numpy's matmul sums a
    strided operand in another order), see `passes.attention_rules`.
`canonicalize{exact_only=true}` applies the exact rules only, and promises exact numerics.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from functools import partial

import numpy as np

from ir import OPS, Graph, Law, Node, Value
from ir.dtype import LOW_PRECISION_FLOATS, DType
from passes.attention_rules import ATTENTION, RESHAPES
from passes.manager import Numerics, Pass, register_pass
from passes.rewrite import Rewriter, Rule, RuleTable, const, pat, rewrite_to_fixpoint, var

X, C = var("x"), const("c")  # any value, any constant


def _laws(law: Law, arity: int) -> frozenset[str]:
    """The ops with `law` that take `arity` inputs, from the op table."""
    return frozenset(name for name, op in OPS.items() if law in op.laws and len(op.inputs) == arity)


IDEMPOTENT_UNARY = _laws(Law.IDEMPOTENT, 1)  # f(f(x)) == f(x)
IDEMPOTENT_BINARY = _laws(Law.IDEMPOTENT, 2)  # f(x, x) == x
COMMUTATIVE = _laws(Law.COMMUTATIVE, 2)
# The table's involutions hold in exact arithmetic. These compute theirs without rounding (a sign
# flip, a logical not); any other (reciprocal) rounds, so f(f(x)) == x only approximately.
# Listed, not derived: the table does not say which ops round, and a new involution is safe here.
EXACT_INVOLUTIONS = frozenset({"neg", "not"}) & _laws(Law.INVOLUTION, 1)
ROUNDING_INVOLUTIONS = _laws(Law.INVOLUTION, 1) - EXACT_INVOLUTIONS


# -- identity arithmetic -------------------------------------------------------------------------


def _as_f64(array: np.ndarray) -> np.ndarray:
    return array.astype(np.float64)  # exact for every float dtype (bf16 too); ints: fine for 0 and ±1


def _all_equal_to(value: float) -> Callable[[np.ndarray], bool]:
    def holds(array: np.ndarray) -> bool:
        return bool(np.all(_as_f64(array) == value))

    return holds


def _all_zeros_of_sign(negative: bool) -> Callable[[np.ndarray], bool]:
    """Zeros whose sign bit is `negative` (an integer zero has no sign: always true there)."""

    def holds(array: np.ndarray) -> bool:
        f64 = _as_f64(array)
        return bool(np.all(f64 == 0) and (array.dtype.kind in "iub" or np.all(np.signbit(f64) == negative)))

    return holds


def _all_float_zeros(array: np.ndarray) -> bool:
    return DType.from_numpy(array.dtype).is_float and bool(np.all(_as_f64(array) == 0))


def _holds_float_zero(array: np.ndarray) -> bool:
    return DType.from_numpy(array.dtype).is_float and bool(np.any(_as_f64(array) == 0))


def drop_identity_operand(
    rw: Rewriter, node: Node, x: Value, c: Value, *, identity: Callable[[np.ndarray], bool]
) -> Value | None:
    """x op c -> x, where c holds the op's identity and broadcasts to no larger shape than x."""
    if node.output.type != x.type or not identity(rw.array(c)):
        return None
    return x


def negate_for_minus_one(rw: Rewriter, node: Node, x: Value, c: Value) -> Value | None:
    """x * -1 -> neg(x): the same values (a sign flip; only a nan's sign bit may differ, and a nan
    stays a nan), and one input fewer."""
    if node.output.type != x.type or x.type.dtype not in OPS["neg"].dtypes:
        return None
    return rw.op("neg", x) if _all_equal_to(-1)(rw.array(c)) else None


def keep_operand(rw: Rewriter, x: Value) -> Value:
    """f(x, x) -> x for idempotent binary f."""
    return x


def _identity_rule(name: str, op: str, identity: Callable[[np.ndarray], bool], exact: bool = True) -> Rule:
    return Rule(name, pat(op, X, C, name="node"), partial(drop_identity_operand, identity=identity), exact)


IDENTITY_ARITHMETIC = RuleTable(
    (
        _identity_rule("mul_by_one", "mul", _all_equal_to(1)),  # x * 1 -> x
        _identity_rule("div_by_one", "div", _all_equal_to(1)),  # x / 1 -> x
        _identity_rule("pow_one", "pow", _all_equal_to(1)),  # x ** 1 -> x (pow is exact there)
        # x - 0 -> x: exact for +0.0 (-0.0 - 0.0 = -0.0); x - (-0.0) is x + 0.0, which is not
        _identity_rule("sub_zero", "sub", _all_zeros_of_sign(negative=False)),
        # x + (-0) -> x: -0.0 is the additive identity of IEEE floats (and 0 that of integers)
        _identity_rule("add_negative_zero", "add", _all_zeros_of_sign(negative=True)),
        # x + 0 -> x: not exact, -0.0 + 0.0 = +0.0
        _identity_rule("add_zero", "add", _all_float_zeros, exact=False),
        Rule("mul_by_minus_one", pat("mul", X, C, name="node"), negate_for_minus_one),  # x * -1 -> neg(x)
        # f(x, x) -> x for idempotent binary ops (maximum, minimum, and, or)
        Rule("idempotent_pair", pat(IDEMPOTENT_BINARY, X, X), keep_operand),
    )
)


# -- unary ops applied twice ---------------------------------------------------------------------


def drop_repeated(rw: Rewriter, outer: Node, inner: Node) -> Value | None:
    """f(f(x)) -> f(x) for idempotent f."""
    return inner.output if inner.op == outer.op else None


def cancel_involution(rw: Rewriter, outer: Node, inner: Node, x: Value) -> Value | None:
    """f(f(x)) -> x for an involution f."""
    return x if inner.op == outer.op else None


def _twice(ops: frozenset[str], leaf=None):
    inner = pat(ops, leaf, name="inner") if leaf is not None else pat(ops, name="inner")
    return pat(ops, inner, name="outer")


REPEATED_UNARY = RuleTable(
    (
        Rule("idempotent_twice", _twice(IDEMPOTENT_UNARY), drop_repeated),  # relu(relu(x)) -> relu(x)
        Rule("involution_twice", _twice(EXACT_INVOLUTIONS, X), cancel_involution),  # neg(neg(x)) -> x
        # reciprocal(reciprocal(x)) -> x: not exact, 1/(1/x) rounds twice (and 1/x can overflow)
        Rule("rounding_involution_twice", _twice(ROUNDING_INVOLUTIONS, X), cancel_involution, exact=False),
    )
)


# -- movement ------------------------------------------------------------------------------------


def drop_if_same_type(rw: Rewriter, node: Node, x: Value) -> Value | None:
    """A movement op or cast whose result has the type of its input did nothing: -> x."""
    return x if node.output.type == x.type else None


def merge_reshapes(rw: Rewriter, node: Node, x: Value) -> Value:
    """reshape(reshape(x)) -> reshape(x) to the final shape (or x itself)."""
    shape = node.output.type.shape
    return x if x.type.shape == shape else rw.op("reshape", x, shape=shape)


def drop_identity_transpose(rw: Rewriter, node: Node, x: Value) -> Value | None:
    """transpose(x, [0, 1, ..., n-1]) -> x."""
    return x if node.attrs["perm"] == tuple(range(x.type.rank)) else None


def compose_transposes(rw: Rewriter, node: Node, inner: Node, x: Value) -> Value:
    """transpose(transpose(x, p), q) -> transpose(x, p[q]): output axis j is input axis p[q[j]]."""
    perm = tuple(inner.attrs["perm"][axis] for axis in node.attrs["perm"])
    return x if perm == tuple(range(x.type.rank)) else rw.op("transpose", x, perm=perm)


def merge_expands(rw: Rewriter, node: Node, x: Value) -> Value:
    """expand(expand(x, s), t) -> expand(x, t): broadcasting composes."""
    return rw.op("expand", x, shape=node.output.type.shape)


def drop_full_slice(rw: Rewriter, node: Node, x: Value) -> Value | None:
    """A slice that keeps the shape with step 1 on every axis longer than 1 takes everything."""
    if node.output.type != x.type:
        return None
    axes, steps = node.attrs["axes"] or range(len(node.attrs["starts"])), node.attrs["steps"]
    steps = steps or (1,) * len(node.attrs["starts"])
    return x if all(step == 1 or x.type.shape[axis] == 1 for axis, step in zip(axes, steps)) else None


def holds_every_value(source: DType, target: DType) -> bool:
    """Whether every value of `source` is a value of `target`, so a cast to `target` is lossless."""
    if source == target or source == DType.bool:
        return True  # bool is 0 or 1, which every type holds
    if target == DType.bool or (source.is_float and not target.is_float):
        return False
    if not target.is_float:
        inner, outer = np.iinfo(source.numpy), np.iinfo(target.numpy)
        return outer.min <= inner.min and inner.max <= outer.max
    bits, least, greatest = _float_format(target)
    if source.is_float:
        # Every significand fits, every subnormal is a multiple of target's least, every finite fits.
        source_bits, source_least, source_greatest = _float_format(source)
        return source_bits <= bits and least <= source_least and source_greatest <= greatest
    info = np.iinfo(source.numpy)  # integers are exact while they fit the significand
    return max(-int(info.min), int(info.max)) <= 2 ** min(bits + 1, greatest)


def _float_format(dtype: DType) -> tuple[int, int, int]:
    """(significand bits after the point, exponent of the least subnormal, exponent of the
    greatest finite power of two), measured on the dtype itself: numpy's finfo lacks bf16."""
    scalar = dtype.numpy.type

    def rounded(power: int, plus_one: bool = False) -> float:
        with np.errstate(all="ignore"):
            return float(scalar(float(np.ldexp(1.0, power)) + (1.0 if plus_one else 0.0)))

    bits = next(b for b in itertools.count() if rounded(-(b + 1), plus_one=True) == 1.0)
    least = next(e for e in itertools.count(0, -1) if rounded(e - 1) == 0.0)
    greatest = next(e for e in itertools.count() if not math.isfinite(rounded(e + 1)))
    return bits, least, greatest


def collapse_lossless_casts(rw: Rewriter, node: Node, inner: Node, x: Value) -> Value | None:
    """cast(cast(x, B), C) -> cast(x, C) when B holds every value of x's type: the inner cast
    then changes no value, and the outer one sees the values it would have seen (f16 -> f32 ->
    f64 is one cast; f32 -> f16 -> f32 rounds in the middle and stays)."""
    source, middle, target = x.type.dtype, inner.output.type.dtype, node.attrs["dtype"]
    if not holds_every_value(source, middle):
        return None
    # Integers wrap when cast to a narrower integer, but a float outside an integer's range
    # converts as the platform pleases (C leaves it undefined): into an integer, only through
    # integers (or from bool, always in range).
    if target.is_integer and middle.is_float and source != DType.bool:
        return None
    # Floats round correctly to a narrower float whatever the path, but integers do not all
    # round alike (some casts go through f32 first and round twice): from an integer into a
    # float, only where nothing rounds.
    if source.is_integer and target.is_float and not holds_every_value(source, target):
        return None
    return x if source == target else rw.op("cast", x, dtype=target)


def drop_no_padding(rw: Rewriter, node: Node, x: Value) -> Value | None:
    """pad(x, all zeros) -> x."""
    return x if not any(node.attrs["pads"]) else None


MOVEMENT = RuleTable(
    (
        # reshape(x, shape(x)) -> x, and likewise flatten, squeeze, unsqueeze that change nothing
        Rule("reshape_to_same_shape", pat(RESHAPES, X, name="node"), drop_if_same_type),
        # reshape(reshape(x)) -> reshape(x), also squeeze(unsqueeze(x)) -> x and the like
        Rule("reshape_of_reshape", pat(RESHAPES, pat(RESHAPES, X), name="node"), merge_reshapes),
        Rule("identity_transpose", pat("transpose", X, name="node"), drop_identity_transpose),  # perm 0..n-1
        # transpose(transpose(x, p), q) -> transpose(x, p[q]), or x
        Rule(
            "transpose_of_transpose",
            pat("transpose", pat("transpose", X, name="inner"), name="node"),
            compose_transposes,
        ),
        Rule("expand_to_same_shape", pat("expand", X, name="node"), drop_if_same_type),  # expand(x, shape(x)) -> x
        Rule("expand_of_expand", pat("expand", pat("expand", X), name="node"), merge_expands),
        Rule("full_slice", pat("slice", X, name="node"), drop_full_slice),  # x[:, :] -> x
        Rule("no_padding", pat("pad", X, name="node"), drop_no_padding),  # pad(x, 0) -> x
        Rule("tile_once", pat("tile", X, name="node"), drop_if_same_type),  # tile(x, [1, ..., 1]) -> x
        Rule("concat_of_one", pat("concat", X, name="node"), drop_if_same_type),  # concat([x]) -> x
        Rule("cast_to_same_dtype", pat("cast", X, name="node"), drop_if_same_type),  # cast(x: T, T) -> x
        # cast(cast(x: A, B), C) -> cast(x, C) where B holds every A
        Rule("lossless_cast_chain", pat("cast", pat("cast", X, name="inner"), name="node"), collapse_lossless_casts),
    )
)


# -- contractions --------------------------------------------------------------------------------


def _untransposed(rw: Rewriter, value: Value) -> Value | None:
    """m where `value` is transpose(m) of a matrix (perm [1, 0]), the transpose gemm absorbs."""
    node = rw.producer(value)
    return node.inputs[0] if node is not None and node.op == "transpose" and node.attrs["perm"] == (1, 0) else None


def matmul_to_gemm(rw: Rewriter, node: Node) -> Value | None:
    """matmul(a, transpose(w)) -> gemm(a, w){trans_b}; matmul(transpose(m), b) -> gemm(m, b){trans_a}.
    gemm's rule: b is a matrix, and a is one too where it is transposed. Exact: the same matmul of
    the same (transposed) arrays."""
    a, b = node.inputs
    plain_a, plain_b = _untransposed(rw, a), _untransposed(rw, b)
    if b.type.rank != 2 or (plain_a is None and plain_b is None):
        return None
    return rw.op(
        "gemm",
        a if plain_a is None else plain_a,
        b if plain_b is None else plain_b,
        trans_a=plain_a is not None,
        trans_b=plain_b is not None,
    )


def unexpand_matmul_operand(rw: Rewriter, node: Node) -> Value | None:
    """matmul(a, expand(b)) -> matmul(a, b) (and likewise for a) where the expand only stretches
    batch axes that matmul broadcasts anyway: torch's attention in-projection expands its
    [K, N] weight over the sequence ([S, K, N], S times the weight's bytes, in every interpreter
    run and compile-time sample); unexpanded, `transpose_into_matmul` makes it one gemm."""
    operands = list(node.inputs)
    for position, value in enumerate(operands):
        producer = rw.producer(value)
        if producer is None or producer.op != "expand":
            continue
        (source,) = producer.inputs
        if source.type.rank < 2 or source.type.shape[-2:] != value.type.shape[-2:]:
            continue  # the expand stretches a matrix axis (or makes the vector a matrix)
        operands[position] = source
        if OPS["matmul"].infer(*(v.type for v in operands)) != node.outputs[0].type:
            return None  # the expand also stretched the other operand's batch: keep it
        return rw.op("matmul", *operands)
    return None


def absorb_transposes_into_gemm(rw: Rewriter, node: Node) -> Value | None:
    """gemm(transpose(m), b){trans_a=t} -> gemm(m, b){trans_a=!t}, and likewise for b."""
    a, b, *bias = node.inputs
    plain_a, plain_b = _untransposed(rw, a), _untransposed(rw, b)
    if plain_a is None and plain_b is None:
        return None
    attrs = dict(node.attrs)
    if plain_a is not None:
        a, attrs["trans_a"] = plain_a, not attrs["trans_a"]
    if plain_b is not None:
        b, attrs["trans_b"] = plain_b, not attrs["trans_b"]
    return rw.op("gemm", a, b, *bias, **attrs)


def add_bias_into_gemm(rw: Rewriter, node: Node, product: Node, bias: Value, *, low_precision: bool) -> Value | None:
    """matmul(a, b) + bias -> gemm(a, b, bias), and gemm(a, b) + bias -> gemm(a, b, bias), where
    b is a matrix and bias broadcasts to the product's shape. Exact in f32, f64 and integers (the
    gemm adds the same rounded product); in f16/bf16 the gemm rounds once where matmul-then-add
    rounds twice, so that is a separate, inexact rule."""
    product_type = product.output.type
    if (product_type.dtype in LOW_PRECISION_FLOATS) != low_precision:
        return None
    if node.output.type != product_type or product.inputs[1].type.rank != 2:
        return None
    if not rw.only_used_here(product.output):
        return None  # someone else needs the product without the bias: nothing to gain
    a, b = product.inputs[:2]
    if product.op == "matmul":
        return rw.op("gemm", a, b, bias)
    # An integer gemm scaled by alpha rounds its scaled product to an integer before the add.
    if len(product.inputs) == 3 or (product.attrs["alpha"] != 1.0 and not product_type.dtype.is_float):
        return None
    return rw.op("gemm", a, b, bias, **{**product.attrs, "beta": 1.0})


def _batch_norm_affine(rw: Rewriter, node: Node) -> tuple[np.ndarray, np.ndarray] | None:
    """batch_norm(y) = y * factor + offset per channel, in f64: factor = scale / sqrt(var + eps),
    offset = shift - mean * factor. None unless every parameter is a constant."""
    arrays = [rw.array(v) for v in node.inputs[1:]]
    if any(a is None for a in arrays):
        return None
    scale, shift, mean, variance = (_as_f64(a) for a in arrays)
    with np.errstate(all="ignore"):
        factor = scale / np.sqrt(variance + node.attrs["epsilon"])
    return factor, shift - mean * factor


def _foldable(rw: Rewriter, node: Node, product: Node) -> tuple[np.ndarray, np.ndarray] | None:
    """The batch-norm's affine map, if it may be folded into `product`: f32/f64 only (folding into
    f16 weights would round the rescaled weights coarsely; lower precision afterwards), and the
    product read by this batch-norm alone."""
    if product.output.type.dtype not in (DType.f32, DType.f64) or not rw.only_used_here(product.output):
        return None
    return _batch_norm_affine(rw, node)


def batch_norm_into_conv(rw: Rewriter, node: Node, conv: Node) -> Value | None:
    """batch_norm(conv(x, w, b)) -> conv(x, w * factor, b * factor + offset), per output channel,
    with constant weights and statistics. Not exact: the weights are rescaled and rounded."""
    x, w, *bias = conv.inputs
    weights = rw.array(w)
    old_bias = rw.array(bias[0]) if bias else np.zeros(w.type.shape[0])
    affine = _foldable(rw, node, conv)
    if weights is None or old_bias is None or affine is None:
        return None
    factor, offset = affine
    dtype = w.type.dtype.numpy
    new_weights = _as_f64(weights) * factor.reshape(-1, *(1,) * (w.type.rank - 1))
    new_bias = _as_f64(old_bias) * factor + offset
    return rw.op(
        "conv",
        x,
        rw.constant(new_weights.astype(dtype), "folded_weight"),
        rw.constant(new_bias.astype(dtype), "folded_bias"),
        **conv.attrs,
    )


def batch_norm_into_gemm(rw: Rewriter, node: Node, product: Node) -> Value | None:
    """batch_norm(gemm(a, w, c)) -> gemm(a, w * factor, c * beta * factor + offset) where the
    output is [batch, features], so batch-norm's channel axis is the gemm's column axis (a
    BatchNorm1d after a Linear); a matmul by a constant matrix counts as a gemm. Not exact."""
    if product.output.type.rank != 2 or product.inputs[1].type.rank != 2:
        return None
    a, w, *c = product.inputs
    attrs = dict(product.attrs) if product.op == "gemm" else {"trans_a": False, "trans_b": False, "alpha": 1.0}
    weights = rw.array(w)
    old_bias = rw.array(c[0]) if c else np.zeros(())
    affine = _foldable(rw, node, product)
    if weights is None or old_bias is None or affine is None:
        return None
    factor, offset = affine
    dtype = w.type.dtype.numpy
    # Column j of op(w) is scaled: op(w) is w, or w transposed (then row j of w is scaled).
    new_weights = _as_f64(weights) * (factor[:, None] if attrs["trans_b"] else factor[None, :])
    new_bias = _as_f64(old_bias) * product.attrs.get("beta", 1.0) * factor + offset
    return rw.op(
        "gemm",
        a,
        rw.constant(new_weights.astype(dtype), "folded_weight"),
        rw.constant(new_bias.astype(dtype), "folded_bias"),
        **{**attrs, "beta": 1.0},
    )


_STATISTICS = (const(), const(), const(), const())  # scale, shift, mean, var: read from the node

CONTRACTION = RuleTable(
    (
        # matmul(a, transpose(w)) -> gemm(a, w){trans_b}, matmul(transpose(m), b) -> gemm(m, b){trans_a}
        Rule("transpose_into_matmul", pat("matmul", name="node"), matmul_to_gemm),
        # matmul(a, expand(b)) -> matmul(a, b) where the expand only stretches batch axes; not
        # exact: numpy's matmul may sum a broadcast operand in another order than its copy
        Rule("unexpand_matmul_operand", pat("matmul", name="node"), unexpand_matmul_operand, exact=False),
        # gemm(transpose(m), b){trans_a=t} -> gemm(m, b){trans_a=!t}, the same for b
        Rule("transpose_into_gemm", pat("gemm", name="node"), absorb_transposes_into_gemm),
        # matmul(a, b) + bias -> gemm(a, b, bias)
        Rule(
            "bias_into_gemm",
            pat("add", pat(("matmul", "gemm"), name="product"), var("bias"), name="node"),
            partial(add_bias_into_gemm, low_precision=False),
        ),
        Rule(
            "bias_into_gemm_low_precision",
            pat("add", pat(("matmul", "gemm"), name="product"), var("bias"), name="node"),
            partial(add_bias_into_gemm, low_precision=True),
            exact=False,
        ),
        # batch_norm(conv(x, w, b)) -> conv(x, w', b') with w' = w * s, b' = (b - mean) * s + shift
        Rule(
            "batch_norm_into_conv",
            pat("batch_norm", pat("conv", name="conv"), *_STATISTICS, name="node"),
            batch_norm_into_conv,
            exact=False,
        ),
        # batch_norm(gemm(a, w, c)) -> gemm(a, w * s, c * s + shift - mean * s) for [batch, features]
        Rule(
            "batch_norm_into_gemm",
            pat("batch_norm", pat(("gemm", "matmul"), name="product"), *_STATISTICS, name="node"),
            batch_norm_into_gemm,
            exact=False,
        ),
    )
)


# -- operand order -------------------------------------------------------------------------------


def constant_second(rw: Rewriter, node: Node, *, signed_zero: bool) -> Value | None:
    """f(c, x) -> f(x, c) for commutative f, constant c and non-constant x. Bitwise exact except
    where the operands are equal but tell apart: only a zero against a zero of the other sign
    (maximum(0.0, -0.0) is -0.0, maximum(-0.0, 0.0) is 0.0); so a float constant holding a zero
    is moved by a separate, inexact rule."""
    first, second = node.inputs
    constant = rw.array(first)
    if constant is None or rw.array(second) is not None:
        return None
    if _holds_float_zero(constant) != signed_zero:
        return None
    return rw.op(node.op, second, first, **node.attrs)


OPERAND_ORDER = RuleTable(
    (
        # f(c, x) -> f(x, c) for commutative f: one order for CSE to see
        Rule("constant_second", pat(COMMUTATIVE, name="node"), partial(constant_second, signed_zero=False)),
        Rule(
            "constant_second_signed_zero",
            pat(COMMUTATIVE, name="node"),
            partial(constant_second, signed_zero=True),
            exact=False,
        ),
    )
)

# Simplifications first; attention after the movement rules that expose it (passes.attention_rules);
# operand order last, so it sees what they leave.
RULES = IDENTITY_ARITHMETIC + REPEATED_UNARY + MOVEMENT + CONTRACTION + ATTENTION + OPERAND_ORDER
EXACT_RULES = RULES.only_exact()


@register_pass
class Canonicalize(Pass):
    """Simplify algebraically: identities, repeated ops, movement chains, gemm forms, batch-norm folding, attention."""

    name = "canonicalize"
    numerics = Numerics.REASSOCIATING

    exact_only: bool = False
    """Apply only the rules that keep every output bit-identical."""
    max_sweeps: int = 32
    """Sweeps over the graph before giving up on reaching a fixpoint (a bug in the rules)."""

    def __post_init__(self) -> None:
        # What this instance promises, not the worst case of the pass.
        if self.exact_only:
            object.__setattr__(self, "numerics", Numerics.EXACT)

    def run(self, graph: Graph) -> Graph:
        return rewrite_to_fixpoint(graph, EXACT_RULES if self.exact_only else RULES, max_sweeps=self.max_sweeps)
