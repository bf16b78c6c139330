"""Attention rules for canonicalize: the matmul-softmax-matmul chain that exporters write out
becomes one `scaled_dot_product_attention`, which fusion and backends can run as one kernel.

Two steps get there. torch.export decomposes a 4-D `q @ k^T` into reshapes to [B*H, L, E], a
3-D matmul and a reshape back; `batched_matmul_through_reshapes` undoes that, so the matmul sees
the original [B, H, L, E] operands (and the transposes feeding them compose, by movement rules).
Then the `attention` rules take apart `matmul(softmax(S, axis=-1), v)` where S is `q @ k^T`,
perhaps scaled (`* c` or `/ c`, c a scalar constant), perhaps masked (`where(M, s, -inf)`,
`where(not M, -inf, s)` or `s + A`), and emit `scaled_dot_product_attention(q, k, v[, mask])`,
with `causal=true` and no mask where the mask is exactly the lower-triangular one (torch's
`is_causal`, upper-left aligned). A rule fires only where every node of the chain is read by the
next one alone, so no work is computed twice.

Numerics. The batched-matmul rule sums the same products, but it is marked inexact: numpy's
matmul, the interpreter's reference, sums in another order for a strided operand (the transpose
the reshape used to copy) than for a contiguous one, e.g. [n,1,E] @ [n,E,S] (1 ulp). The attention
op's meaning is its decomposition (`ir.ops.attention`), the same op sequence over the same layouts
as the chain, so folding is bit-identical in f32 and f64 where the scale is a multiplication (or a
division by a power of two, whose reciprocal is exact) and the mask is a `where` or a non-causal
additive one. It is not, and `attention_inexact` covers it, where:
  - the scale divides by c: the op multiplies by 1/c, which rounds (x / sqrt(8) != x * (1/sqrt(8))),
  - the dtype is f16/bf16: the op computes its decomposition in f32 and rounds once at the end,
    where the chain rounds after every step,
  - an additive 0/-inf causal mask becomes `causal=true`: s + (-inf) and where(False, s, -inf)
    differ where s is +inf or nan (nan against -inf).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np

from ir import Node, Value
from ir.dtype import LOW_PRECISION_FLOATS, DType
from passes.rewrite import Pattern, Rewriter, Rule, RuleTable, const, matches, pat, var

# Ops that keep the elements in row-major order and change only the shape: any chain of them is
# one reshape. (Not a kind in the table: MOVEMENT also covers transposes, gathers, pads.)
RESHAPES = frozenset({"reshape", "flatten", "squeeze", "unsqueeze"})

_EXACT_DTYPES = frozenset({DType.f32, DType.f64})  # the interpreter computes f16/bf16 ops in f32


# -- batched matmul through reshapes -------------------------------------------------------------


def _keeps_matrices(before: Value, after: Value) -> bool:
    """Whether a reshape from `before` to `after` leaves the last two dims (the matrices) alone,
    so it only merges or splits batch dims."""
    return before.type.rank >= 2 and after.type.rank >= 2 and before.type.shape[-2:] == after.type.shape[-2:]


def unreshape_batched_matmul(rw: Rewriter, node: Node, product: Node, a: Value, b: Value) -> Value | None:
    """reshape(matmul(reshape(a), reshape(b))) -> matmul(a, b) where a and b share batch dims B,
    the inner reshapes flatten B alike (row-major) and the outer one restores B: matrix i of the
    flattened batch is the same pair of matrices either way, the same products and sums (only
    numpy's summation order may change with the operands' layout, see the module docstring)."""
    merged_a, merged_b = product.inputs
    batch = a.type.shape[:-2]
    if not (
        _keeps_matrices(a, merged_a) and _keeps_matrices(b, merged_b) and _keeps_matrices(product.output, node.output)
    ):
        return None
    # Equal merged batches: no broadcasting inside, which would pair matrices differently.
    if b.type.shape[:-2] != batch or node.output.type.shape[:-2] != batch:
        return None
    if merged_a.type.shape[:-2] != merged_b.type.shape[:-2] or not rw.only_used_here(product.output):
        return None
    return rw.op("matmul", a, b)


# -- attention -----------------------------------------------------------------------------------

_SCORES = var("scores")

# What may sit between q @ k^T and the softmax, as (pattern, kind): a scale, then a mask, each
# optional. A pattern's root is the scaling (masking) node, `scores` what it scales (masks).
SCALES: tuple[tuple[Pattern, str], ...] = (
    (pat("mul", _SCORES, const("factor"), name="scaled"), "mul"),  # s * c: scale c
    (pat("div", _SCORES, const("factor"), name="scaled"), "div"),  # s / c: scale 1 / c
)
MASKS: tuple[tuple[Pattern, str], ...] = (
    # where(M, s, -inf): M is True where a query may attend
    (pat("where", var("allowed"), _SCORES, const("fill"), name="masked"), "allowed"),
    # where(F, -inf, s): torch's masked_fill(F, -inf), F = not M
    (pat("where", var("forbidden"), const("fill"), _SCORES, name="masked"), "forbidden"),
    # s + A: an additive float mask (0 where allowed, -inf where not), or any bias
    (pat("add", _SCORES, var("bias"), name="masked"), "additive"),
)


@dataclass(frozen=True)
class _Scale:
    node: Node | None
    """The mul or div; None where the scores are not scaled (a scale of 1)."""
    factor: float
    exact: bool
    """Whether the op's multiplication by `factor` computes what `node` computed, bit for bit."""


