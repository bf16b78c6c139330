"""canonicalize's attention rules (passes.attention_rules): batched matmuls freed of torch.export's
reshapes, and matmul-softmax-matmul chains folded into one `scaled_dot_product_attention`. Random
attention chains in every form the rules know (and some they must refuse) keep their outputs
(bit-identical for the exact rules, close to the f64 oracle for all) and fold exactly where they
should; each form has its Before and Expected IR; the masked GPT block, imported from torch and
from ONNX, ends up with one causal attention op and still matches torch."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ir
from ir import DType, GraphBuilder
from ir.testing import assert_equivalent
from passes.attention_rules import ATTENTION
from tests.passes.canonical_cases import EXACT, FULL, canonical_and_stable, check_rule_case

# The inexact folds multiply by 1/c where the chain divided by c, or use 1/sqrt(E) in f64 where the
# chain held it rounded to f32: a few f32 ulps in the scores, then what softmax makes of them.
RTOL, ATOL = 1e-5, 1e-5
ATTENTION_OP = "scaled_dot_product_attention"


def _special_inputs(graph: ir.Graph) -> list[np.ndarray]:
    """Inputs holding infinities, nan and signed zeros (bools both ways), where an inexact fold
    would show: +inf scores meet -inf masks."""
    arrays = []
    for value in graph.inputs:
        pool = [True, False, True] if value.type.dtype == DType.bool else [np.inf, -0.0, 1.5, np.nan, -np.inf, 0.0, -2]
        count = math.prod(value.type.shape)
        arrays.append(np.resize(np.array(pool).astype(value.type.dtype.numpy), count).reshape(value.type.shape))
    return arrays


# -- random attention chains ------------------------------------------------------------------------


def _tril(shape: tuple[int, ...]) -> np.ndarray:
    return np.broadcast_to(np.tril(np.ones(shape[-2:], dtype=bool)), shape)


class _Chain:
    """A builder for one attention chain, remembering whether canonicalize should fold it."""

    def __init__(self, draw, dtype: DType) -> None:
        self.draw, self.dtype, self.b = draw, dtype, GraphBuilder("attention")
        self.rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        self.folds = True
        self.links: list[ir.Value] = []  # the chain's values, each of which may be returned too

    def scalar(self, value: float, shape: tuple[int, ...]) -> ir.Value:
        if self.draw(st.booleans()):
            return self.b.full(shape=shape, value=value, dtype=self.dtype)
        return self.b.constant(np.full(shape, value).astype(self.dtype.numpy), "c")

    def matmul(self, a: ir.Value, c: ir.Value, flat: bool) -> ir.Value:
        """a @ c, or as torch.export writes a batched matmul: reshaped to one batch dim and back."""
        if not flat:
            return self.b.matmul(a, c)
        batch = a.type.shape[:-2]
        merged = [self.b.reshape(x, shape=(math.prod(batch), *x.type.shape[-2:])) for x in (a, c)]
        product = self.b.matmul(*merged)
        return self.b.reshape(product, shape=(*batch, *product.type.shape[-2:]))

    def scale(self, scores: ir.Value, features: int) -> ir.Value:
        kind = self.draw(st.sampled_from(["none", "mul", "div"]))
        if kind == "none":
            return scores
        factor = self.draw(st.sampled_from([0.5, 0.25, 2.0, 3.0, math.sqrt(features), 1 / math.sqrt(features)]))
        shape = self.draw(st.sampled_from([(), (1,), (1, 1), scores.type.shape[-1:]]))
        if shape == scores.type.shape[-1:] and shape != (1,):  # one factor per key: not a scale
            c = self.b.constant(self.rng.uniform(0.5, 2, shape).astype(self.dtype.numpy), "c")
            self.folds = False
        else:
            c = self.scalar(factor, shape)
        if kind == "div":
            return self.b.div(scores, c)
        return self.b.mul(*((scores, c) if self.draw(st.booleans()) else (c, scores)))

    def mask(self, scores: ir.Value) -> ir.Value:
        kind = self.draw(st.sampled_from(["none", "allowed", "forbidden", "not", "additive"]))
        if kind == "none":
            return scores
        full = scores.type.shape
        shape = self.draw(st.sampled_from([full[-2:], (1, *full[-2:]), full, full[-1:]]))
        causal = shape != full[-1:] and self.draw(st.booleans())
        allowed = _tril(shape) if causal else self.rng.random(shape) < 0.7
        if kind == "additive":
            bias = self.b.constant(np.where(allowed, 0.0, -np.inf).astype(self.dtype.numpy), "bias")
            return self.b.add(*((scores, bias) if self.draw(st.booleans()) else (bias, scores)))
        fill_value = -np.inf
        if self.draw(st.integers(0, 5)) == 0:  # a finite fill: fully masked rows differ, no fold
            fill_value, self.folds = -1e4, False
        fill = self.scalar(fill_value, self.draw(st.sampled_from([(), (1,)])))
        if kind == "not":  # torch's masked_fill(~M, -inf)
            return self.b.where(self.b.op("not", self.b.constant(allowed, "allowed")), fill, scores)
        as_input = self.draw(st.integers(0, 3)) == 0
        mask = allowed if kind == "allowed" else ~allowed
        m = self.b.input("mask", shape, DType.bool) if as_input else self.b.constant(mask, "mask")
        return self.b.where(m, scores, fill) if kind == "allowed" else self.b.where(m, fill, scores)

    def link(self, value: ir.Value) -> ir.Value:
        self.links.append(value)
        return value


@st.composite
def attention_chains(draw, dtypes=(DType.f32, DType.f64, DType.f16)) -> tuple[ir.Graph, bool]:
    """softmax(mask(scale(q @ k^T)), axis) @ v with each part in one of its spellings (or missing),
    sometimes with an intermediate value returned too, softmax on another axis, a finite fill or a
    scale per key; and whether canonicalize should fold it into one attention op."""
    chain = _Chain(draw, draw(st.sampled_from(dtypes)))
    b, dtype = chain.b, chain.dtype
    batch = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    length, source, features, width = (draw(st.integers(1, 4)) for _ in range(4))
    flat = draw(st.booleans())
    q = b.input("q", (*batch, length, features), dtype)
    layout = draw(st.sampled_from(["k", "heads", "kt"]))
    if layout == "heads" and len(batch) == 2:  # [B, S, H, E] viewed as heads, then k^T
        keys_t = b.transpose(b.input("k", (batch[0], source, batch[1], features), dtype), perm=(0, 2, 3, 1))
    elif layout == "kt":
        keys_t = b.input("kt", (*batch, features, source), dtype)
    else:
        rank = len(batch) + 2
        keys_t = b.transpose(
            b.input("k", (*batch, source, features), dtype), perm=(*range(rank - 2), rank - 1, rank - 2)
        )
    v = b.input("v", (*batch, source, width), dtype)
    scores = chain.link(chain.matmul(q, keys_t, flat))
    scores = chain.mask(chain.link(chain.scale(scores, features)))
    axis = draw(st.sampled_from([-1, -1, len(batch) + 1, len(batch)]))
    chain.folds &= axis != len(batch)
    weights = chain.link(b.softmax(chain.link(scores), axis=axis))
    out = chain.matmul(weights, v, flat)
    extra = [value for value in dict.fromkeys(chain.links) if draw(st.integers(0, 15)) == 0]
    chain.folds &= not extra
    return b.build(out, *extra), chain.folds


def _ops(graph: ir.Graph) -> set[str]:
    return {node.op for node in graph.nodes}


@given(attention_chains())
def test_exact_rules_on_attention_chains_are_bit_identical(drawn):
    graph, _ = drawn
    after = canonical_and_stable(graph, EXACT)
    assert_equivalent(graph, after)
    assert_equivalent(graph, after, _special_inputs(graph))


@given(attention_chains())
def test_all_rules_on_attention_chains_stay_close_to_the_oracle(drawn):
    graph, _ = drawn
    assert_equivalent(graph, canonical_and_stable(graph, FULL), oracle=True, rtol=RTOL, atol=ATOL)


@given(attention_chains())
def test_attention_chains_fold_exactly_where_they_should(drawn):
    graph, folds = drawn
    after, exact = FULL.run(graph), EXACT.run(graph)
    if folds:
        assert ATTENTION_OP in _ops(after) and not {"softmax", "matmul"} & _ops(after), str(after)
    else:
        assert ATTENTION_OP not in _ops(after) | _ops(exact), str(after)


@given(attention_chains(dtypes=(DType.f16,)), st.integers(0, 2**16))
def test_f16_attention_rounds_once_where_the_chain_rounds_at_each_step(drawn, seed):
    graph, _ = drawn
    rng = np.random.default_rng(seed)
    inputs = [
        rng.random(v.type.shape) < 0.7
        if v.type.dtype == DType.bool
        else rng.uniform(-1, 1, v.type.shape).astype(np.float16)
        for v in graph.inputs
    ]
    # The chain rounds the scores to f16 (|scores| <= 12 here: half an ulp is 2**-8, which moves
    # a weight by 0.4%), then the weights and the output; the op rounds only its output.
    assert_equivalent(graph, FULL.run(graph), inputs, rtol=2**-5, atol=2**-5)


# -- each rule: Before and Expected ---------------------------------------------------------------

# (rule, what the case shows, before, expected); `canonicalize` (all rules) turns each Before into
# its Expected.
CASES = [
    (
        "batched_matmul_through_reshapes",
        "torch.export's 4-D matmul: reshapes to 3-D around it; and 2-D through unsqueeze",
        """\
