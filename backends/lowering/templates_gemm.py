"""The contraction templates (`matmul`, `gemm`) as a register-blocked GEMM micro-kernel, with the
tile sizes chosen per problem by `choose_tiles` (the cost model; the autotuner,
`backends.cpu.autotune`, replaces it through `tile_chooser` when asked).

Every matmul and gemm is one `Contraction`: out[batch, i, j] = sum_k A(batch, i, k) * B(batch, k, j),
with operands read through `lowering.compute` (so transposes, broadcasts, casts and rank-1
operands are index arithmetic) and each result written by `lowering.store`, which applies the
group's epilogue (bias, activation, residual) while the value is still in a register.

The loop nest (the CPU ABI wants the top level to be one loop, which the group makes parallel):

    for t in 0 .. batch * col_panels * row_tiles:        # row tiles innermost: a B panel stays in cache
        b, jp, it = unflatten(t); i0 = it * MR; j0 = jp * NR
        tile[0 .. MR*NR] = 0                               # a local MR x NR buffer: registers after LLVM
        for k in 0 .. K:
            a_r = A[i0 + r, k]                             (r = 0 .. MR-1, unrolled; a broadcast)
            vectorized for jj in 0 .. NR:                  # B: one contiguous row of NR per k step
                tile[r, jj] = fma(a_r, B[k, j0 + jj], tile[r, jj])
        vectorized for jj: out[i0 + r, j0 + jj] = epilogue(tile[r, jj])

With MR = 6 and NR = 64 f32 lanes on AVX-512, LLVM's loop vectorizer makes each column loop 4 zmm
FMAs and, the tile's addresses being fixed across the k loop, keeps all 24 accumulators in
registers (measured: ~100 GFLOP/s on one Zen 4 core at 256-512, beside torch's ~85). The other
form the schedule knows (`GemmTiles.accumulators = "registers"`: MR scalar accumulators per
column lane, k innermost) is the one an explicit vector code generator wants; the cost model
picks. Edge tiles (M % MR rows, N % NR columns) get their own micro-kernels of the remaining
size behind an `If` on the tile index, so full tiles carry no guards; the columns of a tile are
a vectorized part (a multiple of 16 lanes), parts of 8 and 4 lanes, and a serial rest. Integer
contractions accumulate with mul + add (there is no integer fma).

A B stored in panels at compile time (`packed_columns`: a constant weight `passes.layout` stored
[N / W, K, W]) is read in place, panel `j0 // W` at column `j0 % W`: the tiles take NR = W (or a
divisor of W that the chooser picks) and never copy a panel at run time, whatever `pack_b` says.

Numerics: floats accumulate with one rounding per step (fma) in the compute dtype (f32 for
f16/bf16), in the order k = 0, 1, ...; the interpreter's numpy matmul sums in another order, so
results agree within a tolerance that grows with K.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from backends.lowering.expr import const, i64, unflatten
from backends.lowering.group import GroupLowering, compute_dtype
from backends.lowering.indexing import broadcast_index
from backends.lowering.panels import Blocking, TileAt, panel_blocks
from ir import DType, Node
from ir.loop import Assign, Binary, Buffer, Call, Expr, For, Load, LoopKind, Ref, Stmt, Store

VECTOR_LANES_MULTIPLE = 16
"""A vectorized loop's extent is a multiple of this (the LLVM backend's vector contract for f32)."""
MAX_VECTOR_LANES = 64
"""... and at most this many lanes."""
L1_PANEL_BYTES = 32 * 1024
"""A B panel (K x NR) up to this size stays in L1 (32-48 KiB) while row tiles re-read it in place."""


# -- the problem and its tiles -------------------------------------------------------------------


@dataclass(frozen=True)
class GemmShape:
    """What the cost model sees of a contraction."""

    batch: int
    m: int
    n: int
    k: int
    dtype: DType
    """The accumulation dtype."""


@dataclass(frozen=True)
class GemmTiles:
    """The schedule's parameters: an MR x NR block of output per micro-kernel call."""

    mr: int = 6
    """Rows per tile: accumulator vectors per lane group (and A broadcasts per k step)."""
    nr: int = 64
    """Columns per tile (at most 64): vectorized in parts of 16k, 8 and 4 lanes, the rest serial."""
    block_tiles: int = 1
    """Row tiles per iteration of the parallel loop (one after another, sharing a B panel)."""
    pack_b: bool = False
    """Copy the iteration's K x NR panel of B into a contiguous local buffer first: rows of B
    `N` apart alias in the caches (N a power of two) and a transposed B is read across its rows;
    the copy costs K x NR per `block_tiles` x MR x K x NR multiply-adds."""
    accumulators: str = "tile"
    """Where the MR x NR sums live: "tile", a local buffer that the column loops (innermost)
    update, which LLVM's loop vectorizer turns into vectors and LICM into registers (fast today);
    or "registers", MR scalar variables per column lane with the k loop innermost, which needs
    the backend's explicit vector code (`backends.llvm.vectorize`) to become vectors."""

    def __post_init__(self) -> None:
        if self.mr < 1 or self.nr < 1 or self.block_tiles < 1 or self.accumulators not in ("tile", "registers"):
            raise ValueError(f"tiles must be positive and accumulators 'tile' or 'registers', got {self}")