@dataclass(frozen=True)
class _Mask:
    node: Node
    value: Value
    """The mask as the op takes it (bool: True = may attend; float: added), or its negation."""
    negate: bool
    """`value` is True where a query may not attend: the op takes `not value`."""
    allowed: np.ndarray | None
    """The op's mask contents (after any negation) where known at compile time."""
    causal: bool
    exact: bool


@dataclass(frozen=True)
class _Attention:
    """softmax(mask(scale(q @ keys_t))) @ v taken apart."""

    product: Node
    scale: _Scale
    mask: _Mask | None

    @property
    def exact(self) -> bool:
        dtype = self.product.output.type.dtype
        return dtype in _EXACT_DTYPES and self.scale.exact and (self.mask is None or self.mask.exact)


def _is_constant(rw: Rewriter) -> Callable[[Value], bool]:
    return lambda value: rw.array(value) is not None


def _forms(rw: Rewriter, value: Value, forms: tuple[tuple[Pattern, str], ...]) -> Iterator[tuple[str, dict]]:
    """Each way `value` is made by one of `forms`, as (kind, captures)."""
    node = rw.producer(value)
    if node is None:
        return
    for pattern, kind in forms:
        for captures in matches(pattern, node, rw.producer, _is_constant(rw)):
            yield kind, captures


def _scalar(rw: Rewriter, value: Value) -> tuple[float, float] | None:
    """A one-element constant as (the value it stands for, the value its dtype holds): they differ
    for `full`, whose value attribute is kept exactly (the f64 oracle computes with it) and
    rounded to the dtype in a dtype-faithful run. None for more than one element."""
    array = rw.array(value)
    if array is None or array.size != 1:
        return None
    held = float(array.astype(np.float64).reshape(-1)[0])  # exact: every float dtype fits f64
    node = rw.producer(value)
    return (float(node.attrs["value"]) if node is not None and node.op == "full" else held), held


def _scale(rw: Rewriter, kind: str, captures: dict) -> _Scale | None:
    """scores * c has scale c; scores / c has scale 1 / c, bit-identical only where c is a power
    of two whose reciprocal the dtype holds (then x / c and x * (1 / c) round the same real)."""
    node, scores = captures["scaled"], captures["scores"]
    scalar = _scalar(rw, captures["factor"])
    if scalar is None or node.output.type != scores.type or not all(map(math.isfinite, scalar)):
        return None  # not a scalar, or one that broadcasts the scores to a larger shape
    c, held = scalar
    if kind == "mul":  # the op rounds c to the dtype as the chain did
        return _Scale(node, c, exact=True)
    if c == 0 or held == 0:
        return None
    rounded = float(np.array(1 / c, dtype=scores.type.dtype.numpy).astype(np.float64))
    return _Scale(node, 1 / c, exact=math.frexp(held)[0] in (0.5, -0.5) and rounded == 1 / held)