graph @g(%a: f32[2,3,4,5], %b: f32[2,3,5,6], %c: f32[4,5], %d: f32[5,6]) -> (f32[2,3,4,6], f32[4,6]) {
  %0 = reshape(%a) {shape=[6, 4, 5]} : f32[6,4,5]
  %1 = reshape(%b) {shape=[6, 5, 6]} : f32[6,5,6]
  %2 = matmul(%0, %1) : f32[6,4,6]
  %3 = reshape(%2) {shape=[2, 3, 4, 6]} : f32[2,3,4,6]
  %4 = unsqueeze(%c) {axes=[0]} : f32[1,4,5]
  %5 = unsqueeze(%d) {axes=[0]} : f32[1,5,6]
  %6 = matmul(%4, %5) : f32[1,4,6]
  %7 = squeeze(%6) {axes=[0]} : f32[4,6]
  return %3, %7
}
""",
        """\
graph @g(%a: f32[2,3,4,5], %b: f32[2,3,5,6], %c: f32[4,5], %d: f32[5,6]) -> (f32[2,3,4,6], f32[4,6]) {
  %0 = matmul(%a, %b) : f32[2,3,4,6]
  %1 = matmul(%c, %d) : f32[4,6]
  return %0, %1
}
""",
    ),
    (
        "attention",
        "where(causal, s * c, -inf) with c = 1/sqrt(E): causal, default scale",
        """\
