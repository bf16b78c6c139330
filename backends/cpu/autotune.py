"""The GEMM autotuner: tile sizes for a contraction chosen by timing, not only by the cost model,
and remembered on disk.

`templates_gemm.choose_tiles` (the cost model) picks MR x NR tiles from the vector width alone; the
best tile also depends on the shape (edge tiles, how many blocks the parallel loop has, whether
B's panel stays in cache), the cache sizes and the compiler's register allocation. Given a
`GemmShape`, the `Autotuner` lowers a matmul of that shape once per candidate (`candidates`: the
cost model's tiles, tiles of the same register budget with other MR/NR, and other panel-packing
block sizes), compiles it as a one-group CPU program, times it on one thread (`measure`: the
fastest of a few runs, the better estimate on a busy machine) and keeps the fastest.

Results are stored in Kiln's disk cache (`runtime.disk_cache`, under `autotune/`), keyed by the
shape, the accumulation dtype, the CPU name and features code is generated for (so an AVX2 build,
`runtime.cpu.limit_isa`, is tuned apart), and `VERSION`; a warm cache answers without a single
timing run. The tuner feeds the templates through their seam, `templates_gemm.override_tiles`;
it is opt-in (`compile(..., autotune=True)` or `KILN_AUTOTUNE=1`), because tuning a new shape costs
a compile and a few runs per candidate (seconds for a model).

What is tuned: f32 contractions (f16/bf16 ones accumulate in f32 and share the entry) of at
least `MIN_TUNED_FLOPS`; the rest keep the cost model's tiles. A convolution's implicit GEMM
asks with its GEMM shape and gets the tiles a plain matmul of that shape runs best with (its
packing block size is the conv template's own choice). The int8 GEMM keeps the cost model's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator

import numpy as np

from backends.lowering.templates_gemm import (
    MAX_VECTOR_LANES,
    VECTOR_LANES_MULTIPLE,
    GemmShape,
    GemmTiles,
    choose_tiles,
    host_vector_bits,
    override_tiles,
)
from ir import DType, Graph, GraphBuilder
from runtime.cpu import host_target
from runtime.disk_cache import discard_entry, read_entry, write_entry

AUTOTUNE_ENVIRONMENT_VARIABLE = "KILN_AUTOTUNE"
"""`KILN_AUTOTUNE=1` turns the tuner on for every CPU compile that does not say otherwise."""
VERSION = 1
"""Part of every cache key: raise it when the GEMM template changes what tiles mean or cost."""
MIN_TUNED_FLOPS = 2 * 64**3
"""Smaller contractions take the cost model's tiles: they run in microseconds either way."""

Timer = Callable[[GemmShape, GemmTiles], float]
"""(shape, candidate tiles) -> seconds per run of a matmul of that shape with those tiles."""


def autotune_requested(option: bool | None) -> bool:
    """The compile option if given, else whether `KILN_AUTOTUNE` is set to 1."""
    return option if option is not None else os.environ.get(AUTOTUNE_ENVIRONMENT_VARIABLE, "") == "1"


# -- what is tried --------------------------------------------------------------------------------