def _causal_allowed(shape: tuple[int, ...]) -> np.ndarray:
    """torch's is_causal mask for scores [..., L, S]: query i may attend keys j <= i."""
    return np.tril(np.ones(shape[-2:], dtype=bool))


def _equal_broadcast(array: np.ndarray, target: np.ndarray) -> bool:
    """Whether `array` and `target` broadcast to the same tensor (both broadcast to the scores)."""
    shape = np.broadcast_shapes(array.shape, target.shape)
    return bool(np.array_equal(np.broadcast_to(array, shape), np.broadcast_to(target, shape)))


def _all_minus_infinity(array: np.ndarray | None) -> bool:
    return array is not None and bool(np.all(array.astype(np.float64) == -np.inf))


def _mask(rw: Rewriter, kind: str, captures: dict) -> _Mask | None:
    """The mask a `MASKS` form applies, with whether it is the causal one."""
    node, scores = captures["masked"], captures["scores"]
    if node.output.type != scores.type:
        return None  # the mask would broadcast the scores to a larger shape
    shape = scores.type.shape
    if kind == "additive":
        bias = captures["bias"]
        if bias is scores:
            return None  # s + s: the op would take the scores again as its mask
        contents = rw.array(bias)
        causal_bias = np.where(_causal_allowed(shape), 0.0, -np.inf)
        causal = contents is not None and _equal_broadcast(contents.astype(np.float64), causal_bias)
        return _Mask(node, bias, False, contents, causal, exact=not causal)
    if not _all_minus_infinity(rw.array(captures["fill"])):
        return None
    if kind == "allowed":
        value, negate = captures["allowed"], False
    else:
        value, negate = captures["forbidden"], True
        inverse = rw.producer(value)
        if inverse is not None and inverse.op == "not":  # where(not M, -inf, s): M is the mask
            value, negate = inverse.inputs[0], False
    contents = rw.array(value)
    allowed = None if contents is None else (~contents if negate else contents)
    causal = allowed is not None and _equal_broadcast(allowed, _causal_allowed(shape))
    return _Mask(node, value, negate, allowed, causal, exact=True)


def _masks(rw: Rewriter, value: Value) -> Iterator[tuple[_Mask | None, Value]]:
    """(mask, what it masks) for each way `value` is masked scores; first (None, value): no mask."""
    yield None, value
    for kind, found in _forms(rw, value, MASKS):
        mask = _mask(rw, kind, found)
        if mask is not None:
            yield mask, found["scores"]


def _scales(rw: Rewriter, value: Value) -> Iterator[tuple[_Scale, Value]]:
    """(scale, what it scales) for each way `value` is scaled scores; first value itself, scale 1."""
    yield _Scale(None, 1.0, exact=True), value
    for kind, found in _forms(rw, value, SCALES):
        scale = _scale(rw, kind, found)
        if scale is not None:
            yield scale, found["scores"]


def _attentions(rw: Rewriter, weights: Node) -> Iterator[_Attention]:
    """Each way the softmax `weights` reads q @ k^T through an optional scale and mask, where
    every node of the chain is read by the next one alone."""
    for mask, masked in _masks(rw, weights.inputs[0]):
        for scale, scores in _scales(rw, masked):
            product = rw.producer(scores)
            if product is None or product.op != "matmul":
                continue
            chain = [n for n in (product, scale.node, mask.node if mask else None, weights) if n is not None]
            if all(rw.only_read_by(n.output, reader) for n, reader in itertools.pairwise(chain)):
                yield _Attention(product, scale, mask)