graph @g(%q: f32[2,2,3,4], %k: f32[2,2,3,4], %v: f32[2,2,3,5]) -> (f32[2,2,3,5]) {
  %0 = transpose(%k) {perm=[0, 1, 3, 2]} : f32[2,2,4,3]
  %1 = matmul(%q, %0) : f32[2,2,3,3]
  %scale = const @scale : f32[]
  %2 = mul(%1, %scale) : f32[2,2,3,3]
  %causal = const @causal : bool[3,3]
  %3 = full() {dtype=f32, shape=[], value=-inf} : f32[]
  %4 = where(%causal, %2, %3) : f32[2,2,3,3]
  %5 = softmax(%4) : f32[2,2,3,3]
  %6 = matmul(%5, %v) : f32[2,2,3,5]
  return %6
}

constants {
  @scale : f32[] = [0.5]
  @causal : bool[3,3] = [true, false, false, true, true, false, true, true, true]
}
""",
        """\
graph @g(%q: f32[2,2,3,4], %k: f32[2,2,3,4], %v: f32[2,2,3,5]) -> (f32[2,2,3,5]) {
  %0 = scaled_dot_product_attention(%q, %k, %v) {causal=true} : f32[2,2,3,5]
  return %0
}
""",
    ),
    (
        "attention",
        "masked_fill(not causal, -inf) of s / 4 (a power of two), heads-major keys",
        """\
