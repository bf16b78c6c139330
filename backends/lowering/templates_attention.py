"""The CPU template of `scaled_dot_product_attention`: the op lowered whole (the group keeps it
out of `expand_composites`), so that the [L, S] scores never reach memory beyond one block of
query rows, with the group's pointwise prologue read through `lowering.compute` and its epilogue
applied by `lowering.store`.

For q [..., L, E], k [..., S, E], v [..., S, Ev] (the leading dims flattened to B), one PARALLEL
loop runs over B x query blocks of Q rows; each block streams the keys in blocks of K with an
online softmax (flash attention's running max `m`, sum `l`, rescaled accumulator):

    for t in 0 .. B * ceil(L / Q):                          # parallel
        qt[e, i] = q[b, q0 + i, e]                          # q transposed once: queries are lanes
        m[i] = -inf; l[i] = 0; acc[i, c] = 0
        for each key block j0 (causal: skipped when wholly above the block's last query):
            for each group of R keys j:                      # scores, R accumulators per query lane
                vectorized for i: s_r = sum_e qt[e, i] * k[j + r, e]; st[j + r, i] = mask(s_r * scale)
            vectorized for i: m_new = max(m[i], max_j st[j, i]); alpha[i] = exp(m[i] - m_new);
                              l[i] *= alpha[i]; m[i] = m_new
            for j: vectorized for i: st[j, i] = exp(st[j, i] - m[i]); l[i] += st[j, i]
            for each group of R queries i:                   # p @ v, R accumulators per column lane
                vectorized for c: acc[i + r, c] = acc[i + r, c] * alpha[i + r] + sum_j st[j, i + r] * v[j, c]
        vectorized for c: out[b, q0 + i, c] = epilogue(acc[i, c] / l[i])

Both products have the GEMM micro-kernel's shape in the per-lane form `backends.llvm.vectorize`
emits (R per-lane accumulators, a serial reduction loop inside the vectorized one, one broadcast
operand): the scores broadcast k's elements against rows of the transposed q block, p @ v
broadcasts the probabilities against rows of v; neither k nor v is copied. Every loop extent is
static: a last query block or key block of another size gets its own code behind an `If`, as the
GEMM's edge tiles do.

Masks as the op's decomposition applies them: scores scaled, then a bool mask's `where` (-inf where
False) or a float mask's add, then causal `j <= i` (upper-left aligned). A row that may attend
nothing keeps m = -inf, subtracts 0 instead (so no `-inf - -inf`), and ends with 0 / 0 = nan, as
the decomposition's softmax does. Numerics: f32 accumulation (f16/bf16 loads widened); the dot
products, the softmax sum and the probabilities' weighted sum are accumulated in key order and
rescaled per key block, so results differ from the graph interpreter by rounding only. Skipped
key blocks are never read, so a non-finite v above the causal diagonal does not reach the output
(the decomposition's 0 * inf would make it nan).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from backends.lowering.expr import Unflattened, const, i64, unflatten
from backends.lowering.group import GroupLowering, compute_dtype
from backends.lowering.indexing import broadcast_index
from backends.lowering.templates_gemm import host_vector_bits
from ir import DType, Node, Value
from ir.loop import Assign, Call, Expr, For, If, Load, LoopKind, Ref, Select, Stmt, Store, Unary, Var

ATTENTION = "scaled_dot_product_attention"


@dataclass(frozen=True)
class AttentionTiles:
    """Block sizes of the CPU attention schedule."""

    queries: int = 64
    """Query rows per parallel iteration: the lanes of the score and softmax loops (four AVX-512
    vectors of f32)."""
    keys: int = 64
    """Keys per block of the online softmax: a [keys, queries] block of scores (16 KiB) stays in L1."""
    rows: int = 6
    """Accumulators per lane in both products: 6 x 4 zmm, as the GEMM micro-kernel holds."""
    columns: int = 64
    """Output columns per vectorized p @ v loop (Ev is cut into chunks of this many)."""

    def __post_init__(self) -> None:
        if min(self.queries, self.keys, self.rows, self.columns) < 1:
            raise ValueError(f"attention tiles must be positive, got {self}")


def choose_tiles(length: int, source: int, dtype: DType) -> AttentionTiles:
    """Lane loops of four AVX-512 vectors of f32 (64 lanes: 6 x 4 accumulators of the 32 zmm
    registers) or two AVX2 ones (16 lanes: 6 x 2 of the 16 ymm), as the GEMM's tiles; blocks
    shrunk to the sequence lengths (a short sequence is one block). Measured on one Zen 4 core at
    L = S = 512, E = 64: ~97 GFLOP/s, with 32 or 128 keys per block within noise of 64."""
    del dtype  # f64 takes the same blocks: the vector code generator splits its wider vectors
    bits = host_vector_bits()
    lanes = (4 if bits >= 512 else 2) * bits // 32
    return AttentionTiles(min(lanes, max(length, 1)), min(64, max(source, 1)), columns=lanes)


tile_chooser: Callable[[int, int, DType], AttentionTiles] = choose_tiles
"""The function the template asks for tiles (tests swap in tiny ones to reach every edge on shapes
the kernel interpreter runs quickly)."""


def _attention(lowering: GroupLowering, node: Node) -> list[Stmt]:
    (y,) = node.outputs
    if not y.type.numel:
        return []
    return _Attention(lowering, node, tile_chooser(node.inputs[0].type.shape[-2], node.inputs[1].type.shape[-2],
                                                   compute_dtype(y.type.dtype))).statements()  # fmt: skip


class _Attention:
    """The loop nest of one attention node (see the module docstring)."""

    def __init__(self, lowering: GroupLowering, node: Node, tiles: AttentionTiles) -> None:
        self.lowering, self.node, self.tiles = lowering, node, tiles
        self.q, self.k, self.v = node.inputs[:3]
        self.mask = node.inputs[3] if len(node.inputs) > 3 else None
        (self.y,) = node.outputs
        self.dtype = compute_dtype(self.y.type.dtype)
        self.lead = self.q.type.shape[:-2]
        self.batch = math.prod(self.lead)
        self.length, self.features = self.q.type.shape[-2:]
        self.source, self.value_features = self.v.type.shape[-2:]
        scale = node.attrs["scale"]
        self.scale = const(1 / math.sqrt(self.features) if scale is None else scale, self.dtype)
        self.causal = node.attrs["causal"]
        q_rows, keys = tiles.queries, tiles.keys
        scratch = lowering.scratch
        self.qt = scratch((self.features * q_rows,), self.dtype)
        self.scores = scratch((keys * q_rows,), self.dtype)
        self.acc = scratch((q_rows * self.value_features,), self.dtype)
        # Per query: the running max, the sum of exp(score - base) (base = the max, or 0 while it
        # is -inf), the factor this key block rescales the sums by.
        self.peak, self.base, self.total, self.alpha = (scratch((q_rows,), self.dtype) for _ in range(4))
        self.t = lowering.var("block")
        self.query_blocks = -(-self.length // q_rows)
        self.key_blocks = -(-self.source // keys)

    # -- positions --------------------------------------------------------------------------------

    @property
    def b(self) -> Expr:
        return Ref(self.t) // self.query_blocks if self.query_blocks > 1 else Ref(self.t)

    @property
    def q0(self) -> Expr:
        return (Ref(self.t) % self.query_blocks) * self.tiles.queries if self.query_blocks > 1 else i64(0)

    def _index(self, value: Value, row: Expr, column: Expr) -> Unflattened:
        """The index of `value` ([..., N, C], the leading dims q's) at this block's b, `row`, `column`,
        with its flat offset."""
        rows, columns = value.type.shape[-2:]
        offset = (self.b * rows + row) * columns + column if self.lead else row * columns + column
        return Unflattened([*unflatten(self.b, self.lead), row, column], offset, value.type.shape)

    def _vector_loop(self, extent: int, body: Callable[[Expr], list[Stmt]], stem: str = "i") -> list[Stmt]:
        var = self.lowering.var(stem)
        kind = LoopKind.VECTORIZED if extent >= 2 else LoopKind.SERIAL
        return [For(var, extent, tuple(body(Ref(var))), kind)] if extent else []

    # -- the nest ---------------------------------------------------------------------------------

    def statements(self) -> list[Stmt]:
        if self.source == 0:  # softmax over no keys weighs nothing: the decomposition's matmul gives 0
            return self._zero_rows()
        q_rows = self.tiles.queries
        edge = self.length % q_rows
        if not edge:
            body = self._query_block(q_rows)
        elif self.query_blocks == 1:
            body = self._query_block(edge)
        else:
            last = (Ref(self.t) % self.query_blocks).lt(i64(self.query_blocks - 1))
            body = [If(last, tuple(self._query_block(q_rows)), tuple(self._query_block(edge)))]
        return [For(self.t, self.batch * self.query_blocks, tuple(body))]

    def _zero_rows(self) -> list[Stmt]:
        row, c = self.lowering.var("row"), self.lowering.var("c")
        lead = unflatten(Ref(row) // self.length, self.lead) if self.lead else []
        index = [*lead, Ref(row) % self.length, Ref(c)]
        store = self.lowering.store(self.y, index, const(0, self.dtype))
        return [For(row, self.batch * self.length, (For(c, self.value_features, tuple(store)),))]

    def _query_block(self, rows: int) -> list[Stmt]:
        """One block of `rows` queries from q0: q transposed, the state reset, the key blocks, the write."""
        dtype, features, value_features = self.dtype, self.features, self.value_features
        e = self.lowering.var("e")
        transpose = For(e, features, tuple(self._vector_loop(rows, lambda i: [
            Store(self.qt, Ref(e) * rows + i, self.lowering.compute(self.q, self._index(self.q, self.q0 + i, Ref(e))))
        ])))  # fmt: skip
        reset = self._vector_loop(rows, lambda i: [
            Store(self.peak, i, const(-math.inf, dtype)), Store(self.total, i, const(0, dtype))
        ])  # fmt: skip
        reset += self._vector_loop(rows * value_features, lambda z: [Store(self.acc, z, const(0, dtype))], "z")
        statements: list[Stmt] = [transpose, *reset, *self._key_blocks(rows)]
        i = self.lowering.var("i")
        statements.append(For(i, rows, tuple(self._columns(lambda c: self.lowering.store(
            self.y, self._index(self.y, self.q0 + Ref(i), c),
            Load(self.acc, Ref(i) * value_features + c) / Load(self.total, Ref(i)),
        )))))  # fmt: skip
        return statements

    def _columns(self, body: Callable[[Expr], list[Stmt]]) -> list[Stmt]:
        """`body(c)` for every output column c: vectorized loops over chunks of `tiles.columns`."""
        chunk = min(self.tiles.columns, self.value_features)
        full, rest = divmod(self.value_features, chunk)
        statements: list[Stmt] = []
        if full == 1:
            statements += self._vector_loop(chunk, body, "c")
        elif full:
            cc = self.lowering.var("cc")
            start = Ref(cc) * chunk
            statements.append(For(cc, full, tuple(self._vector_loop(chunk, lambda c: body(start + c), "c"))))
        if rest:
            statements += self._vector_loop(rest, lambda c: body(c + full * chunk), "c")
        return statements

    def _key_blocks(self, rows: int) -> list[Stmt]:
        keys = self.tiles.keys
        kb = self.lowering.var("kb")
        j0 = Ref(kb) * keys if self.key_blocks > 1 else i64(0)
        edge = self.source % keys
        if not edge:
            body = self._key_block(rows, keys, j0)
        elif self.key_blocks == 1:
            body = self._key_block(rows, edge, j0)
        else:
            body = [If(Ref(kb).lt(i64(self.key_blocks - 1)), tuple(self._key_block(rows, keys, j0)),
                       tuple(self._key_block(rows, edge, j0)))]  # fmt: skip
        if self.causal and self.key_blocks > 1:
            # A key block whose first key is past the block's last query is wholly masked: skip it.
            body = [If(j0.le(self.q0 + (rows - 1)), tuple(body))]
        return [For(kb, self.key_blocks, tuple(body))]

    def _key_block(self, rows: int, keys: int, j0: Expr) -> list[Stmt]:
        return [*self._scores(rows, keys, j0), *self._softmax(rows, keys), *self._weighted_values(rows, keys, j0)]

    # -- scores: st[j, i] = mask(scale * q[i] . k[j]) ------------------------------------------------

    def _scores(self, rows: int, keys: int, j0: Expr) -> list[Stmt]:
        def group(first: Expr, count: int) -> list[Stmt]:
            def lanes(i: Expr) -> list[Stmt]:
                e = self.lowering.var("e")
                sums = [self.lowering.var(f"s{r}_", self.dtype) for r in range(count)]
                query = self.lowering.var("qe", self.dtype)
                step: list[Stmt] = [Assign(query, Load(self.qt, Ref(e) * rows + i))]
                for r, s in enumerate(sums):
                    key = self.lowering.compute(self.k, self._index(self.k, j0 + first + r, Ref(e)))
                    step.append(Assign(s, Call("fma", (Ref(query), key, Ref(s)), self.dtype)))
                statements: list[Stmt] = [Assign(s, const(0, self.dtype)) for s in sums]
                statements.append(For(e, self.features, tuple(step)))
                for r, s in enumerate(sums):
                    score = self._masked(Ref(s) * self.scale, self.q0 + i, j0 + first + r)
                    statements.append(Store(self.scores, (first + r) * rows + i, score))
                return statements

            return self._vector_loop(rows, lanes)

        return self._groups(keys, group)

    def _groups(self, count: int, group: Callable[[Expr, int], list[Stmt]]) -> list[Stmt]:
        """`group(first, size)` over `count` items in groups of `tiles.rows`: a loop over the full
        groups, then one group of the rest."""
        size = min(self.tiles.rows, count)
        full, rest = divmod(count, size)
        statements: list[Stmt] = []
        if full == 1:
            statements += group(i64(0), size)
        elif full:
            g = self.lowering.var("g")
            statements.append(For(g, full, tuple(group(Ref(g) * size, size))))
        if rest:
            statements += group(i64(full * size), rest)
        return statements

    def _masked(self, score: Expr, query: Expr, key: Expr) -> Expr:
        """The scaled score of (query, key) after the op's masks: the decomposition's order."""
        minus_inf = const(-math.inf, self.dtype)
        if self.mask is not None:
            index = [*unflatten(self.b, self.lead), query, key]
            element = self.lowering.compute(self.mask, broadcast_index(index, self.mask.type.shape))
            score = Select(element, score, minus_inf) if self.mask.type.dtype == DType.bool else score + element
        if self.causal:
            score = Select(key.le(query), score, minus_inf)
        return score

    # -- the online softmax ------------------------------------------------------------------------

    def _softmax(self, rows: int, keys: int) -> list[Stmt]:
        """The new running max per query, the factor that rescales what came before, then the
        probabilities in place of the scores and their sum."""
        dtype, lowering = self.dtype, self.lowering
        minus_inf = const(-math.inf, dtype)

        def rescale(i: Expr) -> list[Stmt]:
            j, block_max = lowering.var("j"), lowering.var("mb", dtype)
            new_max, base, alpha = lowering.var("m_new", dtype), lowering.var("base", dtype), lowering.var("a", dtype)
            return [
                Assign(block_max, minus_inf),
                For(j, keys, (Assign(block_max, Ref(block_max).max(Load(self.scores, Ref(j) * rows + i))),)),
                Assign(new_max, Load(self.peak, i).max(Ref(block_max))),
                # While nothing is attended (max -inf), subtract 0: exp(-inf - -inf) would be nan.
                Assign(base, Select(Ref(new_max).eq(minus_inf), const(0, dtype), Ref(new_max))),
                Assign(alpha, Unary("exp", Load(self.peak, i) - Ref(base))),
                Store(self.alpha, i, Ref(alpha)),
                Store(self.total, i, Load(self.total, i) * Ref(alpha)),
                Store(self.peak, i, Ref(new_max)),
                Store(self.base, i, Ref(base)),
            ]

        def exponentiate(j: Var) -> Callable[[Expr], list[Stmt]]:
            def lanes(i: Expr) -> list[Stmt]:
                at = Ref(j) * rows + i
                p = lowering.var("p", dtype)
                return [
                    Assign(p, Unary("exp", Load(self.scores, at) - Load(self.base, i))),
                    Store(self.scores, at, Ref(p)),
                    Store(self.total, i, Load(self.total, i) + Ref(p)),
                ]

            return lanes

        j = lowering.var("j")
        return [*self._vector_loop(rows, rescale), For(j, keys, tuple(self._vector_loop(rows, exponentiate(j))))]

    # -- acc = acc * alpha + p @ v ----------------------------------------------------------------

    def _weighted_values(self, rows: int, keys: int, j0: Expr) -> list[Stmt]:
        dtype, value_features = self.dtype, self.value_features

        def group(first: Expr, count: int) -> list[Stmt]:
            def lanes(c: Expr) -> list[Stmt]:
                j = self.lowering.var("j")
                sums = [self.lowering.var(f"o{r}_", dtype) for r in range(count)]
                at = [(first + r) * value_features + c for r in range(count)]
                value = self.lowering.var("ve", dtype)
                element = self.lowering.compute(self.v, self._index(self.v, j0 + Ref(j), c))
                step: list[Stmt] = [Assign(value, element)]
                for r, s in enumerate(sums):
                    weight = Load(self.scores, Ref(j) * rows + first + r)
                    step.append(Assign(s, Call("fma", (weight, Ref(value), Ref(s)), dtype)))
                statements: list[Stmt] = [
                    Assign(s, Load(self.acc, at[r]) * Load(self.alpha, first + r)) for r, s in enumerate(sums)
                ]
                statements.append(For(j, keys, tuple(step)))
                statements += [Store(self.acc, at[r], Ref(s)) for r, s in enumerate(sums)]
                return statements

            return self._columns(lanes)

        return self._groups(rows, group)


TEMPLATES_ATTENTION: dict[str, Callable[[GroupLowering, Node], list[Stmt]]] = {ATTENTION: _attention}