def _keys(rw: Rewriter, keys_t: Value) -> Value:
    """k where keys_t = k^T (its last two axes swapped): through the transpose that made keys_t,
    or a new transpose of it."""
    rank = keys_t.type.rank
    swap = (*range(rank - 2), rank - 1, rank - 2)
    node = rw.producer(keys_t)
    if node is None or node.op != "transpose":
        return rw.op("transpose", keys_t, perm=swap)
    perm = tuple(node.attrs["perm"][axis] for axis in swap)  # transpose(transpose(x, p), q) = x[p[q]]
    return node.inputs[0] if perm == tuple(range(rank)) else rw.op("transpose", node.inputs[0], perm=perm)


def _scale_attr(factor: float, dtype: DType, features: int) -> float | None:
    """None (the op's default, 1/sqrt(E)) where `factor` equals it in the precision the op computes
    in (f32 for f16/bf16, as the interpreter and kernels do), so the op computes the same; else
    `factor`. An f32 model's `/ sqrt(E)` is then the default scale, as torch's sdpa writes it."""
    compute = np.float32 if dtype in LOW_PRECISION_FLOATS else dtype.numpy.type
    if features > 0 and compute(factor) == compute(1 / math.sqrt(features)):
        return None
    return factor


def _mask_input(rw: Rewriter, mask: _Mask | None) -> list[Value]:
    if mask is None or mask.causal:
        return []
    if not mask.negate:
        return [mask.value]
    if mask.allowed is not None:
        return [rw.constant(mask.allowed, "attention_mask")]
    return [rw.op("not", mask.value)]


def fold_attention(rw: Rewriter, node: Node, weights: Node, v: Value, *, exact: bool) -> Value | None:
    """matmul(softmax(mask(scale(q @ k^T)), axis=-1), v) -> scaled_dot_product_attention(q, k, v[, mask])
    for float q, k, v of one rank >= 3 with equal leading dims; `exact` picks the instances that are
    bit-identical (see the module docstring) or the others."""
    scores_type = weights.output.type
    if not scores_type.dtype.is_float or weights.attrs["axis"] % scores_type.rank != scores_type.rank - 1:
        return None
    found = next(_attentions(rw, weights), None) if rw.only_used_here(weights.output) else None
    if found is None or found.exact != exact:
        return None
    q, keys_t = found.product.inputs
    if q.type.rank < 3 or not (q.type.rank == keys_t.type.rank == v.type.rank):
        return None
    if not (q.type.shape[:-2] == keys_t.type.shape[:-2] == v.type.shape[:-2]):
        return None  # the op takes equal leading dims, not broadcasting ones
    scale = _scale_attr(found.scale.factor, scores_type.dtype, q.type.shape[-1])
    causal = found.mask is not None and found.mask.causal
    k = _keys(rw, keys_t)
    mask = _mask_input(rw, found.mask)
    return rw.op("scaled_dot_product_attention", q, k, v, *mask, causal=causal, scale=scale)


_ATTENTION = pat("matmul", pat("softmax", name="weights"), var("v"), name="node")

ATTENTION = RuleTable(
    (
        # reshape(matmul(reshape(a), reshape(b))) -> matmul(a, b), reshapes that only merge batch dims:
        # the same products summed in the same order, batch by batch.
        Rule(
            "batched_matmul_through_reshapes",
            pat(RESHAPES, pat("matmul", pat(RESHAPES, var("a")), pat(RESHAPES, var("b")), name="product"), name="node"),
            unreshape_batched_matmul,
        ),
        # matmul(softmax(where(M, q @ k^T * c, -inf)), v) -> sdpa(q, k, v, M){scale=c}; M causal: {causal}
        Rule("attention", _ATTENTION, partial(fold_attention, exact=True)),
        # the same where it rounds differently: / c, f16/bf16, an additive causal mask
        Rule("attention_inexact", _ATTENTION, partial(fold_attention, exact=False), exact=False),
    )
)