graph @g(%q: f64[1,2,3,4], %k: f64[1,3,2,4], %v: f64[1,2,3,4]) -> (f64[1,2,3,4]) {
  %0 = transpose(%k) {perm=[0, 2, 3, 1]} : f64[1,2,4,3]
  %1 = matmul(%q, %0) : f64[1,2,3,3]
  %four = const @four : f64[1]
  %2 = div(%1, %four) : f64[1,2,3,3]
  %causal = const @causal : bool[1,3,3]
  %3 = not(%causal) : bool[1,3,3]
  %4 = full() {dtype=f64, shape=[], value=-inf} : f64[]
  %5 = where(%3, %4, %2) : f64[1,2,3,3]
  %6 = softmax(%5) {axis=3} : f64[1,2,3,3]
  %7 = matmul(%6, %v) : f64[1,2,3,4]
  return %7
}

constants {
  @four : f64[1] = [4.0]
  @causal : bool[1,3,3] = [true, false, false, true, true, false, true, true, true]
}
""",
        """\
graph @g(%q: f64[1,2,3,4], %k: f64[1,3,2,4], %v: f64[1,2,3,4]) -> (f64[1,2,3,4]) {
  %0 = transpose(%k) {perm=[0, 2, 1, 3]} : f64[1,2,3,4]
  %1 = scaled_dot_product_attention(%q, %0, %v) {causal=true, scale=0.25} : f64[1,2,3,4]
  return %1
}
""",
    ),
    (
        "attention",
        "a constant bool mask that is not causal is the op's mask",
        """\
graph @g(%q: f32[2,3,4], %k: f32[2,3,4], %v: f32[2,3,4]) -> (f32[2,3,4]) {
  %0 = transpose(%k) {perm=[0, 2, 1]} : f32[2,4,3]
  %1 = matmul(%q, %0) : f32[2,3,3]
  %scale = const @scale : f32[]
  %2 = mul(%1, %scale) : f32[2,3,3]
  %mask = const @mask : bool[3]
  %3 = full() {dtype=f32, shape=[1], value=-inf} : f32[1]
  %4 = where(%mask, %2, %3) : f32[2,3,3]
  %5 = softmax(%4) : f32[2,3,3]
  %6 = matmul(%5, %v) : f32[2,3,4]
  return %6
}

constants {
  @scale : f32[] = [0.25]
  @mask : bool[3] = [true, true, false]
}
""",
        """\
graph @g(%q: f32[2,3,4], %k: f32[2,3,4], %v: f32[2,3,4]) -> (f32[2,3,4]) {
  %mask = const @mask : bool[3]
  %0 = scaled_dot_product_attention(%q, %k, %v, %mask) {scale=0.25} : f32[2,3,4]
  return %0
}

constants {
  @mask : bool[3] = [true, true, false]
}
""",
    ),
    (
        "attention",
        "where(F, -inf, s) with a constant F: the op takes not F; no scale: 1",
        """\
graph @g(%q: f32[2,3,4], %k: f32[2,3,4], %v: f32[2,3,4]) -> (f32[2,3,4]) {
  %0 = transpose(%k) {perm=[0, 2, 1]} : f32[2,4,3]
  %1 = matmul(%q, %0) : f32[2,3,3]
  %padding = const @padding : bool[3]
  %2 = full() {dtype=f32, shape=[], value=-inf} : f32[]
  %3 = where(%padding, %2, %1) : f32[2,3,3]
  %4 = softmax(%3) : f32[2,3,3]
  %5 = matmul(%4, %v) : f32[2,3,4]
  return %5
}

constants {
  @padding : bool[3] = [false, false, true]
}
""",
        """\
graph @g(%q: f32[2,3,4], %k: f32[2,3,4], %v: f32[2,3,4]) -> (f32[2,3,4]) {
  %attention_mask = const @attention_mask : bool[3]
  %0 = scaled_dot_product_attention(%q, %k, %v, %attention_mask) {scale=1.0} : f32[2,3,4]
  return %0
}

constants {
  @attention_mask : bool[3] = [true, true, false]
}
""",
    ),
    (
        "attention",
        "an additive 0/-inf mask that is not causal; k^T given as it is",
        """\
graph @g(%q: f32[2,3,4], %kt: f32[2,4,3], %v: f32[2,3,4]) -> (f32[2,3,4]) {
  %0 = matmul(%q, %kt) : f32[2,3,3]
  %bias = const @bias : f32[3,3]
  %1 = add(%0, %bias) : f32[2,3,3]
  %2 = softmax(%1) : f32[2,3,3]
  %3 = matmul(%2, %v) : f32[2,3,4]
  return %3
}

