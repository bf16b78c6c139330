"""The fused attention GPU template (flash-attention style): a group whose one anchor is
`scaled_dot_product_attention`, with any pointwise prologue on q, k, v or the mask and any
pointwise epilogue, becomes one kernel that never writes the [L, S] scores to memory.
`backends.cuda.schedule.schedule_group` tries it before the other GPU templates.

For q [..., L, E], k [..., S, E], v [..., S, Ev] (the leading dims flattened to B):

- one block per (b, query tile of `rows` queries); each query row gets `width` threads (a
  power of two dividing the warp, so a row's lanes are one aligned group of a warp);
- the block's q tile is loaded once into shared memory; then the k and v tiles of `keys` keys
  are streamed through shared memory, one after another (three barriers per tile: loaded,
  probabilities written, tile consumed), every global load coalesced and guarded past L and S
  (padding is zero, so a padded v row adds nothing);
- per tile, each thread scores `keys / width` keys (its own dot products over E), the scores
  are scaled and masked as the op's decomposition does (scale, then the bool mask's `where` or
  the float mask's add, then causal `j <= i`; keys past S are -inf), the row's tile maximum is
  combined by `shfl_xor`s, and the online softmax updates the running max `m` and sum `l` and
  rescales the accumulator by `exp(m_old - m_new)`; the probabilities go through shared memory
  to the threads that own the output columns (each thread `Ev / width` columns, `c * width + lane`);
- with `causal`, key tiles wholly above the diagonal of the block's query tile are skipped (a
  condition uniform over the block, so its barriers stay whole);
- at the end each output is `acc / l`, written through the group's epilogue.

A row that may attend nothing gets `l = 0` and so nan, as the decomposition's softmax over all
-inf does (the running max is taken as 0 while it is -inf, so no `inf - inf` appears before).
Arithmetic is f32 (f16/bf16 loads widened, as the interpreter computes decompositions) with FMA
dot products; the score and accumulate steps are the seam where a tensor-core version (MMA
fragments from the GEMM template) would replace `_TILE_MATH["fma"]`. f64 groups are not taken.

Numerics against the graph interpreter: the dot products and the softmax sum are combined in
another order (per tile, then across tiles) and rescaled per tile, so results differ by
rounding (a few ulps of f32); masked and padded keys contribute exactly zero. Skipped tiles are
never read, so a non-finite v under a causal mask does not reach the output (the decomposition's
`0 * inf` would make it nan).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from backends.cuda.templates_gpu import write_outputs
from backends.lowering.expr import Unflattened, const, i64, unflatten
from backends.lowering.group import EpilogueMismatch, GroupLowering, compute_dtype, inlinable
from backends.lowering.indexing import broadcast_index
from ir import DType, Graph, Node, Value
from ir.loop import (
    WARP_SIZE,
    Assign,
    Barrier,
    Binary,
    Buffer,
    Call,
    Const,
    Expr,
    For,
    If,
    Kernel,
    Load,
    LoopKind,
    Ref,
    Scope,
    Select,
    Stmt,
    Store,
    Unary,
    Var,
)

ATTENTION = "scaled_dot_product_attention"
TEMPLATE = "attention.fma"
DEFAULT_WIDTH = 8
"""Threads per query row: 8 keeps a thread's accumulator (Ev / 8 columns) in registers for
head dims up to 256 and puts 4 rows in a warp."""
MAX_THREADS = 128
"""Threads per block: under `__launch_bounds__(256)` ptxas held a masked kernel to 40 registers
and spilled; at 128 it takes what it needs (up to ~120 at E = 64)."""
DEFAULT_KEYS = 32
SHARED_LIMIT = 48 * 1024
"""Static shared memory per block on sm_80/sm_90 without the dynamic opt-in."""
UNROLL_LIMIT = 64
F32 = DType.f32


@dataclass(frozen=True)
class AttentionPlan:
    """Tiles of one attention kernel: `rows` queries per block, `width` threads per query, `keys`
    keys per shared-memory tile."""

    batch: int
    length: int
    source: int
    features: int
    value_features: int
    rows: int
    width: int
    keys: int

    @property
    def threads(self) -> int:
        return self.rows * self.width

    @property
    def query_tiles(self) -> int:
        return -(-self.length // self.rows)

    @property
    def key_tiles(self) -> int:
        return -(-self.source // self.keys)

    @property
    def blocks(self) -> int:
        return self.batch * self.query_tiles

    @property
    def columns(self) -> int:
        """Output columns per thread."""
        return -(-self.value_features // self.width)

    # Row strides of the shared tiles: q, k and p rows padded by one element, so that the lanes
    # reading one column of several rows hit different banks; v rows padded to whole column groups.
    @property
    def q_stride(self) -> int:
        return self.features + 1

    @property
    def v_stride(self) -> int:
        return self.columns * self.width

    @property
    def p_stride(self) -> int:
        return self.keys + 1

    @property
    def shared_bytes(self) -> int:
        elements = self.rows * self.q_stride + self.keys * (self.q_stride + self.v_stride) + self.rows * self.p_stride
        return 4 * elements


def plan_attention(
    batch: int, length: int, source: int, features: int, value_features: int, width: int | None = None
) -> AttentionPlan | None:
    """The tiles for these sizes: `width` threads per query (default `DEFAULT_WIDTH`), as many
    query rows as fit `MAX_THREADS` (fewer for short sequences, but whole warps), `DEFAULT_KEYS`
    keys per tile, halved (then the rows halved) until the tiles fit in shared memory; None when
    even the smallest tiles do not."""
    width = width or DEFAULT_WIDTH
    if width & (width - 1) or not 1 <= width <= WARP_SIZE:
        raise ValueError(f"threads per query row must be a power of two up to {WARP_SIZE}, got {width}")
    least_rows = WARP_SIZE // width
    rows = max(least_rows, min(MAX_THREADS // width, 1 << max(length - 1, 0).bit_length()))
    keys = max(DEFAULT_KEYS, width)
    plan = AttentionPlan(batch, length, source, features, value_features, rows, width, keys)
    while plan.shared_bytes > SHARED_LIMIT and plan.keys > width:
        plan = AttentionPlan(batch, length, source, features, value_features, rows, width, plan.keys // 2)
    while plan.shared_bytes > SHARED_LIMIT and plan.rows > least_rows:
        plan = AttentionPlan(batch, length, source, features, value_features, plan.rows // 2, width, plan.keys)
    return plan if plan.shared_bytes <= SHARED_LIMIT else None


def attention_template(
    node: Node, name: str, source: str = "", threads_per_row: int | None = None
) -> tuple[Kernel, str] | None:
    """The fused attention kernel of the `fused` node `node` and the template's name; None when
    its group is not attention with pointwise work around it, or computes in f64, or its tiles
    do not fit (the caller falls back)."""
    body: Graph = node.attrs["body"]
    anchors = [n for n in body.nodes if n.op != "const" and not inlinable(n)]
    if len(anchors) != 1 or anchors[0].op != ATTENTION or any(v.type.numel == 0 for v in node.outputs):
        return None
    attention = anchors[0]
    q, k, v = attention.inputs[:3]
    if compute_dtype(q.type.dtype) != F32 or k.type.shape[-2] == 0 or q.type.shape[-1] == 0:
        return None
    plan = plan_attention(
        math.prod(q.type.shape[:-2]), q.type.shape[-2], k.type.shape[-2], q.type.shape[-1], v.type.shape[-1],
        threads_per_row,
    )  # fmt: skip
    if plan is None:
        return None
    lowering = GroupLowering(body, name, source, keep_whole={ATTENTION})  # this template replaces its decomposition
    try:
        return _Attention(lowering, attention, plan).kernel(), TEMPLATE
    except EpilogueMismatch:  # an output reads the attention result at another element
        return None


class _Attention:
    """The statements of one attention kernel (see the module docstring for the schedule)."""

    def __init__(self, lowering: GroupLowering, node: Node, plan: AttentionPlan) -> None:
        self.lowering, self.node, self.plan = lowering, node, plan
        self.q, self.k, self.v = node.inputs[:3]
        self.mask = node.inputs[3] if len(node.inputs) > 3 else None
        self.lead = self.q.type.shape[:-2]
        features = plan.features
        scale = node.attrs["scale"]
        self.scale = const(1 / math.sqrt(features) if scale is None else scale, F32)
        self.q_tile = self._shared("q_tile", plan.rows * plan.q_stride)
        self.k_tile = self._shared("k_tile", plan.keys * plan.q_stride)
        self.v_tile = self._shared("v_tile", plan.keys * plan.v_stride)
        self.p_tile = self._shared("p_tile", plan.rows * plan.p_stride)
        self.scores = self._local("s", plan.keys // plan.width)
        self.acc = self._local("acc", plan.columns)
        var = lowering.var
        self.block, self.thread = var("block"), var("thread")
        self.b, self.q0, self.row, self.lane, self.query = var("b"), var("q0"), var("r"), var("lane"), var("i")
        self.max, self.sum, self.alpha = var("m", F32), var("l", F32), var("alpha", F32)

    def _shared(self, stem: str, size: int) -> Buffer:
        buffer = Buffer(self.lowering.names.fresh(stem), F32, (size,), Scope.SHARED)
        self.lowering.locals.append(buffer)
        return buffer

    def _local(self, stem: str, size: int) -> Buffer:
        buffer = Buffer(self.lowering.names.fresh(stem), F32, (size,), Scope.LOCAL)
        self.lowering.locals.append(buffer)
        return buffer

    # -- the kernel -------------------------------------------------------------------------------

    def kernel(self) -> Kernel:
        plan, lowering = self.plan, self.lowering
        tile = lowering.var("kt")
        scores, accumulate = _TILE_MATH["fma"]
        steps: list[Stmt] = [
            *self._load(self.k_tile, self.k, tile, plan.keys, plan.q_stride, plan.features, plan.source),
            *self._load(self.v_tile, self.v, tile, plan.keys, plan.v_stride, plan.value_features, plan.source),
            Barrier(),
            *scores(self, tile),
            Barrier(),
            *accumulate(self),
            Barrier(),  # the tiles are consumed: the next iteration may overwrite them
        ]
        if self.node.attrs["causal"] and plan.key_tiles > 1:
            # Skip the tiles wholly above the diagonal: their first key is past the block's last query.
            last = (Ref(self.q0) + (plan.rows - 1)).min(i64(plan.length - 1))
            steps = [If((Ref(tile) * plan.keys).le(last), tuple(steps))]
        body = [
            *self._start(),
            *self._load(self.q_tile, self.q, None, plan.rows, plan.q_stride, plan.features, plan.length),
            Assign(self.max, const(-math.inf, F32)),
            Assign(self.sum, const(0, F32)),
            *self._each_column(lambda c, column: [Store(self.acc, c, const(0, F32))]),
            For(tile, plan.key_tiles, tuple(steps)),
            If(Ref(self.query).lt(i64(plan.length)), tuple(self._finish())),
        ]
        inner = For(self.thread, plan.threads, tuple(body), LoopKind.THREAD_X)
        params = (*lowering.params, *lowering.outputs)
        outputs = tuple(range(len(lowering.params), len(params)))
        grid = For(self.block, plan.blocks, (inner,), LoopKind.BLOCK_X)
        return Kernel(lowering.name, params, (grid,), tuple(lowering.locals), lowering.source, outputs)

    def _start(self) -> list[Stmt]:
        plan = self.plan
        block, thread = Ref(self.block), Ref(self.thread)
        tiles = plan.query_tiles
        return [
            Assign(self.b, block // tiles if tiles > 1 else block),
            Assign(self.q0, (block % tiles) * plan.rows if tiles > 1 else i64(0)),
            Assign(self.row, thread // plan.width if plan.width > 1 else thread),
            Assign(self.lane, thread % plan.width if plan.width > 1 else i64(0)),
            Assign(self.query, Ref(self.q0) + Ref(self.row)),
        ]

    def _index(self, value: Value, position: Expr, column: Expr) -> Unflattened:
        """The index of `value` ([..., N, C], leading dims those of q) at this block's b, row
        `position`, column `column`, carrying its flat offset."""
        rows, columns = value.type.shape[-2:]
        offset = (Ref(self.b) * rows + position) * columns + column if self.lead else position * columns + column
        return Unflattened([*unflatten(Ref(self.b), self.lead), position, column], offset, value.type.shape)

    def _load(
        self, tile: Buffer, value: Value, key_tile: Var | None, rows: int, stride: int, width: int, limit: int
    ) -> list[Stmt]:
        """The block's threads copy `rows` rows of `value` (the query rows from q0, or key tile
        `key_tile`'s rows) into `tile`, consecutive threads reading consecutive elements; rows
        past `limit` and columns past the value's own are stored as zeros."""
        plan, var = self.plan, self.lowering.var
        flat, row, column, position = var("f"), var("fr"), var("fc"), var("fp")
        first = Ref(self.q0) if key_tile is None else Ref(key_tile) * plan.keys
        inside = Ref(position).lt(i64(limit))
        if width != value.type.shape[-1]:  # v's rows padded to whole column groups
            inside = Binary("and", inside, Ref(column).lt(i64(value.type.shape[-1])))
        element = self.lowering.compute(value, self._index(value, Ref(position), Ref(column)))
        at = Ref(row) * stride + Ref(column)
        copy: tuple[Stmt, ...] = (
            Assign(row, Ref(flat) // width),
            Assign(column, Ref(flat) % width),
            Assign(position, first + Ref(row)),
            If(inside, (Store(tile, at, element),), (Store(tile, at, const(0, F32)),)),
        )
        count = rows * width
        if count % plan.threads:
            copy = (If(Ref(flat).lt(i64(count)), copy),)
        n = var("n")
        return [For(n, -(-count // plan.threads), (Assign(flat, Ref(n) * plan.threads + Ref(self.thread)), *copy))]

    def _each_column(self, step: Callable[[Expr, Expr], list[Stmt]]) -> list[Stmt]:
        """`step(c, column)` for each accumulator slot c of this thread, column = c * width + lane."""
        c = self.lowering.var("c")
        column = Ref(c) * self.plan.width + Ref(self.lane)
        return [For(c, self.plan.columns, tuple(step(Ref(c), column)), LoopKind.UNROLLED)]

    def _butterfly(self, acc: Var, op: str) -> list[Stmt]:
        """Combine `acc` over the row's `width` lanes; every lane ends with the result."""
        statements: list[Stmt] = []
        mask = self.plan.width // 2
        while mask:
            other = Call("shfl_xor", (Ref(acc), Const(mask, DType.i32)), F32)
            statements.append(Assign(acc, Binary(op, Ref(acc), other)))
            mask //= 2
        return statements

    def _masked(self, score: Expr, key: Expr) -> Expr:
        """The score of (this query, `key`) after the op's masks, or -inf where it may not attend
        (keys past S, queries past L: no mask element is read there)."""
        plan, query = self.plan, Ref(self.query)
        minus_inf = const(-math.inf, F32)
        if self.mask is not None:
            mask = self.mask
            index = [*unflatten(Ref(self.b), self.lead), query, key]
            element = self.lowering.compute(mask, broadcast_index(index, mask.type.shape))
            score = Select(element, score, minus_inf) if mask.type.dtype == DType.bool else score + element
        valid = Binary("and", key.lt(i64(plan.source)), query.lt(i64(plan.length)))
        if self.node.attrs["causal"]:
            valid = Binary("and", valid, key.le(query))
        return Select(valid, score, minus_inf)

    def _finish(self) -> list[Stmt]:
        plan = self.plan
        (y,) = self.node.outputs

        def write(c: Expr, column: Expr) -> list[Stmt]:
            offset = self._index(y, Ref(self.query), column).offset
            statements = write_outputs(self.lowering, y, offset, Load(self.acc, c) / Ref(self.sum))
            if plan.value_features % plan.width:
                return [If(column.lt(i64(plan.value_features)), tuple(statements))]
            return statements

        return self._each_column(write)


# -- the tile math: FMA on the CUDA cores ---------------------------------------------------------


def _fma_scores(att: _Attention, tile: Var) -> list[Stmt]:
    """Score this thread's keys of the tile (key jj = kk * width + lane), mask them, and update
    the row's running max and sum; the probabilities go to the shared p tile."""
    plan, var = att.plan, att.lowering.var
    kk, e, dot, peak, total = var("kk"), var("e"), var("dot", F32), var("tile_max", F32), var("tile_sum", F32)
    new_max, base, p = var("m_new", F32), var("base", F32), var("p", F32)
    jj = Ref(kk) * plan.width + Ref(att.lane)
    key = Ref(tile) * plan.keys + jj
    q_element = Load(att.q_tile, Ref(att.row) * plan.q_stride + Ref(e))
    k_element = Load(att.k_tile, jj * plan.q_stride + Ref(e))
    per_key = plan.keys // plan.width
    multiply_add = Assign(dot, Call("fma", (q_element, k_element, Ref(dot)), F32))
    score_keys = For(kk, per_key, (
        Assign(dot, const(0, F32)),
        For(e, plan.features, (multiply_add,), _unrolled(plan.features)),
        Store(att.scores, Ref(kk), att._masked(Ref(dot) * att.scale, key)),
        Assign(peak, Ref(peak).max(Load(att.scores, Ref(kk)))),
    ), LoopKind.UNROLLED)  # fmt: skip
    # While the running max is -inf (nothing attended yet), subtract 0: exp(-inf - -inf) is nan.
    minus_inf = const(-math.inf, F32)
    probability = Unary("exp", Load(att.scores, Ref(kk)) - Ref(base))
    exponentiate = For(kk, per_key, (
        Assign(p, probability),
        Store(att.p_tile, Ref(att.row) * plan.p_stride + jj, Ref(p)),
        Assign(total, Ref(total) + Ref(p)),
    ), LoopKind.UNROLLED)  # fmt: skip
    return [
        Assign(peak, minus_inf),
        score_keys,
        *att._butterfly(peak, "max"),
        Assign(new_max, Ref(att.max).max(Ref(peak))),
        Assign(base, Select(Ref(new_max).eq(minus_inf), const(0, F32), Ref(new_max))),
        Assign(att.alpha, Unary("exp", Ref(att.max) - Ref(base))),
        Assign(total, const(0, F32)),
        exponentiate,
        *att._butterfly(total, "add"),
        Assign(att.sum, Ref(att.sum) * Ref(att.alpha) + Ref(total)),
        Assign(att.max, Ref(new_max)),
    ]


def _fma_accumulate(att: _Attention) -> list[Stmt]:
    """acc = acc * alpha + p @ v_tile, for this thread's output columns."""
    plan = att.plan
    jj, p = att.lowering.var("jj"), att.lowering.var("p", F32)

    def rescale(c: Expr, column: Expr) -> list[Stmt]:
        return [Store(att.acc, c, Load(att.acc, c) * Ref(att.alpha))]

    def add(c: Expr, column: Expr) -> list[Stmt]:
        v_element = Load(att.v_tile, Ref(jj) * plan.v_stride + column)
        return [Store(att.acc, c, Call("fma", (Ref(p), v_element, Load(att.acc, c)), F32))]

    read_p = Assign(p, Load(att.p_tile, Ref(att.row) * plan.p_stride + Ref(jj)))
    # The column loop inside is unrolled; unrolling the keys too makes the compiler hold many v
    # elements at once (165 registers at E = 128) for little gain.
    return [*att._each_column(rescale), For(jj, plan.keys, (read_p, *att._each_column(add)))]


def _unrolled(work: int) -> LoopKind:
    """Unroll loops of up to `UNROLL_LIMIT` FMAs: the loop overhead is as large as the work."""
    return LoopKind.UNROLLED if work <= UNROLL_LIMIT else LoopKind.SERIAL


_TILE_MATH: dict[str, tuple[Callable[[_Attention, Var], list[Stmt]], Callable[[_Attention], list[Stmt]]]] = {
    "fma": (_fma_scores, _fma_accumulate),
}
"""The two products of a tile, by the units that compute them: (scores and the online softmax,
the accumulation of p @ v). A tensor-core version adds an entry with MMA fragments."""