def candidates(shape: GemmShape, vector_bits: int | None = None) -> list[GemmTiles]:
    """The cost model's tiles first, then neighbours: for each NR of 1-4 host vectors (a multiple
    of 16 lanes), the MR that fills the same accumulator budget (24 of AVX-512's 32 registers, 12
    of AVX2's 16; at most 12 rows, each an A broadcast per k step); MR 4 at the cost model's NR
    (fewer accumulators, more registers for B); and the cost model's tile with B's panel packed
    per block of 4 or 64 row tiles, or not packed. Tiles are clamped to the shape and duplicates
    dropped, so a small shape has few candidates; tiles that leave the parallel loop too few
    iterations for the threads are dropped."""
    bits = vector_bits or host_vector_bits()
    base = choose_tiles(shape, bits)
    lanes = max(bits // 32, 1)
    budget = 24 if bits >= 512 else 12
    shaped: list[GemmTiles] = [base]
    for vectors in (1, 2, 3, 4):
        nr = lanes * vectors
        if nr % VECTOR_LANES_MULTIPLE or nr > MAX_VECTOR_LANES:
            continue
        shaped.append(dataclasses.replace(base, mr=max(1, min(budget // vectors, 12)), nr=nr))
    shaped.append(dataclasses.replace(base, mr=4))
    packing = [dataclasses.replace(base, pack_b=True, block_tiles=b) for b in (4, 64)]
    packing.append(dataclasses.replace(base, pack_b=False, block_tiles=1))
    tried = dict.fromkeys(_clamped(shape, tiles) for tiles in [*shaped, *packing])
    # Timed on one thread, a tile that leaves the parallel loop too few iterations would win
    # there and starve the other workers: keep at least the cost model's count, up to 8.
    enough = min(_parallel_iterations(shape, base), MIN_PARALLEL_ITERATIONS)
    return [tiles for tiles in tried if _parallel_iterations(shape, tiles) >= enough]


MIN_PARALLEL_ITERATIONS = 8
"""A candidate keeps at least this many iterations of the kernel's parallel loop (or as many as
the cost model's tiles give, when fewer)."""


def _parallel_iterations(shape: GemmShape, tiles: GemmTiles) -> int:
    """Blocks of row tiles times column panels times batch: what the workers share."""
    mr, nr = min(tiles.mr, max(shape.m, 1)), min(tiles.nr, max(shape.n, 1))
    row_tiles = -(-shape.m // mr)
    return shape.batch * -(-row_tiles // tiles.block_tiles) * -(-shape.n // nr)


def _clamped(shape: GemmShape, tiles: GemmTiles) -> GemmTiles:
    """`tiles` as the template would run them on `shape` (no tile larger than the problem, no
    more row tiles per block than there are), so that equivalent candidates compare equal."""
    mr, nr = min(tiles.mr, max(shape.m, 1)), min(tiles.nr, max(shape.n, 1))
    row_tiles = -(-shape.m // mr)
    return dataclasses.replace(tiles, mr=mr, nr=nr, block_tiles=max(1, min(tiles.block_tiles, row_tiles)))


def tunable(shape: GemmShape, min_flops: int = MIN_TUNED_FLOPS) -> bool:
    return shape.dtype == DType.f32 and 2 * shape.batch * shape.m * shape.n * shape.k >= min_flops


# -- how it is timed ------------------------------------------------------------------------------


def matmul_graph(shape: GemmShape) -> tuple[Graph, list[np.ndarray]]:
    """A matmul whose contraction is `shape` (batched when shape.batch > 1), with seeded inputs."""
    rng = np.random.default_rng(0)
    lead = (shape.batch,) if shape.batch > 1 else ()
    builder = GraphBuilder(f"tune_{shape.batch}x{shape.m}x{shape.n}x{shape.k}")
    a = builder.input("a", (*lead, shape.m, shape.k), DType.f32)
    b = builder.input("b", (*lead, shape.k, shape.n), DType.f32)
    inputs = [rng.standard_normal(v.type.shape, dtype=np.float32) for v in (a, b)]
    return builder.build(builder.matmul(a, b)), inputs


def measure(shape: GemmShape, tiles: GemmTiles, *, seconds: float = 0.2, max_runs: int = 20) -> float:
    """Seconds per run of a matmul of `shape` lowered with `tiles`, on one thread: the fastest of
    at least 3 runs (more while `seconds` last) after a warm-up. The clock is the calling thread's
    CPU time (one worker runs on the calling thread), so time slices lost to other processes on a
    busy machine do not count against a candidate."""
    from backends.cpu.program import build_program
    from passes import make_pass
    from runtime.cpu import CpuExecutor

    graph, inputs = matmul_graph(shape)
    with override_tiles(lambda _: tiles):
        program, _ = build_program(make_pass("fuse").run(graph))
    executor = CpuExecutor(program, threads=1)
    executor.run(inputs)
    best, runs, start = math.inf, 0, time.perf_counter()
    while runs < 3 or (runs < max_runs and time.perf_counter() - start < seconds):
        before = time.thread_time()
        executor.run(inputs)
        best = min(best, time.thread_time() - before)
        runs += 1
    return best


# -- the cache ------------------------------------------------------------------------------------


def cache_name(shape: GemmShape) -> str:
    """The disk cache entry of `shape` for the CPU code is generated for now."""
    host = host_target()
    key = json.dumps([VERSION, shape.batch, shape.m, shape.n, shape.k, shape.dtype.name, host["cpu"], host["features"]])
    return f"autotune/{hashlib.sha256(key.encode()).hexdigest()}.json"


def load_tiles(shape: GemmShape) -> GemmTiles | None:
    """The tiles stored for `shape`, or None (none stored, or an entry this version cannot read)."""
    name = cache_name(shape)
    data = read_entry(name)
    if data is None:
        return None
    try:
        return GemmTiles(**json.loads(data)["tiles"])
    except (ValueError, TypeError, KeyError):
        discard_entry(name)
        return None


def store_tiles(shape: GemmShape, tiles: GemmTiles, seconds: dict[GemmTiles, float]) -> None:
    """Remember `tiles` for `shape`, with every candidate's time (for whoever reads the cache)."""
    record = {
        "shape": dataclasses.asdict(shape) | {"dtype": shape.dtype.name},
        "tiles": dataclasses.asdict(tiles),
        "seconds": [[dataclasses.asdict(t), s] for t, s in seconds.items()],
    }
    write_entry(cache_name(shape), json.dumps(record).encode())


# -- the tuner ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Autotuner:
    """A `tile_chooser`: the stored tiles of a shape, else the fastest candidate (then stored);
    shapes not worth tuning get the cost model's."""

    timer: Timer | None = None
    """How a candidate is timed (default: `measure`); tests pass a fake one."""
    min_flops: int = MIN_TUNED_FLOPS
    timing_runs: int = 0
    """How many candidates this tuner has timed (0 with a warm cache)."""
    chosen: dict[GemmShape, GemmTiles] = dataclasses.field(default_factory=dict)
    """What it answered, per shape (also saves re-reading the disk within one compile)."""

    def __call__(self, shape: GemmShape) -> GemmTiles:
        if not tunable(shape, self.min_flops):
            return choose_tiles(shape)
        if shape not in self.chosen:
            self.chosen[shape] = load_tiles(shape) or self.tune(shape)
        return self.chosen[shape]

    def tune(self, shape: GemmShape) -> GemmTiles:
        """Time every candidate for `shape`, store the fastest and return it."""
        timer = self.timer or measure
        seconds: dict[GemmTiles, float] = {}
        for tiles in candidates(shape):
            seconds[tiles] = timer(shape, tiles)
            self.timing_runs += 1
        best = min(seconds, key=seconds.__getitem__)
        store_tiles(shape, best, seconds)
        return best


@contextlib.contextmanager
def autotuning(enabled: bool | None = None, tuner: Autotuner | None = None) -> Iterator[Autotuner | None]:
    """Lower contractions with tuned tiles while the block runs, when `enabled` (None: as
    `KILN_AUTOTUNE` says); yields the tuner, or None when tuning is off."""
    if not autotune_requested(enabled):
        yield None
        return
    tuner = tuner or Autotuner()
    with override_tiles(tuner):
        yield tuner