constants {
  @bias : f32[3,3] = [0.0, 0.0, -inf, 0.0, 0.0, -inf, 0.0, 0.0, -inf]
}
""",
        """\
graph @g(%q: f32[2,3,4], %kt: f32[2,4,3], %v: f32[2,3,4]) -> (f32[2,3,4]) {
  %bias = const @bias : f32[3,3]
  %0 = transpose(%kt) {perm=[0, 2, 1]} : f32[2,3,4]
  %1 = scaled_dot_product_attention(%q, %0, %v, %bias) {scale=1.0} : f32[2,3,4]
  return %1
}

constants {
  @bias : f32[3,3] = [0.0, 0.0, -inf, 0.0, 0.0, -inf, 0.0, 0.0, -inf]
}
""",
    ),
    (
        "attention",
        "a mask that is an input: where(F, -inf, s) takes not(F)",
        """\
graph @g(%q: f32[2,3,4], %k: f32[2,3,4], %v: f32[2,3,4], %padding: bool[2,1,3]) -> (f32[2,3,4]) {
  %0 = transpose(%k) {perm=[0, 2, 1]} : f32[2,4,3]
  %1 = matmul(%q, %0) : f32[2,3,3]
  %2 = full() {dtype=f32, shape=[], value=-inf} : f32[]
  %3 = where(%padding, %2, %1) : f32[2,3,3]
  %4 = softmax(%3) : f32[2,3,3]
  %5 = matmul(%4, %v) : f32[2,3,4]
  return %5
}
""",
        """\
graph @g(%q: f32[2,3,4], %k: f32[2,3,4], %v: f32[2,3,4], %padding: bool[2,1,3]) -> (f32[2,3,4]) {
  %0 = not(%padding) : bool[2,1,3]
  %1 = scaled_dot_product_attention(%q, %k, %v, %0) {scale=1.0} : f32[2,3,4]
  return %1
}
""",
    ),
    (
        "attention_inexact",
        "the GPT block: s / sqrt(8) is the op's default scale, * (1/sqrt(8)) rounds differently",
        """\
graph @g(%q: f32[1,2,3,8], %k: f32[1,2,3,8], %v: f32[1,2,3,8]) -> (f32[1,2,3,8]) {
  %0 = transpose(%k) {perm=[0, 1, 3, 2]} : f32[1,2,8,3]
  %1 = matmul(%q, %0) : f32[1,2,3,3]
  %root8 = const @root8 : f32[]
  %2 = div(%1, %root8) : f32[1,2,3,3]
  %causal = const @causal : bool[3,3]
  %3 = not(%causal) : bool[3,3]
  %4 = full() {dtype=f32, shape=[], value=-inf} : f32[]
  %5 = where(%3, %4, %2) : f32[1,2,3,3]
  %6 = softmax(%5) : f32[1,2,3,3]
  %7 = matmul(%6, %v) : f32[1,2,3,8]
  return %7
}

constants {
  @root8 : f32[] = [2.828427]
  @causal : bool[3,3] = [true, false, false, true, true, false, true, true, true]
}
""",
        """\
graph @g(%q: f32[1,2,3,8], %k: f32[1,2,3,8], %v: f32[1,2,3,8]) -> (f32[1,2,3,8]) {
  %0 = scaled_dot_product_attention(%q, %k, %v) {causal=true} : f32[1,2,3,8]
  return %0
}
""",
    ),
    (
        "attention_inexact",
        "an additive causal mask becomes causal (inf - inf is nan, where gives -inf)",
        """\
graph @g(%q: f32[2,3,4], %k: f32[2,3,4], %v: f32[2,3,4]) -> (f32[2,3,4]) {
  %0 = transpose(%k) {perm=[0, 2, 1]} : f32[2,4,3]
  %1 = matmul(%q, %0) : f32[2,3,3]
  %scale = const @scale : f32[]
  %2 = mul(%1, %scale) : f32[2,3,3]
  %bias = const @bias : f32[3,3]
  %3 = add(%2, %bias) : f32[2,3,3]
  %4 = softmax(%3) : f32[2,3,3]
  %5 = matmul(%4, %v) : f32[2,3,4]
  return %5
}