def host_vector_bits() -> int:
    """The widest float vector of the CPU code is generated for (512 with AVX-512, 256 with AVX2,
    else 128; `runtime.cpu.limit_isa` narrows it)."""
    from runtime.cpu import host_vector_bits as generated_vector_bits

    return generated_vector_bits()


def choose_tiles(shape: GemmShape, vector_bits: int | None = None) -> GemmTiles:
    """The cost model: MR rows x NR lanes of accumulators, filling about 24 of 32 vector registers
    (AVX-512: 6 x 4 zmm) and leaving room for the B vectors and the A broadcast. An output at
    most NR wide is one panel of exactly N columns (MR x N, vectorized as 16-, 8- and 4-lane parts
    by `_column_parts`): every column is computed once, A is read once, and no column is serial
    unless N % 4 leaves it. Measured on one Zen 4 core, x [2^22 / N, N] @ W [N, N] + b: N = 8 went
    from 8 to 70 GFLOP/s (its columns had been serial) and N = 24 from 23 to 99 (a panel of 16
    and a serial edge of 8, reading A twice); N = 16 and 32 stay at ~97, the core's FMA peak.
    With enough rows to share it, B's panel is packed once per block of 16 row tiles (96 rows:
    the copy is ~1% of the work). Measured on one Zen 4 core (benchmarks/gemm_cpu.py): packing
    takes 2048^3 from 0.68x torch to ~1.05x and is neutral at 512-1024. A panel larger than L1 is
    packed whenever two row tiles share it, however few: read in place, each k step of it is NR
    columns of a row N apart, so every row tile re-reads it from memory through a new page per k
    (an MLP 32x768 -> 3072 -> 3072 -> 1000 on one Xeon core: 33 -> 14 ms). Up to 32 row tiles
    share one packed panel when that leaves at least 8 blocks (a BERT layer at 128 tokens on one
    Xeon core: 15.8 -> 13.5 ms, its FFN panels copied once instead of twice)."""
    bits = vector_bits or host_vector_bits()
    lanes = max(bits // (8 * max(shape.dtype.itemsize, 4)), 1)  # f16/bf16 accumulate in f32
    vectors = 4 if bits >= 512 else 2  # vectors per row of a tile
    nr = min(lanes * vectors, MAX_VECTOR_LANES)
    nr = max(VECTOR_LANES_MULTIPLE, nr - nr % VECTOR_LANES_MULTIPLE)
    if shape.n <= nr:
        nr = max(shape.n, 1)
    mr = max(min(6, shape.m), 1)
    panel_bytes = shape.k * nr * max(shape.dtype.itemsize, 4)
    pack = shape.m >= 8 * mr or (shape.m > mr and panel_bytes > L1_PANEL_BYTES)
    row_tiles, col_panels = -(-shape.m // mr), -(-shape.n // nr)
    # Up to 32 row tiles share one copy of the panel when there are panels enough for the threads
    # (a layer at 128 tokens: 22 tiles were 16 + 6, each block copying the panel from memory).
    whole = row_tiles <= 32 and shape.batch * col_panels >= 8
    return GemmTiles(mr=mr, nr=nr, block_tiles=(row_tiles if whole else 16) if pack else 1, pack_b=pack)


tile_chooser: Callable[[GemmShape], GemmTiles] = choose_tiles
"""The seam for the autotuner (`backends.cpu.autotune`): the function the templates ask for tiles
(see `override_tiles`); read at each call, so a chooser imported by name elsewhere misses overrides."""


@contextlib.contextmanager
def override_tiles(chooser: Callable[[GemmShape], GemmTiles]) -> Iterator[None]:
    """Lower with `chooser` picking the tiles (tests force tiny tiles so that shapes small enough
    for the kernel interpreter still have edges; an autotuner tries candidates)."""
    global tile_chooser
    previous, tile_chooser = tile_chooser, chooser
    try:
        yield
    finally:
        tile_chooser = previous


# -- the contraction -----------------------------------------------------------------------------

Operand = Callable[[Sequence[Expr], Expr, Expr], Expr]
"""(batch index, row or depth position, depth or column position) -> an element, compute dtype."""
Write = Callable[[Sequence[Expr], Expr, Expr, Expr], list[Stmt]]
"""(batch index, row, column, accumulated value) -> the statements that store the result."""
PackB = Callable[[Sequence[Expr], Expr, int, Buffer], list[Stmt]]
"""(batch index, first column j0, columns, panel) -> statements that fill panel[k * columns + jj]
with B(batch, k, j0 + jj) for every k and every jj below columns."""


@dataclass(frozen=True)
class Contraction:
    shape: GemmShape
    batch_shape: tuple[int, ...]
    a: Operand
    """A(batch, i, k)."""
    b: Operand
    """B(batch, k, j)."""
    write: Write
    pack: PackB | None = None
    """B's own packing (an implicit GEMM gathers windows of its input into the panel, with index
    arithmetic that reading B element by element would repeat per row tile); given, the panel
    is always packed, once per block of row tiles."""
    b_panels: PanelB | None = None
    """B stored as panels (`ir.ops.contraction.pack_panels`, a weight `passes.layout` packed):
    read in place, a tile's columns being within one stored panel (`b` reads them too, by index)."""


@dataclass(frozen=True)
class PanelB:
    """B stored [P, K, width]: `at(batch index, panel, k, column within the panel)`."""

    width: int
    at: Callable[[Sequence[Expr], Expr, Expr, Expr], Expr]

    def element(self, batch_index: Sequence[Expr], k: Expr, j: Expr) -> Expr:
        """B(batch, k, j) by index arithmetic: for a reader that does not go panel by panel."""
        return self.at(batch_index, j // self.width, k, j % self.width)


def _panel_columns(nr: int, width: int, n: int) -> int:
    """The tile width that reads B's panels of `width` in place: the chooser's NR when a whole
    number of its tiles make a panel (the layout's 64 = AVX-512's NR, or 4 of AVX2's 16), else
    the panel's own width (or all of a narrower N)."""
    return nr if width % nr == 0 else min(width, n)


def _multiply_add(a: Expr, b: Expr, acc: Expr) -> Expr:
    if acc.dtype.is_float:
        return Call("fma", (a, b, acc), acc.dtype)
    return acc + a * b


BColumn = Callable[[Expr, Expr], Expr]
"""(k, column within the panel) -> an element of B for the panel being computed."""


def contraction_loops(lowering: GroupLowering, problem: Contraction) -> list[Stmt]:
    """The tiled loop nest of `problem` (see the module doc): one loop over blocks of row tiles of
    one column panel; each block packs its B panel first when the tiles say so."""
    shape = problem.shape
    if not shape.batch * shape.m * shape.n:
        return []  # an empty result: nothing to write
    tiles = tile_chooser(shape)
    mr, nr = min(tiles.mr, shape.m), min(tiles.nr, shape.n)
    if problem.b_panels is not None:  # packed at compile time: no copy at run time
        nr = _panel_columns(nr, problem.b_panels.width, shape.n)
        tiles = dataclasses.replace(tiles, pack_b=False)
    row_tiles, col_panels = -(-shape.m // mr), -(-shape.n // nr)
    if problem.pack is not None:
        # A gathered panel costs more than a copied one: share it among all the row tiles (up to
        # 64), unless that leaves too few blocks for the threads. Measured (benchmarks/conv_cpu.py,
        # 3x3 stride 2, 64 -> 128 channels): 52 -> 69 GFLOP/s on one core.
        shared = row_tiles if shape.batch * col_panels >= 8 else 16
        tiles = dataclasses.replace(tiles, pack_b=True, block_tiles=max(tiles.block_tiles, min(shared, 64)))
    panel = lowering.scratch((shape.k * nr,), shape.dtype) if tiles.pack_b else None

    def panel_of(batch_index: Sequence[Expr], j0: Expr, cols: int) -> tuple[list[Stmt], TileAt]:
        """B packed (or read in place) for a panel `cols` wide, and its row tiles."""
        statements: list[Stmt] = []
        if problem.b_panels is not None:
            width, read = problem.b_panels.width, problem.b_panels.at
            if shape.n <= width:  # one stored panel
                stored, offset = i64(0), j0
            else:  # nr divides the width (`_panel_columns`): a tile's columns lie in one panel
                stored, offset = j0 // width, (j0 % width if nr < width else None)
            b_at: BColumn = lambda k, jj: read(batch_index, stored, k, jj if offset is None else offset + jj)
        elif panel is None:
            b_at = lambda k, jj: problem.b(batch_index, k, j0 + jj)
        elif problem.pack is not None:
            statements += problem.pack(batch_index, j0, cols, panel)
            b_at = lambda k, jj: Load(panel, k * cols + jj)
        else:
            k, jj = lowering.var("k"), lowering.var("jj")
            element = problem.b(batch_index, Ref(k), j0 + Ref(jj))
            kind = LoopKind.VECTORIZED if cols % VECTOR_LANES_MULTIPLE == 0 else LoopKind.SERIAL
            statements.append(
                For(k, shape.k, (For(jj, cols, (Store(panel, Ref(k) * cols + Ref(jj), element),), kind),))
            )
            b_at = lambda k, jj: Load(panel, k * cols + jj)

        def tile(i0: Expr, rows: int) -> list[Stmt]:
            return _micro_kernel(lowering, problem, batch_index, i0, j0, rows, cols, b_at, tiles.accumulators)

        return statements, tile

    blocking = Blocking(problem.batch_shape, shape.m, shape.n, mr, nr, tiles.block_tiles)
    return panel_blocks(lowering, blocking, panel_of)


def _micro_kernel(lowering: GroupLowering, problem: Contraction, batch_index: Sequence[Expr], i0: Expr, j0: Expr,
                  rows: int, cols: int, b_at: BColumn, accumulators: str) -> list[Stmt]:  # fmt: skip
    """The rows x cols block at (i0, j0), one part of columns after another (`_column_parts`)."""
    columns = _ACCUMULATORS[accumulators]
    statements = []
    for start, width, kind in _column_parts(cols):
        statements += columns(lowering, problem, batch_index, i0, j0, start, rows, width, b_at, kind)
    return statements


def _column_parts(cols: int) -> list[tuple[int, int, LoopKind]]:
    """(first column, width, loop kind) of the parts a tile's columns are computed in: a multiple
    of 16 lanes (whole vectors, up to 4 per row), then 8 and 4 lanes (a ymm and an xmm of f32),
    then the last cols % 4 serially. Each part is exactly one vector width, so the vector code
    has no remainder loop inside the k loop."""
    parts: list[tuple[int, int, LoopKind]] = []
    start = cols - cols % VECTOR_LANES_MULTIPLE
    if start:
        parts.append((0, start, LoopKind.VECTORIZED))
    for width in (8, 4):
        if cols - start >= width:
            parts.append((start, width, LoopKind.VECTORIZED))
            start += width
    if start < cols:
        parts.append((start, cols - start, LoopKind.SERIAL))
    return parts


def _tile_columns(lowering: GroupLowering, problem: Contraction, batch_index: Sequence[Expr], i0: Expr, j0: Expr,
                  start: int, rows: int, cols: int, b_at: BColumn, kind: LoopKind) -> list[Stmt]:  # fmt: skip
    """rows x cols accumulators in `tile` (row r at r * cols), for the columns start .. start + cols
    of the panel at j0: zeroed, then per k one A element per row (`a_r`, a broadcast) times a row
    of B, then written back through the epilogue. The column loops are innermost, so LLVM
    vectorizes them and, the tile's addresses being fixed for the whole k loop, keeps the tile in
    registers."""
    dtype = problem.shape.dtype
    # A buffer of its own: LLVM keeps a tile in registers only when no other block shares it.
    tile = lowering.scratch((rows * cols,), dtype)
    k = lowering.var("k")

    def each_column(body: Callable[[Expr, Expr], list[Stmt]]) -> Stmt:
        jj = lowering.var("jj")
        within = Ref(jj) + start if start else Ref(jj)
        return For(jj, cols, tuple(body(Ref(jj), within)), kind)

    def at(r: int, jj: Expr) -> Expr:
        return jj + r * cols if r else jj

    rows_at = [i0 + r if r else i0 for r in range(rows)]
    z = lowering.var("z")  # one loop over the whole tile: LLVM then keeps the tile in registers, not 6
    zero = [For(z, rows * cols, (Store(tile, Ref(z), const(0, dtype)),))]
    step: list[Stmt] = []
    for r in range(rows):
        a = lowering.var(f"a{r}_", dtype)
        step.append(Assign(a, problem.a(batch_index, rows_at[r], Ref(k))))
        step.append(each_column(lambda jj, within, r=r, a=a: [
            Store(tile, at(r, jj), _multiply_add(Ref(a), b_at(Ref(k), within), Load(tile, at(r, jj))))
        ]))  # fmt: skip
    write = [
        each_column(lambda jj, within, r=r: problem.write(batch_index, rows_at[r], j0 + within, Load(tile, at(r, jj))))
        for r in range(rows)
    ]
    return [*zero, For(k, problem.shape.k, tuple(step)), *write]


def _register_columns(lowering: GroupLowering, problem: Contraction, batch_index: Sequence[Expr], i0: Expr,
                      j0: Expr, start: int, rows: int, cols: int, b_at: BColumn,
                      kind: LoopKind) -> list[Stmt]:  # fmt: skip
    """rows accumulators per column lane (`acc_r`, one variable each), the k loop inside the lane
    loop: with explicit vector code, a lane loop of 64 is 4 vectors per accumulator."""
    dtype = problem.shape.dtype
    jj, k = lowering.var("jj"), lowering.var("k")
    within = Ref(jj) + start if start else Ref(jj)
    rows_at = [i0 + r if r else i0 for r in range(rows)]
    accumulators = [lowering.var(f"acc{r}_", dtype) for r in range(rows)]
    b = b_at(Ref(k), within)
    step = tuple(
        Assign(acc, _multiply_add(problem.a(batch_index, rows_at[r], Ref(k)), b, Ref(acc)))
        for r, acc in enumerate(accumulators)
    )
    body: list[Stmt] = [Assign(acc, const(0, dtype)) for acc in accumulators]
    body.append(For(k, problem.shape.k, step))
    for r, acc in enumerate(accumulators):
        body += problem.write(batch_index, rows_at[r], j0 + within, Ref(acc))
    return [For(jj, cols, tuple(body), kind)]


_ACCUMULATORS = {"tile": _tile_columns, "registers": _register_columns}


# -- matmul and gemm as contractions: the one definition both backends schedule ----------------


def _matmul(lowering: GroupLowering, node: Node) -> Contraction:
    """numpy's matmul: batch dims broadcast; a rank-1 A is a row, a rank-1 B a column, and their
    unit dimension is dropped from the result."""
    a, b = node.inputs
    (y,) = node.outputs
    dtype = compute_dtype(y.type.dtype)
    panels = _panels(lowering, node)
    a_shape = a.type.shape if a.type.rank > 1 else (1, *a.type.shape)
    b_shape = b.type.shape if b.type.rank > 1 else (*b.type.shape, 1)
    if panels is not None:
        b_shape = (b.type.shape[1], node.attrs["packed_columns"])
    batch = tuple(np.broadcast_shapes(a_shape[:-2], b_shape[:-2]))

    def operand(value, shape) -> Operand:
        def at(batch_index: Sequence[Expr], p: Expr, q: Expr) -> Expr:
            full = [*broadcast_index(batch_index, shape[:-2]), p, q]
            if value.type.rank == 1:  # the vector's one axis is the contracted one
                full = full[-1:] if shape[-2] == 1 else full[-2:-1]
            return lowering.compute(value, full)

        return at

    def write(batch_index: Sequence[Expr], i: Expr, j: Expr, acc: Expr) -> list[Stmt]:
        out = [*batch_index, *([i] if a.type.rank > 1 else []), *([j] if b.type.rank > 1 else [])]
        return lowering.store(y, out, acc)

    shape = GemmShape(math.prod(batch), a_shape[-2], b_shape[-1], a_shape[-1], dtype)
    b_at = operand(b, b_shape) if panels is None else panels.element
    return Contraction(shape, batch, operand(a, a_shape), b_at, write, b_panels=panels)


def _panels(lowering: GroupLowering, node: Node) -> PanelB | None:
    """B of a matmul/gemm with packed_columns: panels [P, K, W] read by (panel, k, column)."""
    if not node.attrs["packed_columns"]:
        return None
    b = node.inputs[1]
    return PanelB(b.type.shape[2], lambda _, panel, k, jj: lowering.compute(b, [panel, k, jj]))


def _gemm(lowering: GroupLowering, node: Node) -> Contraction:
    """ONNX Gemm (and torch's linear): alpha * op(A) @ op(B) + beta * C, C broadcast to the
    result. Without trans_a, A may be [*leading, K]: its leading axes are the rows, flattened."""
    a, b, *bias = node.inputs
    (y,) = node.outputs
    attrs = node.attrs
    dtype = compute_dtype(y.type.dtype)
    depth = a.type.shape[0] if attrs["trans_a"] else a.type.shape[-1]
    rows = a.type.shape[1] if attrs["trans_a"] else math.prod(a.type.shape[:-1])
    columns = y.type.shape[-1]
    # An integer gemm scaled by a float is a float one in the reference (numpy promotes the
    # int product to f64), truncated back to the integer type as the result is stored.
    scaled = attrs["alpha"] != 1.0 or (bias and attrs["beta"] != 1.0)
    scale_dtype = DType.f64 if scaled and not dtype.is_float else dtype

    def a_at(_: Sequence[Expr], i: Expr, k: Expr) -> Expr:
        if attrs["trans_a"]:
            return lowering.compute(a, [k, i])
        return lowering.compute(a, _row_major(i, k, depth, a.type.shape))

    def b_at(_: Sequence[Expr], k: Expr, j: Expr) -> Expr:
        return lowering.compute(b, [j, k] if attrs["trans_b"] else [k, j])

    panels = _panels(lowering, node)
    if panels is not None:
        b_at = panels.element

    def write(_: Sequence[Expr], i: Expr, j: Expr, acc: Expr) -> list[Stmt]:
        index = _row_major(i, j, columns, y.type.shape)
        result = acc.cast(scale_dtype)
        if attrs["alpha"] != 1.0:
            result = Binary("mul", const(attrs["alpha"], scale_dtype), result)
        if bias:
            (c,) = bias
            term = lowering.compute(c, broadcast_index(index, c.type.shape)).cast(scale_dtype)
            result = result + (term if attrs["beta"] == 1.0 else const(attrs["beta"], scale_dtype) * term)
        return lowering.store(y, index, result)

    shape = GemmShape(1, rows, columns, depth, dtype)
    return Contraction(shape, (), a_at, b_at, write, b_panels=panels)


def _row_major(row: Expr, column: Expr, width: int, shape: Sequence[int]) -> Sequence[Expr]:
    """The index of (row, column) in a tensor of `shape` whose leading axes, flattened, are the
    rows and whose last axis (of `width`) is the column."""
    if len(shape) == 2:
        return [row, column]
    if len(shape) == 1:
        return [column]
    return unflatten(row * width + column, shape)


_CONTRACTIONS: dict[str, Callable[[GroupLowering, Node], Contraction]] = {"matmul": _matmul, "gemm": _gemm}


def contraction(lowering: GroupLowering, node: Node) -> Contraction:
    """The `Contraction` of a matmul or gemm node: its shape, how A and B are read and how a
    result is written. Every backend's GEMM schedule starts here (the CPU's `contraction_loops`,
    the GPU's block tiles in `backends.cuda.templates_gpu_gemm`), so matmul and gemm are defined once."""
    if node.op not in _CONTRACTIONS:
        raise ValueError(f"{node.op} is not a contraction template's op (one of {sorted(_CONTRACTIONS)})")
    return _CONTRACTIONS[node.op](lowering, node)


def _contraction_template(lowering: GroupLowering, node: Node) -> list[Stmt]:
    return contraction_loops(lowering, contraction(lowering, node))


TEMPLATES_GEMM: dict[str, Callable[[GroupLowering, Node], list[Stmt]]] = dict.fromkeys(
    _CONTRACTIONS, _contraction_template
)