constants {
  @scale : f32[] = [0.125]
  @bias : f32[3,3] = [0.0, -inf, -inf, 0.0, 0.0, -inf, 0.0, 0.0, 0.0]
}
""",
        """\
graph @g(%q: f32[2,3,4], %k: f32[2,3,4], %v: f32[2,3,4]) -> (f32[2,3,4]) {
  %0 = scaled_dot_product_attention(%q, %k, %v) {causal=true, scale=0.125} : f32[2,3,4]
  return %0
}
""",
    ),
    (
        "attention_inexact",
        "f16: the op computes in f32 and rounds once",
        """\
graph @g(%q: f16[2,3,4], %k: f16[2,3,4], %v: f16[2,3,4]) -> (f16[2,3,4]) {
  %0 = transpose(%k) {perm=[0, 2, 1]} : f16[2,4,3]
  %1 = matmul(%q, %0) : f16[2,3,3]
  %2 = full() {dtype=f16, shape=[], value=0.5} : f16[]
  %3 = mul(%1, %2) : f16[2,3,3]
  %4 = softmax(%3) : f16[2,3,3]
  %5 = matmul(%4, %v) : f16[2,3,4]
  return %5
}
""",
        """\
graph @g(%q: f16[2,3,4], %k: f16[2,3,4], %v: f16[2,3,4]) -> (f16[2,3,4]) {
  %0 = scaled_dot_product_attention(%q, %k, %v) : f16[2,3,4]
  return %0
}
""",
    ),
]


@pytest.mark.parametrize(("rule", "why", "before", "expected"), CASES, ids=[case[1] for case in CASES])
def test_each_rule_rewrites_its_pattern(rule, why, before, expected):
    check_rule_case(rule, before, expected, _special_inputs, RTOL, ATOL)


def test_every_rule_has_a_before_and_expected_case():
    assert {rule.name for rule in ATTENTION} == {case[0] for case in CASES}


def test_the_inexact_folds_do_differ_in_the_last_bits():
    """Why `attention_inexact` is not exact: dividing by sqrt(8) is not multiplying by 1/sqrt(8),
    and +inf scores under an additive -inf mask give nan where `causal` gives -inf."""
    cases = {case[1].split(":")[0]: case[2] for case in CASES if case[0] == "attention_inexact"}
    gpt = ir.parse_graph(cases["the GPT block"])
    rng = np.random.default_rng(0)
    inputs = [rng.uniform(-3, 3, v.type.shape).astype(np.float32) for v in gpt.inputs]
    with pytest.raises(AssertionError, match="bitwise"):
        assert_equivalent(gpt, FULL.run(gpt), inputs)
    additive = ir.parse_graph(next(text for why, text in cases.items() if why.startswith("an additive causal")))
    q, k, v = (np.zeros(value.type.shape, np.float32) for value in additive.inputs)
    q[:, 0, 0], k[:, 0, 0], k[:, 1, 0] = 1, 1, np.inf  # query 0 sees key 0 (score 1), not key 1 (score inf)
    before, after = ir.run(additive, [q, k, v])[0], ir.run(FULL.run(additive), [q, k, v])[0]
    assert np.isnan(before[:, 0]).all() and (after[:, 0] == 0).all()


def test_a_batched_matmul_freed_of_its_reshapes_sums_in_the_same_order():
    """`batched_matmul_through_reshapes` is exact: the interpreter's matmul does not depend on its
    operands' memory layout (numpy alone sums a transpose's strided view in another order than its
    contiguous copy; ir/ops/contraction.py makes the operands contiguous)."""
    graph = ir.parse_graph(
        """\
graph @g(%q: f32[2,2,1,5], %k: f32[2,5,2,5]) -> (f32[2,2,1,5]) {
  %0 = transpose(%k) {perm=[0, 2, 3, 1]} : f32[2,2,5,5]
  %1 = reshape(%q) {shape=[4, 1, 5]} : f32[4,1,5]
  %2 = reshape(%0) {shape=[4, 5, 5]} : f32[4,5,5]
  %3 = matmul(%1, %2) : f32[4,1,5]
  %4 = reshape(%3) {shape=[2, 2, 1, 5]} : f32[2,2,1,5]
  return %4
}
"""
    )
    after = EXACT.run(graph)
    assert str(after).count("reshape") == 0
    assert_equivalent(graph, after)


# (why it must stay, before): canonicalize leaves these graphs as they are.
UNCHANGED = [
    (
        "the scores are returned too: the op would compute them again",
        """\
graph @g(%q: f32[2,3,4], %k: f32[2,3,4], %v: f32[2,3,4]) -> (f32[2,3,4], f32[2,3,3]) {
  %0 = transpose(%k) {perm=[0, 2, 1]} : f32[2,4,3]
  %1 = matmul(%q, %0) : f32[2,3,3]
  %2 = softmax(%1) : f32[2,3,3]
  %3 = matmul(%2, %v) : f32[2,3,4]
  return %3, %1
}
""",
    ),
    (
        "the scaled scores have another reader",
        """\
graph @g(%q: f32[2,3,4], %k: f32[2,3,4], %v: f32[2,3,4]) -> (f32[2,3,4], f32[2,3,3]) {
  %0 = transpose(%k) {perm=[0, 2, 1]} : f32[2,4,3]
  %1 = matmul(%q, %0) : f32[2,3,3]
  %2 = full() {dtype=f32, shape=[], value=0.5} : f32[]
  %3 = mul(%1, %2) : f32[2,3,3]
  %4 = softmax(%3) : f32[2,3,3]
  %5 = matmul(%4, %v) : f32[2,3,4]
  %6 = relu(%3) : f32[2,3,3]
  return %5, %6
}
""",
    ),
    (
        "softmax over the queries, not the keys",
        """\
graph @g(%q: f32[2,3,4], %k: f32[2,3,4], %v: f32[2,3,4]) -> (f32[2,3,4]) {
  %0 = transpose(%k) {perm=[0, 2, 1]} : f32[2,4,3]
  %1 = matmul(%q, %0) : f32[2,3,3]
  %2 = softmax(%1) {axis=1} : f32[2,3,3]
  %3 = matmul(%2, %v) : f32[2,3,4]
  return %3
}
""",
    ),
    (
        "a scale per key is not a scalar scale",
        """\
graph @g(%q: f32[2,3,4], %k: f32[2,3,4], %v: f32[2,3,4]) -> (f32[2,3,4]) {
  %0 = transpose(%k) {perm=[0, 2, 1]} : f32[2,4,3]
  %1 = matmul(%q, %0) : f32[2,3,3]
  %c = const @c : f32[3]
  %2 = mul(%1, %c) : f32[2,3,3]
  %3 = softmax(%2) : f32[2,3,3]
  %4 = matmul(%3, %v) : f32[2,3,4]
  return %4
}

constants {
  @c : f32[3] = [0.5, 0.25, 1.0]
}
""",
    ),
    (
        "a finite fill gives a fully masked row equal weights, where -inf gives nan",
        """\
graph @g(%q: f32[2,3,4], %k: f32[2,3,4], %v: f32[2,3,4], %m: bool[2,3,3]) -> (f32[2,3,4]) {
  %0 = transpose(%k) {perm=[0, 2, 1]} : f32[2,4,3]
  %1 = matmul(%q, %0) : f32[2,3,3]
  %2 = full() {dtype=f32, shape=[], value=-10000.0} : f32[]
  %3 = where(%m, %1, %2) : f32[2,3,3]
  %4 = softmax(%3) : f32[2,3,3]
  %5 = matmul(%4, %v) : f32[2,3,4]
  return %5
}
""",
    ),
    (
        "q broadcasts over k's batch: the op takes equal leading dims",
        """\
graph @g(%q: f32[2,3,4], %k: f32[1,3,4], %v: f32[2,3,4]) -> (f32[2,3,4]) {
  %0 = transpose(%k) {perm=[0, 2, 1]} : f32[1,4,3]
  %1 = matmul(%q, %0) : f32[2,3,3]
  %2 = softmax(%1) : f32[2,3,3]
  %3 = matmul(%2, %v) : f32[2,3,4]
  return %3
}
""",
    ),
    (
        "integer scores: the op is for floats",
        """\
graph @g(%q: i32[2,3,4], %k: i32[2,3,4], %v: f32[2,3,4]) -> (f32[2,3,4]) {
  %0 = transpose(%k) {perm=[0, 2, 1]} : i32[2,4,3]
  %1 = matmul(%q, %0) : i32[2,3,3]
  %2 = cast(%1) {dtype=f32} : f32[2,3,3]
  %3 = softmax(%2) : f32[2,3,3]
  %4 = matmul(%3, %v) : f32[2,3,4]
  return %4
}
""",
    ),
    (
        "the reshapes regroup the matrices' rows, not only the batch",
        """\
graph @g(%a: f32[2,12,5], %b: f32[2,3,5,6]) -> (f32[2,12,6]) {
  %0 = reshape(%a) {shape=[6, 4, 5]} : f32[6,4,5]
  %1 = reshape(%b) {shape=[6, 5, 6]} : f32[6,5,6]
  %2 = matmul(%0, %1) : f32[6,4,6]
  %3 = reshape(%2) {shape=[2, 12, 6]} : f32[2,12,6]
  return %3
}
""",
    ),
    (
        "the 3-D matmul broadcasts b over the batch",
        """\
graph @g(%a: f32[2,3,4,5], %b: f32[5,6]) -> (f32[2,3,4,6]) {
  %0 = reshape(%a) {shape=[6, 4, 5]} : f32[6,4,5]
  %1 = unsqueeze(%b) {axes=[0]} : f32[1,5,6]
  %2 = matmul(%0, %1) : f32[6,4,6]
  %3 = reshape(%2) {shape=[2, 3, 4, 6]} : f32[2,3,4,6]
  return %3
}
""",
    ),
    (
        "the 3-D product is returned too",
        """\
graph @g(%a: f32[2,3,4,5], %b: f32[2,3,5,6]) -> (f32[2,3,4,6], f32[6,4,6]) {
  %0 = reshape(%a) {shape=[6, 4, 5]} : f32[6,4,5]
  %1 = reshape(%b) {shape=[6, 5, 6]} : f32[6,5,6]
  %2 = matmul(%0, %1) : f32[6,4,6]
  %3 = reshape(%2) {shape=[2, 3, 4, 6]} : f32[2,3,4,6]
  return %3, %2
}
""",
    ),
]


@pytest.mark.parametrize(("why", "before"), UNCHANGED, ids=[case[0] for case in UNCHANGED])
def test_what_must_not_be_rewritten_is_not(why, before):
    assert str(FULL.run(ir.parse_graph(before))) == before


# -- end to end: the masked GPT block ---------------------------------------------------------------


def _masked_gpt_block():
    pytest.importorskip("torch")
    from tests.models.models import gpt_decoder_block_masked

    return gpt_decoder_block_masked()


def _assert_one_causal_attention(graph: ir.Graph) -> None:
    after = FULL.run(graph)
    (attention,) = [node for node in after.nodes if node.op == ATTENTION_OP]
    assert attention.attrs["causal"] and len(attention.inputs) == 3, str(after)
    assert "softmax" not in _ops(after)


def _assert_matches_torch(compiled, module, inputs) -> None:
    import torch

    got = compiled(*(x.numpy() for x in inputs))
    with torch.no_grad():
        expected = module(*inputs).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_masked_gpt_block_from_torch_gets_one_causal_attention():
    import compiler

    module, inputs = _masked_gpt_block()
    graph = compiler.frontends.import_model(module, inputs).graph
    assert "softmax" in _ops(graph) and ATTENTION_OP not in _ops(graph)
    _assert_one_causal_attention(graph)
    _assert_matches_torch(compiler.compile(module, inputs), module, inputs)


def test_masked_gpt_block_from_onnx_gets_one_causal_attention(tmp_path):
    pytest.importorskip("onnxscript")  # torch.onnx.export's exporter needs it
    import compiler
    from tests.models.test_onnx_models import export

    module, inputs = _masked_gpt_block()
    path = tmp_path / "gpt_decoder_block_masked.onnx"
    export(module, inputs, path)
    graph = compiler.frontends.import_model(path).graph
    assert "softmax" in _ops(graph) and ATTENTION_OP not in _ops(graph)
    _assert_one_causal_attention(graph)
    _assert_matches_torch(compiler.compile(path), module, inputs)
